//! The peer pool: one task per peer keeps a gRPC channel to it, learns its node names and
//! version (GetNodes, polled), and redials with exponential backoff and full jitter when it is
//! down. Requests read each peer's [`PeerSnapshot`] (state, channel, nodes, last error) and
//! watch it change.
//!
//! Peers come from the configuration (agents and relays), and from an agent's Peer service
//! ([`follow_peer_service`]): PEER_ADDED / PEER_UPDATED add or move a peer, PEER_DELETED
//! removes it (its state becomes NODE_GONE for the requests that still hold it).
//!
//! Node names: an agent's node is named `cluster/node` when this relay's cluster is not
//! `default`; a relay peer's nodes get its `CLUSTER=` prefix when they have none.
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use periscope_proto::observer::observer_client::ObserverClient;
use periscope_proto::observer::{GetNodesRequest, Node, ServerStatusRequest, Tls};
use periscope_proto::peer::peer_client::PeerClient;
use periscope_proto::peer::{ChangeNotificationType, NotifyRequest};
use periscope_proto::relay::NodeState;
use tokio::sync::{Notify, watch};
use tonic::transport::{Channel, Endpoint};

use crate::config::{DEFAULT_AGENT_PORT, DEFAULT_CLUSTER, PeerKind, PeerSpec};
use crate::tls::PeerTlsFiles;

/// First backoff step (the n-th retry waits up to `BACKOFF_BASE * 2^n`, capped).
pub const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// How often a connected peer is asked for its nodes (which also checks it is alive).
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Delay before retry number `attempt` (0-based): full jitter, a uniformly random duration
/// in `[0, min(cap, base * 2^attempt)]` (`unit` is the random draw in `[0, 1)`), at least 10 ms.
pub fn backoff(attempt: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let ceiling = base
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(cap)
        .min(cap);
    ceiling
        .mul_f64(unit.clamp(0.0, 1.0))
        .max(Duration::from_millis(10))
}

/// Options shared by every peer.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// This relay's cluster (prefixes agents' node names unless `default`).
    pub cluster_name: String,
    /// Timeout of a connection attempt and of unary calls.
    pub dial_timeout: Duration,
    /// Backoff cap.
    pub retry_timeout: Duration,
    /// TLS for dialing (None: plain text).
    pub tls: Option<PeerTlsFiles>,
}

/// Where a peer came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The configuration.
    Static,
    /// The Peer service, under this announced name.
    PeerService(String),
    /// Kubernetes: the agent pod of this name.
    Kubernetes(String),
}

/// A peer's state as requests see it.
#[derive(Clone, Debug)]
pub struct PeerSnapshot {
    /// Connected, unavailable, error, gone.
    pub state: NodeState,
    /// Incremented at every successful connection (a stream opened on an older generation is
    /// stale).
    pub generation: u64,
    /// The channel while connected.
    pub channel: Option<Channel>,
    /// Version reported by the peer.
    pub version: String,
    /// Its nodes (already renamed) as last reported.
    pub nodes: Vec<Node>,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// When the current connection was made.
    pub connected_at: Option<Instant>,
}

/// One peer.
pub struct Peer {
    /// Unique in the pool (also the merge's source id).
    pub id: u64,
    /// What to dial.
    pub spec: PeerSpec,
    /// Where it came from.
    pub origin: Origin,
    cluster_name: String,
    tls: bool,
    state: watch::Sender<PeerSnapshot>,
    poke: Notify,
    /// Events forwarded from this peer to clients (all requests).
    pub forwarded: AtomicU64,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.id)
            .field("spec", &self.spec)
            .finish()
    }
}

impl Peer {
    /// A peer in state UNKNOWN (until its task connects).
    pub fn new(id: u64, spec: PeerSpec, origin: Origin, opts: &PoolOptions) -> Peer {
        let (state, _) = watch::channel(PeerSnapshot {
            state: NodeState::UnknownNodeState,
            generation: 0,
            channel: None,
            version: String::new(),
            nodes: Vec::new(),
            last_error: None,
            connected_at: None,
        });
        Peer {
            id,
            spec,
            origin,
            cluster_name: opts.cluster_name.clone(),
            tls: opts.tls.is_some(),
            state,
            poke: Notify::new(),
            forwarded: AtomicU64::new(0),
        }
    }

