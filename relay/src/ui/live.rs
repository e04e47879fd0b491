//! The live service map: the merged stream's flows counted per minute and edge, in memory, for
//! the last [`LIVE_RETENTION`]. Live map queries and the map's event stream read it; longer or
//! older ranges come from storage.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use periscope_proto::flow::Flow;
use periscope_ui_api::{
    DataSource, EdgeKey, MapEdge, MapNode, NodeId, ServiceMap, edge_of, endpoint_name, node_id,
    verdict,
};

/// How far back the live map reaches.
pub const LIVE_RETENTION: Duration = Duration::from_secs(60 * 60);
/// Most labels and pods kept per node.
const NODE_FACTS: usize = 64;
const MINUTE_NS: i64 = 60_000_000_000;

/// What the live map knows about a node, beyond its edges.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    /// Security identities seen.
    pub identities: BTreeSet<u32>,
    /// Labels seen (at most 64).
    pub labels: BTreeSet<String>,
    /// Pods seen (at most 64).
    pub pods: BTreeSet<String>,
    /// Last flow naming it, Unix ns.
    pub last_seen_ns: i64,
}

#[derive(Default)]
struct Inner {
    /// Minute start (Unix ns) → edges counted in that minute; oldest first.
    minutes: VecDeque<(i64, HashMap<EdgeKey, MapEdge>)>,
    nodes: HashMap<NodeId, NodeFacts>,
    /// Flows too old for the retention, or without an edge.
    skipped: u64,
}

/// The live map.
pub struct LiveMap {
    inner: Mutex<Inner>,
    started_ns: i64,
    retention_ns: i64,
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Keeps edges with either end in `namespaces` (all when empty).
pub fn in_namespaces(key: &EdgeKey, namespaces: &HashSet<String>) -> bool {
    fn ns(id: &str) -> &str {
        id.split_once('/').map(|(n, _)| n).unwrap_or("")
    }
    namespaces.is_empty()
        || namespaces.contains(ns(&key.source))
        || namespaces.contains(ns(&key.destination))
}

/// The map of `edges`: nodes from their ends, edges most flows first, at most `limit`.
pub fn assemble(
    since_ns: i64,
    until_ns: i64,
    source: DataSource,
    edges: impl IntoIterator<Item = MapEdge>,
    limit: usize,
) -> ServiceMap {
    let mut edges: Vec<MapEdge> = edges.into_iter().collect();
    edges.sort_by(|a, b| b.flows().cmp(&a.flows()).then_with(|| a.key.cmp(&b.key)));
    let truncated = edges.len() > limit;
    edges.truncate(limit);
    let mut nodes: BTreeMap<NodeId, MapNode> = BTreeMap::new();
    for e in &edges {
        for id in [&e.key.source, &e.key.destination] {
            if !nodes.contains_key(id) {
                let (ns, name) = split_id(id);
                nodes.insert(id.clone(), MapNode::new(ns, name));
            }
        }
    }
    ServiceMap {
        since_ns,
        until_ns,
        source,
        nodes: nodes.into_values().collect(),
        edges,
        truncated,
    }
}

/// `(namespace, name)` of a node id (`ns/name`, or a reserved label with no namespace).
pub fn split_id(id: &str) -> (&str, &str) {
    if id.starts_with("reserved:") || id.starts_with("cidr:") {
        return ("", id);
    }
    id.split_once('/').unwrap_or(("", id))
}

impl LiveMap {
    /// An empty live map keeping [`LIVE_RETENTION`].
    pub fn new() -> Self {
        Self::with_retention(LIVE_RETENTION)
    }

    /// An empty live map keeping `retention`.
    pub fn with_retention(retention: Duration) -> Self {
        LiveMap {
            inner: Mutex::new(Inner::default()),
            started_ns: now_ns(),
            retention_ns: retention.as_nanos() as i64,
        }
    }

    /// Whether it holds every flow the relay saw from `since_ns` on.
    pub fn covers(&self, since_ns: i64) -> bool {
        since_ns >= self.started_ns && since_ns >= now_ns() - self.retention_ns
    }

