//! Agent events (Hubble's `GetAgentEvents`): the `flow.AgentEvent`s the agent emits when its
//! state changes, kept in a bounded ring that GetAgentEvents reads the way GetFlows reads the
//! flow ring.
//!
//! The events of one change come from [`diff`] of the applied state before and after it:
//!
//! - POLICY_UPDATED / POLICY_DELETED for each policy added or changed / removed
//!   (`policy_update`: the policy's labels as Cilium writes them —
//!   `k8s:io.cilium.k8s.policy.derived-from=<kind>`, `…name=<name>`, `…namespace=<namespace>` —,
//!   the revision of the state that applied the change, and the number of rules);
//! - ENDPOINT_CREATED / ENDPOINT_DELETED for each endpoint of this node attached / detached
//!   (`endpoint_update`: endpoint id, identity labels, pod name, namespace), and
//!   ENDPOINT_REGENERATE_SUCCESS for an endpoint whose identity, labels, enforcement or selecting
//!   policies changed (`endpoint_regenerate`);
//! - IPCACHE_UPSERTED / IPCACHE_DELETED for each ipcache prefix added or changed / removed
//!   (`ipcache_update`: prefix, identity, the old identity when it changed, namespace and pod name
//!   of endpoint addresses);
//! - SERVICE_UPSERTED / SERVICE_DELETED for each service frontend (address, port, protocol) added
//!   or changed / removed, for the services of the topology file and of the metadata sources
//!   (Kubernetes Services and EndpointSlices): `service_upsert` with the frontend, its ready
//!   backends, the frontend type (`ClusterIP`, `ExternalIPs`, `NodePort`, `LoadBalancer`), name,
//!   namespace and traffic policies;
//!   `service_delete` with the id. A frontend's id is a hash of namespace, name, address, port
//!   and protocol, so it is the same in its upserts and its deletion, across agent restarts.
//!
//! At start the agent records the diff of an empty state and its first state (what it started
//! with), then AGENT_STARTED (`agent_start` with the start time) — the order Cilium's agent
//! sends them in: the start notice comes once the initial state is in force.
//!
//! The datapath emits no debug events, so GetDebugEvents has nothing to serve (see
//! [`crate::observer`]).
use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use periscope_proto::flow::{
    AgentEvent, AgentEventType, EndpointRegenNotification, EndpointUpdateNotification,
    IpCacheNotification, PolicyUpdateNotification, ServiceDeleteNotification,
    ServiceUpsertNotification, ServiceUpsertNotificationAddr, TimeNotification,
    agent_event::Notification,
};
use prost_types::Timestamp;
use tokio::sync::watch;

use crate::agent::{EndpointView, State};
use crate::policy::Policy;

/// One recorded event with its position and time.
#[derive(Clone, Debug, PartialEq)]
pub struct Stamped {
    /// Position in the ring (0, 1, 2, … since the agent started).
    pub seq: u64,
    /// When the event was recorded.
    pub time: Timestamp,
    /// The event.
    pub event: AgentEvent,
}

impl Stamped {
    /// The time in nanoseconds since the epoch.
    pub fn nanos(&self) -> i128 {
        self.time.seconds as i128 * 1_000_000_000 + self.time.nanos as i128
    }
}

/// A bounded ring of agent events: the newest `capacity` are kept, older ones are dropped.
/// One writer (the agent's reload loop), any number of readers; readers of a position already
/// dropped continue with the oldest held.
pub struct AgentEventRing {
    inner: Mutex<Inner>,
    notify: watch::Sender<u64>,
    capacity: usize,
}

struct Inner {
    events: VecDeque<Arc<Stamped>>,
    /// Events recorded so far (the next position).
    written: u64,
}

impl AgentEventRing {
    /// A ring keeping the newest `capacity` events (at least 1).
    pub fn new(capacity: usize) -> Arc<AgentEventRing> {
        let (notify, _) = watch::channel(0);
        Arc::new(AgentEventRing {
            inner: Mutex::new(Inner {
                events: VecDeque::with_capacity(capacity.clamp(1, 4096)),
                written: 0,
            }),
            notify,
            capacity: capacity.max(1),
        })
    }

    /// Capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records events, stamped with the current time.
    pub fn push(&self, events: impl IntoIterator<Item = AgentEvent>) {
        self.push_at(now(), events)
    }