    /// The current state.
    pub fn snapshot(&self) -> PeerSnapshot {
        self.state.borrow().clone()
    }

    /// Watches the state.
    pub fn subscribe(&self) -> watch::Receiver<PeerSnapshot> {
        self.state.subscribe()
    }

    /// Whether this peer is another relay.
    pub fn is_relay(&self) -> bool {
        self.spec.kind == PeerKind::Relay
    }

    /// A node name as clients see it: `cluster/node` for an agent when this relay's cluster is
    /// not `default`; the relay peer's cluster prefix added when absent.
    pub fn rename<'a>(&self, raw: &'a str) -> Cow<'a, str> {
        if raw.is_empty() || raw.contains('/') {
            return Cow::Borrowed(raw);
        }
        match self.spec.kind {
            PeerKind::Agent if self.cluster_name != DEFAULT_CLUSTER => {
                Cow::Owned(format!("{}/{raw}", self.cluster_name))
            }
            PeerKind::Relay => match &self.spec.name {
                Some(cluster) => Cow::Owned(format!("{cluster}/{raw}")),
                None => Cow::Borrowed(raw),
            },
            PeerKind::Agent => Cow::Borrowed(raw),
        }
    }

    /// The name to report for this peer before it told its nodes: the configured name
    /// (renamed) or the address.
    pub fn display_name(&self) -> String {
        match (&self.spec.name, self.spec.kind) {
            (Some(n), PeerKind::Agent) => self.rename(n).into_owned(),
            (Some(n), PeerKind::Relay) => format!("{n}/*"),
            (None, _) => self.spec.address.clone(),
        }
    }

    /// The node names behind this peer: as last reported, else [`Peer::display_name`].
    pub fn node_names(&self) -> Vec<String> {
        let s = self.state.borrow();
        if s.nodes.is_empty() {
            vec![self.display_name()]
        } else {
            s.nodes.iter().map(|n| n.name.clone()).collect()
        }
    }

    /// TLS as GetNodes reports it for this peer's address.
    pub fn tls_info(&self, tls: Option<&PeerTlsFiles>) -> Tls {
        Tls {
            enabled: self.tls,
            server_name: tls
                .map(|t| t.server_name(host_of(&self.spec.address)))
                .unwrap_or_default(),
        }
    }

    /// Records the peer's nodes as just reported (by GetNodes).
    pub fn set_nodes(&self, nodes: Vec<Node>, version: String) {
        self.set(|s| {
            if s.state == NodeState::NodeConnected {
                s.nodes = nodes;
                s.version = version;
            }
        });
    }

    /// A node name seen in this peer's events (already renamed): recorded if it is new, so
    /// node status events name it even before the next poll (a relay peer's nodes may connect
    /// after the relay did).
    pub fn learn_node(&self, name: &str) {
        if name.is_empty() || self.state.borrow().nodes.iter().any(|n| n.name == name) {
            return;
        }
        self.set(|s| {
            s.nodes.push(Node {
                name: name.to_string(),
                state: NodeState::NodeConnected as i32,
                ..Default::default()
            });
            s.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        });
    }

    /// A request saw this peer fail: check it now instead of at the next poll.
    pub fn report_failure(&self) {
        self.poke.notify_one();
    }

    fn set(&self, f: impl FnOnce(&mut PeerSnapshot)) {
        self.state.send_modify(f);
    }

    fn is_gone(&self) -> bool {
        self.state.borrow().state == NodeState::NodeGone
    }
}

/// `host` of `host:port` (brackets kept for IPv6).
pub fn host_of(address: &str) -> &str {
    address.rsplit_once(':').map_or(address, |(h, _)| h)
}

/// The peers of this relay.
pub struct Pool {
    opts: PoolOptions,
    peers: RwLock<BTreeMap<u64, Arc<Peer>>>,
    members: watch::Sender<u64>,
    next_id: AtomicU64,
}

