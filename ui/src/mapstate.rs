//! The service map as the UI holds it: a full [`ServiceMap`], then [`MapDelta`]s applied.
use std::collections::{BTreeMap, BTreeSet};

use periscope_ui_api::{DataSource, EdgeKey, MapDelta, MapEdge, MapNode, ServiceMap};

/// The map being shown.
#[derive(Debug, Clone, Default)]
pub struct MapState {
    /// Start of the range, Unix nanoseconds.
    pub since_ns: i64,
    /// End of the range, Unix nanoseconds.
    pub until_ns: i64,
    /// Where the data came from (`None` before the first answer).
    pub source: Option<DataSource>,
    /// Edges were left out to stay under the limit.
    pub truncated: bool,
    /// Nodes by id.
    pub nodes: BTreeMap<String, MapNode>,
    /// Edges by key.
    pub edges: BTreeMap<EdgeKey, MapEdge>,
}

impl MapState {
    /// Replaces everything with a full map.
    pub fn set_map(&mut self, m: ServiceMap) {
        self.since_ns = m.since_ns;
        self.until_ns = m.until_ns;
        self.source = Some(m.source);
        self.truncated = m.truncated;
        self.nodes = m.nodes.into_iter().map(|n| (n.id.clone(), n)).collect();
        self.edges = m.edges.into_iter().map(|e| (e.key.clone(), e)).collect();
        self.add_missing_nodes();
    }

    /// Applies a live delta; says whether the picture changed shape (nodes or edges came or
    /// went: draw it again) or only counts of these edges changed (patch them).
    pub fn apply(&mut self, d: MapDelta) -> Change {
        self.since_ns = d.since_ns;
        self.until_ns = d.until_ns;
        let nodes_before = self.nodes.len();
        let mut reshaped = false;
        for id in &d.removed_nodes {
            reshaped |= self.nodes.remove(id).is_some();
        }
        for k in &d.removed_edges {
            reshaped |= self.edges.remove(k).is_some();
        }
        for n in d.nodes {
            reshaped |= self.nodes.insert(n.id.clone(), n).is_none();
        }
        let mut counted = Vec::new();
        for e in d.edges {
            let key = e.key.clone();
            match self.edges.insert(key.clone(), e) {
                None => reshaped = true,
                Some(old) if old != self.edges[&key] => counted.push(key),
                Some(_) => {}
            }
        }
        self.add_missing_nodes();
        reshaped |= self.nodes.len() != nodes_before;
        if reshaped {
            Change::Reshaped
        } else {
            Change::Counts(counted)
        }
    }

    /// An edge naming a node the answer did not list still gets its node (named from its id).
    fn add_missing_nodes(&mut self) {
        for k in self.edges.keys() {
            for id in [&k.source, &k.destination] {
                if !self.nodes.contains_key(id) {
                    self.nodes.insert(id.clone(), node_from_id(id));
                }
            }
        }
    }

    /// Edges in drawing order: fewest flows first, so that the busiest are drawn on top.
    pub fn edges_for_drawing(&self) -> Vec<&MapEdge> {
        let mut v: Vec<&MapEdge> = self.edges.values().collect();
        v.sort_by_key(|e| e.flows());
        v
    }

    /// The namespaces of the map's nodes.
    pub fn namespaces(&self) -> BTreeSet<String> {
        self.nodes
            .values()
            .filter(|n| !n.namespace.is_empty())
            .map(|n| n.namespace.clone())
            .collect()
    }
}

/// What a delta changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nodes or edges came or went.
    Reshaped,
    /// Only the counts of these edges changed (maybe none).
    Counts(Vec<EdgeKey>),
}

/// The node a map id names: `ns/name` for workloads; reserved labels, `cidr:…`, `entity:…` and
/// `selector:…` peers have no namespace (CIDRs contain a `/` themselves).
pub fn node_from_id(id: &str) -> MapNode {
    let outside = ["reserved:", "cidr:", "entity:", "selector:", "fqdn:"];
    if outside.iter().any(|p| id.starts_with(p)) {
        return MapNode::new("", id);
    }
    match id.split_once('/') {
        Some((ns, name)) => MapNode::new(ns, name),
        None => MapNode::new("", id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use periscope_ui_api::NodeKind;

    fn edge(s: &str, d: &str, port: u32, fwd: u64, drop: u64) -> MapEdge {
        let mut e = MapEdge::new(EdgeKey {
            source: s.into(),
            destination: d.into(),
            port,
            protocol: "TCP".into(),
        });
        e.forwarded = fwd;
        e.dropped = drop;
        e
    }

    #[test]
    fn deltas_upsert_and_remove() {
        let mut s = MapState::default();
        s.set_map(ServiceMap {
            since_ns: 1,
            until_ns: 2,
            source: DataSource::Live,
            nodes: vec![MapNode::new("prod", "web"), MapNode::new("prod", "db")],
            edges: vec![edge("prod/web", "prod/db", 5432, 3, 0)],
            truncated: false,
        });
        assert_eq!(s.edges.len(), 1);
        let c = s.apply(MapDelta {
            since_ns: 2,
            until_ns: 3,
            nodes: vec![MapNode::new("", "reserved:world")],
            removed_nodes: vec![],
            edges: vec![
                edge("prod/web", "prod/db", 5432, 5, 1),
                edge("reserved:world", "prod/web", 443, 9, 0),
            ],
            removed_edges: vec![],
        });
        assert_eq!(c, Change::Reshaped);
        assert_eq!(s.edges.len(), 2);
        let k = EdgeKey {
            source: "prod/web".into(),
            destination: "prod/db".into(),
            port: 5432,
            protocol: "TCP".into(),
        };
        assert_eq!(s.edges[&k].flows(), 6);
        // Only counts: the edges to patch.
        let c = s.apply(MapDelta {
            since_ns: 3,
            until_ns: 3,
            nodes: vec![],
            removed_nodes: vec![],
            edges: vec![
                edge("prod/web", "prod/db", 5432, 9, 1),
                edge("reserved:world", "prod/web", 443, 9, 0),
            ],
            removed_edges: vec![],
        });
        assert_eq!(c, Change::Counts(vec![k.clone()]));
        assert_eq!(s.edges[&k].flows(), 10);
        let c = s.apply(MapDelta {
            since_ns: 3,
            until_ns: 4,
            nodes: vec![],
            removed_nodes: vec!["prod/db".into()],
            edges: vec![],
            removed_edges: vec![k],
        });
        assert_eq!(c, Change::Reshaped);
        assert_eq!(s.edges.len(), 1);
        assert!(!s.nodes.contains_key("prod/db"));
        assert_eq!(s.until_ns, 4);
        let order: Vec<u64> = s.edges_for_drawing().iter().map(|e| e.flows()).collect();
        assert_eq!(order, [9]);
        assert_eq!(s.namespaces().into_iter().collect::<Vec<_>>(), ["prod"]);
    }

    #[test]
    fn edges_bring_their_nodes() {
        let mut s = MapState::default();
        s.set_map(ServiceMap {
            since_ns: 1,
            until_ns: 2,
            source: DataSource::Clickhouse,
            nodes: vec![],
            edges: vec![edge("cidr:10.0.0.0/8", "prod/db", 5432, 1, 0)],
            truncated: true,
        });
        assert_eq!(s.nodes["cidr:10.0.0.0/8"].kind, NodeKind::World);
        assert_eq!(s.nodes["prod/db"].namespace, "prod");
        assert_eq!(node_from_id("reserved:host").kind, NodeKind::Host);
        assert_eq!(node_from_id("prod/db").name, "db");
    }
}
