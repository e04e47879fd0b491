//! The relay's settings: command-line flags ([`Cli`]), an optional YAML file ([`FileConfig`],
//! the same settings with snake_case keys) and the validated result ([`Config`]).
//!
//! Precedence, one rule for the relay and the agent: command-line flag > environment variable
//! (the flags that have one, e.g. `PERISCOPE_LOG`) > configuration file > default. A list flag
//! (`--peers`, `--relay-peer`) given at all replaces the file's list.
//!
//! Every error names the flag (and the file, for file problems), e.g.
//! `--peers "10.0.0.1": expected HOST:PORT` or
//! `--tls-cert /etc/relay/cert.pem: No such file or directory`.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::tls::{PeerTlsFiles, ServerTlsFiles, TlsError};

/// Default address of the HTTP API.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:12000";
/// Where the web UI's bundle is looked for when --ui-dir is not given.
pub const DEFAULT_UI_DIR: &str = "/usr/share/periscope/ui";
/// Where the relay serves by default (Hubble relay's port).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:4245";
/// Port of an agent's Hubble API when a peer address has none (peer-service notifications).
pub const DEFAULT_AGENT_PORT: u16 = 4244;
/// Flows held per peer by the merge (Hubble relay's `sort-buffer-len-max`).
pub const DEFAULT_SORT_BUFFER: usize = 100;
/// Longest a flow waits in the merge (Hubble relay's `sort-buffer-drain-timeout`).
pub const DEFAULT_SORT_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest a connection attempt (and a unary call to a peer) may take.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait between two reconnection attempts (the cap of the exponential backoff).
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(30);
/// The cluster name that does not prefix node names.
pub const DEFAULT_CLUSTER: &str = "default";