impl Pool {
    /// An empty pool.
    pub fn new(opts: PoolOptions) -> Arc<Pool> {
        Arc::new(Pool {
            opts,
            peers: RwLock::new(BTreeMap::new()),
            members: watch::channel(0).0,
            next_id: AtomicU64::new(1),
        })
    }

    /// The options.
    pub fn options(&self) -> &PoolOptions {
        &self.opts
    }

    /// Adds a peer and starts its task (needs a Tokio runtime).
    pub fn add(self: &Arc<Self>, spec: PeerSpec, origin: Origin) -> Arc<Peer> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let peer = Arc::new(Peer::new(id, spec, origin, &self.opts));
        self.peers
            .write()
            .expect("peers lock")
            .insert(id, peer.clone());
        self.members.send_modify(|g| *g += 1);
        tracing::info!(peer = id, address = %peer.spec.address, kind = ?peer.spec.kind, "peer added");
        tokio::spawn(run_peer(self.opts.clone(), peer.clone()));
        peer
    }

    /// Removes a peer: its task stops and its state becomes NODE_GONE.
    pub fn remove(&self, id: u64) {
        let removed = self.peers.write().expect("peers lock").remove(&id);
        if let Some(p) = removed {
            p.set(|s| {
                s.state = NodeState::NodeGone;
                s.channel = None;
            });
            p.poke.notify_one();
            self.members.send_modify(|g| *g += 1);
            tracing::info!(peer = id, address = %p.spec.address, "peer removed");
        }
    }

    /// Every peer, in the order they were added.
    pub fn peers(&self) -> Vec<Arc<Peer>> {
        self.peers
            .read()
            .expect("peers lock")
            .values()
            .cloned()
            .collect()
    }

    /// Changes whenever a peer is added or removed.
    pub fn members(&self) -> watch::Receiver<u64> {
        self.members.subscribe()
    }

    /// Stops every peer task (at shutdown).
    pub fn close(&self) {
        let ids: Vec<u64> = self
            .peers
            .read()
            .expect("peers lock")
            .keys()
            .copied()
            .collect();
        for id in ids {
            self.remove(id);
        }
    }

    fn find_service_peer(&self, name: &str) -> Option<Arc<Peer>> {
        self.peers
            .read()
            .expect("peers lock")
            .values()
            .find(|p| matches!(&p.origin, Origin::PeerService(n) if n == name))
            .cloned()
    }
}

/// Dials `address` (TLS per `opts`), bounded by the dial timeout.
pub async fn dial(address: &str, opts: &PoolOptions) -> Result<Channel, String> {
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| format!("invalid address {address:?}: {e}"))?
        .connect_timeout(opts.dial_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(opts.dial_timeout)
        .keep_alive_while_idle(true);
    if let Some(tls) = &opts.tls {
        let config = tls
            .client_config(host_of(address))
            .map_err(|e| e.to_string())?;
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| format!("TLS configuration: {}", error_chain(&e)))?;
    }
    match tokio::time::timeout(opts.dial_timeout, endpoint.connect()).await {
        Ok(Ok(ch)) => Ok(ch),
        Ok(Err(e)) => Err(error_chain(&e)),
        Err(_) => Err(format!("no connection within {:?}", opts.dial_timeout)),
    }
}

/// An error with its sources, `a: b: c`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// The state a failed call leaves a peer in: ERROR for answers in which the peer refuses the
/// request (bad argument, permission, unimplemented, ...), UNAVAILABLE for everything else —
/// a connection that breaks mid-stream surfaces as Unavailable, Unknown or Internal (HTTP/2
/// errors map to Internal), depending on how it broke.
pub fn state_of(status: &tonic::Status) -> NodeState {
    use tonic::Code::*;
    match status.code() {
        InvalidArgument | NotFound | AlreadyExists | PermissionDenied | FailedPrecondition
        | OutOfRange | Unimplemented | Unauthenticated | DataLoss => NodeState::NodeError,
        _ => NodeState::NodeUnavailable,
    }
}

