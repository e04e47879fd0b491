//! The `periscope.policy.Policies` service: the policies in force on this agent, in the words
//! and map node ids the web UI draws (its policies view, "the policies selecting" a map node,
//! and which policies put an endpoint into default deny when a flow is explained).
//!
//! Endpoints are named like the service map names them ([`periscope_ui_api::endpoint_name`]):
//! `namespace/workload`, else `namespace/pod`.
//!
//! - `selects`: this node's endpoints the policy selects, as the compiler decided it (an
//!   endpoint in enforcement mode `never` is selected by nothing). A relay unions the nodes.
//! - Rule peers: every endpoint the agent knows (the topology's pods on every node and those of
//!   the metadata sources) that a peer selector matches, in the selector's namespace (a
//!   namespaced policy's selectors without a namespace label select in the policy's
//!   namespace). A selector matching no known endpoint is kept as `selector:WORDS` (so the rule
//!   stays visible). Entities that are one reserved identity are its map id (`world` →
//!   `reserved:world`, `host` → `reserved:host`, ...: the ids flows to and from them get on the
//!   map); `cluster` and `all` are `entity:cluster` and `entity:all`. CIDRs are `cidr:PREFIX`,
//!   with ` except A, B` for a CIDR set's exceptions. No peer at all: any peer (empty list).
//! - Ports: `TCP/6379`, `TCP/8000-8080`, `ANY/80` (a port for TCP, UDP and SCTP: protocol
//!   `ANY` or none), `TCP` (every TCP port), `TCP/http` (a named port, resolved per endpoint
//!   by the compiler), `ICMP/8`, `ICMPv6/128`. Empty: every port and protocol.
//! - Default deny: a direction is default-deny for the endpoints a policy selects when one of
//!   its rules has a section for that direction (allow or deny) and does not switch it off with
//!   `enableDefaultDeny` (the compiler's rule, Cilium's default enforcement mode).
//! - Rules of `nodeSelector` specs (host policies, not enforced) are left out; their specs'
//!   selectors read `nodeSelector (not enforced)`.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use periscope_datapath_common as dp;
use periscope_proto::flow;
use periscope_proto::periscope::policy::policies_server::Policies;
use periscope_proto::periscope::policy::{self as api, ListPoliciesRequest, ListPoliciesResponse};
use periscope_ui_api::{endpoint_name, node_id};
use tokio::sync::RwLock;
use tonic::{Request, Response, Status};

use crate::agent::State;
use crate::identity::{LABEL_NAMESPACE, LabelSet};
use crate::policy::{Entity, PeerSpec, Policy, Selector};

/// The service: answers from the agent's current state.
pub struct PolicyService {
    state: Arc<RwLock<State>>,
}

impl PolicyService {
    /// A service over the agent's state.
    pub fn new(state: Arc<RwLock<State>>) -> Self {
        PolicyService { state }
    }
}

#[tonic::async_trait]
impl Policies for PolicyService {
    async fn list(
        &self,
        _request: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        let state = self.state.read().await;
        Ok(Response::new(ListPoliciesResponse {
            policies: export(&state),
            errors: Vec::new(),
        }))
    }
}

/// An endpoint the agent knows (on any node): its map id, namespace and identity labels.
struct Known {
    id: String,
    namespace: String,
    labels: LabelSet,
}

/// Every endpoint the agent knows, once per pod (pods of the topology on every node and of the
/// metadata sources; hosts outside the cluster are not endpoints).
fn known_endpoints(state: &State) -> Vec<Known> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (ip, pod) in &state.pods_by_ip {
        if pod.external || !seen.insert((pod.namespace.clone(), pod.name.clone())) {
            continue;
        }
        let Some(labels) = state
            .identity_by_ip
            .get(ip)
            .and_then(|id| state.identities.labels_of(*id))
        else {
            continue;
        };
        out.push(Known {
            id: pod_id(pod),
            namespace: label_namespace(&labels)
                .unwrap_or(&pod.namespace)
                .to_string(),
            labels,
        });
    }
    out
}

/// The map id of a pod: the rule of [`endpoint_name`] applied to the endpoint a flow would carry.
fn pod_id(pod: &periscope_topology::Pod) -> String {
    let ep = flow::Endpoint {
        namespace: pod.namespace.clone(),
        pod_name: pod.name.clone(),
        workloads: pod
            .workload
            .iter()
            .map(|w| flow::Workload {
                name: w.name.clone(),
                kind: w.kind.clone(),
            })
            .collect(),
        ..Default::default()
    };
    let (ns, name) = endpoint_name(&ep);
    node_id(&ns, &name)
}

