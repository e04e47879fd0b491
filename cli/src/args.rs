//! Command-line interface: the same commands and flags as the `hubble` CLI.
//!
//! The doc comments of the clap structs are the `--help` text, written for the
//! terminal (`[namespace/]<pod-name>`, `TYPE[:SUBTYPE]`), not for rustdoc.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

use std::ffi::OsString;
use std::time::Duration;

use clap::{ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::filter::FILTER_FLAGS;
use crate::printer::{Output, PrintOptions};
use crate::request::{DEFAULT_FIELD_MASK, FlowsQuery, Selector};
use crate::time::{layout_for_name, parse_duration_flag};

/// Server used when neither `--server` nor an environment variable names one.
pub const DEFAULT_SERVER: &str = "localhost:4245";

/// periscope: observe network flows of a Periscope (or any Hubble API) server.
///
/// Speaks the Hubble Observer gRPC API, so it works against the Periscope relay
/// (port 4245), a single Periscope node agent (port 4244), or Hubble itself.
/// Commands, flags, requests and output formats match the `hubble` CLI 0.12.
#[derive(Debug, Parser)]
#[command(name = "periscope", version, propagate_version = true)]
pub struct Cli {
    /// Flags shared by every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Connection flags, accepted by every command.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Address of the Hubble API server: the relay (port 4245) or a node agent
    /// (port 4244). Falls back to $HUBBLE_SERVER, then localhost:4245.
    #[arg(
        long,
        global = true,
        env = "PERISCOPE_SERVER",
        value_name = "HOST:PORT",
        help_heading = "Server"
    )]
    pub server: Option<String>,

    /// How long to wait for the connection to the server (Go duration: 500ms,
    /// 5s, 1m).
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration_flag, value_name = "DURATION", help_heading = "Server")]
    pub timeout: Duration,

    /// Deadline of unary requests (status, list).
    #[arg(long, global = true, default_value = "12s", value_parser = parse_duration_flag, value_name = "DURATION", help_heading = "Server")]
    pub request_timeout: Duration,

    /// Use TLS to connect to the server (so does a `tls://` server prefix, or any
    /// other --tls-* flag). Without --tls-ca-cert-files the system's trusted CAs
    /// verify the server.
    #[arg(long, global = true, help_heading = "TLS")]
    pub tls: bool,

    /// CA certificate files (PEM) that the server's certificate must chain to
    /// (repeat or separate with commas).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        value_name = "FILE",
        help_heading = "TLS"
    )]
    pub tls_ca_cert_files: Vec<std::path::PathBuf>,

    /// Client certificate (PEM) for mutual TLS (needs --tls-client-key-file).
    #[arg(long, global = true, value_name = "FILE", help_heading = "TLS")]
    pub tls_client_cert_file: Option<std::path::PathBuf>,

    /// Private key (PEM) of --tls-client-cert-file.
    #[arg(long, global = true, value_name = "FILE", help_heading = "TLS")]
    pub tls_client_key_file: Option<std::path::PathBuf>,

    /// Name to verify in the server's certificate instead of the host of
    /// --server.
    #[arg(long, global = true, value_name = "NAME", help_heading = "TLS")]
    pub tls_server_name: Option<String>,

    /// Print debug information: every relay node status notice and unknown
    /// response types.
    #[arg(short = 'D', long, global = true)]
    pub debug: bool,

    /// YAML file with defaults for the flags above, keyed by their names (server, timeout,
    /// request-timeout, tls, tls-ca-cert-files, tls-client-cert-file, tls-client-key-file,
    /// tls-server-name, debug) [default: ~/.config/periscope/config.yaml when it exists].
    /// Precedence: flag > environment variable > file > default.
    #[arg(long, global = true, env = "PERISCOPE_CLI_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
}

impl GlobalArgs {
    /// `--server` / $PERISCOPE_SERVER, else $HUBBLE_SERVER, else the default.
    pub fn server_address(&self) -> String {
        self.server
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| {
                std::env::var("HUBBLE_SERVER")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned())
    }
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Observe flows of a Hubble server (GetFlows); same as `observe flows`.
    ///
    /// Without selector flags the last 20 flows are printed. Filter flags build
    /// the request's whitelist; `--not` before a filter flag puts it into the
    /// blacklist instead.
    Observe(Box<ObserveCommand>),
    /// Display the status of the server: health check, flow buffer usage,
    /// flows per second and connected nodes.
    Status,
    /// List objects known to the server.
    #[command(subcommand)]
    List(ListCommand),
    /// Export flows to a file others can analyse: Parquet, Arrow IPC or JSON lines.
    ///
    /// Takes the selector and filter flags of `observe`; without a selector every flow the
    /// server holds in the range is exported (against the relay: its history, from ClickHouse or
    /// its in-memory window). The columns are those of the ClickHouse `flows` table
    /// (storage-schema/README.md), so pandas, DuckDB or `clickhouse-local … file()` read the
    /// files directly.
    Export(Box<ExportArgs>),
    /// List the relay's alerts on denied flows (firing, pending and recently resolved), from
    /// its HTTP API.
    Alerts(AlertsArgs),
}