/// A status' message with its transport sources.
pub fn status_text(status: &tonic::Status) -> String {
    let mut s = format!("{:?}: {}", status.code(), status.message());
    let mut cur = std::error::Error::source(status);
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Asks a peer for its nodes (GetNodes; ServerStatus for servers without GetNodes), renamed,
/// and its version.
pub async fn fetch_nodes(
    peer: &Peer,
    channel: Channel,
    opts: &PoolOptions,
) -> Result<(Vec<Node>, String), tonic::Status> {
    let mut client = ObserverClient::new(channel);
    let timeout = opts.dial_timeout;
    let call = |what: &'static str| {
        move |_| tonic::Status::deadline_exceeded(format!("{what}: no answer within {timeout:?}"))
    };
    let nodes = match tokio::time::timeout(timeout, client.get_nodes(GetNodesRequest {}))
        .await
        .map_err(call("GetNodes"))?
    {
        Ok(r) => r.into_inner().nodes,
        Err(s) if s.code() == tonic::Code::Unimplemented => {
            let st = tokio::time::timeout(timeout, client.server_status(ServerStatusRequest {}))
                .await
                .map_err(call("ServerStatus"))??
                .into_inner();
            vec![Node {
                name: peer.spec.name.clone().unwrap_or_default(),
                version: st.version,
                address: peer.spec.address.clone(),
                state: NodeState::NodeConnected as i32,
                tls: None,
                uptime_ns: st.uptime_ns,
                num_flows: st.num_flows,
                max_flows: st.max_flows,
                seen_flows: st.seen_flows,
            }]
        }
        Err(s) => return Err(s),
    };
    let mut nodes: Vec<Node> = nodes
        .into_iter()
        .map(|mut n| {
            if n.name.is_empty() {
                n.name = peer.display_name();
            } else {
                n.name = peer.rename(&n.name).into_owned();
            }
            if !peer.is_relay() {
                // What this relay dials, and how.
                n.address = peer.spec.address.clone();
                n.tls = Some(peer.tls_info(opts.tls.as_ref()));
                n.state = NodeState::NodeConnected as i32;
            }
            n
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let version = nodes.first().map(|n| n.version.clone()).unwrap_or_default();
    Ok((nodes, version))
}

/// The task of one peer: connect, poll, reconnect with backoff, until removed.
async fn run_peer(opts: PoolOptions, peer: Arc<Peer>) {
    let mut attempt = 0u32;
    let mut gone = peer.subscribe();
    loop {
        if peer.is_gone() {
            return;
        }
        let failure: (NodeState, String) = match dial(&peer.spec.address, &opts).await {
            Err(e) => (NodeState::NodeUnavailable, e),
            Ok(channel) => match fetch_nodes(&peer, channel.clone(), &opts).await {
                Err(s) => (state_of(&s), status_text(&s)),
                Ok((nodes, version)) => {
                    attempt = 0;
                    tracing::info!(peer = peer.id, address = %peer.spec.address,
                        nodes = ?nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
                        version = %version, "peer connected");
                    peer.set(|s| {
                        if s.state == NodeState::NodeGone {
                            return;
                        }
                        s.state = NodeState::NodeConnected;
                        s.generation += 1;
                        s.channel = Some(channel.clone());
                        s.nodes = nodes;
                        s.version = version;
                        s.last_error = None;
                        s.connected_at = Some(Instant::now());
                    });
                    // Connected: poll until a check fails.
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(POLL_INTERVAL) => {}
                            _ = peer.poke.notified() => {}
                        }
                        if peer.is_gone() {
                            return;
                        }
                        match fetch_nodes(&peer, channel.clone(), &opts).await {
                            Ok((nodes, version)) => peer.set(|s| {
                                s.nodes = nodes;
                                s.version = version;
                            }),
                            Err(s) => break (state_of(&s), status_text(&s)),
                        }
                    }
                }
            },
        };
        if peer.is_gone() {
            return;
        }
        let (state, error) = failure;
        let was = peer.snapshot();
        if was.state != state || attempt == 0 {
            tracing::warn!(peer = peer.id, address = %peer.spec.address, state = ?state,
                error = %error, "peer not available; retrying with backoff");
        } else {
            tracing::debug!(peer = peer.id, address = %peer.spec.address, attempt, error = %error,
                "peer still not available");
        }
        peer.set(|s| {
            if s.state == NodeState::NodeGone {
                return;
            }
            s.state = state;
            s.channel = None;
            s.last_error = Some(error);
            s.connected_at = None;
            for n in &mut s.nodes {
                n.state = state as i32;
            }
        });
        let delay = backoff(attempt, BACKOFF_BASE, opts.retry_timeout, fastrand::f64());
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = async { while gone.changed().await.is_ok() {
                if gone.borrow().state == NodeState::NodeGone { return; }
            } } => return,
        }
    }
}

