//! `cargo xtask bench`: benchmarks, reported as ratios against a baseline of the same run.
use anyhow::{Result, bail};
use clap::Args;

/// Options of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which benchmark: datapath.
    which: String,
}

/// Entry point.
pub fn run(a: BenchArgs) -> Result<()> {
    bail!("benchmark {:?} is not implemented yet", a.which)
}
