//! The policies in force on every agent, merged: what the web UI's policies view draws
//! (`GET /api/v1/policies`, a [`PolicyGraph`]), and the relay's own `periscope.policy.Policies`
//! service (so a relay in front of relays gets the merged policies of all their agents).
//!
//! Every peer is asked concurrently (agents and relays alike, `Policies/List`, at most
//! [`PEER_TIMEOUT`] each) over the pool's connection to it, or a new one dialed with the pool's
//! options (TLS included) when it has none. Node names are renamed like the peer's flows
//! (`cluster/node`). A peer that cannot answer is named in `errors`; the others still count.
//!
//! Merging: policies are one per (namespace, name, kind); `nodes` and `selects` are unioned,
//! the default-deny flags or-ed, and rules merged in order (a rule with the same direction, deny
//! flag and ports at the same position gets the union of the peers; any other rule not already
//! there is appended), so agents that know different endpoints add up.
//!
//! The graph: an ingress rule allows (or denies) each of its peers → each endpoint the policy
//! selects; an egress rule each selected endpoint → each peer. A rule without peers allows any
//! peer: its peer is the node [`ANY`] (`entity:all`, the id the agents give `toEntities: [all]`,
//! which means the same). Edges with the same (source, destination, deny) are one edge with the
//! union of the ports (empty, any port, when one of them allows any port) and of the policies.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use periscope_proto::periscope::policy::policies_client::PoliciesClient;
use periscope_proto::periscope::policy::policies_server::{Policies, PoliciesServer};
use periscope_proto::periscope::policy::{
    self as api, Direction as ApiDirection, ListPoliciesRequest, ListPoliciesResponse,
};
use periscope_ui_api::{
    Direction, MapNode, NodeKind, PolicyEdge, PolicyGraph, PolicyInfo, PolicyRef, RuleInfo,
};
use tonic::{Request, Response, Status};

use crate::peers::{Peer, Pool, dial, status_text};

/// Longest a peer is waited for (dialing included).
pub const PEER_TIMEOUT: Duration = Duration::from_secs(3);

/// The peer of rules that allow any peer.
pub const ANY: &str = "entity:all";

/// Largest answer accepted from a peer.
const MAX_ANSWER: usize = 64 << 20;

/// The policy graph of every peer's policies in force; `denied` is left empty (the caller fills
/// it from the live map).
pub async fn policy_graph(pool: &Pool) -> PolicyGraph {
    let (policies, errors) = collect(pool, PEER_TIMEOUT).await;
    graph(&policies, errors)
}

