//! The JSON API between the relay and the web UI.
//!
//! The relay serves these types under `/api/v1/` (see `relay/src/ui.rs`); the Leptos UI
//! (`ui/`, wasm) reads them. Flows themselves travel as the proto [`Flow`] in its JSON mapping:
//! there is one `Flow` type everywhere.
//!
//! | Route | Answer |
//! |---|---|
//! | `GET /api/v1/map?` [`MapQuery`] | [`ServiceMap`] |
//! | `GET /api/v1/map/stream?` [`MapQuery`] (SSE) | event `map`: [`ServiceMap`], then events `delta`: [`MapDelta`] |
//! | `GET /api/v1/map/node?id=ID&` [`MapQuery`] | [`NodeDetail`] |
//! | `GET /api/v1/flows?` [`FlowQuery`] | [`FlowsPage`] |
//! | `GET /api/v1/flows/stream?` [`FlowQuery`] (SSE) | events `flow`: [`Flow`] JSON, `lost`: [`Lost`] |
//! | `GET /api/v1/policies` | [`PolicyGraph`] |
//! | `GET /api/v1/alerts?state=` | `[`[`AlertView`]`]` |
//! | `GET /api/v1/ui-config` (no token needed) | [`UiConfig`] |
//!
//! Access: every `/api/v1/` route but `ui-config` wants `Authorization: Bearer TOKEN` when the
//! relay has a token; server-sent event streams (the browser's `EventSource` cannot set headers)
//! may pass it as `access_token=TOKEN` instead. Bad parameters get `400` with a text naming the
//! parameter and what was expected.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

pub use periscope_proto::flow::Flow;
use periscope_proto::flow::{self, DropReason, TrafficDirection, Verdict};
use serde::{Deserialize, Serialize};

mod explain;
pub use explain::{Explanation, explain};

/// Where an answer's data came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataSource {
    /// The relay's live aggregation of the merged stream (recent minutes, in memory).
    Live,
    /// ClickHouse (the `flow_edges_1m` materialized view, or the `flows` table).
    Clickhouse,
    /// The relay's in-memory window of recent flows (no ClickHouse configured).
    Window,
}

/// What kind of thing a map node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// A workload (Deployment, StatefulSet, ...) or a bare pod, in a namespace.
    Workload,
    /// Everything outside the cluster (`reserved:world`, CIDR identities).
    World,
    /// The node's host (`reserved:host`).
    Host,
    /// Another node of the cluster (`reserved:remote-node`).
    RemoteNode,
    /// Another reserved identity (`reserved:health`, `reserved:kube-apiserver`, `reserved:init`, ...).
    Reserved,
    /// An endpoint the agents could not name.
    Unknown,
}

/// A node's id on the map: `namespace/name` for workloads, the reserved label
/// (`reserved:world`, ...) otherwise.
pub type NodeId = String;

/// The name used for an endpoint nobody could name (no workload, pod or reserved label).
pub const UNKNOWN: &str = "reserved:unknown";

/// Names an endpoint the way the service map does (and the ClickHouse view `flow_edges_1m`):
/// its workload, else its pod, else its first `reserved:` label; returns `(namespace, name)`.
pub fn endpoint_name(ep: &flow::Endpoint) -> (String, String) {
    if let Some(w) = ep.workloads.first().filter(|w| !w.name.is_empty()) {
        return (ep.namespace.clone(), w.name.clone());
    }
    if !ep.pod_name.is_empty() {
        return (ep.namespace.clone(), ep.pod_name.clone());
    }
    let reserved = ep
        .labels
        .iter()
        .find(|l| l.starts_with("reserved:"))
        .cloned()
        .unwrap_or_else(|| UNKNOWN.to_string());
    (String::new(), reserved)
}

/// The map id of `(namespace, name)` as [`endpoint_name`] returns them (or as the view stores them).
pub fn node_id(namespace: &str, name: &str) -> NodeId {
    match (namespace.is_empty(), name.is_empty()) {
        (_, true) => UNKNOWN.to_string(),
        (true, false) => name.to_string(),
        (false, false) => format!("{namespace}/{name}"),
    }
}

