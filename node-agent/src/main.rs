//! `periscope-agent`: the Periscope node agent.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use periscope_agent::agent::{BuildConfig, Enforcement, LabelFilter, Remote, State, fingerprint};
use periscope_agent::datapath::{Datapath, boottime_ns};
use periscope_agent::etcd;
use periscope_agent::events::{self, AgentEventRing};
use periscope_agent::local_pods::{self, LocalPods};
use periscope_agent::monitor::{RawEvent, Readers};
use periscope_agent::observer::{ObserverService, PeerService};
use periscope_agent::pipeline::{self, Outputs};
use periscope_agent::policy::{Mode, PolicySet};
use periscope_agent::policy_export::PolicyService;
use periscope_agent::ring::Ring;
use periscope_agent::sources::SharedView;
use periscope_agent::status;
use periscope_datapath_common::{DatapathConfig, aggregation};
use periscope_logging::clickhouse::{Shipper, ShipperConfig};
use periscope_proto::observer::observer_server::ObserverServer;
use periscope_proto::peer::peer_server::PeerServer;
use periscope_proto::periscope::policy::policies_server::PoliciesServer;
use periscope_topology::Topology;
use tokio::sync::{RwLock, mpsc};

/// Periscope node agent: loads the eBPF datapath on the pods of one node, enforces
/// CiliumNetworkPolicies by security identity, and prints (later: serves) the flows it sees.
///
/// The node's pods come from a topology file (--topology), or, without one, from the Kubernetes
/// API (--k8s-api-server, e.g. `in-cluster` in a DaemonSet): the pods whose spec.nodeName is
/// --node, each attached at the host interface its CNI routes the pod's IP to.
///
/// The datapath keeps enforcing while the agent is stopped: programs and maps are pinned under
/// --bpffs-root and taken over again at the next start.
///
/// Settings come from flags, environment variables and --config, in this order of precedence:
/// a flag overrides its environment variable, which overrides the file, which overrides the
/// default (the relay follows the same rule).
#[derive(Debug, Parser)]
#[command(name = "periscope-agent", version, about, long_about)]
struct Args {
    /// YAML file with the same settings as the flags, keyed by the flag's name in snake_case
    /// (`node: n1`, `bpffs_root: /sys/fs/bpf/periscope/n1`, `etcd_endpoints: [http://a:2379]`,
    /// `audit: true`, `dns_visibility: false`; `--endpoint-mode` is `endpoint_modes`, `--labels`
    /// is `label_patterns`). Each setting is documented with its flag below. A key that is not
    /// a setting is an error naming it. Flags and environment variables override the file.
    #[arg(long, env = "PERISCOPE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Topology file (YAML): nodes and pods with namespaces, labels and IPs; the pods of --node
    /// are this agent's endpoints. Optional with --k8s-api-server: without it the endpoints are
    /// the Kubernetes pods of --node that are not on the host network and have an IP, each
    /// attached at the device of the host route to its IP (the per-pod route CNIs such as
    /// Calico and Cilium install: `10.0.1.5 dev cali1234`; looked up over netlink in --netns).
    /// A pod without such a route (CNI not done yet, only a subnet/default route, a gateway, a
    /// device that is not a veth) is not attached: it is logged and listed in status.json under
    /// unattached_pods, and looked for again on every change and every 5 s. Until the API has
    /// been listed once the datapath stays as it is (pinned endpoints keep enforcing).
    #[arg(long, env = "PERISCOPE_TOPOLOGY")]
    topology: Option<PathBuf>,
    /// Name of this node: the topology's node whose pods are this agent's endpoints, or,
    /// without a topology, the Kubernetes node (the pods' spec.nodeName; in a DaemonSet set
    /// PERISCOPE_NODE from the downward API's spec.nodeName).
    #[arg(long, env = "PERISCOPE_NODE")]
    node: String,
    /// Cluster name, without a topology file (a topology names its cluster): the
    /// io.cilium.k8s.policy.cluster label of every identity, and the cluster of
    /// GetNamespaces. Default: default.
    #[arg(long, env = "PERISCOPE_CLUSTER_NAME", value_name = "NAME")]
    cluster_name: Option<String>,
    /// Policy file or directory of *.yaml files (CiliumNetworkPolicy /
    /// CiliumClusterwideNetworkPolicy). Reloaded when it changes; a bad file is rejected with
    /// an error and the policies in force stay.
    #[arg(long, env = "PERISCOPE_POLICY")]
    policy: Option<PathBuf>,
    /// Network namespace (path such as /run/netns/<name>) holding the node's pods' host-side
    /// interfaces. The agent attaches there (and, without a topology, reads the routes to the
    /// pods there); its API and its connections stay in its own namespace. Default: the agent's
    /// own (a DaemonSet pod with hostNetwork).
    #[arg(long)]
    netns: Option<PathBuf>,
    /// bpffs directory for this node's pinned maps and programs.
    #[arg(long, default_value = "/sys/fs/bpf/periscope/default")]
    bpffs_root: PathBuf,
    /// Directory for the agent's status file (status.json).
    #[arg(long, default_value = "/run/periscope/default")]
    state_dir: PathBuf,
    /// Policy enforcement mode: default (deny once a policy selects the endpoint), always, never.
    #[arg(long, default_value = "default", value_parser = parse_mode)]
    enforcement: Mode,
    /// Audit mode: would-be drops are forwarded and reported with verdict AUDIT.
    #[arg(long)]
    audit: bool,
    /// Per-endpoint override, repeatable: <namespace>/<pod>=<default|always|never>[,audit|,noaudit].
    #[arg(long = "endpoint-mode", value_parser = Enforcement::parse_override)]
    endpoint_modes: Vec<(String, periscope_agent::agent::EndpointMode)>,
    /// etcd endpoints (comma-separated URLs, e.g. http://127.0.0.1:2379): watch endpoints and
    /// identities written in Cilium's kvstore layout under --etcd-prefix. During an etcd outage
    /// the last state stays in force; the agent reconnects with backoff and jitter.
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Key prefix of the kvstore layout.
    #[arg(long, default_value = "cilium/state")]
    etcd_prefix: String,
    /// Kubernetes API server URL (e.g. https://10.96.0.1:443 or http://127.0.0.1:8001), or
    /// `in-cluster` (KUBERNETES_SERVICE_HOST/PORT with the pod's service account token and CA):
    /// watch Pods, Namespaces, Services, EndpointSlices, NetworkPolicies and
    /// Cilium(Clusterwide)NetworkPolicies. Pods of other nodes are remote endpoints; without
    /// --topology this node's pods are the endpoints (see --topology). During an outage the
    /// last state stays in force.
    #[arg(long, env = "PERISCOPE_K8S_API_SERVER", value_name = "URL|in-cluster")]
    k8s_api_server: Option<String>,
    /// Bearer token file for the API server (re-read as it rotates). Default with in-cluster:
    /// the service account's token.
    #[arg(long)]
    k8s_token_file: Option<PathBuf>,
    /// CA bundle for an https API server. Default with in-cluster: the service account's CA.
    #[arg(long)]
    k8s_ca_file: Option<PathBuf>,
    /// Cluster id (0-255): the high bits of this cluster's security identities, so identities of
    /// different clusters never collide.
    #[arg(long, default_value_t = 0)]
    cluster_id: u8,
    /// Security-relevant label keys (Cilium's --labels), repeatable: `[!][source:]key-prefix`.
    /// Default: every label. Namespace and cluster labels always count.
    #[arg(long = "labels", value_name = "PATTERN")]
    label_patterns: Vec<String>,
    /// Monitor aggregation: none (every packet), medium (new connections, new TCP flags, periodic
    /// report), maximum (new connections and close only, periodic report). Drops are never
    /// aggregated.
    #[arg(long, default_value = "medium", value_parser = parse_aggregation)]
    monitor_aggregation: u8,
    /// Interval of the per-connection report under aggregation, seconds.
    #[arg(long, default_value_t = 5)]
    monitor_aggregation_interval: u64,
    /// Pages per CPU of the perf ring (power of two).
    #[arg(long, default_value_t = 64)]
    perf_ring_pages: usize,
    /// How flows are printed on stdout: compact (Hubble's line format) or none.
    #[arg(long, default_value = "compact")]
    output: String,
    /// Also append every flow to this file as length-delimited protobuf `flow.Flow` messages
    /// (a machine-readable record for tests and tools until the gRPC API serves them).
    #[arg(long)]
    flow_log: Option<PathBuf>,
    /// Address of the Hubble-compatible gRPC API (Observer, Peer, health; also Periscope's
    /// periscope.policy.Policies: the policies in force, for the web UI). Without this flag
    /// the agent takes 0.0.0.0:4244, or the next free port above it (skipping the relay's 4245)
    /// when another agent on the same host has it.
    #[arg(long)]
    listen: Option<String>,
    /// Address other components should use to reach this agent (Peer service, GetNodes);
    /// default: the listen address.
    #[arg(long)]
    advertise: Option<String>,
    /// TLS certificate chain (PEM) of the gRPC API; with --tls-key the API is served with TLS
    /// only. Without the TLS flags it is plain text (h2c), with a warning. The files are
    /// reloaded when they change (new connections get the new certificate).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// CA bundle (PEM) for client certificates: clients (the relay) must present a certificate
    /// signed by one of these CAs (mutual TLS); others are rejected at the handshake.
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// Server name clients should verify in this agent's certificate, announced by GetNodes and
    /// the Peer service when TLS is on.
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
    /// Address of the Prometheus metrics endpoint (/metrics). Without this flag: 0.0.0.0:9965,
    /// or the next free port above it when another agent on the host has it.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Flows kept in the ring buffer for GetFlows (2^n - 1).
    #[arg(long, default_value_t = 4095)]
    ring_capacity: usize,
    /// Agent events (policy, endpoint and ipcache changes, agent start) kept for
    /// GetAgentEvents; the oldest are dropped first.
    #[arg(long, default_value_t = 4096)]
    agent_events_capacity: usize,
    /// Name flows from observed DNS answers (the datapath captures UDP/53 packets; the agent
    /// parses them, fills the DNS L7 record of DNS flows and source_names/destination_names of
    /// later flows). `--dns-visibility=false` turns the enrichment off.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    dns_visibility: bool,
    /// Seconds a name learned from a DNS answer stays attached to its address at least, even
    /// when the answer's TTL is shorter (connections outlive lookups; like Cilium's
    /// --tofqdns-min-ttl).
    #[arg(long, default_value_t = 3600)]
    dns_min_ttl: u64,
    /// Most addresses the DNS name cache holds (the entries that expire first are evicted).
    #[arg(long, default_value_t = 65536)]
    dns_max_ips: usize,
    /// Export flows to this file as JSON lines (one observer.ExportEvent per line, Hubble's
    /// field names), rotated by size.
    #[arg(long)]
    export_file: Option<PathBuf>,
    /// Rotate the export file at this size, MiB.
    #[arg(long, default_value_t = 10)]
    export_file_max_size_mb: u64,
    /// Rotated export files kept (file.1 … file.N).
    #[arg(long, default_value_t = 5)]
    export_file_max_backups: u32,
    /// Export only flows matching this FlowFilter (JSON, e.g. '{"verdict":["DROPPED"]}'),
    /// repeatable (any matches).
    #[arg(long)]
    export_allowlist: Vec<String>,
    /// Do not export flows matching this FlowFilter (JSON), repeatable.
    #[arg(long)]
    export_denylist: Vec<String>,
    /// Service load balancing: how a new connection to a service picks its backend. maglev:
    /// Maglev consistent hashing of the connection's source address and ports (Cilium's
    /// default; every node picks the same backend, and a backend change moves few
    /// connections); random: at random among the active backends, in proportion to their
    /// weights. Either way connection tracking keeps a connection on its backend.
    #[arg(long, default_value = "maglev")]
    lb_algorithm: periscope_agent::lb::Algorithm,
    /// How long the metadata sources (etcd, Kubernetes) wait, at random, before their first
    /// connection: `auto` (20 ms per node of the topology, at most 60 s: a thousand agents
    /// restarting together reach etcd at about 50 a second; without a topology 5 s) or a window
    /// such as 10s, 500ms, 2m (0: none). Enforcement never waits: the pinned datapath and the
    /// topology's endpoints apply at once.
    #[arg(long, default_value = "auto")]
    startup_jitter: periscope_agent::sources::StartupJitter,
    /// Node devices (interface names, comma-separated or repeated) on whose ingress clients
    /// outside the node reach services: node ports on the node's addresses, external IPs and
    /// cluster IPs are translated to a backend there, and the backend's replies translated back
    /// (Cilium's `devices`). Typically the node's uplink, e.g. eth0. Default: none (services are
    /// translated for the node's pods only).
    #[arg(long, value_delimiter = ',')]
    nodeport_devices: Vec<String>,
    /// Maglev lookup table size of every service frontend: a prime such as 251, 1021, 4093,
    /// 16381 (Cilium's default), 65521 or 131071. It should exceed 100 × the largest backend
    /// count; memory is 4 bytes per entry per frontend.
    #[arg(long, default_value_t = 16381, value_parser = periscope_agent::lb::parse_table_size)]
    lb_maglev_table_size: u32,
    /// Log filter (tracing env-filter syntax), e.g. info, periscope_agent=debug. Changeable
    /// while the agent runs, on the metrics endpoint (--metrics-listen): `GET /log-level` shows
    /// it, `PUT /log-level` with a filter as the body sets it (a bad filter is answered 400 and
    /// the filter stays), e.g. `curl -X PUT --data debug http://127.0.0.1:9965/log-level`.
    #[arg(
        long,
        env = "PERISCOPE_LOG",
        default_value = "info",
        help_heading = "Logging"
    )]
    log: String,
    /// Log format on stderr: text, or json (one object per line: timestamp, level, target,
    /// message, fields).
    #[arg(
        long,
        env = "PERISCOPE_LOG_FORMAT",
        default_value = "text",
        value_name = "text|json",
        help_heading = "Logging"
    )]
    log_format: periscope_logging::LogFormat,
    /// Store the agent's log events of --log-clickhouse-level and above in the `logs` table of
    /// this ClickHouse (HTTP URL, e.g. http://clickhouse:8123), with component `agent`, the
    /// node and the cluster. The relay's migrations create the table; until it exists events
    /// wait (and, beyond 10000, are dropped and counted). Logging never waits for ClickHouse.
    #[arg(
        long,
        env = "PERISCOPE_LOG_CLICKHOUSE_URL",
        value_name = "URL",
        help_heading = "Logging"
    )]
    log_clickhouse_url: Option<String>,
    /// Database of the `logs` table.
    #[arg(
        long,
        default_value = "periscope",
        value_name = "NAME",
        help_heading = "Logging"
    )]
    log_clickhouse_database: String,
    /// ClickHouse user.
    #[arg(
        long,
        default_value = "default",
        value_name = "USER",
        help_heading = "Logging"
    )]
    log_clickhouse_user: String,
    /// File holding the ClickHouse user's password (one trailing newline is ignored).
    #[arg(long, value_name = "FILE", help_heading = "Logging")]
    log_clickhouse_password_file: Option<PathBuf>,
    /// Least severe level stored in ClickHouse: error, warn, info, debug or trace (events the
    /// log filter drops are never stored).
    #[arg(long, default_value = "warn", value_name = "LEVEL", value_parser = periscope_logging::parse_level,
        help_heading = "Logging")]
    log_clickhouse_level: tracing::Level,
}