/// `addr` with the agents' default port when it has none.
pub fn with_default_port(addr: &str) -> String {
    let has_port = match addr.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        addr.to_string()
    } else if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]:{DEFAULT_AGENT_PORT}")
    } else {
        format!("{addr}:{DEFAULT_AGENT_PORT}")
    }
}

/// Follows the Peer service of the agent at `address`: every announced node becomes an agent
/// peer (added, moved, removed as announced). The subscription is redialed with backoff.
pub async fn follow_peer_service(pool: Arc<Pool>, address: String) {
    let opts = pool.options().clone();
    let mut attempt = 0u32;
    loop {
        let error = match dial(&address, &opts).await {
            Err(e) => e,
            Ok(ch) => match PeerClient::new(ch).notify(NotifyRequest {}).await {
                Err(s) => status_text(&s),
                Ok(stream) => {
                    tracing::info!(address = %address, "following the Peer service");
                    attempt = 0;
                    let mut stream = stream.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(n)) => apply_notification(&pool, &n),
                            Ok(None) => break "the Peer service ended the stream".to_string(),
                            Err(s) => break status_text(&s),
                        }
                    }
                }
            },
        };
        tracing::warn!(address = %address, error = %error, "Peer service unavailable; retrying with backoff");
        tokio::time::sleep(backoff(
            attempt,
            BACKOFF_BASE,
            opts.retry_timeout,
            fastrand::f64(),
        ))
        .await;
        attempt = attempt.saturating_add(1);
    }
}