/// The kind of a node from its name (as [`endpoint_name`] returns it).
pub fn node_kind(namespace: &str, name: &str) -> NodeKind {
    if !namespace.is_empty() {
        return NodeKind::Workload;
    }
    match name {
        "reserved:world" | "reserved:world-ipv4" | "reserved:world-ipv6" => NodeKind::World,
        "reserved:host" => NodeKind::Host,
        "reserved:remote-node" => NodeKind::RemoteNode,
        UNKNOWN | "" => NodeKind::Unknown,
        n if n.starts_with("reserved:") => NodeKind::Reserved,
        n if n.starts_with("cidr:") => NodeKind::World,
        // Policy graph peers: entities (`entity:cluster`, `entity:all`) and selectors that match
        // no known endpoint (`selector:…`).
        n if n.starts_with("entity:") => NodeKind::Reserved,
        n if n.starts_with("selector:") => NodeKind::Unknown,
        _ => NodeKind::Workload,
    }
}

/// One node of the service map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapNode {
    /// [`node_id`].
    pub id: NodeId,
    /// Namespace (empty for reserved nodes).
    pub namespace: String,
    /// Workload or pod name, or the reserved label.
    pub name: String,
    /// What it is.
    pub kind: NodeKind,
}

impl MapNode {
    /// The node of `(namespace, name)`.
    pub fn new(namespace: &str, name: &str) -> Self {
        MapNode {
            id: node_id(namespace, name),
            namespace: namespace.to_string(),
            name: if name.is_empty() {
                UNKNOWN.into()
            } else {
                name.to_string()
            },
            kind: node_kind(namespace, name),
        }
    }
}

/// The identity of an edge: who talks to whom, on what.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EdgeKey {
    /// Source node id.
    pub source: NodeId,
    /// Destination node id.
    pub destination: NodeId,
    /// Destination port (0 for ICMP and port-less protocols).
    pub port: u32,
    /// `TCP`, `UDP`, `SCTP`, `ICMPv4`, `ICMPv6` (as the `flows.protocol` column).
    pub protocol: String,
}

/// One edge of the service map: flows from `source` to `destination` on `port`/`protocol`
/// (new connections and unanswered packets; replies are not counted: they would draw the edge
/// backwards).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapEdge {
    /// Who and what.
    #[serde(flatten)]
    pub key: EdgeKey,
    /// Flows forwarded (also redirected, translated and traced ones).
    pub forwarded: u64,
    /// Flows dropped.
    pub dropped: u64,
    /// Flows that policy in audit mode would have dropped.
    pub audit: u64,
    /// Flows with an error verdict or none.
    pub other: u64,
    /// Bytes of the counted flows (`Flow.periscope_bytes`: a connection's bytes both ways, on
    /// its records that are not replies; ClickHouse counts each flow once, 0 for minutes stored
    /// before migration 0007).
    pub bytes: u64,
    /// First flow, Unix nanoseconds.
    pub first_seen_ns: i64,
    /// Last flow, Unix nanoseconds.
    pub last_seen_ns: i64,
}

/// How an edge is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeLook {
    /// Only forwarded flows: green.
    Forwarded,
    /// Only dropped flows: red.
    Dropped,
    /// Some of each: dashed.
    Mixed,
    /// Audit verdicts (and nothing dropped): a distinct colour.
    Audit,
}

impl MapEdge {
    /// An edge with no flows yet.
    pub fn new(key: EdgeKey) -> Self {
        MapEdge {
            key,
            forwarded: 0,
            dropped: 0,
            audit: 0,
            other: 0,
            bytes: 0,
            first_seen_ns: i64::MAX,
            last_seen_ns: i64::MIN,
        }
    }

    /// Counts one flow of `verdict` with `bytes`, seen at `time_ns`.
    pub fn count(&mut self, verdict: Verdict, bytes: u64, time_ns: i64) {
        self.add(verdict, 1, bytes, time_ns, time_ns);
    }

