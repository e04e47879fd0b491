//! Flow output in the formats of `hubble observe` 0.12: compact lines, dict
//! blocks, an aligned table, and protobuf JSON.
//!
//! The pieces ([`host_names`], [`identity_label`], [`verdict_label`],
//! [`summary`]) are public so other components can print flows the same way;
//! [`compact_flow`] renders one whole compact line.

use std::io::{self, Write};

use periscope_proto::flow::{AuthType, Flow, Verdict, layer4::Protocol};
use periscope_proto::observer::{GetFlowsResponse, get_flows_response::ResponseTypes};
use periscope_proto::relay::{NodeState, NodeStatusEvent};
use periscope_proto::util::{flow_type_label, message_type};

use crate::time::{STAMP_MILLI, format_timestamp};

/// `-o/--output` of `observe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// One line per flow: `TIME: SRC (ID) -> DST (ID) TYPE VERDICT (SUMMARY)`.
    #[default]
    Compact,
    /// One `KEY: value` block per flow.
    Dict,
    /// Protobuf JSON of each GetFlowsResponse, one per line (proto field names).
    #[value(alias = "JSON")]
    Json,
    /// Same as json.
    Jsonpb,
    /// Aligned columns, printed when the stream ends (not with --follow).
    #[value(alias = "tab")]
    Table,
}

/// How flows are printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrintOptions {
    /// Output format.
    pub output: Output,
    /// Go layout for times, always printed in UTC.
    pub time_layout: String,
    /// Show `Flow.node_name` (`--print-node-name`).
    pub node_name: bool,
    /// Show pod, service or DNS names instead of IPs (off with `--numeric`).
    pub ip_translation: bool,
    /// Show every node status event and unknown response types (`--debug`).
    pub debug: bool,
}

impl Default for PrintOptions {
    /// The hubble CLI's defaults: compact, `Jan _2 15:04:05.000`, names on.
    fn default() -> Self {
        Self {
            output: Output::Compact,
            time_layout: STAMP_MILLI.to_owned(),
            node_name: false,
            ip_translation: true,
            debug: false,
        }
    }
}

/// Source and destination ports of a TCP, UDP or SCTP flow (empty otherwise).
fn ports(flow: &Flow) -> (String, String) {
    match flow.l4.as_ref().and_then(|l4| l4.protocol.as_ref()) {
        Some(Protocol::Tcp(p)) => (p.source_port.to_string(), p.destination_port.to_string()),
        Some(Protocol::Udp(p)) => (p.source_port.to_string(), p.destination_port.to_string()),
        Some(Protocol::Sctp(p)) => (p.source_port.to_string(), p.destination_port.to_string()),
        _ => (String::new(), String::new()),
    }
}

/// Source and destination as the CLI shows them: `ns/pod`, else `ns/service`,
/// else the DNS names joined by `,`, else the IP (only the IP without
/// `ip_translation`); `:port` appended when non-zero, IPv6 in brackets. Flows
/// without IP show the MAC addresses.
pub fn host_names(flow: &Flow, ip_translation: bool) -> (String, String) {
    let Some(ip) = &flow.ip else {
        return flow.ethernet.as_ref().map_or_else(Default::default, |eth| {
            (eth.source.clone(), eth.destination.clone())
        });
    };
    let (src_port, dst_port) = ports(flow);
    let side = |ip: &str,
                port: &str,
                endpoint: Option<&periscope_proto::flow::Endpoint>,
                service: Option<&periscope_proto::flow::Service>,
                names: &[String]| {
        let mut namespace = endpoint.map_or("", |e| e.namespace.as_str());
        let pod = endpoint.map_or("", |e| e.pod_name.as_str());
        let mut service_name = "";
        // A matched service replaces the endpoint's namespace, as upstream does.
        if let Some(service) = service {
            namespace = &service.namespace;
            service_name = &service.name;
        }
        let mut host = ip.to_owned();
        if ip_translation {
            if !pod.is_empty() {
                host = join_path(namespace, pod);
            } else if !service_name.is_empty() {
                host = join_path(namespace, service_name);
            } else if !names.is_empty() {
                host = names.join(",");
            }
        }
        if !port.is_empty() && port != "0" {
            join_host_port(&host, port)
        } else {
            host
        }
    };
    (
        side(
            &ip.source,
            &src_port,
            flow.source.as_ref(),
            flow.source_service.as_ref(),
            &flow.source_names,
        ),
        side(
            &ip.destination,
            &dst_port,
            flow.destination.as_ref(),
            flow.destination_service.as_ref(),
            &flow.destination_names,
        ),
    )
}