/// How often an agent without a topology looks at the routes to its pods again.
const ENDPOINT_RESYNC: Duration = Duration::from_secs(5);

/// Logs how this node's pods moved between attached and not attached: a warning once when a
/// pod cannot be attached, an info line when it is attached or goes away.
fn log_placement(old: &LocalPods, new: &LocalPods) {
    for (name, u) in &new.unattached {
        if !old.unattached.contains_key(name) {
            let ips: Vec<String> = u.ips.iter().map(|ip| ip.to_string()).collect();
            tracing::warn!(pod = %name, ips = %ips.join(","), reason = %u.reason,
                "pod of this node not attached; looking again on every change and every 5 s");
        }
    }
    for (key, p) in &new.attached {
        if old.attached.get(key).map(|o| &o.interface) != Some(&p.interface) {
            tracing::info!(pod = %key, interface = p.interface.as_deref().unwrap_or_default(),
                "pod of this node attached");
        }
    }
    for key in old.attached.keys() {
        if !new.attached.contains_key(key) && !new.unattached.contains_key(key) {
            tracing::info!(pod = %key, "pod of this node gone; detaching");
        }
    }
}

/// Logs the named-port warnings of `new` that `old` did not have: once while each holds.
fn warn_named_ports(old: &State, new: &State) {
    for w in new.named_port_warnings.difference(&old.named_port_warnings) {
        tracing::warn!(warning = %w, "named port not defined by any endpoint");
    }
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

fn parse_aggregation(s: &str) -> Result<u8, String> {
    match s {
        "none" => Ok(aggregation::NONE),
        "medium" => Ok(aggregation::MEDIUM),
        "maximum" => Ok(aggregation::MAXIMUM),
        other => Err(format!("{other:?} is not none, medium or maximum")),
    }
}

/// Flows are many small allocations made and freed at a high rate; mimalloc's per-thread free
/// lists handle that at a fraction of glibc malloc's cost (measured with `cargo xtask bench
/// agent`: glibc's consolidation and free paths were a third of the agent's CPU at 10k events/s).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Settings that are not file keys.
const NOT_IN_FILE: [&str; 3] = ["config", "help", "version"];

/// The arguments: `argv` and the environment over the --config file (see `Args`): every file
/// key whose flag was given neither on the command line nor by its environment variable becomes
/// that flag, appended to `argv`, so the file's values go through the flags' parsers.
fn load_args(argv: Vec<std::ffi::OsString>) -> Result<Args> {
    use clap::{CommandFactory, FromArgMatches, parser::ValueSource};
    // Everything optional for a first look: where each value came from, and --config.
    let plain = |argv: &[std::ffi::OsString]| {
        Args::from_arg_matches(&Args::command().get_matches_from(argv)).map_err(|e| e.exit())
    };
    let first = match Args::command()
        .mut_args(|a| a.required(false))
        .try_get_matches_from(&argv)
    {
        Ok(m) => m,
        // --help, --version and bad flags: answered as without a file.
        Err(_) => return plain(&argv),
    };
    let Some(path) = first.get_one::<PathBuf>("config") else {
        return plain(&argv);
    };
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("--config {shown}"))?;
    let file: serde_yaml::Mapping = if text.trim().is_empty() {
        Default::default()
    } else {
        serde_yaml::from_str(&text).with_context(|| format!("--config {shown}"))?
    };
    let command = Args::command();
    let mut merged = argv;
    for (key, value) in file {
        let key = key
            .as_str()
            .with_context(|| format!("--config {shown}: a key is not a string: {key:?}"))?
            .to_owned();
        let arg = command
            .get_arguments()
            .find(|a| a.get_id().as_str() == key && !NOT_IN_FILE.contains(&key.as_str()))
            .with_context(|| {
                format!(
                    "--config {shown}: unknown field `{key}` (the keys are the flags' names in \
                     snake_case; see periscope-agent --help)"
                )
            })?;
        if matches!(
            first.value_source(&key),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let flag = format!("--{}", arg.get_long().unwrap_or(&key));
        let scalar = |v: &serde_yaml::Value| -> Result<String> {
            Ok(match v {
                serde_yaml::Value::String(s) => s.clone(),
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::Bool(b) => b.to_string(),
                other => bail!("--config {shown}: `{key}`: expected a value, got {other:?}"),
            })
        };
        let takes_value = arg.get_action().takes_values();
        match value {
            serde_yaml::Value::Null => {}
            serde_yaml::Value::Sequence(items) => {
                for item in &items {
                    merged.push(format!("{flag}={}", scalar(item)?).into());
                }
            }
            serde_yaml::Value::Bool(b) if !takes_value => {
                if b {
                    merged.push(flag.into());
                }
            }
            v => merged.push(format!("{flag}={}", scalar(&v)?).into()),
        }
    }
    match Args::command().try_get_matches_from(&merged) {
        Ok(m) => Ok(Args::from_arg_matches(&m)?),
        Err(e)
            if e.kind() == clap::error::ErrorKind::DisplayHelp
                || e.kind() == clap::error::ErrorKind::DisplayVersion =>
        {
            e.exit()
        }
        Err(e) => Err(anyhow::anyhow!(
            "{} (flags and --config {shown} together)",
            e.render().to_string().trim_end()
        )),
    }
}

fn main() -> Result<()> {
    let args = load_args(std::env::args_os().collect())?;
    if args.topology.is_none() && args.k8s_api_server.is_none() {
        bail!(
            "no endpoints: give --topology FILE, or --k8s-api-server URL|in-cluster to take this \
             node's pods (--node, env PERISCOPE_NODE) from the Kubernetes API"
        );
    }
    if let Some(url) = &args.log_clickhouse_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        bail!("--log-clickhouse-url {url:?}: expected an http:// or https:// URL");
    }
    let (log, ship) = periscope_logging::init(&periscope_logging::LogOptions {
        filter: args.log.clone(),
        format: args.log_format,
        ship: args
            .log_clickhouse_url
            .as_ref()
            .map(|_| periscope_logging::ShipOptions {
                min_level: args.log_clickhouse_level,
                ..Default::default()
            }),
    })
    .context("--log")?;
    if !matches!(args.output.as_str(), "compact" | "none") {
        bail!("--output {:?}: expected compact or none", args.output);
    }
    // TLS files are checked before anything else is done (a bad path names the flag and file).
    let tls = periscope_tls::ServerTlsFiles::from_options(
        args.tls_cert.clone(),
        args.tls_key.clone(),
        args.tls_client_ca.clone(),
    )?
    .map(periscope_tls::ReloadingServerConfig::new)
    .transpose()?
    .map(Arc::new);
    // The listeners are bound before the runtime starts.
    let listener = bind_free(args.listen.as_deref(), AGENT_PORT, "--listen")?;
    let metrics_listener = bind_free(
        args.metrics_listen.as_deref(),
        METRICS_PORT,
        "--metrics-listen",
    )?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args, listener, metrics_listener, tls, log, ship))
}