    /// Counts `flows` flows of `verdict`.
    pub fn add(&mut self, verdict: Verdict, flows: u64, bytes: u64, first_ns: i64, last_ns: i64) {
        match verdict {
            Verdict::Forwarded | Verdict::Redirected | Verdict::Translated | Verdict::Traced => {
                self.forwarded += flows
            }
            Verdict::Dropped => self.dropped += flows,
            Verdict::Audit => self.audit += flows,
            Verdict::Error | Verdict::Unknown => self.other += flows,
        }
        self.bytes += bytes;
        self.first_seen_ns = self.first_seen_ns.min(first_ns);
        self.last_seen_ns = self.last_seen_ns.max(last_ns);
    }

    /// Adds another edge's counts.
    pub fn merge(&mut self, o: &MapEdge) {
        self.forwarded += o.forwarded;
        self.dropped += o.dropped;
        self.audit += o.audit;
        self.other += o.other;
        self.bytes += o.bytes;
        self.first_seen_ns = self.first_seen_ns.min(o.first_seen_ns);
        self.last_seen_ns = self.last_seen_ns.max(o.last_seen_ns);
    }

    /// All flows counted.
    pub fn flows(&self) -> u64 {
        self.forwarded + self.dropped + self.audit + self.other
    }

    /// How to draw it.
    pub fn look(&self) -> EdgeLook {
        match (self.forwarded > 0, self.dropped > 0) {
            (true, true) => EdgeLook::Mixed,
            (false, true) => EdgeLook::Dropped,
            _ if self.audit > 0 => EdgeLook::Audit,
            _ => EdgeLook::Forwarded,
        }
    }
}

/// The service map over a time range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceMap {
    /// Start of the range, Unix nanoseconds.
    pub since_ns: i64,
    /// End of the range, Unix nanoseconds.
    pub until_ns: i64,
    /// Where the data came from.
    pub source: DataSource,
    /// Every node an edge names, sorted by id.
    pub nodes: Vec<MapNode>,
    /// Edges, most flows first.
    pub edges: Vec<MapEdge>,
    /// True when edges were left out to stay under the query's `limit`.
    pub truncated: bool,
}

/// A live map's change since the last event of its stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapDelta {
    /// Start of the range now covered, Unix nanoseconds.
    pub since_ns: i64,
    /// End of the range now covered, Unix nanoseconds.
    pub until_ns: i64,
    /// New nodes.
    pub nodes: Vec<MapNode>,
    /// Node ids no edge names any more.
    pub removed_nodes: Vec<NodeId>,
    /// New edges, and edges whose counts changed (the new totals).
    pub edges: Vec<MapEdge>,
    /// Edges that aged out of the range.
    pub removed_edges: Vec<EdgeKey>,
}

/// Parameters of the map routes (query string).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapQuery {
    /// Start: an RFC 3339 time, or a duration before now (`5m`, `1h`, `24h`). Default `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// End: an RFC 3339 time, or a duration before now. Default now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Comma-separated namespaces: an edge is kept when either end is in one of them. Default all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<String>,
    /// At most this many edges (most flows first). Default 5000, at most 20000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// What a map node is, in detail (the panel shown when it is clicked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeDetail {
    /// The node.
    pub node: MapNode,
    /// Security identities seen for it.
    pub identities: Vec<u32>,
    /// Its labels (`k8s:app=db`, `reserved:world`, ...), as seen on flows.
    pub labels: Vec<String>,
    /// Pods seen for it.
    pub pods: Vec<String>,
    /// Edges into it.
    pub inbound: Vec<MapEdge>,
    /// Edges out of it.
    pub outbound: Vec<MapEdge>,
    /// The policies in force that select it.
    pub policies: Vec<PolicyRef>,
}

