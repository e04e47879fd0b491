//! `cargo xtask ui`: the web UI bundle (`ui/`, Leptos rendered in the browser) the relay serves
//! with `--ui-dir`.
//!
//! Steps: `cargo build --release --target wasm32-unknown-unknown -p periscope-ui`, then
//! `wasm-bindgen --target web` (the CLI must be the version the UI crate pins, 0.2.130;
//! `xtask/setup.sh` installs it) into `<target dir>/ui-dist/`, then the static files of
//! `ui/static/` (index.html, style.css) beside it. No wasm-opt: Debian's binaryen breaks the
//! module (see ../shared/TOOLCHAIN.md).
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};

use crate::{root, run, target_dir};

/// The wasm-bindgen CLI version the UI crate pins (`wasm-bindgen = "=0.2.130"` in ui/Cargo.toml).
pub const WASM_BINDGEN_VERSION: &str = "0.2.130";

/// Where the bundle goes.
pub fn ui_dist() -> PathBuf {
    target_dir().join("ui-dist")
}

/// The wasm-bindgen CLI: on `PATH`, else in cargo's bin directory.
fn wasm_bindgen() -> Result<PathBuf> {
    let mut candidates = vec![PathBuf::from("wasm-bindgen")];
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        candidates.push(Path::new(&home).join("bin/wasm-bindgen"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/wasm-bindgen"));
    }
    let mut wrong = Vec::new();
    for c in candidates {
        let Ok(out) = Command::new(&c).arg("--version").output() else {
            continue;
        };
        let version = String::from_utf8_lossy(&out.stdout);
        if version.split_whitespace().nth(1) == Some(WASM_BINDGEN_VERSION) {
            return Ok(c);
        }
        wrong.push(format!("{} is {}", c.display(), version.trim()));
    }
    bail!(
        "the UI needs the wasm-bindgen CLI {WASM_BINDGEN_VERSION} ({}); run `cargo xtask setup`, or \
         `cargo install wasm-bindgen-cli --version {WASM_BINDGEN_VERSION}`",
        if wrong.is_empty() {
            "none found".to_string()
        } else {
            wrong.join(", ")
        }
    )
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Builds the UI bundle into `<target dir>/ui-dist/` and returns that directory. The wasm build
/// is cargo's (a no-op when nothing changed); wasm-bindgen runs only when the wasm is newer than
/// its output.
pub fn build_ui() -> Result<PathBuf> {
    let wasm_bindgen = wasm_bindgen()?;
    eprintln!("[xtask] building the web UI (wasm)");
    run(Command::new("cargo").current_dir(root()).args([
        "build",
        "--release",
        "--target",
        "wasm32-unknown-unknown",
        "-p",
        "periscope-ui",
    ]))?;
    let wasm = target_dir().join("wasm32-unknown-unknown/release/periscope-ui.wasm");
    if !wasm.is_file() {
        bail!("the wasm build left no {}", wasm.display());
    }
    let dist = ui_dist();
    std::fs::create_dir_all(&dist).with_context(|| format!("creating {}", dist.display()))?;
    let bound = dist.join("periscope_ui_bg.wasm");
    let stale = match (
        modified(&wasm),
        modified(&bound),
        modified(&dist.join("periscope_ui.js")),
    ) {
        (Some(w), Some(b), Some(_)) => w > b,
        _ => true,
    };
    if stale {
        run(Command::new(&wasm_bindgen)
            .args([
                "--target",
                "web",
                "--no-typescript",
                "--out-name",
                "periscope_ui",
                "--out-dir",
            ])
            .arg(&dist)
            .arg(&wasm))?;
    }
    let statics = root().join("ui/static");
    for entry in
        std::fs::read_dir(&statics).with_context(|| format!("reading {}", statics.display()))?
    {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let to = dist.join(entry.file_name());
            std::fs::copy(entry.path(), &to).with_context(|| {
                format!("copying {} to {}", entry.path().display(), to.display())
            })?;
        }
    }
    eprintln!("[xtask] web UI bundle in {}", dist.display());
    Ok(dist)
}
