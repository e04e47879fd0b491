//! The `periscope` binary: parses the command line and runs it on a
//! single-threaded runtime (Ctrl-C ends `observe --follow` cleanly).

#![forbid(unsafe_code)]

use std::io::{self, BufWriter, Write};
use std::process::ExitCode;

use anyhow::Context;

fn main() -> ExitCode {
    let cli = match periscope_cli::parse_cli(std::env::args_os()) {
        Ok(cli) => cli,
        // --help and --version exit 0, usage errors 2, as clap does.
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: periscope_cli::Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut out = BufWriter::new(io::stdout());
    let mut err = io::stderr();
    let shutdown = async {
        // If the handler cannot be installed, just never stop early.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let result = runtime.block_on(periscope_cli::run(cli, &mut out, &mut err, shutdown));
    // Whatever was printed before an error stays visible.
    let _ = out.flush();
    Ok(result?)
}