/// `ns/name`, or `name` alone when there is no namespace (Go's `path.Join`).
fn join_path(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}/{name}")
    }
}

/// `host:port`, `[host]:port` when the host contains a colon (IPv6).
fn join_host_port(host: &str, port: &str) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `(ID:12345)`, or the reserved identity's name: `(world)`, `(host)`...
pub fn identity_label(identity: u32) -> String {
    const RESERVED: [&str; 9] = [
        "unknown",
        "host",
        "world",
        "unmanaged",
        "health",
        "init",
        "remote-node",
        "kube-apiserver",
        "ingress",
    ];
    match RESERVED.get(identity as usize) {
        Some(name) => format!("({name})"),
        None => format!("(ID:{identity})"),
    }
}

/// The verdict name; policy-verdict events say ALLOWED / DENIED / AUDITED.
pub fn verdict_label(flow: &Flow) -> String {
    let policy = flow
        .event_type
        .as_ref()
        .is_some_and(|e| e.r#type == message_type::POLICY_VERDICT);
    match Verdict::try_from(flow.verdict) {
        Ok(Verdict::Forwarded | Verdict::Redirected) if policy => "ALLOWED".to_owned(),
        Ok(Verdict::Dropped | Verdict::Error) if policy => "DENIED".to_owned(),
        Ok(Verdict::Audit) if policy => "AUDITED".to_owned(),
        Ok(verdict) => verdict.as_str_name().to_owned(),
        Err(_) => flow.verdict.to_string(),
    }
}

/// `Flow.Summary`, plus `; Auth: <type>` when authentication was required.
pub fn summary(flow: &Flow) -> String {
    if flow.auth_type == AuthType::Disabled as i32 {
        return flow.summary.clone();
    }
    let auth = AuthType::try_from(flow.auth_type).map_or_else(
        |_| flow.auth_type.to_string(),
        |a| a.as_str_name().to_owned(),
    );
    format!("{}; Auth: {auth}", flow.summary)
}

/// The compact line of a flow, without the trailing newline:
/// `<time>[ [node]]: <src> <src-id> <arrow> <dst> <dst-id> <type> <verdict> (<summary>)`.
/// The arrow is `<>` when the direction is unknown, `->` for a request and `<-`
/// for a reply, in which case source and destination trade places.
///
/// ```
/// use periscope_cli::printer::{PrintOptions, compact_flow};
/// use periscope_proto::flow::{Flow, Ip};
///
/// let flow = Flow {
///     ip: Some(Ip { source: "10.0.0.1".into(), destination: "10.0.0.2".into(), ..Ip::default() }),
///     is_reply: Some(false),
///     summary: "UDP".into(),
///     ..Flow::default()
/// };
/// assert_eq!(
///     compact_flow(&flow, &PrintOptions::default()),
///     "N/A: 10.0.0.1 (unknown) -> 10.0.0.2 (unknown) UNKNOWN VERDICT_UNKNOWN (UDP)"
/// );
/// ```
pub fn compact_flow(flow: &Flow, opts: &PrintOptions) -> String {
    let (mut src, mut dst) = host_names(flow, opts.ip_translation);
    let identity =
        |e: Option<&periscope_proto::flow::Endpoint>| identity_label(e.map_or(0, |e| e.identity));
    let (mut src_id, mut dst_id) = (
        identity(flow.source.as_ref()),
        identity(flow.destination.as_ref()),
    );
    let arrow = match flow.is_reply {
        None => "<>",
        Some(false) => "->",
        Some(true) => {
            std::mem::swap(&mut src, &mut dst);
            std::mem::swap(&mut src_id, &mut dst_id);
            "<-"
        }
    };
    let node = if opts.node_name {
        format!(" [{}]", flow.node_name)
    } else {
        String::new()
    };
    format!(
        "{}{node}: {src} {src_id} {arrow} {dst} {dst_id} {} {} ({})",
        format_timestamp(flow.time.as_ref(), &opts.time_layout),
        flow_type_label(flow),
        verdict_label(flow),
        summary(flow),
    )
}

/// The dict block of a flow (no separator), each line ending in a newline.
pub fn dict_flow(flow: &Flow, opts: &PrintOptions) -> String {
    let (src, dst) = host_names(flow, opts.ip_translation);
    let mut text = format!(
        "  TIMESTAMP: {}\n",
        format_timestamp(flow.time.as_ref(), &opts.time_layout)
    );
    if opts.node_name {
        text.push_str(&format!("       NODE: {}\n", flow.node_name));
    }
    text.push_str(&format!(
        "     SOURCE: {src}\nDESTINATION: {dst}\n       TYPE: {}\n    VERDICT: {}\n    SUMMARY: {}\n",
        flow_type_label(flow),
        verdict_label(flow),
        summary(flow),
    ));
    text
}

/// The table cells of a flow: `TIMESTAMP, [NODE], SOURCE, DESTINATION, TYPE,
/// VERDICT, SUMMARY`.
pub fn table_row(flow: &Flow, opts: &PrintOptions) -> Vec<String> {
    let (src, dst) = host_names(flow, opts.ip_translation);
    let mut row = vec![format_timestamp(flow.time.as_ref(), &opts.time_layout)];
    if opts.node_name {
        row.push(flow.node_name.clone());
    }
    row.extend([
        src,
        dst,
        flow_type_label(flow),
        verdict_label(flow),
        summary(flow),
    ]);
    row
}

/// Aligns rows like Go's `tabwriter.NewWriter(w, 2, 0, 3, ' ', 0)`: every cell
/// but the last of a row is padded to its column's widest cell plus 3 spaces
/// (at least 2 wide); the last cell is written as is.
pub fn tabulate(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
            let width = cell.chars().count() + 3;
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(width),
                None => widths.push(width.max(2)),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count();
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

/// Joins node names, leaving out the tail past about 50 characters as
/// `(and N more)` (at least one name is always shown).
fn join_with_cut_off(names: &[String], sep: &str, target_len: usize) -> String {
    let mut len = 0;
    let mut end = names.len();
    for (i, name) in names.iter().enumerate() {
        len += name.len() + sep.len();
        if len > target_len && i > 0 {
            end = i;
            break;
        }
    }
    let joined = names[..end].join(sep);
    match names.len() - end {
        0 => joined,
        omitted => format!("{joined} (and {omitted} more)"),
    }
}

/// The one-line notice of a relay node status event (compact and table output).
pub fn node_status_line(
    response: &GetFlowsResponse,
    event: &NodeStatusEvent,
    opts: &PrintOptions,
) -> String {
    let prefix = format!(
        "{} [{}]",
        format_timestamp(response.time.as_ref(), &opts.time_layout),
        response.node_name
    );
    let count = event.node_names.len();
    let names = join_with_cut_off(&event.node_names, ", ", 50);
    match NodeState::try_from(event.state_change) {
        Ok(NodeState::NodeConnected) => {
            format!("{prefix}: Receiving flows from {count} nodes: {names}")
        }
        Ok(NodeState::NodeUnavailable) => {
            format!("{prefix}: {count} nodes are unavailable: {names}")
        }
        Ok(NodeState::NodeGone) => format!("{prefix}: {count} nodes removed from cluster: {names}"),
        Ok(NodeState::NodeError) => format!(
            "{prefix}: Error {:?} on {count} nodes: {names}",
            event.message
        ),
        _ => format!("{prefix}: unknown node status event: {event:?}"),
    }
}

/// Writes GetFlows responses in the chosen format. Flows go to `out`; node
/// status notices and debug messages go to `err`.
#[derive(Debug)]
pub struct Printer {
    opts: PrintOptions,
    /// Flows written so far (dict separators, table header).
    line: usize,
    /// Buffered table rows, written by [`Printer::finish`].
    rows: Vec<Vec<String>>,
}

impl Printer {
    /// A printer with the given options.
    pub fn new(opts: PrintOptions) -> Self {
        Self {
            opts,
            line: 0,
            rows: Vec::new(),
        }
    }

    /// The options in use.
    pub fn options(&self) -> &PrintOptions {
        &self.opts
    }

    /// Prints one response.
    pub fn write_response(
        &mut self,
        response: &GetFlowsResponse,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> io::Result<()> {
        match &response.response_types {
            Some(ResponseTypes::Flow(flow)) => self.write_flow(response, flow, out),
            Some(ResponseTypes::NodeStatus(event)) => {
                self.write_node_status(response, event, out, err)
            }
            Some(other) if self.opts.debug => {
                writeln!(err, "unknown response type: {other:?}")
            }
            _ => Ok(()),
        }
    }

    fn write_flow(
        &mut self,
        response: &GetFlowsResponse,
        flow: &Flow,
        out: &mut dyn Write,
    ) -> io::Result<()> {
        match self.opts.output {
            Output::Compact => writeln!(out, "{}", compact_flow(flow, &self.opts))?,
            Output::Dict => {
                if self.line != 0 {
                    writeln!(out, "------------")?;
                }
                out.write_all(dict_flow(flow, &self.opts).as_bytes())?;
            }
            Output::Json | Output::Jsonpb => write_json(response, out)?,
            Output::Table => {
                if self.rows.is_empty() {
                    let mut header = vec!["TIMESTAMP".to_owned()];
                    if self.opts.node_name {
                        header.push("NODE".to_owned());
                    }
                    header.extend(
                        ["SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"].map(str::to_owned),
                    );
                    self.rows.push(header);
                }
                self.rows.push(table_row(flow, &self.opts));
            }
        }
        self.line += 1;
        Ok(())
    }

    fn write_node_status(
        &mut self,
        response: &GetFlowsResponse,
        event: &NodeStatusEvent,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> io::Result<()> {
        let important = matches!(
            NodeState::try_from(event.state_change),
            Ok(NodeState::NodeError | NodeState::NodeUnavailable)
        );
        if !important && !self.opts.debug {
            return Ok(());
        }
        match self.opts.output {
            Output::Json | Output::Jsonpb => write_json(response, err),
            Output::Dict => {
                // Keep flows and notices visibly apart when both streams interleave.
                if self.line != 0 {
                    writeln!(out, "------------")?;
                } else {
                    self.line += 1;
                }
                let names = join_with_cut_off(&event.node_names, ", ", 50);
                let message = if event.message.is_empty() {
                    "N/A".to_owned()
                } else {
                    format!("{:?}", event.message)
                };
                let state = NodeState::try_from(event.state_change).map_or_else(
                    |_| event.state_change.to_string(),
                    |s| s.as_str_name().to_owned(),
                );
                write!(
                    err,
                    "  TIMESTAMP: {}\n      STATE: {state}\n      NODES: {names}\n    MESSAGE: {message}\n",
                    format_timestamp(response.time.as_ref(), &self.opts.time_layout),
                )
            }
            Output::Compact | Output::Table => {
                writeln!(err, "{}", node_status_line(response, event, &self.opts))
            }
        }
    }

    /// Writes what is still buffered (the table). Call once at the end.
    pub fn finish(&mut self, out: &mut dyn Write) -> io::Result<()> {
        if !self.rows.is_empty() {
            out.write_all(tabulate(&self.rows).as_bytes())?;
            self.rows.clear();
        }
        out.flush()
    }
}

fn write_json(response: &GetFlowsResponse, out: &mut dyn Write) -> io::Result<()> {
    let text = serde_json::to_string(response).map_err(io::Error::other)?;
    writeln!(out, "{text}")
}