/// Flags of `alerts`.
#[derive(Debug, Clone, Args)]
pub struct AlertsArgs {
    /// The relay's HTTP API (its --http-listen), host:port.
    #[arg(
        long,
        env = "PERISCOPE_API",
        default_value = "127.0.0.1:12000",
        value_name = "ADDR"
    )]
    pub api: String,
    /// Only alerts in this state: firing, pending, resolved or all.
    #[arg(long, default_value = "all", value_name = "STATE")]
    pub state: String,
    /// Output: table or json.
    #[arg(short, long, default_value = "table", value_name = "FORMAT")]
    pub output: String,
}

/// Flags of `export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// File format.
    #[arg(long, value_enum, default_value = "parquet", help_heading = "Export")]
    pub format: ExportFormat,
    /// The file to write (replaced if it exists).
    #[arg(long, value_name = "PATH", help_heading = "Export")]
    pub file: std::path::PathBuf,
    /// Rows per record batch (Parquet row group / Arrow batch).
    #[arg(
        long,
        default_value_t = 8192,
        value_name = "N",
        help_heading = "Export"
    )]
    pub batch_rows: usize,
    /// Selectors and filters, as for `observe`.
    #[command(flatten)]
    pub observe: ObserveArgs,
}

/// `export --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// Apache Parquet (snappy-compressed columns).
    Parquet,
    /// Arrow IPC file format (Feather v2).
    Arrow,
    /// One protobuf-JSON flow per line.
    Jsonl,
}

/// `observe` takes its flags directly or after `flows`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ObserveCommand {
    /// `observe flows`.
    #[command(subcommand)]
    pub sub: Option<ObserveSubcommand>,
    /// Flags of a bare `observe`.
    #[command(flatten)]
    pub args: ObserveArgs,
}

impl ObserveCommand {
    /// The flags in effect, whichever spelling was used.
    pub fn args(&self) -> &ObserveArgs {
        match &self.sub {
            Some(ObserveSubcommand::Flows(args)) => args,
            None => &self.args,
        }
    }
}

/// Subcommands of `observe`.
#[derive(Debug, Subcommand)]
pub enum ObserveSubcommand {
    /// Observe flows of a Hubble server (same as a bare `observe`).
    Flows(ObserveArgs),
}

/// Subcommands of `list`.
#[derive(Debug, Subcommand)]
pub enum ListCommand {
    /// List the nodes of the cluster with their state and flow buffers
    /// (GetNodes; relay only).
    #[command(alias = "node")]
    Nodes(ListArgs),
    /// List the namespaces that had flows in the last hour (GetNamespaces).
    Namespaces(ListArgs),
}

/// Flags of the `list` commands.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = ListOutput::Table)]
    pub output: ListOutput,
}

/// `-o` of the `list` commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListOutput {
    /// Aligned columns.
    Table,
    /// Aligned columns with more information.
    Wide,
    /// JSON array (protobuf JSON of each item).
    Json,
}

/// `--color` (accepted for compatibility; output is never colored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Color {
    /// No colors (periscope never colors).
    Auto,
    /// Not supported: same as never.
    Always,
    /// No colors.
    Never,
}

/// Flags of `observe` / `observe flows`.
#[derive(Debug, Clone, Args)]
pub struct ObserveArgs {
    // ---- Selectors -------------------------------------------------------
    /// Get the last N flows stored in the buffer (default 20 when no other
    /// selector is given).
    #[arg(long, value_name = "N", help_heading = "Selectors")]
    pub last: Option<u64>,

    /// Get the first N flows stored in the buffer (cannot be combined with
    /// --last, --all or --follow).
    #[arg(long, value_name = "N", help_heading = "Selectors")]
    pub first: Option<u64>,

    /// Get all flows stored in the server's buffer.
    #[arg(long, help_heading = "Selectors")]
    pub all: bool,