/// The Periscope relay: serves the Hubble Observer API (`observer.Observer`, health) for a whole
/// fleet by merging the flow streams of many agents, and of other relays (other clusters), into
/// one stream ordered by flow time.
///
/// Peers come from `--peers` (agents), `--peer-service` (an agent's Peer service lists the
/// nodes and announces changes) and `--relay-peer` (other relays; their nodes are named
/// `cluster/node`). A peer that is down or fails shows up in GetFlows streams as a node status
/// event (NODE_UNAVAILABLE / NODE_ERROR) and is redialed with exponential backoff and jitter.
///
/// Without TLS flags everything is plain text (a warning is logged).
///
/// Settings come from flags, environment variables and --config, in this order of precedence:
/// a flag overrides its environment variable, which overrides the file, which overrides the
/// default (the agent follows the same rule).
///
/// Logging: --log / PERISCOPE_LOG (RUST_LOG is still read when none is set; default `info`),
/// --log-format text|json. The filter can be changed while the relay runs, on --http-listen:
/// `curl -X PUT --data 'info,periscope_relay=debug' http://127.0.0.1:12000/log-level`
/// (`GET /log-level` shows it; a bad filter is answered 400 and the filter stays; with a token
/// configured the request needs `Authorization: Bearer TOKEN`).
#[derive(clap::Parser, Debug, Default, Clone)]
#[command(name = "periscope-relay", version, about, long_about)]
pub struct Cli {
    /// YAML file with the same settings as the flags (snake_case keys: `listen`, `peers`,
    /// `relay_peers`, `sort_drain_timeout: 1s`, `tls_cert`, ...). Flags given on the command
    /// line override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to serve the Observer API on [default: 0.0.0.0:4245].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// An agent to merge flows from, `[NAME=]HOST:PORT` (repeatable, or comma-separated). NAME
    /// is only used until the agent tells its node name.
    #[arg(long = "peers", value_name = "[NAME=]HOST:PORT", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// An agent whose Peer service (`peer.Peer/Notify`) lists the nodes: every announced node
    /// becomes a peer (PEER_ADDED / PEER_UPDATED / PEER_DELETED are followed; an address
    /// without port gets 4244).
    #[arg(long, value_name = "HOST:PORT")]
    pub peer_service: Option<String>,
    /// Find the agents in Kubernetes: the API server URL (`https://kubernetes.default.svc`,
    /// `http://127.0.0.1:8001`), or `in-cluster` for the pod's service account. Every running
    /// pod matching --k8s-agent-selector in --k8s-agent-namespace becomes a peer at
    /// `podIP:--k8s-agent-port`, and goes when the pod goes. Needs `list` and `watch` on pods.
    #[arg(long, value_name = "URL|in-cluster", help_heading = "Kubernetes")]
    pub k8s_api_server: Option<String>,
    /// Bearer token file for --k8s-api-server (re-read as it rotates).
    #[arg(long, value_name = "FILE", help_heading = "Kubernetes")]
    pub k8s_token_file: Option<PathBuf>,
    /// CA bundle (PEM) of an https --k8s-api-server.
    #[arg(long, value_name = "FILE", help_heading = "Kubernetes")]
    pub k8s_ca_file: Option<PathBuf>,
    /// Namespace of the agents' pods [default: periscope].
    #[arg(long, value_name = "NAMESPACE", help_heading = "Kubernetes")]
    pub k8s_agent_namespace: Option<String>,
    /// Label selector of the agents' pods [default: app.kubernetes.io/name=periscope-agent].
    #[arg(long, value_name = "SELECTOR", help_heading = "Kubernetes")]
    pub k8s_agent_selector: Option<String>,
    /// Port of the agents' Observer API [default: 4244].
    #[arg(long, value_name = "PORT", help_heading = "Kubernetes")]
    pub k8s_agent_port: Option<u16>,
    /// Another relay (a remote cluster), `[CLUSTER=]HOST:PORT` (repeatable). Its nodes are
    /// named `CLUSTER/node` (the prefix is added when the remote's names lack one; without
    /// CLUSTER the remote's own names are kept, which a relay with --cluster-name prefixes).
    #[arg(long = "relay-peer", value_name = "[CLUSTER=]HOST:PORT")]
    pub relay_peers: Vec<String>,
    /// Name of this relay's cluster: node names of the agents in --peers / --peer-service
    /// become `CLUSTER/node` unless it is `default` [default: default].
    #[arg(long, value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// Flows held per peer by the time-ordered merge before the oldest is sent regardless
    /// (bounds memory; a larger buffer orders better under load) [default: 100].
    #[arg(long, value_name = "FLOWS")]
    pub sort_buffer: Option<usize>,
    /// Longest a flow waits in the merge for older flows of other peers; a peer silent this
    /// long is not waited for (e.g. 1s, 500ms) [default: 1s].
    #[arg(long, value_name = "DURATION")]
    pub sort_drain_timeout: Option<String>,
    /// Longest a connection attempt, and a status call to a peer, may take [default: 5s].
    #[arg(long, value_name = "DURATION")]
    pub dial_timeout: Option<String>,
    /// Longest wait between reconnection attempts to a peer: the cap of the exponential
    /// backoff (with full jitter) [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub retry_timeout: Option<String>,
    /// TLS certificate chain (PEM) of the relay's server; with --tls-key, serve TLS only.
    /// Reloaded when the file changes (new connections use the new certificate).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert (reloaded with it).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// CA bundle (PEM) for client certificates: with it every client must present a
    /// certificate signed by one of these CAs (mutual TLS); others are rejected.
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// CA bundle (PEM) that peers' server certificates must chain to; dial peers with TLS.
    /// Peer TLS files are read at every connection attempt, so changes apply to new
    /// connections.
    #[arg(long, value_name = "FILE")]
    pub peer_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to peers (needs --peer-tls-key and --peer-tls-ca).
    #[arg(long, value_name = "FILE")]
    pub peer_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --peer-tls-cert.
    #[arg(long, value_name = "FILE")]
    pub peer_tls_key: Option<PathBuf>,
    /// Name to verify in peers' certificates [default: the host of each peer's address].
    #[arg(long, value_name = "NAME")]
    pub peer_tls_server_name: Option<String>,
    /// ClickHouse HTTP URL (e.g. http://127.0.0.1:8123): store every flow there and answer
    /// history from it. Without it (and without `store:` in --config) the relay keeps an
    /// in-memory window of recent flows instead. Other settings: `store:` in the config file.
    #[arg(long, value_name = "URL", help_heading = "Storage")]
    pub clickhouse_url: Option<String>,
    /// ClickHouse database [default: periscope].
    #[arg(long, value_name = "NAME", help_heading = "Storage")]
    pub clickhouse_database: Option<String>,
    /// ClickHouse cluster (a `remote_servers` name) to shard and replicate the tables over:
    /// Replicated local tables on every server plus Distributed tables, which the relay writes
    /// to and reads from (`clickhouse_cluster` in `store:`) [default: none, a single server].
    #[arg(long, value_name = "NAME", help_heading = "Storage")]
    pub clickhouse_cluster: Option<String>,
    /// Read history from ClickHouse but write no flows (`read_only` in `store:`): for a top
    /// relay over shard relays that store their own nodes' flows.
    #[arg(long, help_heading = "Storage")]
    pub clickhouse_read_only: bool,
    /// Directory of the on-disk spool used during ClickHouse outages
    /// [default: /var/lib/periscope/spool].
    #[arg(long, value_name = "DIR", help_heading = "Storage")]
    pub spool_dir: Option<PathBuf>,
    /// Memory budget of the in-memory window (used without ClickHouse), MiB [default: 256].
    #[arg(long, value_name = "MIB", help_heading = "Storage")]
    pub window_memory_mb: Option<usize>,
    /// Alert rule file or directory (YAML; see deploy/examples/alert-rules/). Re-read when it
    /// changes; a bad file is rejected and the rules in force stay.
    #[arg(long, value_name = "PATH", help_heading = "Alerts")]
    pub alert_rules: Option<PathBuf>,
    /// Alertmanager base URL to notify (POST /api/v2/alerts), repeatable.
    #[arg(long = "alertmanager-url", value_name = "URL", help_heading = "Alerts")]
    pub alertmanager_urls: Vec<String>,
    /// Generic webhook URL to notify (POST of the alert as JSON), repeatable.
    #[arg(long = "alert-webhook", value_name = "URL", help_heading = "Alerts")]
    pub alert_webhooks: Vec<String>,
    /// Address of the relay's HTTP API and web UI (`/`, `/api/v1/…`, `/metrics`)
    /// [default: 127.0.0.1:12000; `off` disables it]. Beyond loopback it needs a token
    /// (--ui-token-file or --ui-token).
    #[arg(long, value_name = "ADDR", help_heading = "HTTP API")]
    pub http_listen: Option<String>,
    /// Directory of the web UI's bundle (`cargo xtask ui` builds it into
    /// `<target>/ui-dist`) [default: /usr/share/periscope/ui when it exists; else no UI, the
    /// API still answers].
    #[arg(long, value_name = "DIR", help_heading = "HTTP API")]
    pub ui_dir: Option<PathBuf>,
    /// File holding the bearer token the HTTP API wants (`Authorization: Bearer TOKEN`;
    /// event streams may pass `access_token=TOKEN`). Required when --http-listen is not a
    /// loopback address.
    #[arg(long, value_name = "FILE", help_heading = "HTTP API")]
    pub ui_token_file: Option<PathBuf>,
    /// The bearer token itself (prefer --ui-token-file: a command line is visible to every
    /// local user).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PERISCOPE_UI_TOKEN",
        hide_env_values = true,
        help_heading = "HTTP API"
    )]
    pub ui_token: Option<String>,
    /// Log filter, tracing's env-filter syntax: `info`, `warn,periscope_relay::peers=debug`
    /// [default: info, or RUST_LOG when set]. Changeable at runtime with `PUT /log-level`.
    #[arg(
        long,
        value_name = "FILTER",
        env = "PERISCOPE_LOG",
        help_heading = "Logging"
    )]
    pub log: Option<String>,
    /// Log format on stderr: text, or json (one object per line: timestamp, level, target,
    /// message, fields) [default: text].
    #[arg(
        long,
        value_name = "text|json",
        env = "PERISCOPE_LOG_FORMAT",
        help_heading = "Logging"
    )]
    pub log_format: Option<String>,
    /// Also store the relay's own log events of this level and above (default warn: warnings
    /// and errors) in the `logs` table of its ClickHouse (needs --clickhouse-url or `store:`),
    /// with component `relay`, the host name as node and the cluster name. Events the log
    /// filter drops are not stored; a full queue drops events (never the logging call).
    #[arg(
        long,
        value_name = "LEVEL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "warn",
        help_heading = "Logging"
    )]
    pub log_to_clickhouse: Option<String>,
}

