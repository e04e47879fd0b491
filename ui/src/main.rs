//! The wasm entry point: mounts the app on the page (`wasm-bindgen` calls `main` on load).

fn main() {
    #[cfg(target_arch = "wasm32")]
    periscope_ui::app::start();
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!(
        "periscope-ui runs in a browser: build it with `cargo xtask ui` and open it through the relay (--ui-dir)"
    );
}