/// Every peer's policies, merged and sorted by (namespace, name, kind), and one line per peer
/// that could not answer. Peers are asked concurrently, each for at most `timeout`.
pub async fn collect(pool: &Pool, timeout: Duration) -> (Vec<api::Policy>, Vec<String>) {
    let peers = pool.peers();
    let answers = futures_util::future::join_all(peers.iter().map(|p| async move {
        match tokio::time::timeout(timeout, ask(p, pool)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }))
    .await;
    let mut merged = Merged::default();
    let mut errors = Vec::new();
    for (peer, answer) in peers.iter().zip(answers) {
        match answer {
            Ok(r) => {
                for mut p in r.policies {
                    p.nodes = p
                        .nodes
                        .iter()
                        .map(|n| peer.rename(n).into_owned())
                        .collect();
                    merged.add(p);
                }
                let via = peer.spec.name.as_deref().unwrap_or(&peer.spec.address);
                errors.extend(
                    r.errors
                        .into_iter()
                        .map(|e| format!("via relay {via}: {e}")),
                );
            }
            Err(e) => errors.push(format!(
                "{} ({}): {e}",
                peer.node_names().join(", "),
                peer.spec.address
            )),
        }
    }
    (merged.into_sorted(), errors)
}

/// One peer's answer (its connection, else a new one).
async fn ask(peer: &Peer, pool: &Pool) -> Result<ListPoliciesResponse, String> {
    let channel = match peer.snapshot().channel {
        Some(ch) => ch,
        None => dial(&peer.spec.address, pool.options()).await?,
    };
    let mut client = PoliciesClient::new(channel).max_decoding_message_size(MAX_ANSWER);
    match client.list(ListPoliciesRequest {}).await {
        Ok(r) => Ok(r.into_inner()),
        Err(s) => {
            if s.code() != tonic::Code::Unimplemented {
                peer.report_failure();
            }
            Err(status_text(&s))
        }
    }
}

/// Policies merged by (namespace, name, kind).
#[derive(Default)]
struct Merged(BTreeMap<(String, String, String), api::Policy>);

impl Merged {
    fn add(&mut self, p: api::Policy) {
        let key = (p.namespace.clone(), p.name.clone(), p.kind.clone());
        let Some(m) = self.0.get_mut(&key) else {
            let mut p = p;
            p.nodes = sorted(p.nodes);
            p.selects = sorted(p.selects);
            self.0.insert(key, p);
            return;
        };
        if m.selector.is_empty() {
            m.selector = p.selector;
        }
        m.selects = sorted(m.selects.drain(..).chain(p.selects).collect());
        m.nodes = sorted(m.nodes.drain(..).chain(p.nodes).collect());
        m.ingress_default_deny |= p.ingress_default_deny;
        m.egress_default_deny |= p.egress_default_deny;
        for (i, r) in p.rules.into_iter().enumerate() {
            let same = |o: &api::Rule| {
                o.direction == r.direction && o.deny == r.deny && o.ports == r.ports
            };
            if let Some(o) = m.rules.get_mut(i).filter(|o| same(o)) {
                o.peers = sorted(o.peers.drain(..).chain(r.peers).collect());
            } else if !m.rules.contains(&r) {
                m.rules.push(r);
            }
        }
    }

    fn into_sorted(self) -> Vec<api::Policy> {
        self.0.into_values().collect()
    }
}

fn sorted(v: Vec<String>) -> Vec<String> {
    v.into_iter().collect::<BTreeSet<_>>().into_iter().collect()
}

/// `namespace/name`, or `name` for cluster-wide policies.
fn full_name(p: &api::Policy) -> String {
    if p.namespace.is_empty() {
        p.name.clone()
    } else {
        format!("{}/{}", p.namespace, p.name)
    }
}

/// The map node of an id the agents report: `namespace/name`, a reserved label, `cidr:…`,
/// `entity:…` (a reserved kind) or `selector:…` (unknown: no endpoint behind it).
pub fn map_node(id: &str) -> MapNode {
    let special = ["reserved:", "cidr:", "entity:", "selector:"];
    if special.iter().any(|p| id.starts_with(p)) {
        let mut n = MapNode::new("", id);
        if id.starts_with("entity:") {
            n.kind = NodeKind::Reserved;
        } else if id.starts_with("selector:") {
            n.kind = NodeKind::Unknown;
        }
        return n;
    }
    match id.split_once('/') {
        Some((ns, name)) => MapNode::new(ns, name),
        None => MapNode::new("", id),
    }
}

/// The graph of merged policies (see the module documentation); `errors` are passed on, with a
/// line for each rule without a direction.
pub fn graph(policies: &[api::Policy], mut errors: Vec<String>) -> PolicyGraph {
    let mut infos = Vec::with_capacity(policies.len());
    // (source, destination, deny) → (any port, ports, policies).
    type Acc = (bool, BTreeSet<String>, BTreeSet<String>);
    let mut edges: BTreeMap<(String, String, bool), Acc> = BTreeMap::new();
    let mut ids: BTreeSet<String> = BTreeSet::new();
    for p in policies {
        let name = full_name(p);
        let mut rules = Vec::with_capacity(p.rules.len());
        ids.extend(p.selects.iter().cloned());
        for (i, r) in p.rules.iter().enumerate() {
            let direction = match ApiDirection::try_from(r.direction) {
                Ok(ApiDirection::Ingress) => Direction::Ingress,
                Ok(ApiDirection::Egress) => Direction::Egress,
                _ => {
                    errors.push(format!(
                        "{} {name}: rule {i} has no direction ({}); left out",
                        p.kind, r.direction
                    ));
                    continue;
                }
            };
            let any = [ANY.to_string()];
            let peers: &[String] = if r.peers.is_empty() { &any } else { &r.peers };
            for peer in peers {
                ids.insert(peer.clone());
                for selected in &p.selects {
                    let (source, destination) = match direction {
                        Direction::Ingress => (peer, selected),
                        Direction::Egress => (selected, peer),
                    };
                    let e = edges
                        .entry((source.clone(), destination.clone(), r.deny))
                        .or_default();
                    e.0 |= r.ports.is_empty();
                    e.1.extend(r.ports.iter().cloned());
                    e.2.insert(name.clone());
                }
            }
            rules.push(RuleInfo {
                direction,
                deny: r.deny,
                peers: r.peers.clone(),
                ports: r.ports.clone(),
            });
        }
        infos.push(PolicyInfo {
            policy: PolicyRef {
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                kind: p.kind.clone(),
            },
            selector: p.selector.clone(),
            selects: p.selects.clone(),
            ingress_default_deny: p.ingress_default_deny,
            egress_default_deny: p.egress_default_deny,
            rules,
            nodes: p.nodes.clone(),
        });
    }
    PolicyGraph {
        policies: infos,
        nodes: ids.iter().map(|id| map_node(id)).collect(),
        edges: edges
            .into_iter()
            .map(
                |((source, destination, deny), (any_port, ports, policies))| PolicyEdge {
                    source,
                    destination,
                    ports: if any_port {
                        Vec::new()
                    } else {
                        ports.into_iter().collect()
                    },
                    deny,
                    policies: policies.into_iter().collect(),
                },
            )
            .collect(),
        denied: Vec::new(),
        errors,
    }
}

/// The relay's `periscope.policy.Policies` service: the merged policies of every peer.
pub struct PolicyRelayService {
    pool: Arc<Pool>,
}

impl PolicyRelayService {
    /// The service over the relay's peers, ready to add to a tonic router.
    pub fn server(pool: Arc<Pool>) -> PoliciesServer<PolicyRelayService> {
        PoliciesServer::new(PolicyRelayService { pool }).max_encoding_message_size(MAX_ANSWER)
    }
}

#[tonic::async_trait]
impl Policies for PolicyRelayService {
    async fn list(
        &self,
        _request: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        let (policies, errors) = collect(&self.pool, PEER_TIMEOUT).await;
        Ok(Response::new(ListPoliciesResponse { policies, errors }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn rule(d: ApiDirection, deny: bool, peers: &[&str], ports: &[&str]) -> api::Rule {
        api::Rule {
            direction: d as i32,
            deny,
            peers: s(peers),
            ports: s(ports),
        }
    }

    fn policy(
        ns: &str,
        name: &str,
        selects: &[&str],
        node: &str,
        rules: Vec<api::Rule>,
    ) -> api::Policy {
        api::Policy {
            name: name.into(),
            namespace: ns.into(),
            kind: if ns.is_empty() {
                "CiliumClusterwideNetworkPolicy".into()
            } else {
                "CiliumNetworkPolicy".into()
            },
            selector: "app=db".into(),
            selects: s(selects),
            ingress_default_deny: true,
            egress_default_deny: false,
            rules,
            nodes: s(&[node]),
        }
    }

    #[test]
    fn policies_merge_by_name_with_unions() {
        use ApiDirection::{Egress, Ingress};
        let mut m = Merged::default();
        m.add(policy(
            "shop",
            "db-in",
            &["shop/db"],
            "n1",
            vec![
                rule(Ingress, false, &["shop/web"], &["TCP/6379"]),
                rule(Egress, true, &["reserved:world"], &[]),
            ],
        ));
        m.add(policy(
            "shop",
            "db-in",
            &["shop/db-replica", "shop/db"],
            "n2",
            vec![
                rule(Ingress, false, &["shop/api", "shop/web"], &["TCP/6379"]),
                rule(Egress, true, &["reserved:world"], &[]),
                rule(Egress, false, &[], &["UDP/53"]),
            ],
        ));
        // Same name, another kind: another policy.
        let mut other = policy("shop", "db-in", &[], "n1", vec![]);
        other.kind = "NetworkPolicy".into();
        m.add(other);
        let all = m.into_sorted();
        assert_eq!(all.len(), 2);
        let p = &all[0];
        assert_eq!(p.kind, "CiliumNetworkPolicy");
        assert_eq!(p.nodes, ["n1", "n2"]);
        assert_eq!(p.selects, ["shop/db", "shop/db-replica"]);
        assert_eq!(
            p.rules,
            [
                rule(Ingress, false, &["shop/api", "shop/web"], &["TCP/6379"]),
                rule(Egress, true, &["reserved:world"], &[]),
                rule(Egress, false, &[], &["UDP/53"]),
            ]
        );
        assert_eq!(all[1].kind, "NetworkPolicy");
    }

    #[test]
    fn graph_edges_follow_directions_and_merge() {
        use ApiDirection::{Egress, Ingress};
        let policies = vec![
            policy(
                "",
                "world-out",
                &["shop/web"],
                "n1",
                vec![rule(Egress, true, &["reserved:world"], &["TCP/22"])],
            ),
            policy(
                "shop",
                "db-in",
                &["shop/db"],
                "n1",
                vec![
                    rule(Ingress, false, &["shop/web"], &["TCP/6379"]),
                    rule(Ingress, false, &["shop/web"], &["TCP/6380"]),
                    rule(Ingress, false, &[], &["UDP/53"]),
                    rule(Ingress, false, &["selector:app=x in namespace shop"], &[]),
                ],
            ),
            policy(
                "shop",
                "web-out",
                &["shop/web"],
                "n1",
                vec![
                    rule(
                        Egress,
                        false,
                        &["shop/db", "cidr:10.0.0.0/8"],
                        &["TCP/6379"],
                    ),
                    rule(Egress, false, &["shop/db"], &[]),
                    rule(ApiDirection::Unspecified, false, &[], &[]),
                ],
            ),
        ];
        let g = graph(&policies, vec!["n2 (addr): down".into()]);
        let edge = |src: &str, dst: &str, ports: &[&str], deny: bool, pols: &[&str]| PolicyEdge {
            source: src.into(),
            destination: dst.into(),
            ports: s(ports),
            deny,
            policies: s(pols),
        };
        assert_eq!(
            g.edges,
            [
                edge("entity:all", "shop/db", &["UDP/53"], false, &["shop/db-in"]),
                edge(
                    "selector:app=x in namespace shop",
                    "shop/db",
                    &[],
                    false,
                    &["shop/db-in"]
                ),
                edge(
                    "shop/web",
                    "cidr:10.0.0.0/8",
                    &["TCP/6379"],
                    false,
                    &["shop/web-out"]
                ),
                edge(
                    "shop/web",
                    "reserved:world",
                    &["TCP/22"],
                    true,
                    &["world-out"]
                ),
                // db-in's two ingress rules and web-out's egress rules: one edge, any port.
                edge(
                    "shop/web",
                    "shop/db",
                    &[],
                    false,
                    &["shop/db-in", "shop/web-out"]
                ),
            ]
        );
        let nodes: Vec<(&str, NodeKind)> =
            g.nodes.iter().map(|n| (n.id.as_str(), n.kind)).collect();
        assert_eq!(
            nodes,
            [
                ("cidr:10.0.0.0/8", NodeKind::World),
                ("entity:all", NodeKind::Reserved),
                ("reserved:world", NodeKind::World),
                ("selector:app=x in namespace shop", NodeKind::Unknown),
                ("shop/db", NodeKind::Workload),
                ("shop/web", NodeKind::Workload),
            ]
        );
        assert_eq!(g.nodes[4].namespace, "shop");
        assert_eq!(g.nodes[4].name, "db");
        assert_eq!(g.policies.len(), 3);
        assert_eq!(
            g.policies[2].rules.len(),
            2,
            "the rule without direction is left out"
        );
        assert_eq!(g.errors.len(), 2);
        assert!(g.errors[0].contains("n2"));
        assert!(
            g.errors[1].contains("shop/web-out") && g.errors[1].contains("rule 2"),
            "{:?}",
            g.errors
        );
        assert!(g.denied.is_empty());
    }
}