/// The YAML configuration file: the flags' settings (see `periscope-relay --help`).
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address to serve the Observer API on.
    pub listen: Option<String>,
    /// Agents, `[NAME=]HOST:PORT`.
    #[serde(default)]
    pub peers: Vec<String>,
    /// An agent whose Peer service lists the nodes.
    pub peer_service: Option<String>,
    /// Kubernetes API server URL, or `in-cluster`: the agents are pods.
    pub k8s_api_server: Option<String>,
    /// Bearer token file for the API server.
    pub k8s_token_file: Option<PathBuf>,
    /// CA bundle of an https API server.
    pub k8s_ca_file: Option<PathBuf>,
    /// Namespace of the agents' pods.
    pub k8s_agent_namespace: Option<String>,
    /// Label selector of the agents' pods.
    pub k8s_agent_selector: Option<String>,
    /// Port of the agents' Observer API.
    pub k8s_agent_port: Option<u16>,
    /// Other relays (remote clusters), `[CLUSTER=]HOST:PORT`.
    #[serde(default)]
    pub relay_peers: Vec<String>,
    /// This relay's cluster name.
    pub cluster_name: Option<String>,
    /// Flows held per peer by the merge.
    pub sort_buffer: Option<usize>,
    /// Longest a flow waits in the merge, e.g. `1s`.
    pub sort_drain_timeout: Option<String>,
    /// Longest a connection attempt may take, e.g. `5s`.
    pub dial_timeout: Option<String>,
    /// Cap of the reconnection backoff, e.g. `30s`.
    pub retry_timeout: Option<String>,
    /// Server certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CA bundle for client certificates (mutual TLS).
    pub tls_client_ca: Option<PathBuf>,
    /// CA bundle for peers' server certificates.
    pub peer_tls_ca: Option<PathBuf>,
    /// Client certificate presented to peers.
    pub peer_tls_cert: Option<PathBuf>,
    /// Private key of the client certificate.
    pub peer_tls_key: Option<PathBuf>,
    /// Name to verify in peers' certificates.
    pub peer_tls_server_name: Option<String>,
    /// ClickHouse storage (every field documented in `StoreConfig`); absent: the in-memory
    /// window.
    pub store: Option<crate::store::StoreConfig>,
    /// The in-memory window (used without `store`).
    pub window: Option<crate::window::WindowConfig>,
    /// Alert rule file or directory.
    pub alert_rules: Option<PathBuf>,
    /// Alertmanager base URLs.
    #[serde(default)]
    pub alertmanager_urls: Vec<String>,
    /// Generic webhook URLs.
    #[serde(default)]
    pub alert_webhooks: Vec<String>,
    /// Address of the HTTP API, or `off`.
    pub http_listen: Option<String>,
    /// Directory of the web UI's bundle.
    pub ui_dir: Option<PathBuf>,
    /// File holding the HTTP API's bearer token.
    pub ui_token_file: Option<PathBuf>,
    /// Log filter (env-filter syntax), e.g. `info`.
    pub log: Option<String>,
    /// Log format: `text` or `json`.
    pub log_format: Option<String>,
    /// Store the relay's log events of this level and above (`warn`, `error`, ...) in
    /// ClickHouse's `logs` table (needs `store`).
    pub log_to_clickhouse: Option<String>,
}