/// Applies one Peer service notification to the pool.
pub fn apply_notification(pool: &Arc<Pool>, n: &periscope_proto::peer::ChangeNotification) {
    let address = with_default_port(&n.address);
    let existing = pool.find_service_peer(&n.name);
    match ChangeNotificationType::try_from(n.r#type) {
        Ok(ChangeNotificationType::PeerAdded | ChangeNotificationType::PeerUpdated) => {
            if n.address.is_empty() {
                tracing::warn!(name = %n.name, "Peer service announced a node without address; ignored");
                return;
            }
            if let Some(p) = &existing {
                if p.spec.address == address {
                    return;
                }
                pool.remove(p.id);
            }
            pool.add(
                PeerSpec {
                    name: Some(n.name.clone()).filter(|n| !n.is_empty()),
                    address,
                    kind: PeerKind::Agent,
                },
                Origin::PeerService(n.name.clone()),
            );
        }
        Ok(ChangeNotificationType::PeerDeleted) => {
            if let Some(p) = existing {
                pool.remove(p.id);
            }
        }
        _ => tracing::debug!(name = %n.name, kind = n.r#type, "Peer service notification ignored"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use periscope_proto::peer::ChangeNotification;

    fn opts(cluster: &str) -> PoolOptions {
        PoolOptions {
            cluster_name: cluster.into(),
            dial_timeout: Duration::from_millis(300),
            retry_timeout: Duration::from_secs(1),
            tls: None,
        }
    }

    #[test]
    fn backoff_grows_with_full_jitter_up_to_the_cap() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(30);
        // The ceiling doubles per attempt until the cap.
        assert_eq!(backoff(0, base, cap, 1.0), base);
        assert_eq!(backoff(3, base, cap, 1.0), base * 8);
        assert_eq!(backoff(20, base, cap, 1.0), cap);
        assert_eq!(backoff(u32::MAX, base, cap, 1.0), cap);
        // Full jitter: anywhere in [0, ceiling] (10 ms floor).
        assert_eq!(backoff(3, base, cap, 0.5), base * 4);
        assert_eq!(backoff(3, base, cap, 0.0), Duration::from_millis(10));
        for attempt in 0..40 {
            for _ in 0..20 {
                let d = backoff(attempt, base, cap, fastrand::f64());
                assert!(d <= cap && d >= Duration::from_millis(10), "{d:?}");
            }
        }
    }

    #[test]
    fn names() {
        let agent = |name: Option<&str>, cluster: &str| {
            Peer::new(
                1,
                PeerSpec {
                    name: name.map(String::from),
                    address: "127.0.0.1:4244".into(),
                    kind: PeerKind::Agent,
                },
                Origin::Static,
                &opts(cluster),
            )
        };
        assert_eq!(agent(None, "default").rename("n1"), "n1");
        assert_eq!(agent(None, "west").rename("n1"), "west/n1");
        assert_eq!(agent(None, "west").rename("east/n1"), "east/n1");
        assert_eq!(agent(None, "west").display_name(), "127.0.0.1:4244");
        assert_eq!(agent(Some("n1"), "west").display_name(), "west/n1");
        let relay = |name: Option<&str>| {
            Peer::new(
                2,
                PeerSpec {
                    name: name.map(String::from),
                    address: "127.0.0.1:4245".into(),
                    kind: PeerKind::Relay,
                },
                Origin::Static,
                &opts("top"),
            )
        };
        assert_eq!(relay(Some("east")).rename("n1"), "east/n1");
        assert_eq!(relay(Some("east")).rename("east/n1"), "east/n1");
        assert_eq!(relay(None).rename("n1"), "n1");
        assert_eq!(relay(None).rename("c9/n1"), "c9/n1");
        assert_eq!(relay(Some("east")).node_names(), ["east/*"]);
    }

    #[test]
    fn failures_map_to_states() {
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::Internal,
            tonic::Code::Unknown,
            tonic::Code::DeadlineExceeded,
            tonic::Code::Cancelled,
        ] {
            let s = tonic::Status::new(code, "x");
            assert_eq!(state_of(&s), NodeState::NodeUnavailable, "{code:?}");
        }
        for code in [
            tonic::Code::InvalidArgument,
            tonic::Code::PermissionDenied,
            tonic::Code::Unauthenticated,
            tonic::Code::Unimplemented,
        ] {
            let s = tonic::Status::new(code, "x");
            assert_eq!(state_of(&s), NodeState::NodeError, "{code:?}");
        }
    }

    #[test]
    fn default_ports() {
        assert_eq!(with_default_port("10.0.0.1"), "10.0.0.1:4244");
        assert_eq!(with_default_port("10.0.0.1:5000"), "10.0.0.1:5000");
        assert_eq!(with_default_port("node-a"), "node-a:4244");
        assert_eq!(with_default_port("fd00::1"), "[fd00::1]:4244");
        assert_eq!(with_default_port("[fd00::1]:5000"), "[fd00::1]:5000");
    }

    #[tokio::test]
    async fn unreachable_peers_become_unavailable_and_peer_service_changes_apply() {
        let pool = Pool::new(opts("default"));
        // A port nobody listens on (bound then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let n = |kind: ChangeNotificationType, addr: &str| ChangeNotification {
            name: "n1".into(),
            address: addr.into(),
            r#type: kind as i32,
            tls: None,
        };
        apply_notification(
            &pool,
            &n(
                ChangeNotificationType::PeerAdded,
                &format!("127.0.0.1:{port}"),
            ),
        );
        let peers = pool.peers();
        assert_eq!(peers.len(), 1);
        let p = peers[0].clone();
        let mut rx = p.subscribe();
        tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|s| s.state == NodeState::NodeUnavailable),
        )
        .await
        .expect("unavailable within 5 s")
        .unwrap();
        assert!(p.snapshot().last_error.is_some());
        assert_eq!(p.node_names(), ["n1"]);
        // Moved: a new peer at the new address.
        apply_notification(&pool, &n(ChangeNotificationType::PeerUpdated, "127.0.0.1"));
        let peers = pool.peers();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].spec.address, "127.0.0.1:4244");
        assert_eq!(p.snapshot().state, NodeState::NodeGone);
        apply_notification(&pool, &n(ChangeNotificationType::PeerDeleted, ""));
        assert!(pool.peers().is_empty());
    }
}