fn label_namespace(labels: &LabelSet) -> Option<&str> {
    labels
        .iter()
        .find(|l| l.key == LABEL_NAMESPACE)
        .map(|l| l.value.as_str())
}

/// The policies in force on this agent, in policy-set order ((namespace, name, kind)).
pub fn export(state: &State) -> Vec<api::Policy> {
    let known = known_endpoints(state);
    // Rule id (policy index + 1) → this node's endpoints it selects.
    let mut selects: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    for ep in state.endpoints.values() {
        let id = pod_id(&ep.pod);
        for rule_id in &ep.selected_by {
            selects.entry(*rule_id).or_default().insert(id.clone());
        }
    }
    state
        .policies
        .policies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let selected = selects
                .remove(&state.policies.rule_id(i))
                .unwrap_or_default();
            policy_info(p, selected.into_iter().collect(), &known, &state.node)
        })
        .collect()
}

fn policy_info(p: &Policy, selects: Vec<String>, known: &[Known], node: &str) -> api::Policy {
    let mut selectors: Vec<String> = Vec::new();
    let mut rules = Vec::new();
    let (mut ingress_dd, mut egress_dd) = (false, false);
    for r in &p.rules {
        let words = match &r.selector {
            Some(sel) => selector_words(sel),
            None => "nodeSelector (not enforced)".to_string(),
        };
        if !selectors.contains(&words) {
            selectors.push(words);
        }
        if r.selector.is_none() {
            continue;
        }
        for section in &r.sections {
            let ingress = section.direction == dp::dir::INGRESS;
            if ingress {
                ingress_dd |= r.default_deny_ingress;
            } else {
                egress_dd |= r.default_deny_egress;
            }
            for peer in &section.peers {
                rules.push(api::Rule {
                    direction: if ingress {
                        api::Direction::Ingress
                    } else {
                        api::Direction::Egress
                    } as i32,
                    deny: section.deny,
                    peers: peers(peer, known),
                    ports: ports(peer),
                });
            }
        }
    }
    api::Policy {
        name: p.name.clone(),
        namespace: p.namespace.clone().unwrap_or_default(),
        kind: p.kind.clone(),
        selector: selectors.join("; "),
        selects,
        ingress_default_deny: ingress_dd,
        egress_default_deny: egress_dd,
        rules,
        nodes: vec![node.to_string()],
    }
}

/// A selector in Kubernetes' label-selector syntax (`app=db,tier in (a,b),!legacy`); the
/// empty selector is `all endpoints`.
pub fn selector_words(sel: &Selector) -> String {
    let mut terms: Vec<String> = sel
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in &sel.match_expressions {
        terms.push(match e.operator.as_str() {
            "In" => format!("{} in ({})", e.key, e.values.join(",")),
            "NotIn" => format!("{} notin ({})", e.key, e.values.join(",")),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => format!("{} {other} ({})", e.key, e.values.join(",")),
        });
    }
    if terms.is_empty() {
        "all endpoints".to_string()
    } else {
        terms.join(",")
    }
}

/// The peers of one peer rule, sorted (see the module documentation); empty: any peer.
fn peers(peer: &PeerSpec, known: &[Known]) -> Vec<String> {
    let mut out = BTreeSet::new();
    if peer.any_peer {
        return Vec::new();
    }
    for (sel, ns) in &peer.endpoints {
        let mut matched = false;
        for k in known {
            if ns.as_ref().is_none_or(|ns| *ns == k.namespace) && sel.matches(&k.labels) {
                matched = true;
                out.insert(k.id.clone());
            }
        }
        if !matched {
            let words = selector_words(sel);
            out.insert(match ns {
                Some(ns) => format!("selector:{words} in namespace {ns}"),
                None => format!("selector:{words}"),
            });
        }
    }
    for (cidr, except) in &peer.cidrs {
        out.insert(if except.is_empty() {
            format!("cidr:{cidr}")
        } else {
            let e: Vec<String> = except.iter().map(|e| e.to_string()).collect();
            format!("cidr:{cidr} except {}", e.join(", "))
        });
    }
    for e in &peer.entities {
        out.insert(entity_id(*e).to_string());
    }
    out.into_iter().collect()
}

