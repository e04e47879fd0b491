//! Builds the eBPF datapath (nightly, bpfel-unknown-none, bpf-linker) into OUT_DIR, where the
//! loader embeds it. `AYA_BUILD_SKIP=1` skips it (for `cargo check`/`clippy` without the toolchain).
fn main() -> anyhow::Result<()> {
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