/// What a peer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    /// A node agent: one node.
    Agent,
    /// Another relay: a remote cluster of nodes.
    Relay,
}

/// A peer to dial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    /// Node name (agents; replaced by the name the agent reports) or cluster name (relays).
    pub name: Option<String>,
    /// `host:port`.
    pub address: String,
    /// Agent or relay.
    pub kind: PeerKind,
}

/// The validated settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to serve.
    pub listen: SocketAddr,
    /// Static peers (agents, then relays).
    pub peers: Vec<PeerSpec>,
    /// Peer service to follow.
    pub peer_service: Option<String>,
    /// Agents found in Kubernetes.
    pub k8s_peers: Option<crate::k8s::K8sPeers>,
    /// This relay's cluster.
    pub cluster_name: String,
    /// Flows held per peer by the merge.
    pub sort_buffer: usize,
    /// Longest a flow waits in the merge.
    pub sort_drain_timeout: Duration,
    /// Connection attempt timeout.
    pub dial_timeout: Duration,
    /// Backoff cap.
    pub retry_timeout: Duration,
    /// The server's TLS files (None: plain text).
    pub server_tls: Option<ServerTlsFiles>,
    /// TLS for dialing peers (None: plain text).
    pub peer_tls: Option<PeerTlsFiles>,
    /// ClickHouse storage (None: the in-memory window).
    pub store: Option<crate::store::StoreConfig>,
    /// The in-memory window's settings.
    pub window: crate::window::WindowConfig,
    /// Alert rules.
    pub alert_rules: Option<PathBuf>,
    /// Alertmanager base URLs.
    pub alertmanager_urls: Vec<String>,
    /// Generic webhook URLs.
    pub alert_webhooks: Vec<String>,
    /// The HTTP API's address (None: off).
    pub http_listen: Option<SocketAddr>,
    /// The web UI's bundle (None: no UI).
    pub ui_dir: Option<PathBuf>,
    /// The HTTP API's bearer token (None: open; only allowed on loopback).
    pub ui_token: Option<String>,
    /// The log filter.
    pub log: String,
    /// The log format.
    pub log_format: periscope_logging::LogFormat,
    /// Least severe level of the log events stored in ClickHouse (None: not stored).
    pub log_to_clickhouse: Option<tracing::Level>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file cannot be read.
    #[error("reading --config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid YAML for [`FileConfig`].
    #[error("--config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause (names the key and line).
        #[source]
        source: serde_yaml::Error,
    },
    /// A setting has an invalid value.
    #[error("{flag} {value:?}: {reason}")]
    Invalid {
        /// The flag (file keys are named by their flag).
        flag: &'static str,
        /// The value given.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A TLS file is missing, unreadable or invalid, or TLS flags do not go together.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Parses `1s`, `500ms`, `2m`, `1.5s`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| "expected a duration such as 500ms, 1s or 2m".to_string())?;
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown unit {other:?} (use ms, s, m or h)")),
    };
    let secs = n * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err("duration out of range".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn duration(
    flag: &'static str,
    value: Option<&String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => {
            let d = parse_duration(v).map_err(|r| invalid(flag, v, r))?;
            if d.is_zero() {
                return Err(invalid(flag, v, "must be more than zero"));
            }
            Ok(d)
        }
    }
}