    /// Records events stamped with `time`.
    pub fn push_at(&self, time: Timestamp, events: impl IntoIterator<Item = AgentEvent>) {
        let mut inner = self.inner.lock().expect("agent events lock");
        for event in events {
            if inner.events.len() == self.capacity {
                inner.events.pop_front();
            }
            let seq = inner.written;
            inner
                .events
                .push_back(Arc::new(Stamped { seq, time, event }));
            inner.written += 1;
        }
        let written = inner.written;
        drop(inner);
        self.notify.send_if_modified(|w| {
            let changed = *w != written;
            *w = written;
            changed
        });
    }

    /// Events recorded so far (the position of the next one).
    pub fn written(&self) -> u64 {
        self.inner.lock().expect("agent events lock").written
    }

    /// Every event held, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<Stamped>> {
        let inner = self.inner.lock().expect("agent events lock");
        inner.events.iter().cloned().collect()
    }

    /// The events from position `from` on (from the oldest held when `from` was dropped), and
    /// the position after them.
    pub fn read_from(&self, from: u64) -> (Vec<Arc<Stamped>>, u64) {
        let inner = self.inner.lock().expect("agent events lock");
        let oldest = inner.written - inner.events.len() as u64;
        let skip = from.saturating_sub(oldest) as usize;
        let out: Vec<_> = inner.events.iter().skip(skip).cloned().collect();
        (out, inner.written.max(from))
    }

    /// Changes whenever events are recorded.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }
}

/// The current wall-clock time.
pub fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn event(kind: AgentEventType, notification: Notification) -> AgentEvent {
    AgentEvent {
        r#type: kind as i32,
        notification: Some(notification),
    }
}

/// AGENT_STARTED at `time`.
pub fn agent_started(time: Timestamp) -> AgentEvent {
    event(
        AgentEventType::AgentStarted,
        Notification::AgentStart(TimeNotification { time: Some(time) }),
    )
}

/// A policy's labels as Cilium's agent events carry them.
pub fn policy_labels(p: &Policy) -> Vec<String> {
    let mut labels = vec![
        format!("k8s:io.cilium.k8s.policy.derived-from={}", p.kind),
        format!("k8s:io.cilium.k8s.policy.name={}", p.name),
    ];
    if let Some(ns) = &p.namespace {
        labels.push(format!("k8s:io.cilium.k8s.policy.namespace={ns}"));
    }
    labels
}

fn policy_event(kind: AgentEventType, p: &Policy, revision: u64) -> AgentEvent {
    event(
        kind,
        Notification::PolicyUpdate(PolicyUpdateNotification {
            labels: policy_labels(p),
            revision,
            rule_count: p.rules.len() as i64,
        }),
    )
}

fn endpoint_labels(e: &EndpointView) -> Vec<String> {
    e.labels.iter().map(|l| l.to_string()).collect()
}

fn endpoint_event(kind: AgentEventType, e: &EndpointView) -> AgentEvent {
    event(
        kind,
        Notification::EndpointUpdate(EndpointUpdateNotification {
            id: e.id as u64,
            labels: endpoint_labels(e),
            error: String::new(),
            pod_name: e.pod.name.clone(),
            namespace: e.pod.namespace.clone(),
        }),
    )
}

/// What an ipcache prefix maps to: identity, namespace and pod name (empty for CIDRs).
type IpcacheInfo<'a> = (u32, &'a str, &'a str);

/// The ipcache of a state by prefix: the policies' CIDRs, then every endpoint address (a host
/// prefix), as [`State::build`] fills the map.
fn ipcache_of(st: &State) -> BTreeMap<IpNet, IpcacheInfo<'_>> {
    let mut out: BTreeMap<IpNet, IpcacheInfo<'_>> = st
        .cidr_identities
        .iter()
        .map(|(net, id)| (*net, (*id, "", "")))
        .collect();
    for (ip, id) in &st.identity_by_ip {
        let (ns, pod) = st
            .pods_by_ip
            .get(ip)
            .map(|p| (p.namespace.as_str(), p.name.as_str()))
            .unwrap_or_default();
        out.insert(IpNet::from(*ip), (*id, ns, pod));
    }
    out
}

/// A service frontend: namespace, name, address, port, protocol.
type FrontendKey<'a> = (&'a str, &'a str, IpAddr, u16, &'a str);