    /// Whether `since_ns` is within the retention (the live map then holds every flow the relay
    /// saw since then, which is all an in-memory window could hold too).
    pub fn within_retention(&self, since_ns: i64) -> bool {
        since_ns >= now_ns() - self.retention_ns
    }

    /// Counts `flows`.
    pub fn observe<'a>(&self, flows: impl IntoIterator<Item = &'a Flow>) {
        let oldest = now_ns() - self.retention_ns;
        let mut g = self.inner.lock().expect("live map lock");
        let inner = &mut *g;
        for f in flows {
            let t = periscope_storage::time_ns_of(f.time.as_ref());
            let Some(key) = edge_of(f).filter(|_| t >= oldest) else {
                inner.skipped += 1;
                continue;
            };
            for ep in [f.source.as_ref(), f.destination.as_ref()]
                .into_iter()
                .flatten()
            {
                let (ns, name) = endpoint_name(ep);
                let facts = inner.nodes.entry(node_id(&ns, &name)).or_default();
                facts.last_seen_ns = facts.last_seen_ns.max(t);
                if ep.identity != 0 {
                    facts.identities.insert(ep.identity);
                }
                for l in &ep.labels {
                    if facts.labels.len() < NODE_FACTS && !facts.labels.contains(l) {
                        facts.labels.insert(l.clone());
                    }
                }
                if !ep.pod_name.is_empty()
                    && facts.pods.len() < NODE_FACTS
                    && !facts.pods.contains(&ep.pod_name)
                {
                    facts.pods.insert(ep.pod_name.clone());
                }
            }
            let minute = t - t.rem_euclid(MINUTE_NS);
            let bucket = match inner.minutes.iter().rposition(|(m, _)| *m <= minute) {
                Some(i) if inner.minutes[i].0 == minute => &mut inner.minutes[i].1,
                pos => {
                    let at = pos.map_or(0, |i| i + 1);
                    inner.minutes.insert(at, (minute, HashMap::new()));
                    &mut inner.minutes[at].1
                }
            };
            bucket
                .entry(key)
                .or_insert_with_key(|k| MapEdge::new(k.clone()))
                .count(verdict(f), f.periscope_bytes, t);
        }
        while inner
            .minutes
            .front()
            .is_some_and(|(m, _)| *m + MINUTE_NS < oldest)
        {
            inner.minutes.pop_front();
        }
        if inner.nodes.len() > 10_000 {
            inner.nodes.retain(|_, n| n.last_seen_ns >= oldest);
        }
    }

    /// The edges of `[since_ns, until_ns]` (minute buckets that overlap it), with either end in
    /// `namespaces` (all when empty).
    pub fn edges(
        &self,
        since_ns: i64,
        until_ns: i64,
        namespaces: &HashSet<String>,
    ) -> HashMap<EdgeKey, MapEdge> {
        let g = self.inner.lock().expect("live map lock");
        let mut out: HashMap<EdgeKey, MapEdge> = HashMap::new();
        for (minute, edges) in &g.minutes {
            if *minute + MINUTE_NS <= since_ns || *minute > until_ns {
                continue;
            }
            for (k, e) in edges {
                if e.last_seen_ns < since_ns || e.first_seen_ns > until_ns {
                    continue;
                }
                if !in_namespaces(k, namespaces) {
                    continue;
                }
                match out.get_mut(k) {
                    Some(m) => m.merge(e),
                    None => {
                        out.insert(k.clone(), e.clone());
                    }
                }
            }
        }
        out
    }

    /// The map of `[since_ns, until_ns]`.
    pub fn map(
        &self,
        since_ns: i64,
        until_ns: i64,
        namespaces: &HashSet<String>,
        limit: usize,
    ) -> ServiceMap {
        let edges = self.edges(since_ns, until_ns, namespaces);
        assemble(
            since_ns,
            until_ns,
            DataSource::Live,
            edges.into_values(),
            limit,
        )
    }

    /// What it knows of node `id`.
    pub fn facts(&self, id: &str) -> Option<NodeFacts> {
        self.inner
            .lock()
            .expect("live map lock")
            .nodes
            .get(id)
            .cloned()
    }

    /// Flows not counted (no edge, or older than the retention).
    pub fn skipped(&self) -> u64 {
        self.inner.lock().expect("live map lock").skipped
    }
}

