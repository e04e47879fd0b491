//! Builds the eBPF datapath (nightly, bpfel-unknown-none, bpf-linker) into OUT_DIR, where the
//! loader embeds it. `AYA_BUILD_SKIP=1` skips it (for `cargo check`/`clippy` without the
//! toolchain): an empty object is embedded instead, which the loader refuses at run time.
fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true") {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
        let object = out.join("periscope-datapath");
        if !object.exists() {
            std::fs::write(object, [])?;
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../datapath/ebpf");
    let root = root.to_str().expect("utf-8 path");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "periscope-datapath-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("nightly"),
    )
}