/// The id of a service frontend: FNV-1a of its key (never 0).
fn service_id(key: &FrontendKey<'_>) -> u32 {
    let (ns, name, ip, port, proto) = key;
    let text = format!("{ns}/{name}/{ip}/{port}/{proto}");
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

/// The SERVICE_UPSERTED notification of every frontend of a state's services.
fn services_of(st: &State) -> BTreeMap<FrontendKey<'_>, ServiceUpsertNotification> {
    let mut out = BTreeMap::new();
    // The topology file's services, then the metadata sources' (which win for a frontend both
    // describe).
    for ((ns, name), info) in st.topology_services.iter().chain(&st.service_details) {
        for f in &info.frontends {
            let key = (
                ns.as_str(),
                name.as_str(),
                f.ip,
                f.port,
                f.protocol.as_str(),
            );
            let backends = info
                .backends
                .get(&f.port_name)
                .into_iter()
                .flatten()
                .map(|(ip, port)| ServiceUpsertNotificationAddr {
                    ip: ip.to_string(),
                    port: *port as u32,
                })
                .collect();
            out.insert(
                key,
                ServiceUpsertNotification {
                    id: service_id(&key),
                    frontend_address: Some(ServiceUpsertNotificationAddr {
                        ip: f.ip.to_string(),
                        port: f.port as u32,
                    }),
                    backend_addresses: backends,
                    r#type: f.kind.clone(),
                    traffic_policy: info.ext_traffic_policy.clone(),
                    name: name.clone(),
                    namespace: ns.clone(),
                    ext_traffic_policy: info.ext_traffic_policy.clone(),
                    int_traffic_policy: info.int_traffic_policy.clone(),
                },
            );
        }
    }
    out
}