/// Parameters of the flow routes (query string). Every filter narrows (AND); empty is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowQuery {
    /// Start: an RFC 3339 time or a duration before now. Default: the newest flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// End: an RFC 3339 time or a duration before now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// At most this many flows (newest last). Default 100, at most 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Namespace of either end (comma-separated: any of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pod of either end: `name` or `namespace/name`, a prefix matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Label selector on either end (`app=db`, `k8s:app=db,tier`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// IP address or CIDR of either end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Port of either end (1..=65535).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// `tcp`, `udp`, `icmp`, `sctp`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// `FORWARDED`, `DROPPED`, `AUDIT`, `ERROR`, ... (comma-separated: any of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// Drop reason name (`POLICY_DENIED`) or number (comma-separated: any of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<String>,
    /// Node name (a prefix, or `cluster/node`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Flow uuids (comma-separated): the flows an alert names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Map node id at the source (`ns/workload`, `reserved:world`): an edge's flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Map node id at the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Case-insensitive text anywhere in the flow's summary, names, labels and addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A page of flows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowsPage {
    /// Oldest first.
    pub flows: Vec<Flow>,
    /// Where they came from.
    pub source: DataSource,
    /// True when more flows matched than `limit`.
    pub truncated: bool,
}

/// Flows a live stream could not deliver (the browser fell behind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lost {
    /// How many.
    pub flows: u64,
}

/// A policy, by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyRef {
    /// Policy name.
    pub name: String,
    /// Namespace (empty for cluster-wide policies).
    pub namespace: String,
    /// `CiliumNetworkPolicy`, `CiliumClusterwideNetworkPolicy`, `NetworkPolicy`.
    pub kind: String,
}

/// Ingress or egress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Into the selected endpoints.
    Ingress,
    /// Out of the selected endpoints.
    Egress,
}

/// One rule of a policy, in words and map ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleInfo {
    /// Ingress or egress.
    pub direction: Direction,
    /// A deny rule (else allow).
    pub deny: bool,
    /// The peers: map node ids the peer selectors match, plus `cidr:…`, `entity:…` and
    /// `selector:…` for peers with no endpoint behind them. Empty: any peer.
    pub peers: Vec<String>,
    /// `TCP/6379`, `UDP/53`, `TCP/8000-8080`, `ICMP/8`; empty: any port.
    pub ports: Vec<String>,
}

/// A policy in force, as the agents report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// Which policy.
    #[serde(flatten)]
    pub policy: PolicyRef,
    /// The endpoint selector, in words (`k8s:app=db`, `all endpoints`).
    pub selector: String,
    /// Map node ids of the endpoints it selects.
    pub selects: Vec<NodeId>,
    /// Whether the selected endpoints deny ingress not allowed by some rule (default deny).
    pub ingress_default_deny: bool,
    /// Same for egress.
    pub egress_default_deny: bool,
    /// The rules.
    pub rules: Vec<RuleInfo>,
    /// Agents (node names) that have it in force.
    pub nodes: Vec<String>,
}

/// Who may talk to whom, as the policies say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEdge {
    /// Source node id.
    pub source: NodeId,
    /// Destination node id.
    pub destination: NodeId,
    /// Ports (`TCP/6379`); empty: any.
    pub ports: Vec<String>,
    /// A deny rule.
    pub deny: bool,
    /// The policies with the rule (`namespace/name`, or `name` for cluster-wide ones).
    pub policies: Vec<String>,
}

/// The policies view: policies in force, who they let talk to whom, and what was denied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyGraph {
    /// Every policy in force on some agent.
    pub policies: Vec<PolicyInfo>,
    /// Nodes of the graph (selected endpoints and rule peers).
    pub nodes: Vec<MapNode>,
    /// Allowed (and denied) pairs from the rules.
    pub edges: Vec<PolicyEdge>,
    /// Observed edges with dropped flows in the last minutes (the live map's red edges).
    pub denied: Vec<MapEdge>,
    /// Agents that could not be asked, with why.
    pub errors: Vec<String>,
}

/// An alert as `/api/v1/alerts` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertView {
    /// Identifies the alert across notifications.
    pub fingerprint: String,
    /// Rule name.
    pub rule: String,
    /// `pending`, `firing` or `resolved`.
    pub state: String,
    /// Rule severity.
    pub severity: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Rendered annotations (`summary`, `description`).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// When the threshold was first reached (RFC 3339).
    pub active_at: String,
    /// When it fired.
    #[serde(default)]
    pub starts_at: Option<String>,
    /// When it resolved.
    #[serde(default)]
    pub ends_at: Option<String>,
    /// Matching flows at the last evaluation.
    pub count: u64,
    /// The rule's threshold.
    pub threshold: u64,
    /// The rule's window (`5m`).
    pub window: String,
    /// Uuids of matching flows: link to `/api/v1/flows?uuid=…`.
    #[serde(default)]
    pub sample_flow_uuids: Vec<String>,
}