    /// Follow flows output: keep streaming new flows until interrupted.
    #[arg(short, long, help_heading = "Selectors")]
    pub follow: bool,

    /// Flows since this time: a relative duration (5s, 2m, 3h43m) or an
    /// absolute time (2006-01-02, 2006-01-02T15:04:05Z07:00 with optional
    /// fractional seconds, 2006-01-02T15:04Z07:00, 2006-01-02T15Z07:00,
    /// 'Mon, 02 Jan 2006 15:04:05 -0700').
    #[arg(long, value_name = "TIME", help_heading = "Selectors")]
    pub since: Option<String>,

    /// Flows until this time (same formats as --since); ignored with --follow.
    #[arg(long, value_name = "TIME", help_heading = "Selectors")]
    pub until: Option<String>,

    // ---- Filters ---------------------------------------------------------
    /// Put the next filter flag into the blacklist, e.g. --not --from-ip 2.2.2.2.
    #[arg(long, action = ArgAction::Append, num_args = 0, default_missing_value = "true", help_heading = "Filters")]
    pub not: Vec<String>,

    /// Show only the flow with this unique flow identifier.
    #[arg(long, value_name = "UUID", help_heading = "Filters")]
    pub uuid: Vec<String>,

    /// Show flows originating at this IP address or CIDR (1.1.1.1, 1.1.1.0/24).
    #[arg(long, value_name = "IP", help_heading = "Filters")]
    pub from_ip: Vec<String>,

    /// Show flows originating or terminating at this IP address or CIDR.
    #[arg(long, value_name = "IP", help_heading = "Filters")]
    pub ip: Vec<String>,

    /// Show flows terminating at this IP address or CIDR.
    #[arg(long, value_name = "IP", help_heading = "Filters")]
    pub to_ip: Vec<String>,

    /// Show flows originating in this pod name prefix ([namespace/]<pod-name>;
    /// the namespace defaults to 'default').
    #[arg(long, value_name = "POD", help_heading = "Filters")]
    pub from_pod: Vec<String>,

    /// Show flows related to this pod name prefix ([namespace/]<pod-name>).
    #[arg(long, value_name = "POD", help_heading = "Filters")]
    pub pod: Vec<String>,

    /// Show flows terminating in this pod name prefix ([namespace/]<pod-name>).
    #[arg(long, value_name = "POD", help_heading = "Filters")]
    pub to_pod: Vec<String>,

    /// Show flows originating in this Kubernetes namespace.
    #[arg(long, value_name = "NAMESPACE", help_heading = "Filters")]
    pub from_namespace: Vec<String>,

    /// Show flows related to this Kubernetes namespace.
    #[arg(short = 'n', long, value_name = "NAMESPACE", help_heading = "Filters")]
    pub namespace: Vec<String>,

    /// Show flows terminating in this Kubernetes namespace.
    #[arg(long, value_name = "NAMESPACE", help_heading = "Filters")]
    pub to_namespace: Vec<String>,

    /// Show flows originating at this fully qualified domain name (glob, e.g.
    /// "*.cilium.io").
    #[arg(long, value_name = "FQDN", help_heading = "Filters")]
    pub from_fqdn: Vec<String>,

    /// Show flows related to this fully qualified domain name (glob).
    #[arg(long, value_name = "FQDN", help_heading = "Filters")]
    pub fqdn: Vec<String>,

    /// Show flows terminating at this fully qualified domain name (glob).
    #[arg(long, value_name = "FQDN", help_heading = "Filters")]
    pub to_fqdn: Vec<String>,

    /// Show flows originating in an endpoint with these labels (label selector,
    /// e.g. "key1=value1", "reserved:world").
    #[arg(long, value_name = "SELECTOR", help_heading = "Filters")]
    pub from_label: Vec<String>,

    /// Show flows related to an endpoint with these labels.
    #[arg(short = 'l', long, value_name = "SELECTOR", help_heading = "Filters")]
    pub label: Vec<String>,

    /// Show flows terminating in an endpoint with these labels.
    #[arg(long, value_name = "SELECTOR", help_heading = "Filters")]
    pub to_label: Vec<String>,

    /// Show flows whose source matches this service name prefix
    /// ([namespace/]<svc-name>; the namespace defaults to 'default').
    #[arg(long, value_name = "SERVICE", help_heading = "Filters")]
    pub from_service: Vec<String>,