impl Default for LiveMap {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use periscope_proto::flow::{self, Endpoint, Layer4, Verdict, Workload, layer4::Protocol};

    use super::*;

    fn flow_at(t_ns: i64, src: (&str, &str), dst: (&str, &str), port: u32, v: Verdict) -> Flow {
        let ep = |(ns, w): (&str, &str)| Endpoint {
            namespace: ns.into(),
            pod_name: if ns.is_empty() {
                String::new()
            } else {
                format!("{w}-1")
            },
            identity: 100,
            labels: if ns.is_empty() {
                vec![w.to_string()]
            } else {
                vec![format!("k8s:app={w}")]
            },
            workloads: if ns.is_empty() {
                vec![]
            } else {
                vec![Workload {
                    name: w.into(),
                    kind: "Deployment".into(),
                }]
            },
            ..Default::default()
        };
        Flow {
            time: Some(prost_types::Timestamp {
                seconds: t_ns / 1_000_000_000,
                nanos: (t_ns % 1_000_000_000) as i32,
            }),
            verdict: v as i32,
            source: Some(ep(src)),
            destination: Some(ep(dst)),
            l4: Some(Layer4 {
                protocol: Some(Protocol::Tcp(flow::Tcp {
                    source_port: 40000,
                    destination_port: port,
                    flags: None,
                })),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn counts_per_edge_and_range() {
        let m = LiveMap::new();
        let now = now_ns();
        let old = now - 10 * MINUTE_NS;
        m.observe(&[
            flow_at(
                old,
                ("shop", "api"),
                ("data", "db"),
                5432,
                Verdict::Forwarded,
            ),
            flow_at(
                now,
                ("shop", "api"),
                ("data", "db"),
                5432,
                Verdict::Forwarded,
            ),
            flow_at(now, ("shop", "web"), ("data", "db"), 5432, Verdict::Dropped),
            flow_at(
                now,
                ("", "reserved:world"),
                ("shop", "web"),
                8080,
                Verdict::Forwarded,
            ),
            // Older than the retention: not counted.
            flow_at(
                now - 2 * LIVE_RETENTION.as_nanos() as i64,
                ("a", "x"),
                ("a", "y"),
                1,
                Verdict::Forwarded,
            ),
        ]);
        assert_eq!(m.skipped(), 1);
        let all = m.map(now - 15 * MINUTE_NS, now, &HashSet::new(), 100);
        assert_eq!(all.edges.len(), 3);
        let api_db = all
            .edges
            .iter()
            .find(|e| e.key.source == "shop/api")
            .unwrap();
        assert_eq!(api_db.forwarded, 2);
        assert_eq!(all.nodes.len(), 4, "{:?}", all.nodes);
        assert!(
            all.nodes
                .iter()
                .any(|n| n.id == "reserved:world" && n.kind == periscope_ui_api::NodeKind::World)
        );
        // The last five minutes: the old flow is out.
        let recent = m.map(now - 5 * MINUTE_NS, now, &HashSet::new(), 100);
        let api_db = recent
            .edges
            .iter()
            .find(|e| e.key.source == "shop/api")
            .unwrap();
        assert_eq!(api_db.forwarded, 1);
        // Namespaces: either end.
        let data: HashSet<String> = ["data".to_string()].into();
        let only = m.map(now - 15 * MINUTE_NS, now, &data, 100);
        assert_eq!(only.edges.len(), 2);
        // Limit: most flows first, truncated flagged.
        let one = m.map(now - 15 * MINUTE_NS, now, &HashSet::new(), 1);
        assert!(one.truncated);
        assert_eq!(one.edges[0].key.source, "shop/api");
        let facts = m.facts("shop/api").unwrap();
        assert_eq!(facts.pods.iter().collect::<Vec<_>>(), ["api-1"]);
        assert!(facts.labels.contains("k8s:app=api"));
        assert!(facts.identities.contains(&100));
    }

    #[test]
    fn ids_split_back() {
        assert_eq!(split_id("shop/api"), ("shop", "api"));
        assert_eq!(split_id("reserved:world"), ("", "reserved:world"));
        assert_eq!(split_id("cidr:10.0.0.0/8"), ("", "cidr:10.0.0.0/8"));
    }
}
