//! `cargo xtask`: Periscope's task runner.
//!
//! - `cargo xtask setup`  — install what the project needs on this machine (idempotent).
//! - `cargo xtask test`   — setup, build, and run every test (unit, property, end-to-end).
//! - `cargo xtask demo`   — bring up the demo topology with agents and traffic; Ctrl-C to stop.
//! - `cargo xtask bench`  — benchmarks, reported as ratios against a baseline of the same run.
//! - `cargo xtask ui`     — build the web UI bundle into `<target>/ui-dist` (the relay's `--ui-dir`).
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod ui;

/// Periscope's task runner.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install the toolchain pieces, Debian packages and bpffs mount the project needs
    /// (idempotent; seconds on a ready machine).
    Setup,
    /// Build the release binaries (agent with its eBPF datapath) and the web UI bundle.
    Build,
    /// Build the web UI bundle (wasm + wasm-bindgen + static files) into `<target>/ui-dist`,
    /// the directory the relay serves with `--ui-dir`.
    Ui,
    /// Setup, build and run every test: unit and property tests of all crates and the
    /// end-to-end tests on the network-namespace test bed (needs root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter), after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the demo: a topology of pods in network namespaces, the agent on each node, policies
    /// with a deny rule, and traffic; prints flows with FORWARDED and DROPPED verdicts.
    Demo(demo::DemoArgs),
    /// Run a benchmark: `datapath`.
    Bench(bench::BenchArgs),
    /// (internal) Traffic generator of a detached demo.
    #[command(hide = true)]
    DemoTraffic {
        /// Demo state file.
        state: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Build => {
            setup()?;
            build_release()
        }
        Cmd::Ui => ui::build_ui().map(|_| ()),
        Cmd::Test { args } => test(&args),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::DemoTraffic { state } => demo::traffic_main(&state),
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the workspace")
        .to_path_buf()
}

/// The cargo target directory in use.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Runs a command, failing with its name when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

pub fn require_root() -> Result<()> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this needs root (network namespaces, eBPF, bpffs); run it as root");
    }
    Ok(())
}

/// Runs `xtask/setup.sh`.
pub fn setup() -> Result<()> {
    require_root()?;
    run(Command::new("bash").arg(root().join("xtask/setup.sh")))
}

/// Builds the release agent (and with it the eBPF object), CLI and relay, and the web UI bundle.
pub fn build_release() -> Result<()> {
    run(Command::new("cargo").current_dir(root()).args([
        "build",
        "--release",
        "-p",
        "periscope-agent",
        "-p",
        "periscope-cli",
        "-p",
        "periscope-relay",
    ]))?;
    ui::build_ui()?;
    Ok(())
}

/// Path of the release CLI binary.
pub fn cli_bin() -> PathBuf {
    target_dir().join("release/periscope")
}

/// Path of the release agent binary.
pub fn agent_bin() -> PathBuf {
    target_dir().join("release/periscope-agent")
}

/// Path of the release relay binary.
pub fn relay_bin() -> PathBuf {
    target_dir().join("release/periscope-relay")
}

fn test(extra: &[String]) -> Result<()> {
    setup()?;
    build_release()?;
    eprintln!("[xtask] running all tests");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .env("PERISCOPE_AGENT_BIN", agent_bin())
        .env("PERISCOPE_CLI_BIN", cli_bin())
        .env("PERISCOPE_RELAY_BIN", relay_bin())
        .args([
            "test",
            "--workspace",
            "--exclude",
            "periscope-datapath-ebpf",
        ])
        .args(extra);
    run(&mut cmd)?;
    if extra.is_empty() {
        // The README's main command, non-interactively: the demo with ClickHouse for a bounded
        // time, checking through the relay that flows, denied flows, the service map and an
        // alert appear, and that ClickHouse stores the flows.
        eprintln!("[xtask] running the demo with --check");
        run(Command::new(std::env::current_exe()?).args([
            "demo",
            "--duration",
            "20",
            "--no-build",
            "--clickhouse",
            "--check",
        ]))?;
    }
    Ok(())
}
