//! `periscope`: the flow CLI of Periscope, a drop-in for the `hubble` CLI 0.12
//! (`observe`, `status`, `list nodes`, `list namespaces`) against any server of
//! the Hubble Observer API (Periscope relay on :4245, node agent on :4244).
//!
//! Reusable pieces:
//! - [`request::flows_request`] builds the `GetFlowsRequest` of an `observe`
//!   invocation ([`request::FlowsQuery`]: selector flags, filter flags in order,
//!   raw allow/deny lists, field mask); [`filter::FilterBuilder`] is the filter
//!   flag engine underneath; [`flows_request_from_args`] does both from a
//!   command line.
//! - [`printer::compact_flow`] renders a flow as the compact line; the
//!   [`printer::Printer`] handles dict, table, JSON and node status notices.
//! - [`run`] executes a parsed command line with injectable output streams.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::future::Future;
use std::io::{self, Write};
use std::time::SystemTime;

pub mod alerts;
pub mod args;
pub mod client;
pub mod config;
pub mod export;
pub mod filter;
pub mod printer;
pub mod request;
pub mod time;

pub use args::{Cli, parse_cli};
use args::{Command, ListCommand};
use periscope_proto::observer::GetFlowsRequest;
pub use printer::{PrintOptions, compact_flow};
pub use request::{FlowsQuery, RequestError, flows_request};

/// Why a command failed. `Display` is the one line printed to the user.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line could not be parsed.
    #[error(transparent)]
    Args(#[from] clap::Error),
    /// The flags describe no valid request (nothing was sent).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Another client-side rejection (nothing was sent).
    #[error("{0}")]
    Invalid(String),
    /// Dialing the server failed.
    #[error("cannot connect to {target}: {reason}")]
    Connect {
        /// The server as given.
        target: String,
        /// What went wrong, e.g. `connection refused`.
        reason: String,
    },
    /// A TLS flag's file cannot be used, or TLS flags do not go together.
    #[error("{0}")]
    Tls(String),
    /// The server answered with a gRPC error.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// The health check did not report SERVING.
    #[error("not healthy")]
    NotHealthy,
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Output(#[from] io::Error),
}

/// A gRPC error status, printed like grpc-go does:
/// `rpc error: code = InvalidArgument desc = <message>`.
#[derive(Debug, thiserror::Error)]
#[error("{context}{}", self.text())]
pub struct RpcError {
    context: &'static str,
    /// The status returned by the server (or by the transport).
    pub status: tonic::Status,
    /// Print only the message for code Unknown (what `hubble observe` does).
    bare_unknown: bool,
}

impl RpcError {
    /// An error of `status`, printed after `context`.
    pub fn new(context: &'static str, status: tonic::Status) -> Self {
        Self {
            context,
            status,
            bare_unknown: false,
        }
    }

    /// A GetFlows error: for code Unknown only the server's message is shown.
    pub fn observe(status: tonic::Status) -> Self {
        Self {
            context: "",
            status,
            bare_unknown: true,
        }
    }

    fn text(&self) -> String {
        let code = self.status.code();
        if self.bare_unknown && code == tonic::Code::Unknown {
            return self.status.message().to_owned();
        }
        format!(
            "rpc error: code = {} desc = {}",
            go_code_name(code),
            self.status.message()
        )
    }
}

/// grpc-go's name of a status code.
fn go_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// Parses an `observe` command line (program name first) and builds its
/// request, as the CLI would send it at time `now`.
///
/// ```
/// let request = periscope_cli::flows_request_from_args(
///     ["periscope", "observe", "--ip", "10.0.0.1"],
///     std::time::SystemTime::now(),
/// )
/// .unwrap();
/// assert_eq!(request.number, 20);
/// assert_eq!(request.whitelist.len(), 2);
/// ```
pub fn flows_request_from_args<I, T>(args: I, now: SystemTime) -> Result<GetFlowsRequest, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = parse_cli(args)?;
    let Command::Observe(observe) = &cli.command else {
        return Err(CliError::Invalid("not an observe command".into()));
    };
    let args = observe.args();
    args.check().map_err(CliError::Invalid)?;
    Ok(flows_request(&args.query(), now)?)
}

/// Runs a parsed command. Flows and command output go to `out`, notices to
/// `err`; `observe` stops cleanly (Ok) when `shutdown` completes. A closed
/// `out` (broken pipe, e.g. `| head`) also ends the command successfully.
pub async fn run(
    cli: Cli,
    out: &mut dyn Write,
    err: &mut dyn Write,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CliError> {
    let global = &cli.global;
    let result = match &cli.command {
        Command::Observe(observe) => {
            client::observe(global, observe.args(), out, err, shutdown).await
        }
        Command::Status => client::status(global, out).await,
        Command::Export(args) => export::export(global, args, err).await,
        Command::Alerts(args) => alerts::alerts(args, out).await,
        Command::List(ListCommand::Nodes(args)) => client::list_nodes(global, args, out).await,
        Command::List(ListCommand::Namespaces(args)) => {
            client::list_namespaces(global, args, out).await
        }
    };
    let result = result.and_then(|()| out.flush().map_err(CliError::from));
    match result {
        Err(CliError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