/// Checks a `HOST:PORT` address (IPv6 hosts in brackets) and returns it.
pub fn parse_address(flag: &'static str, s: &str) -> Result<String, ConfigError> {
    let bad = |reason: &str| invalid(flag, s, reason);
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(bad("expected HOST:PORT"));
    };
    if host.is_empty() {
        return Err(bad("expected HOST:PORT (the host is empty)"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(bad("an IPv6 host must be in brackets: [addr]:port"));
    }
    if host.contains(|c: char| c.is_whitespace() || c == '/' || c == '=') {
        return Err(bad("expected HOST:PORT"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(s.to_string()),
        _ => Err(bad("the port must be a number from 1 to 65535")),
    }
}

/// Parses `[NAME=]HOST:PORT`.
pub fn parse_peer(flag: &'static str, s: &str, kind: PeerKind) -> Result<PeerSpec, ConfigError> {
    let (name, address) = match s.split_once('=') {
        Some((n, a)) => {
            let n = n.trim();
            if n.is_empty() || n.contains(char::is_whitespace) {
                return Err(invalid(
                    flag,
                    s,
                    "the name before `=` is empty or has spaces",
                ));
            }
            (Some(n.to_string()), a.trim())
        }
        None => (None, s.trim()),
    };
    Ok(PeerSpec {
        name,
        address: parse_address(flag, address)?,
        kind,
    })
}

impl Config {
    /// Reads the `--config` file if any, applies the flags over it and validates the result
    /// (TLS files are read and parsed once, so a bad path or PEM is reported at start-up).
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => Self::read_file(path)?,
            None => FileConfig::default(),
        };
        Self::from_parts(cli, file)
    }

    fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if text.trim().is_empty() {
            return Ok(FileConfig::default());
        }
        serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Flags over file, validated.
    pub fn from_parts(cli: &Cli, file: FileConfig) -> Result<Config, ConfigError> {
        let pick = |flag: &Option<String>, file: Option<String>| flag.clone().or(file);
        let pick_path = |flag: &Option<PathBuf>, file: Option<PathBuf>| flag.clone().or(file);

        let listen_s = pick(&cli.listen, file.listen).unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen: SocketAddr = listen_s
            .parse()
            .map_err(|_| invalid("--listen", &listen_s, "expected IP:PORT, e.g. 0.0.0.0:4245"))?;

        let agents = if cli.peers.is_empty() {
            file.peers
        } else {
            cli.peers.clone()
        };
        let relays = if cli.relay_peers.is_empty() {
            file.relay_peers
        } else {
            cli.relay_peers.clone()
        };
        let mut peers = Vec::new();
        for p in agents.iter().filter(|p| !p.trim().is_empty()) {
            peers.push(parse_peer("--peers", p, PeerKind::Agent)?);
        }
        for p in &relays {
            peers.push(parse_peer("--relay-peer", p, PeerKind::Relay)?);
        }
        let mut seen = std::collections::HashSet::new();
        for p in &peers {
            if !seen.insert(&p.address) {
                return Err(invalid(
                    if p.kind == PeerKind::Agent {
                        "--peers"
                    } else {
                        "--relay-peer"
                    },
                    &p.address,
                    "this address is given twice",
                ));
            }
        }
        let peer_service = pick(&cli.peer_service, file.peer_service)
            .map(|a| parse_address("--peer-service", &a))
            .transpose()?;

        let k8s_peers = match pick(&cli.k8s_api_server, file.k8s_api_server) {
            None => None,
            Some(api_server) => {
                if api_server != crate::k8s::IN_CLUSTER
                    && !(api_server.starts_with("http://") || api_server.starts_with("https://"))
                {
                    return Err(invalid(
                        "--k8s-api-server",
                        &api_server,
                        "expected an http:// or https:// URL, or in-cluster",
                    ));
                }
                let selector = pick(&cli.k8s_agent_selector, file.k8s_agent_selector)
                    .unwrap_or_else(|| crate::k8s::DEFAULT_SELECTOR.into());
                if selector.trim().is_empty() {
                    return Err(invalid(
                        "--k8s-agent-selector",
                        &selector,
                        "an empty selector would take every pod of the namespace",
                    ));
                }
                let port = cli
                    .k8s_agent_port
                    .or(file.k8s_agent_port)
                    .unwrap_or(DEFAULT_AGENT_PORT);
                if port == 0 {
                    return Err(invalid("--k8s-agent-port", "0", "expected a port 1-65535"));
                }
                Some(crate::k8s::K8sPeers {
                    api_server,
                    token_file: pick_path(&cli.k8s_token_file, file.k8s_token_file),
                    ca_file: pick_path(&cli.k8s_ca_file, file.k8s_ca_file),
                    namespace: pick(&cli.k8s_agent_namespace, file.k8s_agent_namespace)
                        .unwrap_or_else(|| crate::k8s::DEFAULT_NAMESPACE.into()),
                    selector,
                    port,
                })
            }
        };

        let cluster_name =
            pick(&cli.cluster_name, file.cluster_name).unwrap_or_else(|| DEFAULT_CLUSTER.into());
        if cluster_name.is_empty() || cluster_name.contains(|c: char| c == '/' || c.is_whitespace())
        {
            return Err(invalid(
                "--cluster-name",
                &cluster_name,
                "must be non-empty, without `/` or spaces",
            ));
        }
        let sort_buffer = cli
            .sort_buffer
            .or(file.sort_buffer)
            .unwrap_or(DEFAULT_SORT_BUFFER);
        if sort_buffer == 0 {
            return Err(invalid("--sort-buffer", "0", "must be at least 1"));
        }
        let sort_drain_timeout = duration(
            "--sort-drain-timeout",
            pick(&cli.sort_drain_timeout, file.sort_drain_timeout).as_ref(),
            DEFAULT_SORT_DRAIN_TIMEOUT,
        )?;
        let dial_timeout = duration(
            "--dial-timeout",
            pick(&cli.dial_timeout, file.dial_timeout).as_ref(),
            DEFAULT_DIAL_TIMEOUT,
        )?;
        let retry_timeout = duration(
            "--retry-timeout",
            pick(&cli.retry_timeout, file.retry_timeout).as_ref(),
            DEFAULT_RETRY_TIMEOUT,
        )?;

        let server_tls = ServerTlsFiles::from_options(
            pick_path(&cli.tls_cert, file.tls_cert),
            pick_path(&cli.tls_key, file.tls_key),
            pick_path(&cli.tls_client_ca, file.tls_client_ca),
        )?;
        if let Some(files) = &server_tls {
            files.load()?;
        }
        let peer_tls = PeerTlsFiles::from_options(
            pick_path(&cli.peer_tls_ca, file.peer_tls_ca),
            pick_path(&cli.peer_tls_cert, file.peer_tls_cert),
            pick_path(&cli.peer_tls_key, file.peer_tls_key),
            pick(&cli.peer_tls_server_name, file.peer_tls_server_name),
        )?;
        if let Some(files) = &peer_tls {
            files.check()?;
        }

        let mut store = file.store;
        if let Some(url) = &cli.clickhouse_url {
            store
                .get_or_insert_with(|| crate::store::StoreConfig::new(url.clone()))
                .url = url.clone();
        }
        if let Some(s) = store.as_mut() {
            if let Some(db) = &cli.clickhouse_database {
                s.database = db.clone();
            }
            if let Some(cluster) = &cli.clickhouse_cluster {
                s.clickhouse_cluster = Some(cluster.clone());
            }
            if cli.clickhouse_read_only {
                s.read_only = true;
            }
            if let Some(dir) = &cli.spool_dir {
                s.spool_dir = dir.clone();
            }
            if s.cluster_name.is_empty() || s.cluster_name == DEFAULT_CLUSTER {
                s.cluster_name = cluster_name.clone();
            }
            s.validate()
                .map_err(|e| invalid("--clickhouse-url", &s.url, e.to_string()))?;
        } else if cli.clickhouse_database.is_some()
            || cli.spool_dir.is_some()
            || cli.clickhouse_cluster.is_some()
            || cli.clickhouse_read_only
        {
            return Err(invalid(
                if cli.spool_dir.is_some() {
                    "--spool-dir"
                } else if cli.clickhouse_cluster.is_some() {
                    "--clickhouse-cluster"
                } else if cli.clickhouse_read_only {
                    "--clickhouse-read-only"
                } else {
                    "--clickhouse-database"
                },
                "",
                "needs --clickhouse-url (or `store:` in --config)",
            ));
        }
        let mut window = file.window.unwrap_or_default();
        if let Some(mb) = cli.window_memory_mb {
            if mb == 0 {
                return Err(invalid("--window-memory-mb", "0", "must be at least 1"));
            }
            window.memory_budget_bytes = mb << 20;
        }
        let alertmanager_urls = if cli.alertmanager_urls.is_empty() {
            file.alertmanager_urls
        } else {
            cli.alertmanager_urls.clone()
        };
        let alert_webhooks = if cli.alert_webhooks.is_empty() {
            file.alert_webhooks
        } else {
            cli.alert_webhooks.clone()
        };
        let http_s =
            pick(&cli.http_listen, file.http_listen).unwrap_or_else(|| DEFAULT_HTTP_LISTEN.into());
        let http_listen: Option<SocketAddr> = if http_s == "off" {
            None
        } else {
            Some(http_s.parse().map_err(|_| {
                invalid(
                    "--http-listen",
                    &http_s,
                    "expected IP:PORT, e.g. 127.0.0.1:12000, or off",
                )
            })?)
        };
        let ui_dir = match pick_path(&cli.ui_dir, file.ui_dir) {
            Some(d) => {
                if !d.join("index.html").is_file() {
                    return Err(invalid(
                        "--ui-dir",
                        &d.display().to_string(),
                        "no index.html there (build the UI with `cargo xtask ui`)",
                    ));
                }
                Some(d)
            }
            None => Some(PathBuf::from(DEFAULT_UI_DIR)).filter(|d| d.join("index.html").is_file()),
        };
        let ui_token = match (
            &cli.ui_token,
            pick_path(&cli.ui_token_file, file.ui_token_file),
        ) {
            (Some(t), _) if t.trim().is_empty() => {
                return Err(invalid("--ui-token", "", "is empty"));
            }
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(path)) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| invalid("--ui-token-file", &shown, e.to_string()))?;
                let t = text.trim();
                if t.is_empty() || t.contains(char::is_whitespace) {
                    return Err(invalid(
                        "--ui-token-file",
                        &shown,
                        "expected one token (no spaces) in the file",
                    ));
                }
                Some(t.to_string())
            }
            (None, None) => None,
        };
        if let Some(addr) = http_listen
            && !addr.ip().is_loopback()
            && ui_token.is_none()
        {
            return Err(invalid(
                "--http-listen",
                &addr.to_string(),
                "listens beyond loopback: set a bearer token with --ui-token-file (or --ui-token)",
            ));
        }
        let log = pick(&cli.log, file.log)
            .or_else(|| {
                std::env::var("RUST_LOG")
                    .ok()
                    .filter(|v| !v.trim().is_empty())
            })
            .unwrap_or_else(|| "info".into());
        periscope_logging::parse_filter(&log).map_err(|e| invalid("--log", &log, e.to_string()))?;
        let log_format = match pick(&cli.log_format, file.log_format) {
            None => periscope_logging::LogFormat::default(),
            Some(f) => f
                .parse()
                .map_err(|_| invalid("--log-format", &f, "expected text or json"))?,
        };
        let log_to_clickhouse = match pick(&cli.log_to_clickhouse, file.log_to_clickhouse) {
            None => None,
            Some(l) => {
                if store.is_none() {
                    return Err(invalid(
                        "--log-to-clickhouse",
                        &l,
                        "needs --clickhouse-url (or `store:` in --config)",
                    ));
                }
                Some(periscope_logging::parse_level(&l).map_err(|_| {
                    invalid(
                        "--log-to-clickhouse",
                        &l,
                        "expected error, warn, info, debug or trace",
                    )
                })?)
            }
        };
        Ok(Config {
            log,
            log_format,
            log_to_clickhouse,
            ui_dir,
            ui_token,
            store,
            window,
            alert_rules: pick_path(&cli.alert_rules, file.alert_rules),
            alertmanager_urls,
            alert_webhooks,
            http_listen,
            listen,
            peers,
            peer_service,
            k8s_peers,
            cluster_name,
            sort_buffer,
            sort_drain_timeout,
            dial_timeout,
            retry_timeout,
            server_tls,
            peer_tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["periscope-relay"];
        all.extend(args);
        Cli::try_parse_from(all).expect("flags parse")
    }

    fn err(args: &[&str]) -> String {
        Config::load(&cli(args)).expect_err("invalid").to_string()
    }

    #[test]
    fn defaults() {
        let c = Config::load(&cli(&[])).unwrap();
        assert_eq!(c.listen, "0.0.0.0:4245".parse().unwrap());
        assert_eq!(c.sort_buffer, 100);
        assert_eq!(c.sort_drain_timeout, Duration::from_secs(1));
        assert_eq!(c.cluster_name, "default");
        assert!(c.peers.is_empty() && c.server_tls.is_none() && c.peer_tls.is_none());
    }

    #[test]
    fn clickhouse_read_only_flag() {
        let c = Config::load(&cli(&[
            "--clickhouse-url",
            "http://127.0.0.1:8123",
            "--clickhouse-read-only",
        ]))
        .unwrap();
        assert!(c.store.expect("a store").read_only);
        let c = Config::load(&cli(&["--clickhouse-url", "http://127.0.0.1:8123"])).unwrap();
        assert!(!c.store.expect("a store").read_only);
        let e = err(&["--clickhouse-read-only"]);
        assert!(
            e.contains("--clickhouse-read-only") && e.contains("--clickhouse-url"),
            "{e}"
        );
    }

    #[test]
    fn clickhouse_cluster_flag() {
        let c = Config::load(&cli(&[
            "--clickhouse-url",
            "http://127.0.0.1:8123",
            "--clickhouse-cluster",
            "periscope",
        ]))
        .unwrap();
        let store = c.store.expect("a store");
        assert_eq!(store.clickhouse_cluster.as_deref(), Some("periscope"));
        assert_eq!(store.migrate_config().cluster.as_deref(), Some("periscope"));
        let e = err(&["--clickhouse-cluster", "periscope"]);
        assert!(e.contains("--clickhouse-cluster"), "{e}");
        let e = err(&[
            "--clickhouse-url",
            "http://127.0.0.1:8123",
            "--clickhouse-cluster",
            "a b",
        ]);
        assert!(e.contains("cluster"), "{e}");
    }

    #[test]
    fn peers_and_relay_peers() {
        let c = Config::load(&cli(&[
            "--peers",
            "127.0.0.1:4244,n2=127.0.0.2:4244",
            "--peers",
            "[::1]:4244",
            "--relay-peer",
            "east=relay.east:4245",
            "--relay-peer",
            "127.0.0.1:5000",
            "--cluster-name",
            "west",
        ]))
        .unwrap();
        let names: Vec<_> = c
            .peers
            .iter()
            .map(|p| (p.name.as_deref(), p.address.as_str(), p.kind))
            .collect();
        assert_eq!(
            names,
            [
                (None, "127.0.0.1:4244", PeerKind::Agent),
                (Some("n2"), "127.0.0.2:4244", PeerKind::Agent),
                (None, "[::1]:4244", PeerKind::Agent),
                (Some("east"), "relay.east:4245", PeerKind::Relay),
                (None, "127.0.0.1:5000", PeerKind::Relay),
            ]
        );
        assert_eq!(c.cluster_name, "west");
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = err(&["--peers", "127.0.0.1"]);
        assert!(
            e.contains("--peers \"127.0.0.1\"") && e.contains("HOST:PORT"),
            "{e}"
        );
        let e = err(&["--peers", "127.0.0.1:http"]);
        assert!(e.contains("--peers") && e.contains("port"), "{e}");
        let e = err(&["--relay-peer", "=127.0.0.1:4245"]);
        assert!(e.contains("--relay-peer"), "{e}");
        let e = err(&["--peers", "::1:4244"]);
        assert!(e.contains("brackets"), "{e}");
        let e = err(&["--peers", "a:1", "--peers", "a:1"]);
        assert!(e.contains("twice"), "{e}");
        let e = err(&["--listen", "localhost"]);
        assert!(e.contains("--listen"), "{e}");
        let e = err(&["--sort-drain-timeout", "soon"]);
        assert!(e.contains("--sort-drain-timeout \"soon\""), "{e}");
        let e = err(&["--dial-timeout", "0s"]);
        assert!(e.contains("--dial-timeout") && e.contains("zero"), "{e}");
        let e = err(&["--sort-buffer", "0"]);
        assert!(e.contains("--sort-buffer"), "{e}");
        let e = err(&["--cluster-name", "a/b"]);
        assert!(e.contains("--cluster-name"), "{e}");
        let e = err(&["--peer-service", "agent"]);
        assert!(e.contains("--peer-service"), "{e}");
    }

    #[test]
    fn bad_tls_settings_name_the_flag_and_file() {
        let e = err(&[
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ]);
        assert!(
            e.contains("--tls-cert") && e.contains("/nonexistent/cert.pem"),
            "{e}"
        );
        let e = err(&["--tls-cert", "/nonexistent/cert.pem"]);
        assert!(e.contains("--tls-key"), "{e}");
        let e = err(&["--tls-client-ca", "/x.pem"]);
        assert!(e.contains("--tls-cert"), "{e}");
        let e = err(&["--peer-tls-cert", "/c.pem", "--peer-tls-key", "/k.pem"]);
        assert!(e.contains("--peer-tls-ca"), "{e}");
        let e = err(&["--peer-tls-ca", "/nonexistent/ca.pem"]);
        assert!(
            e.contains("--peer-tls-ca") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
        // A file that is not PEM.
        let dir = std::env::temp_dir().join(format!("relay-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = err(&["--peer-tls-ca", junk.to_str().unwrap()]);
        assert!(e.contains("--peer-tls-ca") && e.contains("junk.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_then_flags() {
        let dir = std::env::temp_dir().join(format!("relay-cfg-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.yaml");
        std::fs::write(
            &path,
            "listen: 127.0.0.1:5555\npeers: [127.0.0.1:1, 127.0.0.1:2]\nsort_drain_timeout: 250ms\ncluster_name: c1\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = Config::load(&cli(&["--config", p])).unwrap();
        assert_eq!(c.listen.port(), 5555);
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.sort_drain_timeout, Duration::from_millis(250));
        assert_eq!(c.cluster_name, "c1");
        let c = Config::load(&cli(&[
            "--config",
            p,
            "--peers",
            "127.0.0.1:3",
            "--listen",
            "127.0.0.1:6666",
        ]))
        .unwrap();
        assert_eq!(c.listen.port(), 6666);
        assert_eq!(c.peers.len(), 1, "a list flag replaces the file's list");
        assert_eq!(c.cluster_name, "c1");
        // Unknown keys are rejected with the key and the file named.
        std::fs::write(&path, "listen: 127.0.0.1:5555\npeer: [a:1]\n").unwrap();
        let e = err(&["--config", p]);
        assert!(e.contains("relay.yaml") && e.contains("peer"), "{e}");
        let e = err(&["--config", "/nonexistent/relay.yaml"]);
        assert!(e.contains("/nonexistent/relay.yaml"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn logging_settings() {
        let c = Config::load(&cli(&[
            "--log",
            "warn,periscope_relay=debug",
            "--log-format",
            "json",
        ]))
        .unwrap();
        assert_eq!(c.log, "warn,periscope_relay=debug");
        assert_eq!(c.log_format, periscope_logging::LogFormat::Json);
        assert_eq!(c.log_to_clickhouse, None);
        let e = err(&["--log-format", "yaml"]);
        assert!(e.contains("--log-format \"yaml\""), "{e}");
        let e = err(&["--log", "info,x=loud"]);
        assert!(e.contains("--log") && e.contains("x=loud"), "{e}");
        let e = err(&["--log-to-clickhouse"]);
        assert!(
            e.contains("--log-to-clickhouse") && e.contains("--clickhouse-url"),
            "{e}"
        );
        let spool = std::env::temp_dir().join("relay-cfg-log-spool");
        let ch = ["--clickhouse-url", "http://127.0.0.1:8123", "--spool-dir"];
        let mut args: Vec<&str> = ch.to_vec();
        args.push(spool.to_str().unwrap());
        args.push("--log-to-clickhouse");
        let c = Config::load(&cli(&args)).unwrap();
        assert_eq!(
            c.log_to_clickhouse,
            Some(tracing::Level::WARN),
            "warn by default"
        );
        *args.last_mut().unwrap() = "--log-to-clickhouse=error";
        let c = Config::load(&cli(&args)).unwrap();
        assert_eq!(c.log_to_clickhouse, Some(tracing::Level::ERROR));
        *args.last_mut().unwrap() = "--log-to-clickhouse=loud";
        let e = Config::load(&cli(&args)).unwrap_err().to_string();
        assert!(e.contains("--log-to-clickhouse \"loud\""), "{e}");
        // The file's settings, and a flag over them.
        let dir = std::env::temp_dir().join(format!("relay-cfg-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.yaml");
        std::fs::write(
            &path,
            "log: debug\nlog_format: json\nlog_to_clickhouse: info\n\
             store: {url: \"http://127.0.0.1:8123\", spool_dir: /tmp/relay-cfg-log-spool}\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = Config::load(&cli(&["--config", p])).unwrap();
        // (Unless the environment overrides the file.)
        if std::env::var_os("PERISCOPE_LOG").is_none() {
            assert_eq!(c.log, "debug");
        }
        if std::env::var_os("PERISCOPE_LOG_FORMAT").is_none() {
            assert_eq!(c.log_format, periscope_logging::LogFormat::Json);
        }
        assert_eq!(c.log_to_clickhouse, Some(tracing::Level::INFO));
        let c = Config::load(&cli(&["--config", p, "--log-format", "text"])).unwrap();
        assert_eq!(c.log_format, periscope_logging::LogFormat::Text);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("").is_err());
    }
}