    /// Show flows whose source or destination matches this service name prefix.
    #[arg(long, value_name = "SERVICE", help_heading = "Filters")]
    pub service: Vec<String>,

    /// Show flows whose destination matches this service name prefix.
    #[arg(long, value_name = "SERVICE", help_heading = "Filters")]
    pub to_service: Vec<String>,

    /// Show flows with this source port (e.g. 8080).
    #[arg(long, value_name = "PORT", help_heading = "Filters")]
    pub from_port: Vec<String>,

    /// Show flows with this port as source or destination.
    #[arg(long, value_name = "PORT", help_heading = "Filters")]
    pub port: Vec<String>,

    /// Show flows with this destination port.
    #[arg(long, value_name = "PORT", help_heading = "Filters")]
    pub to_port: Vec<String>,

    /// Show flows originating at an endpoint with this security identity: a
    /// number or a reserved name (host, world, unmanaged, health, init,
    /// remote-node, kube-apiserver, ingress).
    #[arg(long, value_name = "IDENTITY", help_heading = "Filters")]
    pub from_identity: Vec<String>,

    /// Show flows related to an endpoint with this security identity.
    #[arg(long, value_name = "IDENTITY", help_heading = "Filters")]
    pub identity: Vec<String>,

    /// Show flows terminating at an endpoint with this security identity.
    #[arg(long, value_name = "IDENTITY", help_heading = "Filters")]
    pub to_identity: Vec<String>,

    /// Show flows originating at an endpoint of this workload: Kind/name, name,
    /// or Kind/.
    #[arg(long, value_name = "WORKLOAD", help_heading = "Filters")]
    pub from_workload: Vec<String>,

    /// Show flows related to an endpoint of this workload.
    #[arg(long, value_name = "WORKLOAD", help_heading = "Filters")]
    pub workload: Vec<String>,

    /// Show flows terminating at an endpoint of this workload.
    #[arg(long, value_name = "WORKLOAD", help_heading = "Filters")]
    pub to_workload: Vec<String>,

    /// Show only flows with this verdict: FORWARDED, DROPPED, AUDIT,
    /// REDIRECTED, ERROR, TRACED, TRANSLATED.
    #[arg(long, value_name = "VERDICT", help_heading = "Filters")]
    pub verdict: Vec<String>,