/// Port of the agent API; the relay's 4245 is skipped when looking for a free one.
const AGENT_PORT: u16 = 4244;
const RELAY_PORT: u16 = 4245;
/// Port of the metrics endpoint.
const METRICS_PORT: u16 = 9965;
/// Port of the relay's UI.
const UI_PORT: u16 = 12000;

/// Binds `explicit`, or the first free port from `default_port` on (skipping the relay's and the
/// UI's ports) on all addresses.
fn bind_free(
    explicit: Option<&str>,
    default_port: u16,
    flag: &str,
) -> Result<std::net::TcpListener> {
    if let Some(addr) = explicit {
        return std::net::TcpListener::bind(addr).with_context(|| format!("{flag} {addr}"));
    }
    let mut last = None;
    for port in default_port..default_port + 64 {
        if port == RELAY_PORT || port == UI_PORT {
            continue;
        }
        match std::net::TcpListener::bind(("0.0.0.0", port)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    bail!("{flag}: no free port from {default_port}: {last:?}")
}

async fn run(
    args: Args,
    listener: std::net::TcpListener,
    metrics_listener: std::net::TcpListener,
    tls: Option<Arc<periscope_tls::ReloadingServerConfig>>,
    log: periscope_logging::LogHandle,
    ship: Option<periscope_logging::ShipQueue>,
) -> Result<()> {
    // Without a topology file the node's pods come from the Kubernetes API: the topology is
    // then this node alone, and every build adds the pods found at their interfaces.
    let k8s_endpoints = args.topology.is_none();
    let topology = match &args.topology {
        Some(path) => {
            let topology = Topology::load(path)?;
            if !topology.nodes.iter().any(|n| n.name == args.node) {
                bail!("--node {:?}: not a node of {}", args.node, path.display());
            }
            if args.cluster_name.is_some() {
                bail!(
                    "--cluster-name: the topology file {} names the cluster (`cluster:`)",
                    path.display()
                );
            }
            topology
        }
        None => Topology {
            cluster: args
                .cluster_name
                .clone()
                .unwrap_or_else(|| "default".into()),
            nodes: vec![periscope_topology::Node {
                name: args.node.clone(),
                address: None,
                ips: vec![],
            }],
            pods: vec![],
            services: vec![],
        },
    };
    // The agent's warnings and errors into ClickHouse's `logs` (--log-clickhouse-url).
    let shipper = match (ship, &args.log_clickhouse_url) {
        (Some(queue), Some(url)) => {
            let mut client = clickhouse::Client::default()
                .with_url(url)
                .with_user(&args.log_clickhouse_user);
            if let Some(path) = &args.log_clickhouse_password_file {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("--log-clickhouse-password-file {}", path.display())
                })?;
                client = client.with_password(text.strip_suffix('\n').unwrap_or(&text));
            }
            tracing::info!(url = %url, database = %args.log_clickhouse_database,
                min_level = %args.log_clickhouse_level, "storing log events in ClickHouse");
            Some(Shipper::start(
                queue,
                ShipperConfig::new(
                    client,
                    args.log_clickhouse_database.clone(),
                    "agent",
                    args.node.clone(),
                    topology.cluster.clone(),
                ),
            ))
        }
        _ => None,
    };
    // The namespace whose routes place the pods (without a topology).
    let route_netns = match (&args.netns, k8s_endpoints) {
        (Some(p), true) => Some(
            std::fs::File::open(p)
                .with_context(|| format!("--netns {}: open network namespace", p.display()))?,
        ),
        _ => None,
    };
    let policies = match &args.policy {
        Some(p) => PolicySet::load(p)?,
        None => PolicySet::default(),
    };
    for w in &policies.warnings {
        tracing::warn!(warning = %w, "unsupported policy feature");
    }
    let build = BuildConfig {
        enforcement: Enforcement {
            mode: args.enforcement,
            audit: args.audit,
            endpoints: args.endpoint_modes.iter().cloned().collect(),
        },
        cluster_id: args.cluster_id,
        labels: LabelFilter::parse(&args.label_patterns).map_err(anyhow::Error::msg)?,
    };

    let mut dp = Datapath::open(&args.bpffs_root)?;
    if let Some(ns) = &args.netns {
        dp.set_netns(ns)?;
    }
    let mut lb = periscope_agent::lb::Lb::open(
        &args.bpffs_root,
        periscope_agent::lb::LbConfig {
            algorithm: args.lb_algorithm,
            maglev_table_size: args.lb_maglev_table_size,
        },
    )?;
    let cfg = DatapathConfig {
        aggregation: args.monitor_aggregation,
        report_interval_ns: args.monitor_aggregation_interval.max(1) * 1_000_000_000,
        ..DatapathConfig::default()
    };
    dp.set_config(&cfg)?;
    dp.sync_devices(&args.nodeport_devices)?;
    // Metadata sources.
    let etcd_view = SharedView::default();
    let etcd_ids: etcd::SharedIdentities = Default::default();
    let jitter = if k8s_endpoints {
        args.startup_jitter.delay_unknown_fleet()
    } else {
        args.startup_jitter.delay(topology.nodes.len())
    };
    if !args.etcd_endpoints.is_empty() {
        let source = etcd::run(
            etcd::EtcdConfig {
                endpoints: args.etcd_endpoints.clone(),
                prefix: args.etcd_prefix.clone(),
                timeout: Duration::from_secs(3),
            },
            etcd_view.clone(),
            etcd_ids.clone(),
        );
        tokio::spawn(async move {
            tokio::time::sleep(jitter).await;
            source.await
        });
    }
    let k8s_view = SharedView::default();
    if let Some(url) = &args.k8s_api_server {
        let mut cfg = periscope_agent::k8s::K8sConfig::new(url.clone());
        cfg.token_file = args.k8s_token_file.clone();
        cfg.ca_file = args.k8s_ca_file.clone();
        cfg.node = Some(args.node.clone());
        periscope_agent::k8s::client(&cfg)
            .map_err(anyhow::Error::msg)
            .context("--k8s-api-server")?;
        let source = periscope_agent::k8s::run(cfg, k8s_view.clone());
        tokio::spawn(async move {
            tokio::time::sleep(jitter).await;
            source.await
        });
    }
    // The endpoints of the sources, less the Kubernetes pods attached here.
    let remote = |here: &LocalPods| {
        let k = k8s_view.snapshot();
        Remote {
            pods: etcd_view
                .snapshot()
                .pods
                .into_values()
                .chain(
                    k.pods
                        .into_iter()
                        .filter(|(key, _)| !here.attached.contains_key(key))
                        .map(|(_, p)| p),
                )
                .collect(),
            identities: etcd_ids.lock().expect("identities").clone(),
            services: k.services,
            // Services of the kvstore (Cilium's services/v1), then the API server's.
            service_details: {
                let mut d = etcd_view.snapshot().service_details;
                d.extend(k.service_details);
                d
            },
        }
    };
    // Policies of the files plus those of the Kubernetes API.
    let with_api_policies = |files: &PolicySet| -> std::result::Result<
        PolicySet,
        periscope_agent::policy::PolicyError,
    > {
        let k = k8s_view.snapshot();
        if k.policies.is_empty() {
            return Ok(files.clone());
        }
        let mut all = files.clone();
        all.add_documents(k.policies.iter().map(|(key, v)| (key.as_str(), v)))?;
        Ok(all)
    };
    // This node's pods from the Kubernetes source, placed at their interfaces (none with a
    // topology file); a new placement is looked for every ENDPOINT_RESYNC too.
    let place_local = |pods: &std::collections::BTreeMap<String, periscope_topology::Pod>| {
        match local_pods::read_route_table(route_netns.as_ref()) {
            Ok(table) => Some(local_pods::place(&args.node, pods, &table)),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the routes to this node's pods; the endpoints stay as they are");
                None
            }
        }
    };
    let mut here = LocalPods::default();
    let mut discovered_at = std::time::Instant::now();
    let started = events::now();
    let (mut state, specs) = State::build(
        &args.node,
        &topology,
        &remote(&here),
        policies.clone(),
        &build,
    );
    let mut last_good = (topology, policies);
    // Whether the datapath has been given a state by this run (without a topology: not before
    // the Kubernetes source has listed everything once, so a restart does not detach the
    // pinned endpoints in the meantime).
    let mut synced_once = !k8s_endpoints;
    // Whether the last state could not be applied (an interface gone meanwhile): the next look
    // at the routes applies again even when it finds the same placement.
    let mut apply_failed = false;
    if synced_once {
        dp.sync_ipcache(&state.ipcache)?;
        let ids = dp.sync_endpoints(&specs)?;
        state.set_endpoint_ids(&ids);
        lb.sync(&state.lb_services)?;
        state.lb_frontends = lb.views().clone();
        state.revision = 1;
    } else {
        tracing::info!(node = %args.node, "no topology file: this node's endpoints come from the Kubernetes API; the datapath stays as it is until the API has been listed");
    }
    // Agent events: what the agent started with, then the start itself (Cilium's order).
    let agent_events = AgentEventRing::new(args.agent_events_capacity);
    warn_named_ports(&State::default(), &state);
    agent_events.push(events::diff(&State::default(), &state));
    agent_events.push([events::agent_started(started)]);
    let mut progress = status::Progress {
        revision: state.revision,
        ..Default::default()
    };
    tracing::info!(node = %args.node, endpoints = state.endpoints.len(), policies = state.policies.policies.len(),
        version = dp.version(), "datapath ready");

    let (tx, rx) = mpsc::channel::<Vec<RawEvent>>(1024);
    let readers = Readers::start(
        dp.take_events().context("perf event array")?,
        args.perf_ring_pages,
        tx,
    )?;
    let state = Arc::new(RwLock::new(state));
    let ring = Ring::new(args.ring_capacity).context("--ring-capacity")?;

    // The gRPC API.
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let local = listener.local_addr()?;
    let advertise = args.advertise.clone().unwrap_or_else(|| local.to_string());
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_service_status(
            "hubble.server.Observer",
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let tls_name = tls
        .as_ref()
        .map(|_| args.tls_server_name.clone().unwrap_or_default());
    let observer = ObserverService::new(
        ring.clone(),
        agent_events.clone(),
        state.clone(),
        advertise.clone(),
    )
    .with_tls(tls_name.clone());
    let peer = PeerService::new(state.clone(), advertise.clone()).with_tls(tls_name);
    let router = tonic::transport::Server::builder()
        .add_service(health_svc)
        .add_service(ObserverServer::new(observer))
        .add_service(PeerServer::new(peer))
        .add_service(PoliciesServer::new(PolicyService::new(state.clone())));
    match tls {
        None => {
            tracing::warn!(address = %local, "serving the Observer API in plain text (no --tls-cert/--tls-key)");
            tokio::spawn(async move {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                if let Err(e) = router.serve_with_incoming(incoming).await {
                    tracing::error!(error = %e, "gRPC server stopped");
                }
            });
        }
        Some(tls) => {
            tracing::info!(address = %local, mutual = args.tls_client_ca.is_some(), "serving the Observer API with TLS");
            tokio::spawn(async move {
                let incoming = periscope_tls::tls_incoming(listener, tls);
                if let Err(e) = router.serve_with_incoming(incoming).await {
                    tracing::error!(error = %e, "gRPC server stopped");
                }
            });
        }
    }
    tracing::info!(address = %local, "serving the Observer API");
    progress.api_address = Some(local.to_string());

    let metrics = periscope_agent::metrics::Metrics::default();
    metrics_listener.set_nonblocking(true)?;
    let metrics_local = metrics_listener.local_addr()?;
    tokio::spawn(metrics.clone().serve(
        tokio::net::TcpListener::from_std(metrics_listener)?,
        Some(log),
    ));
    progress.metrics_address = Some(metrics_local.to_string());
    let exporter = match &args.export_file {
        None => None,
        Some(path) => Some(periscope_agent::export::Exporter::new(
            periscope_agent::export::ExportConfig {
                path: path.clone(),
                max_bytes: args.export_file_max_size_mb.max(1) << 20,
                max_backups: args.export_file_max_backups,
                allow: periscope_agent::export::parse_filters(
                    "--export-allowlist",
                    &args.export_allowlist,
                )?,
                deny: periscope_agent::export::parse_filters(
                    "--export-denylist",
                    &args.export_denylist,
                )?,
            },
        )?),
    };
    let outputs = Outputs {
        exporter,
        metrics,
        compact: args.output == "compact",
        flow_log: match &args.flow_log {
            Some(p) => Some(
                Outputs::open_flow_log(p).with_context(|| format!("--flow-log {}", p.display()))?,
            ),
            None => None,
        },
        dns: args.dns_visibility.then(|| {
            periscope_agent::dns::DnsEnricher::new(periscope_agent::dns::DnsConfig {
                min_ttl: Duration::from_secs(args.dns_min_ttl),
                max_ips: args.dns_max_ips.max(1),
            })
        }),
    };
    status::write(&args.state_dir, &*state.read().await, &progress, None)?;
    let printer = tokio::spawn(pipeline::run(rx, state.clone(), ring.clone(), outputs));
    let mut queue_lost_seen = 0u64;

    // Reload loop: policies and topology are re-read when their files change.
    let mut inputs: Vec<PathBuf> = args.topology.iter().cloned().collect();
    inputs.extend(args.policy.clone());
    let mut seen = fingerprint(&inputs.iter().map(|p| p.as_path()).collect::<Vec<_>>());
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut gc_at = std::time::Instant::now();
    let mut status_at = std::time::Instant::now();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        let force = tokio::select! {
            _ = tick.tick() => false,
            _ = sighup.recv() => true,
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = etcd_view.changed() => true,
            _ = k8s_view.changed() => true,
        };
        if status_at.elapsed() >= Duration::from_secs(1) {
            let q = readers
                .stats
                .lost_queue
                .load(std::sync::atomic::Ordering::Relaxed);
            if q > queue_lost_seen {
                ring.write(pipeline::queue_lost(q - queue_lost_seen));
                queue_lost_seen = q;
            }
            let st = state.read().await;
            let stats = status::Counters::collect(&dp, &readers.stats);
            status::write(&args.state_dir, &st, &progress, Some(&stats))?;
            status_at = std::time::Instant::now();
        }
        if gc_at.elapsed() > Duration::from_secs(30) {
            let n = dp.ct_gc(boottime_ns());
            let backends = lb.gc(&dp.lb_refs());
            tracing::debug!(removed = n, backends, "conntrack gc");
            gc_at = std::time::Instant::now();
        }
        // Without a topology: look at the routes again now and then (CNIs add a pod's route
        // after the pod appears in the API, and remove it before the pod goes away).
        let mut resync = false;
        if k8s_endpoints && discovered_at.elapsed() >= ENDPOINT_RESYNC {
            resync = true;
            discovered_at = std::time::Instant::now();
        }
        let now = fingerprint(&inputs.iter().map(|p| p.as_path()).collect::<Vec<_>>());
        if now == seen && !force && !resync {
            continue;
        }
        let files_changed = now != seen;
        seen = now;
        if files_changed {
            let loaded = (|| -> Result<(Topology, PolicySet)> {
                let t = match &args.topology {
                    Some(path) => Topology::load(path)?,
                    None => last_good.0.clone(),
                };
                let p = match &args.policy {
                    Some(p) => PolicySet::load(p)?,
                    None => PolicySet::default(),
                };
                Ok((t, p))
            })();
            match loaded {
                Err(e) => {
                    tracing::error!(error = %e, "rejected new topology/policy; the policies in force stay");
                    progress.rejected += 1;
                    progress.error = Some(format!("{e:#}"));
                    status::write(&args.state_dir, &*state.read().await, &progress, None)?;
                    continue;
                }
                Ok(good) => {
                    for w in &good.1.warnings {
                        tracing::warn!(warning = %w, "unsupported policy feature");
                    }
                    last_good = good;
                }
            }
        }
        if k8s_endpoints {
            let k = k8s_view.snapshot();
            if !k.synced {
                // Nothing changes before the first complete view of the API.
                progress.error = k
                    .last_error
                    .map(|e| format!("waiting for the Kubernetes API: {e}"));
                continue;
            }
            let placed = place_local(&k.pods).unwrap_or_else(|| here.clone());
            if synced_once && !apply_failed && placed == here && !force && !files_changed {
                continue; // the routes did not change anything
            }
            log_placement(&here, &placed);
            discovered_at = std::time::Instant::now();
            here = placed;
        }
        let policies = match with_api_policies(&last_good.1) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "rejected a policy from the Kubernetes API; the policies in force stay");
                progress.rejected += 1;
                progress.error = Some(e.to_string());
                status::write(&args.state_dir, &*state.read().await, &progress, None)?;
                continue;
            }
        };
        let with_local;
        let topology = if k8s_endpoints {
            with_local = Topology {
                pods: here.attached.values().cloned().collect(),
                ..last_good.0.clone()
            };
            &with_local
        } else {
            &last_good.0
        };
        let (mut new_state, specs) =
            State::build(&args.node, topology, &remote(&here), policies, &build);
        new_state.unattached = here.unattached.clone();
        let applied = dp
            .sync_ipcache(&new_state.ipcache)
            .and_then(|_| dp.sync_endpoints(&specs))
            .map_err(anyhow::Error::from)
            .and_then(|ids| {
                lb.sync(&new_state.lb_services)?;
                Ok(ids)
            });
        match applied {
            Ok(ids) => {
                new_state.set_endpoint_ids(&ids);
                new_state.lb_frontends = lb.views().clone();
                synced_once = true;
                apply_failed = false;
                progress.revision += 1;
                new_state.revision = progress.revision;
                progress.error = None;
                {
                    let old = state.read().await;
                    warn_named_ports(&old, &new_state);
                    agent_events.push(events::diff(&old, &new_state));
                }
                status::write(&args.state_dir, &new_state, &progress, None)?;
                tracing::info!(
                    revision = progress.revision,
                    endpoints = ids.len(),
                    "applied new state"
                );
                *state.write().await = new_state;
            }
            Err(e) => {
                apply_failed = true;
                tracing::error!(error = %e, "applying the new state failed");
                progress.rejected += 1;
                progress.error = Some(e.to_string());
                status::write(&args.state_dir, &*state.read().await, &progress, None)?;
            }
        }
    }
    tracing::info!("stopping; the datapath stays attached and keeps enforcing");
    // The perf readers stop and drop their senders: the pipeline then writes what is queued
    // (flow log, export file, stdout), flushes and returns.
    readers.stop();
    match tokio::time::timeout(Duration::from_secs(5), printer).await {
        Ok(_) => tracing::info!("flow outputs flushed"),
        Err(_) => tracing::warn!("flow outputs not drained within 5 s; stopping anyway"),
    }
    dp.release();
    if let Some(s) = shipper {
        s.shutdown(Duration::from_secs(5)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: &str, argv: &[&str]) -> Result<Args> {
        let dir = std::env::temp_dir().join(format!(
            "agent-config-{}-{}",
            std::process::id(),
            fastrand_name(argv)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.yaml");
        std::fs::write(&path, file).unwrap();
        let mut all: Vec<std::ffi::OsString> = vec!["periscope-agent".into()];
        all.push("--config".into());
        all.push(path.clone().into());
        all.extend(argv.iter().map(Into::into));
        let out = load_args(all);
        std::fs::remove_dir_all(&dir).unwrap();
        out
    }

    fn fastrand_name(argv: &[&str]) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        argv.hash(&mut h);
        std::thread::current().id().hash(&mut h);
        format!("{:x}", h.finish())
    }

    #[test]
    fn the_file_fills_what_flags_do_not_give() {
        let a = load(
            "node: n1\nenforcement: always\naudit: true\ndns_visibility: false\n\
             etcd_endpoints: [http://a:2379, http://b:2379]\nring_capacity: 1023\n\
             log_format: json\nlabel_patterns: [app]\n",
            &["--ring-capacity", "511"],
        )
        .unwrap();
        assert_eq!(a.node, "n1");
        assert_eq!(a.enforcement, "always".parse().unwrap());
        assert!(a.audit);
        assert!(!a.dns_visibility);
        assert_eq!(a.etcd_endpoints, ["http://a:2379", "http://b:2379"]);
        assert_eq!(a.ring_capacity, 511, "the flag overrides the file");
        assert_eq!(a.log_format, periscope_logging::LogFormat::Json);
        assert_eq!(a.label_patterns, ["app"]);
        assert_eq!(a.output, "compact", "defaults stay");
        // A flag given overrides the file's node.
        let a = load("node: n1\n", &["--node", "n2"]).unwrap();
        assert_eq!(a.node, "n2");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = load("node: n1\nnodes: [x]\n", &[]).unwrap_err().to_string();
        assert!(
            e.contains("unknown field `nodes`") && e.contains("agent.yaml"),
            "{e}"
        );
        let e = load("node: n1\nconfig: other.yaml\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `config`"), "{e}");
        let e = format!(
            "{:#}",
            load("node: n1\nring_capacity: lots\n", &[]).unwrap_err()
        );
        assert!(e.contains("--ring-capacity") && e.contains("lots"), "{e}");
        let e = format!("{:#}", load("node: [n1\n", &[]).unwrap_err());
        assert!(e.contains("agent.yaml"), "{e}");
    }
}