/// What the UI needs before it can ask anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UiConfig {
    /// Whether the API wants a bearer token.
    pub auth_required: bool,
    /// The relay's cluster name.
    pub cluster: String,
    /// Where history comes from.
    pub history: DataSource,
}

/// The verdict of a flow.
pub fn verdict(f: &Flow) -> Verdict {
    Verdict::try_from(f.verdict).unwrap_or(Verdict::Unknown)
}

/// The traffic direction of a flow.
pub fn direction(f: &Flow) -> TrafficDirection {
    TrafficDirection::try_from(f.traffic_direction).unwrap_or(TrafficDirection::Unknown)
}

/// The drop reason of a flow (from `drop_reason_desc`).
pub fn drop_reason(f: &Flow) -> DropReason {
    DropReason::try_from(f.drop_reason_desc).unwrap_or(DropReason::Unknown)
}

/// `(protocol, source port, destination port)` of a flow: `TCP`, `UDP`, `ICMPv4`, ...
pub fn l4(f: &Flow) -> (&'static str, u32, u32) {
    use flow::layer4::Protocol;
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(Protocol::Tcp(t)) => ("TCP", t.source_port, t.destination_port),
        Some(Protocol::Udp(u)) => ("UDP", u.source_port, u.destination_port),
        Some(Protocol::Sctp(s)) => ("SCTP", s.source_port, s.destination_port),
        Some(Protocol::IcmPv4(_)) => ("ICMPv4", 0, 0),
        Some(Protocol::IcmPv6(_)) => ("ICMPv6", 0, 0),
        _ => ("", 0, 0),
    }
}

/// Monitor event type of policy verdict notifications (`Flow.event_type.type`).
const POLICY_VERDICT_EVENT: i32 = 5;

/// The map edge a flow counts on, or `None` when it does not count. Each packet is observed
/// more than once (leaving its source, arriving at its destination, and as a policy verdict),
/// so an edge counts one observation per packet, the one that tells how it ended:
///
/// - replies, L7 records and records without L4 do not count (a reply would draw the edge
///   backwards; an L7 record repeats a packet its trace already counted);
/// - policy verdict notifications do not count (the packet's trace or drop carries the same
///   verdict);
/// - a packet forwarded at its source's egress towards a workload in the cluster does not count:
///   the destination's ingress observation (delivered or dropped) does.
///
/// The ClickHouse view `flow_edges_1m` applies the same rule.
pub fn edge_of(f: &Flow) -> Option<EdgeKey> {
    if f.is_reply == Some(true) || f.l4.is_none() || f.r#type == flow::FlowType::L7 as i32 {
        return None;
    }
    if f.event_type
        .as_ref()
        .is_some_and(|e| e.r#type == POLICY_VERDICT_EVENT)
    {
        return None;
    }
    let forwarded = matches!(
        verdict(f),
        Verdict::Forwarded | Verdict::Redirected | Verdict::Translated | Verdict::Traced
    );
    if forwarded
        && direction(f) == TrafficDirection::Egress
        && f.destination
            .as_ref()
            .is_some_and(|d| !d.namespace.is_empty())
    {
        return None;
    }
    let (sns, sname) = f.source.as_ref().map(endpoint_name).unwrap_or_default();
    let (dns, dname) = f
        .destination
        .as_ref()
        .map(endpoint_name)
        .unwrap_or_default();
    let (protocol, _, dport) = l4(f);
    Some(EdgeKey {
        source: node_id(&sns, &sname),
        destination: node_id(&dns, &dname),
        port: dport,
        protocol: protocol.to_string(),
    })
}

#[cfg(test)]
mod tests;