/// The map id of an entity: the reserved label of a one-identity entity, else `entity:NAME`.
pub fn entity_id(e: Entity) -> &'static str {
    match e {
        Entity::World => "reserved:world",
        Entity::Host => "reserved:host",
        Entity::RemoteNode => "reserved:remote-node",
        Entity::Init => "reserved:init",
        Entity::Health => "reserved:health",
        Entity::Unmanaged => "reserved:unmanaged",
        Entity::KubeApiserver => "reserved:kube-apiserver",
        Entity::Ingress => "reserved:ingress",
        Entity::Cluster => "entity:cluster",
        Entity::All => "entity:all",
    }
}

fn proto_name(p: u8) -> String {
    match p {
        dp::proto::TCP => "TCP".into(),
        dp::proto::UDP => "UDP".into(),
        132 => "SCTP".into(),
        dp::proto::ICMP => "ICMP".into(),
        dp::proto::ICMPV6 => "ICMPv6".into(),
        other => format!("proto-{other}"),
    }
}

/// Whether `p` is one of the protocols `ANY` stands for.
fn is_transport(p: u8) -> bool {
    matches!(p, dp::proto::TCP | dp::proto::UDP | 132)
}

/// The ports of one peer rule in words, in the policy's order without repeats (see the module
/// documentation); empty: every port and protocol.
fn ports(peer: &PeerSpec) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |w: String| {
        if !out.contains(&w) {
            out.push(w);
        }
    };
    let transports = |port: u16, end: u16| -> BTreeSet<u8> {
        peer.ports
            .iter()
            .filter(|(p, e, proto)| *p == port && *e == end && is_transport(*proto))
            .map(|(_, _, proto)| *proto)
            .collect()
    };
    for &(port, end, proto) in &peer.ports {
        let icmp = matches!(proto, dp::proto::ICMP | dp::proto::ICMPV6);
        let name = if is_transport(proto) && transports(port, end).len() == 3 {
            "ANY".to_string()
        } else {
            proto_name(proto)
        };
        push(match (icmp, port, end) {
            (false, 0, _) => name,
            (_, p, e) if p == e => format!("{name}/{p}"),
            (_, p, e) => format!("{name}/{p}-{e}"),
        });
    }
    let named: BTreeMap<&str, BTreeSet<u8>> =
        peer.named_ports
            .iter()
            .fold(BTreeMap::new(), |mut m, (name, proto)| {
                m.entry(name.as_str()).or_default().insert(*proto);
                m
            });
    let mut done = BTreeSet::new();
    for (name, proto) in &peer.named_ports {
        let all = named.get(name.as_str()).is_some_and(|s| s.len() == 3);
        if all {
            if done.insert(name.as_str()) {
                push(format!("ANY/{name}"));
            }
        } else {
            push(format!("{}/{name}", proto_name(*proto)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use periscope_topology::Topology;

    use super::*;
    use crate::agent::{BuildConfig, EndpointMode, Enforcement, Remote};
    use crate::policy::{Mode, PolicySet};

    const TOPO: &str = r#"
cluster: pe
nodes: [{name: n1}, {name: n2}]
pods:
  - {name: web-0, namespace: shop, node: n1, labels: {app: web}, ips: [10.0.0.1], workload: {kind: Deployment, name: web}}
  - {name: web-1, namespace: shop, node: n2, labels: {app: web}, ips: [10.0.1.1], workload: {kind: Deployment, name: web}}
  - {name: db, namespace: shop, node: n1, labels: {app: db}, ips: [10.0.0.2], ports: [{name: redis, containerPort: 6379}]}
  - {name: client, namespace: shop, node: n2, labels: {app: client}, ips: [10.0.1.2]}
  - {name: backup, namespace: ops, node: n2, labels: {app: backup}, ips: [10.0.1.3]}
  - {name: ext, node: n1, ips: [192.0.2.10], external: true}
"#;

    const POLICIES: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-in, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}, {matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "6379", protocol: TCP}, {port: redis, protocol: TCP}]}]
  - fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": ops}}]
    toPorts: [{ports: [{port: "8000", endPort: 8080, protocol: TCP}, {port: "53"}]}]
  - fromEndpoints: [{matchLabels: {app: nobody}}]
  ingressDeny:
  - fromEntities: [world, cluster]
    icmps: [{fields: [{type: 8}, {type: EchoRequest, family: IPv6}]}]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: web-out}