/// The events that take `old` to `new` (see the module doc): policies first, then ipcache
/// upserts, endpoints, services, and ipcache deletions last.
pub fn diff(old: &State, new: &State) -> Vec<AgentEvent> {
    let mut out = Vec::new();
    // Policies, by kind, namespace and name.
    let key = |p: &Policy| (p.kind.clone(), p.namespace.clone(), p.name.clone());
    let old_policies: BTreeMap<_, &Policy> =
        old.policies.policies.iter().map(|p| (key(p), p)).collect();
    let new_policies: BTreeMap<_, &Policy> =
        new.policies.policies.iter().map(|p| (key(p), p)).collect();
    for (k, p) in &new_policies {
        if old_policies.get(k) != Some(p) {
            out.push(policy_event(AgentEventType::PolicyUpdated, p, new.revision));
        }
    }
    for (k, p) in &old_policies {
        if !new_policies.contains_key(k) {
            out.push(policy_event(AgentEventType::PolicyDeleted, p, new.revision));
        }
    }
    // ipcache upserts.
    let old_ipcache = ipcache_of(old);
    let new_ipcache = ipcache_of(new);
    for (net, now @ (id, ns, pod)) in &new_ipcache {
        let before = old_ipcache.get(net);
        if before == Some(now) {
            continue;
        }
        out.push(event(
            AgentEventType::IpcacheUpserted,
            Notification::IpcacheUpdate(IpCacheNotification {
                cidr: net.to_string(),
                identity: *id,
                old_identity: before.map(|b| b.0).filter(|b| b != id),
                namespace: ns.to_string(),
                pod_name: pod.to_string(),
                ..Default::default()
            }),
        ));
    }
    // Endpoints, by interface and pod.
    for (ifname, e) in &new.endpoints {
        match old.endpoints.get(ifname) {
            Some(o) if o.pod.full_name() == e.pod.full_name() => {
                let view = |v: &EndpointView| {
                    (
                        v.identity,
                        v.labels.clone(),
                        v.ingress_enforced,
                        v.egress_enforced,
                        v.mode,
                        v.audit,
                        v.selected_by.clone(),
                    )
                };
                if view(o) != view(e) {
                    out.push(event(
                        AgentEventType::EndpointRegenerateSuccess,
                        Notification::EndpointRegenerate(EndpointRegenNotification {
                            id: e.id as u64,
                            labels: endpoint_labels(e),
                            error: String::new(),
                        }),
                    ));
                }
            }
            Some(o) => {
                out.push(endpoint_event(AgentEventType::EndpointDeleted, o));
                out.push(endpoint_event(AgentEventType::EndpointCreated, e));
            }
            None => out.push(endpoint_event(AgentEventType::EndpointCreated, e)),
        }
    }
    for (ifname, o) in &old.endpoints {
        if !new.endpoints.contains_key(ifname) {
            out.push(endpoint_event(AgentEventType::EndpointDeleted, o));
        }
    }
    // Services, by frontend.
    let old_services = services_of(old);
    let new_services = services_of(new);
    for (key, n) in &new_services {
        if old_services.get(key) != Some(n) {
            out.push(event(
                AgentEventType::ServiceUpserted,
                Notification::ServiceUpsert(n.clone()),
            ));
        }
    }
    for (key, n) in &old_services {
        if !new_services.contains_key(key) {
            out.push(event(
                AgentEventType::ServiceDeleted,
                Notification::ServiceDelete(ServiceDeleteNotification { id: n.id }),
            ));
        }
    }
    // ipcache deletions.
    for (net, (id, ns, pod)) in &old_ipcache {
        if !new_ipcache.contains_key(net) {
            out.push(event(
                AgentEventType::IpcacheDeleted,
                Notification::IpcacheUpdate(IpCacheNotification {
                    cidr: net.to_string(),
                    identity: *id,
                    namespace: ns.to_string(),
                    pod_name: pod.to_string(),
                    ..Default::default()
                }),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{BuildConfig, Remote};
    use crate::policy::PolicySet;
    use periscope_topology::Topology;
    use std::path::Path;

    fn ts(seconds: i64) -> Timestamp {
        Timestamp { seconds, nanos: 0 }
    }

    fn started(seconds: i64) -> AgentEvent {
        agent_started(ts(seconds))
    }

    #[test]
    fn the_ring_keeps_the_newest_and_readers_skip_what_is_gone() {
        let ring = AgentEventRing::new(3);
        let mut rx = ring.subscribe();
        ring.push_at(ts(1), [started(1), started(2)]);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        assert_eq!(ring.written(), 2);
        let (got, next) = ring.read_from(0);
        assert_eq!(
            got.iter().map(|s| s.seq).collect::<Vec<_>>(),
            [0, 1],
            "{got:?}"
        );
        assert_eq!(next, 2);
        ring.push_at(ts(2), [started(3), started(4)]);
        assert!(rx.has_changed().unwrap());
        // Capacity 3: event 0 is gone; a reader at 0 continues with 1.
        let (got, next) = ring.read_from(0);
        assert_eq!(got.iter().map(|s| s.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(next, 4);
        assert_eq!(got[2].time, ts(2));
        assert_eq!(got[2].nanos(), 2_000_000_000);
        // A reader that is up to date gets nothing and stays where it is.
        let (got, next) = ring.read_from(4);
        assert!(got.is_empty());
        assert_eq!(next, 4);
        assert_eq!(ring.snapshot().len(), 3);
        // Nothing recorded, nothing signalled.
        rx.mark_unchanged();
        ring.push_at(ts(3), []);
        assert!(!rx.has_changed().unwrap());
    }

    const TOPO: &str = r#"
nodes: [{name: n1}, {name: n2}]
pods:
  - {name: web, namespace: shop, node: n1, labels: {app: web}, ips: [10.0.0.1]}
  - {name: db, namespace: data, node: n1, labels: {app: db}, ips: [10.0.0.2, "fd00::2"]}
  - {name: api, namespace: shop, node: n2, labels: {app: api}, ips: [10.0.1.1]}
"#;

    const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-in, namespace: data}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web, k8s:io.kubernetes.pod.namespace: shop}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
"#;

    const WORLD: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: world}
specs:
- endpointSelector: {matchLabels: {app: web}}
  ingress: [{fromCIDR: [192.0.2.0/24]}]
- endpointSelector: {matchLabels: {app: web}}
  egress: [{toEntities: [world]}]
"#;

    fn state(topology: &str, policies: &str, revision: u64) -> State {
        let t = Topology::parse(topology, Path::new("t.yaml")).unwrap();
        let p = PolicySet::parse(policies, Path::new("p.yaml")).unwrap();
        let (mut st, specs) =
            State::build("n1", &t, &Remote::default(), p, &BuildConfig::default());
        let ids = specs
            .iter()
            .enumerate()
            .map(|(i, s)| (s.ifname.clone(), i as u32 + 10))
            .collect();
        st.set_endpoint_ids(&ids);
        st.revision = revision;
        st
    }

    fn kinds(events: &[AgentEvent]) -> Vec<AgentEventType> {
        events
            .iter()
            .map(|e| AgentEventType::try_from(e.r#type).unwrap())
            .collect()
    }

    fn ipcache(e: &AgentEvent) -> &IpCacheNotification {
        match &e.notification {
            Some(Notification::IpcacheUpdate(n)) => n,
            other => panic!("not an ipcache event: {other:?}"),
        }
    }

    #[test]
    fn the_first_state_is_announced_in_full() {
        let st = state(TOPO, POLICY, 1);
        let events = diff(&State::default(), &st);
        use AgentEventType::*;
        assert_eq!(
            kinds(&events),
            [
                PolicyUpdated,
                IpcacheUpserted,
                IpcacheUpserted,
                IpcacheUpserted,
                IpcacheUpserted,
                EndpointCreated,
                EndpointCreated,
            ]
        );
        let Some(Notification::PolicyUpdate(p)) = &events[0].notification else {
            panic!("{:?}", events[0]);
        };
        assert_eq!(
            p.labels,
            [
                "k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy",
                "k8s:io.cilium.k8s.policy.name=db-in",
                "k8s:io.cilium.k8s.policy.namespace=data",
            ]
        );
        assert_eq!((p.revision, p.rule_count), (1, 1));
        let db = events[1..5]
            .iter()
            .map(ipcache)
            .find(|n| n.cidr == "10.0.0.2/32")
            .expect("db's address");
        assert_eq!(
            (
                db.cidr.as_str(),
                db.namespace.as_str(),
                db.pod_name.as_str()
            ),
            ("10.0.0.2/32", "data", "db")
        );
        assert_eq!(db.old_identity, None);
        assert!(db.identity >= 256, "{db:?}");
        // Remote endpoints are in the ipcache too (api on n2), but not endpoints of this node.
        assert!(
            events[1..5]
                .iter()
                .any(|e| ipcache(e).cidr == "10.0.1.1/32")
        );
        let created: Vec<(u64, String, String)> = events[5..]
            .iter()
            .map(|e| match &e.notification {
                Some(Notification::EndpointUpdate(n)) => {
                    assert!(
                        n.labels
                            .contains(&format!("k8s:io.kubernetes.pod.namespace={}", n.namespace))
                    );
                    (n.id, n.namespace.clone(), n.pod_name.clone())
                }
                other => panic!("{other:?}"),
            })
            .collect();
        let names: Vec<(&str, &str)> = created
            .iter()
            .map(|(_, ns, n)| (ns.as_str(), n.as_str()))
            .collect();
        assert!(
            names.contains(&("shop", "web")) && names.contains(&("data", "db")),
            "{names:?}"
        );
        assert!(created.iter().all(|(id, _, _)| *id >= 10));
        // The same state again: nothing.
        assert!(diff(&st, &state(TOPO, POLICY, 2)).is_empty());
    }

    #[test]
    fn changes_become_updates_deletions_and_regenerations() {
        let before = state(TOPO, POLICY, 1);
        // A second policy (with CIDRs), db-in changed, api's address changed, db gone.
        let topo = TOPO
            .replace("ips: [10.0.1.1]", "ips: [10.0.1.9]")
            .replace(
                "  - {name: db, namespace: data, node: n1, labels: {app: db}, ips: [10.0.0.2, \"fd00::2\"]}\n",
                "",
            );
        let changed = POLICY.replace("5432", "5433");
        let after = state(&topo, &format!("{changed}---{WORLD}"), 2);
        let events = diff(&before, &after);
        use AgentEventType::*;
        let k = kinds(&events);
        let count = |t| k.iter().filter(|x| **x == t).count();
        assert_eq!(count(PolicyUpdated), 2, "db-in changed, world added: {k:?}");
        assert_eq!(count(PolicyDeleted), 0);
        // 192.0.2.0/24 and 10.0.1.9/32 upserted; 10.0.1.1, 10.0.0.2 and fd00::2 deleted.
        let upserted: Vec<&str> = events
            .iter()
            .filter(|e| e.r#type == IpcacheUpserted as i32)
            .map(|e| ipcache(e).cidr.as_str())
            .collect();
        assert_eq!(upserted, ["10.0.1.9/32", "192.0.2.0/24"]);
        let deleted: Vec<(&str, &str)> = events
            .iter()
            .filter(|e| e.r#type == IpcacheDeleted as i32)
            .map(|e| (ipcache(e).cidr.as_str(), ipcache(e).pod_name.as_str()))
            .collect();
        assert_eq!(
            deleted,
            [
                ("10.0.0.2/32", "db"),
                ("10.0.1.1/32", "api"),
                ("fd00::2/128", "db")
            ]
        );
        assert_eq!(count(EndpointDeleted), 1);
        assert_eq!(count(EndpointCreated), 0);
        // web is now selected by the world policy: regenerated.
        assert_eq!(count(EndpointRegenerateSuccess), 1);
        // Ipcache deletions come last, after the endpoints.
        assert_eq!(*k.last().unwrap(), IpcacheDeleted);
        // Removing every policy deletes both.
        let bare = state(&topo, "", 3);
        let events = diff(&after, &bare);
        let deleted: Vec<Vec<String>> = events
            .iter()
            .filter(|e| e.r#type == PolicyDeleted as i32)
            .map(|e| match &e.notification {
                Some(Notification::PolicyUpdate(p)) => {
                    assert_eq!(p.revision, 3);
                    p.labels.clone()
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(deleted.len(), 2);
        assert!(
            deleted.iter().any(|l| l
                == &vec![
                    "k8s:io.cilium.k8s.policy.derived-from=CiliumClusterwideNetworkPolicy"
                        .to_string(),
                    "k8s:io.cilium.k8s.policy.name=world".to_string()
                ]),
            "{deleted:?}"
        );
    }

    #[test]
    fn topology_services_have_their_events_too() {
        let with_service = format!(
            "{TOPO}services:
  - name: api
    namespace: shop
    clusterIP: 10.96.0.10
    ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30080}}]
    backends: [{{ip: 10.0.1.1}}, {{ip: 10.0.0.1, state: terminating}}]
"
        );
        let topo = with_service.replace(
            "nodes: [{name: n1}, {name: n2}]",
            "nodes: [{name: n1, ips: [192.168.1.1]}, {name: n2}]",
        );
        let bare = state(
            &TOPO.replace(
                "nodes: [{name: n1}, {name: n2}]",
                "nodes: [{name: n1, ips: [192.168.1.1]}, {name: n2}]",
            ),
            "",
            1,
        );
        let with = state(&topo, "", 2);
        let upserts: Vec<ServiceUpsertNotification> = diff(&bare, &with)
            .into_iter()
            .filter_map(|e| match e.notification {
                Some(Notification::ServiceUpsert(n)) => Some(n),
                _ => None,
            })
            .collect();
        let kinds: Vec<(&str, String, u32)> = upserts
            .iter()
            .map(|n| {
                let f = n.frontend_address.as_ref().expect("frontend");
                (n.r#type.as_str(), f.ip.clone(), f.port)
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("ClusterIP", "10.96.0.10".to_string(), 80),
                ("NodePort", "192.168.1.1".to_string(), 30080)
            ]
        );
        for n in &upserts {
            assert_eq!((n.namespace.as_str(), n.name.as_str()), ("shop", "api"));
            // The terminating backend is not ready.
            assert_eq!(
                n.backend_addresses,
                [ServiceUpsertNotificationAddr {
                    ip: "10.0.1.1".into(),
                    port: 8080
                }]
            );
        }
        // The service goes away: its frontends are deleted by the same ids.
        let deleted: Vec<u32> = diff(&with, &bare)
            .into_iter()
            .filter_map(|e| match e.notification {
                Some(Notification::ServiceDelete(d)) => Some(d.id),
                _ => None,
            })
            .collect();
        let mut ids: Vec<u32> = upserts.iter().map(|n| n.id).collect();
        ids.sort();
        let mut deleted = deleted;
        deleted.sort();
        assert_eq!(deleted, ids);
    }

    #[test]
    fn service_frontends_are_upserted_and_deleted_by_stable_ids() {
        use crate::sources::{Frontend, ServiceInfo};
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let front = |addr: &str, port: u16, kind: &str| Frontend {
            ip: ip(addr),
            port,
            protocol: "TCP".into(),
            port_name: "http".into(),
            kind: kind.into(),
        };
        let with = |frontends: Vec<Frontend>, backends: &[(&str, u16)]| {
            let mut st = State::default();
            st.service_details.insert(
                ("shop".into(), "web".into()),
                ServiceInfo {
                    ext_traffic_policy: "Cluster".into(),
                    int_traffic_policy: "Cluster".into(),
                    frontends,
                    backends: BTreeMap::from([(
                        "http".to_string(),
                        backends.iter().map(|(a, p)| (ip(a), *p)).collect(),
                    )]),
                    affinity_timeout_s: None,
                },
            );
            st
        };
        let upserts = |events: &[AgentEvent]| -> Vec<ServiceUpsertNotification> {
            events
                .iter()
                .filter_map(|e| match &e.notification {
                    Some(Notification::ServiceUpsert(n)) => {
                        assert_eq!(e.r#type, AgentEventType::ServiceUpserted as i32);
                        Some(n.clone())
                    }
                    _ => None,
                })
                .collect()
        };
        let one = with(
            vec![front("10.96.0.10", 80, "ClusterIP")],
            &[("10.0.1.10", 8080)],
        );
        let first = upserts(&diff(&State::default(), &one));
        assert_eq!(first.len(), 1);
        let n = &first[0];
        assert_eq!(
            (
                n.name.as_str(),
                n.namespace.as_str(),
                n.r#type.as_str(),
                n.ext_traffic_policy.as_str()
            ),
            ("web", "shop", "ClusterIP", "Cluster")
        );
        assert_eq!(
            n.frontend_address,
            Some(ServiceUpsertNotificationAddr {
                ip: "10.96.0.10".into(),
                port: 80
            })
        );
        assert_eq!(
            n.backend_addresses,
            [ServiceUpsertNotificationAddr {
                ip: "10.0.1.10".into(),
                port: 8080
            }]
        );
        assert_ne!(n.id, 0);
        // A new backend: the same frontend upserted again, same id; a new frontend: its own id.
        let two = with(
            vec![
                front("10.96.0.10", 80, "ClusterIP"),
                front("203.0.113.10", 80, "ExternalIPs"),
            ],
            &[("10.0.1.10", 8080), ("10.0.1.11", 8080)],
        );
        let again = upserts(&diff(&one, &two));
        assert_eq!(again.len(), 2);
        let cluster = again
            .iter()
            .find(|n| n.r#type == "ClusterIP")
            .expect("the cluster IP again");
        assert_eq!(cluster.id, n.id);
        assert_eq!(cluster.backend_addresses.len(), 2);
        let external = again.iter().find(|n| n.r#type == "ExternalIPs").unwrap();
        assert_ne!(external.id, n.id);
        assert!(diff(&two, &two.clone()).is_empty());
        // The service gone: both frontends deleted by id.
        let gone = diff(&two, &State::default());
        let mut ids: Vec<u32> = gone
            .iter()
            .map(|e| match &e.notification {
                Some(Notification::ServiceDelete(d)) => {
                    assert_eq!(e.r#type, AgentEventType::ServiceDeleted as i32);
                    d.id
                }
                other => panic!("{other:?}"),
            })
            .collect();
        ids.sort();
        let mut want = vec![n.id, external.id];
        want.sort();
        assert_eq!(ids, want);
    }

    #[test]
    fn an_identity_change_is_an_upsert_with_the_old_identity() {
        let before = state(TOPO, "", 1);
        let after = state(
            &TOPO.replace("labels: {app: web}", "labels: {app: web2}"),
            "",
            2,
        );
        let events = diff(&before, &after);
        let web = events
            .iter()
            .filter(|e| e.r#type == AgentEventType::IpcacheUpserted as i32)
            .map(ipcache)
            .find(|n| n.pod_name == "web")
            .expect("web upserted");
        let old = before.identity_by_ip[&"10.0.0.1".parse().unwrap()];
        let new = after.identity_by_ip[&"10.0.0.1".parse().unwrap()];
        assert_ne!(old, new);
        assert_eq!((web.identity, web.old_identity), (new, Some(old)));
        assert!(
            events
                .iter()
                .any(|e| e.r#type == AgentEventType::EndpointRegenerateSuccess as i32)
        );
    }
}