    /// Filter by event type TYPE[:SUBTYPE]. Types: drop, debug, capture, trace,
    /// policy-verdict, recorder, trace-sock, l7, agent, or a number. Subtypes:
    /// numbers, and for trace to-endpoint, to-proxy, to-host, to-stack,
    /// to-overlay, from-endpoint, from-proxy, from-host, from-stack,
    /// from-overlay, from-network, to-network.
    #[arg(
        short = 't',
        long = "type",
        value_name = "TYPE[:SUBTYPE]",
        help_heading = "Filters"
    )]
    pub event_type: Vec<String>,

    /// Show only HTTP flows with this status code or prefix (e.g. "404", "5+").
    #[arg(long, value_name = "CODE", help_heading = "Filters")]
    pub http_status: Vec<String>,

    /// Show only HTTP flows with this method (e.g. "get", "post").
    #[arg(long, value_name = "METHOD", help_heading = "Filters")]
    pub http_method: Vec<String>,

    /// Show only HTTP flows whose path matches this regular expression (e.g.
    /// "/page/\d+").
    #[arg(long, value_name = "REGEX", help_heading = "Filters")]
    pub http_path: Vec<String>,

    /// Show only flows of this L4/L7 protocol: tcp, udp, sctp, icmp, icmpv4,
    /// icmpv6, dns, http, kafka.
    #[arg(long, value_name = "PROTOCOL", help_heading = "Filters")]
    pub protocol: Vec<String>,

    /// Show only flows with all these TCP flags set (e.g. "syn", "syn,ack").
    #[arg(long, value_name = "FLAGS", help_heading = "Filters")]
    pub tcp_flags: Vec<String>,

    /// Show only flows seen on nodes matching this name (glob, optionally
    /// with a cluster: "k8s*", "test-cluster/*.company.com").
    #[arg(long, value_name = "NODE", help_heading = "Filters")]
    pub node_name: Vec<String>,

    /// Show only IPv4 flows.
    #[arg(short = '4', long, action = ArgAction::Append, num_args = 0, default_missing_value = "v4", help_heading = "Filters")]
    pub ipv4: Vec<String>,

    /// Show only IPv6 flows.
    #[arg(short = '6', long, action = ArgAction::Append, num_args = 0, default_missing_value = "v6", help_heading = "Filters")]
    pub ipv6: Vec<String>,

    /// Show only IPv4 (v4), IPv6 (v6) or non-IP (none) flows.
    #[arg(long, value_name = "VERSION", help_heading = "Filters")]
    pub ip_version: Vec<String>,

    /// Show only flows with this trace ID.
    #[arg(long, value_name = "ID", help_heading = "Filters")]
    pub trace_id: Vec<String>,

    /// Show only flows in this direction: ingress or egress.
    #[arg(long, value_name = "DIRECTION", help_heading = "Filters")]
    pub traffic_direction: Vec<String>,

    // ---- Raw filters -----------------------------------------------------
    /// Add a whitelist entry given as a protobuf-JSON FlowFilter, e.g.
    /// '{"reply":[true],"dns_query":["kube.*"]}'.
    #[arg(long, value_name = "JSON", help_heading = "Raw filters")]
    pub allowlist: Vec<String>,

    /// Add a blacklist entry given as a protobuf-JSON FlowFilter.
    #[arg(long, value_name = "JSON", help_heading = "Raw filters")]
    pub denylist: Vec<String>,

    /// Print the whitelist and blacklist this command would send (YAML with
    /// one JSON FlowFilter per entry) and exit without connecting.
    #[arg(long, help_heading = "Raw filters")]
    pub print_raw_filters: bool,

    // ---- Formatting ------------------------------------------------------
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Compact, help_heading = "Formatting")]
    pub output: Output,

    /// Time layout: StampMilli (default), RFC3339, RFC3339Milli, RFC3339Micro,
    /// RFC3339Nano, RFC1123Z, or any Go layout. Times are printed in UTC.
    #[arg(
        long,
        default_value = "StampMilli",
        value_name = "FORMAT",
        help_heading = "Formatting"
    )]
    pub time_format: String,

    /// Print the node name of each flow.
    #[arg(long, help_heading = "Formatting")]
    pub print_node_name: bool,

    /// Print IP addresses instead of pod, service or DNS names.
    #[arg(long, help_heading = "Formatting")]
    pub numeric: bool,

    /// Translate IP addresses to pod, service or DNS names
    /// (--ip-translation=false is the same as --numeric).
    #[arg(long, value_name = "BOOL", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, help_heading = "Formatting")]
    pub ip_translation: bool,

    /// Colorize output: accepted for compatibility, periscope never colors.
    #[arg(long, value_enum, default_value_t = Color::Auto, help_heading = "Formatting")]
    pub color: Color,

    /// Ask the server to fill only these Flow fields (comma-separated proto
    /// field paths, e.g. time,IP,l4.TCP.destination_port); json output only.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "PATHS",
        help_heading = "Experimental"
    )]
    pub experimental_field_mask: Vec<String>,

    /// Ask the server to fill only the Flow fields the compact, dict and table
    /// outputs print.
    #[arg(long, help_heading = "Experimental")]
    pub experimental_use_default_field_masks: bool,

    /// Filter flags in command-line order (filled in by [`parse_cli`]).
    #[arg(skip)]
    pub ordered_filters: Vec<(String, String)>,
}

impl ObserveArgs {
    /// The query these flags describe.
    pub fn query(&self) -> FlowsQuery {
        let field_mask = if !self.experimental_field_mask.is_empty() {
            self.experimental_field_mask.clone()
        } else if self.experimental_use_default_field_masks {
            DEFAULT_FIELD_MASK.iter().map(|p| (*p).to_owned()).collect()
        } else {
            Vec::new()
        };
        FlowsQuery {
            selector: Selector {
                last: self.last.unwrap_or(0),
                first: self.first.unwrap_or(0),
                all: self.all,
                follow: self.follow,
                since: self.since.clone(),
                until: self.until.clone(),
            },
            filters: self.ordered_filters.clone(),
            allowlist: self.allowlist.clone(),
            denylist: self.denylist.clone(),
            field_mask,
        }
    }

    /// The printer settings these flags describe.
    pub fn print_options(&self, debug: bool) -> PrintOptions {
        PrintOptions {
            output: self.output,
            time_layout: layout_for_name(&self.time_format),
            node_name: self.print_node_name,
            ip_translation: self.ip_translation && !self.numeric,
            debug,
        }
    }