spec:
  endpointSelector:
    matchLabels: {app: web}
    matchExpressions: [{key: tier, operator: NotIn, values: [a, b]}, {key: legacy, operator: DoesNotExist}]
  enableDefaultDeny: {egress: false}
  egress:
  - toCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}]
    toPorts: [{ports: [{port: "0", protocol: UDP}]}]
  - toEndpoints: [{matchLabels: {app: db}}]
  - toEntities: [host, all]
  - {}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: ops}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#;

    fn state(node: &str, build: &BuildConfig) -> State {
        let t = Topology::parse(TOPO, Path::new("t.yaml")).expect("topology");
        let p = PolicySet::parse(POLICIES, Path::new("p.yaml")).expect("policies");
        State::build(node, &t, &Remote::default(), p, build).0
    }

    fn by_name<'a>(ps: &'a [api::Policy], name: &str) -> &'a api::Policy {
        ps.iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no policy {name} in {ps:?}"))
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn rule(dir: api::Direction, deny: bool, peers: &[&str], ports: &[&str]) -> api::Rule {
        api::Rule {
            direction: dir as i32,
            deny,
            peers: strings(peers),
            ports: strings(ports),
        }
    }

    #[test]
    fn policies_in_words_and_map_ids() {
        let ps = export(&state("n1", &BuildConfig::default()));
        let names: Vec<(&str, &str, &str)> = ps
            .iter()
            .map(|p| (p.namespace.as_str(), p.name.as_str(), p.kind.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("", "web-out", "CiliumClusterwideNetworkPolicy"),
                ("ops", "deny-all", "NetworkPolicy"),
                ("shop", "db-in", "CiliumNetworkPolicy"),
            ]
        );
        let db = by_name(&ps, "db-in");
        assert_eq!(db.selector, "app=db");
        assert_eq!(db.selects, ["shop/db"]);
        assert!(db.ingress_default_deny && !db.egress_default_deny);
        assert_eq!(db.nodes, ["n1"]);
        use api::Direction::{Egress, Ingress};
        assert_eq!(
            db.rules,
            [
                // Peers on both nodes, named by workload (web) or pod (client).
                rule(
                    Ingress,
                    false,
                    &["shop/client", "shop/web"],
                    &["TCP/6379", "TCP/redis"]
                ),
                // A namespace label names the namespace: ops, not the policy's shop.
                rule(
                    Ingress,
                    false,
                    &["ops/backup"],
                    &["TCP/8000-8080", "ANY/53"]
                ),
                // Matches nobody: kept as the selector, in the policy's namespace.
                rule(
                    Ingress,
                    false,
                    &["selector:app=nobody in namespace shop"],
                    &[]
                ),
                rule(
                    Ingress,
                    true,
                    &["entity:cluster", "reserved:world"],
                    &["ICMP/8", "ICMPv6/128"]
                ),
            ]
        );

        let web = by_name(&ps, "web-out");
        assert_eq!(web.namespace, "");
        assert_eq!(web.selector, "app=web,tier notin (a,b),!legacy");
        assert_eq!(web.selects, ["shop/web"], "web-0 is on n1, by its workload");
        assert!(!web.ingress_default_deny && !web.egress_default_deny);
        assert_eq!(
            web.rules,
            [
                rule(
                    Egress,
                    false,
                    &["cidr:192.0.2.0/24 except 192.0.2.128/25"],
                    &["UDP"]
                ),
                // A clusterwide policy's selectors select in every namespace.
                rule(Egress, false, &["shop/db"], &[]),
                rule(Egress, false, &["entity:all", "reserved:host"], &[]),
                // No peer: any peer.
                rule(Egress, false, &[], &[]),
            ]
        );

        let ops = by_name(&ps, "deny-all");
        assert_eq!(ops.selector, "all endpoints");
        assert!(ops.selects.is_empty(), "no ops pod on n1");
        assert!(ops.ingress_default_deny && !ops.egress_default_deny);
        assert!(ops.rules.is_empty());
    }

    #[test]
    fn selects_are_this_nodes_endpoints_as_compiled() {
        let ps = export(&state("n2", &BuildConfig::default()));
        assert_eq!(by_name(&ps, "deny-all").selects, ["ops/backup"]);
        assert_eq!(by_name(&ps, "web-out").selects, ["shop/web"]);
        assert!(by_name(&ps, "db-in").selects.is_empty());
        assert!(ps.iter().all(|p| p.nodes == ["n2"]));
        // An endpoint in mode `never` is selected by nothing.
        let never = BuildConfig {
            enforcement: Enforcement {
                endpoints: [(
                    "ops/backup".to_string(),
                    EndpointMode {
                        mode: Some(Mode::Never),
                        audit: None,
                    },
                )]
                .into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let ps = export(&state("n2", &never));
        assert!(by_name(&ps, "deny-all").selects.is_empty());
        assert_eq!(by_name(&ps, "web-out").selects, ["shop/web"]);
    }

    #[test]
    fn default_deny_flags_follow_sections_and_enable_default_deny() {
        let y = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: shop}
specs:
- endpointSelector: {matchLabels: {app: db}}
  ingressDeny: [{fromEntities: [world]}]
- endpointSelector: {matchLabels: {app: web}}
  enableDefaultDeny: {ingress: false}
  ingress: [{fromEntities: [host]}]
  egress: [{toEntities: [world]}]
- nodeSelector: {}
  ingress: [{fromEntities: [world]}]
"#;
        let t = Topology::parse(TOPO, Path::new("t.yaml")).unwrap();
        let p = PolicySet::parse(y, Path::new("p.yaml")).unwrap();
        let st = State::build("n1", &t, &Remote::default(), p, &BuildConfig::default()).0;
        let ps = export(&st);
        let p = &ps[0];
        assert_eq!(
            p.selector, "app=db; app=web; nodeSelector (not enforced)",
            "{p:?}"
        );
        assert_eq!(p.selects, ["shop/db", "shop/web"]);
        // A deny section alone makes ingress default-deny; the second spec's egress section too.
        assert!(p.ingress_default_deny && p.egress_default_deny);
        assert_eq!(p.rules.len(), 3, "the nodeSelector spec's rule is left out");
        assert!(p.rules[0].deny && !p.rules[1].deny);
        // The agent's own compilation agrees.
        let db = st.endpoints.values().find(|e| e.pod.name == "db").unwrap();
        let web = st
            .endpoints
            .values()
            .find(|e| e.pod.name == "web-0")
            .unwrap();
        assert!(db.ingress_enforced && !db.egress_enforced);
        assert!(!web.ingress_enforced && web.egress_enforced);
    }

    #[test]
    fn selector_and_port_words() {
        let sel: Selector = serde_yaml::from_str(
            "{matchLabels: {'k8s:app': db, tier: x}, matchExpressions: [{key: env, operator: In, values: [prod, qa]}, {key: canary, operator: Exists}]}",
        )
        .unwrap();
        assert_eq!(
            selector_words(&sel),
            "k8s:app=db,tier=x,env in (prod,qa),canary"
        );
        assert_eq!(selector_words(&Selector::default()), "all endpoints");
        let spec = PeerSpec {
            ports: vec![
                (80, 80, dp::proto::TCP),
                (80, 80, dp::proto::UDP),
                (80, 80, 132),
                (443, 443, dp::proto::TCP),
                (443, 443, dp::proto::TCP),
                (0, 0, 132),
                (0, 0, dp::proto::ICMP),
            ],
            named_ports: vec![
                ("dns".into(), dp::proto::TCP),
                ("dns".into(), dp::proto::UDP),
                ("dns".into(), 132),
                ("http".into(), dp::proto::TCP),
            ],
            ..Default::default()
        };
        assert_eq!(
            ports(&spec),
            ["ANY/80", "TCP/443", "SCTP", "ICMP/0", "ANY/dns", "TCP/http"]
        );
        assert!(ports(&PeerSpec::default()).is_empty());
    }

    #[test]
    fn peers_known_only_from_metadata_sources_count() {
        // A pod only a metadata source knows (another node) is a peer like the topology's.
        let t = Topology::parse(TOPO, Path::new("t.yaml")).unwrap();
        let p = PolicySet::parse(POLICIES, Path::new("p.yaml")).unwrap();
        let remote = Remote {
            pods: vec![periscope_topology::Pod {
                name: "client-x".into(),
                namespace: "shop".into(),
                node: "n9".into(),
                labels: [("app".to_string(), "client".to_string())].into(),
                ips: vec!["10.0.9.1".parse().unwrap()],
                external: false,
                interface: None,
                workload: Some(periscope_topology::Workload {
                    kind: "StatefulSet".into(),
                    name: "clients".into(),
                }),
                identity: None,
                ports: vec![],
            }],
            ..Default::default()
        };
        let st = State::build("n1", &t, &remote, p, &BuildConfig::default()).0;
        let ps = export(&st);
        assert_eq!(
            by_name(&ps, "db-in").rules[0].peers,
            ["shop/client", "shop/clients", "shop/web"]
        );
    }
}