    /// Option combinations the hubble CLI rejects before building a request.
    pub fn check(&self) -> Result<(), String> {
        if self.output == Output::Table && self.follow {
            return Err("table output format is not compatible with follow mode".into());
        }
        if !self.experimental_field_mask.is_empty()
            && !matches!(self.output, Output::Json | Output::Jsonpb)
        {
            return Err(
                "--experimental-field-mask is only compatible with json or jsonpb output".into(),
            );
        }
        Ok(())
    }
}

/// The argument id clap uses for a filter flag.
fn filter_arg_id(flag: &str) -> String {
    match flag {
        "type" => "event_type".to_owned(),
        _ => flag.replace('-', "_"),
    }
}

/// Filter flags of one `observe` invocation, in command-line order.
fn ordered_filters(matches: &ArgMatches) -> Vec<(String, String)> {
    let mut found: Vec<(usize, String, String)> = Vec::new();
    for flag in FILTER_FLAGS {
        let id = filter_arg_id(flag);
        let (Some(indices), Some(values)) =
            (matches.indices_of(&id), matches.get_many::<String>(&id))
        else {
            continue;
        };
        for (index, value) in indices.zip(values) {
            let value = if *flag == "not" { "" } else { value.as_str() };
            found.push((index, (*flag).to_owned(), value.to_owned()));
        }
    }
    found.sort_by_key(|(index, _, _)| *index);
    found
        .into_iter()
        .map(|(_, flag, value)| (flag, value))
        .collect()
}

/// Parses a command line (the first item is the program name).
pub fn parse_cli<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let argv = crate::config::merge(argv, |k| std::env::var(k).ok(), home.as_deref())
        .map_err(|e| Cli::command().error(clap::error::ErrorKind::InvalidValue, e))?;
    let matches = Cli::command().try_get_matches_from(argv)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    if let (Command::Observe(observe), Some(("observe", sub))) =
        (&mut cli.command, matches.subcommand())
    {
        match (&mut observe.sub, sub.subcommand()) {
            (Some(ObserveSubcommand::Flows(args)), Some(("flows", flows))) => {
                args.ordered_filters = ordered_filters(flows);
            }
            _ => observe.args.ordered_filters = ordered_filters(sub),
        }
    }
    if let (Command::Export(export), Some(("export", sub))) =
        (&mut cli.command, matches.subcommand())
    {
        export.observe.ordered_filters = ordered_filters(sub);
    }
    Ok(cli)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_filter_flag_has_an_argument() {
        let command = Cli::command();
        let observe = command.find_subcommand("observe").expect("observe");
        for flag in FILTER_FLAGS {
            let id = filter_arg_id(flag);
            let arg = observe
                .get_arguments()
                .find(|a| a.get_id() == id.as_str())
                .unwrap_or_else(|| panic!("no argument for --{flag}"));
            assert_eq!(arg.get_long(), Some(*flag));
        }
    }

    #[test]
    fn order_is_kept_across_flags() {
        let cli = parse_cli([
            "periscope",
            "observe",
            "--not",
            "--ip",
            "a",
            "-4",
            "--not",
            "-t",
            "drop",
            "-44",
            "--ip",
            "b",
        ])
        .expect("parses");
        let Command::Observe(observe) = cli.command else {
            panic!("not observe")
        };
        let pairs: Vec<(&str, &str)> = observe
            .args()
            .ordered_filters
            .iter()
            .map(|(f, v)| (f.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("not", ""),
                ("ip", "a"),
                ("ipv4", "v4"),
                ("not", ""),
                ("type", "drop"),
                ("ipv4", "v4"),
                ("ipv4", "v4"),
                ("ip", "b"),
            ]
        );
    }

    #[test]
    fn observe_flows_spelling() {
        let cli = parse_cli(["periscope", "observe", "flows", "--pod", "x", "--last", "3"])
            .expect("parses");
        let Command::Observe(observe) = cli.command else {
            panic!("not observe")
        };
        assert_eq!(observe.args().last, Some(3));
        assert_eq!(
            observe.args().ordered_filters,
            [("pod".to_owned(), "x".to_owned())]
        );
    }

    #[test]
    fn ip_translation_flag() {
        let args = |extra: &[&str]| {
            let mut argv = vec!["periscope", "observe"];
            argv.extend(extra);
            let Command::Observe(o) = parse_cli(argv).expect("parses").command else {
                panic!()
            };
            o.args().print_options(false).ip_translation
        };
        assert!(args(&[]));
        assert!(args(&["--ip-translation"]));
        assert!(!args(&["--ip-translation=false"]));
        assert!(!args(&["--numeric"]));
    }
}
