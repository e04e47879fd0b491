//! The policies in force, end to end: real agents on a two-node test bed serve
//! `periscope.policy.Policies/List` (policies, the endpoints they select on their node, rules
//! with peers named like the service map names them, ports and default-deny flags); a real relay
//! in front of both merges them, a relay in front of that relay passes them on, and an agent
//! that is down is named in the errors while the other's policies still come through. Needs root
//! (`cargo xtask test`).
use periscope_proto::periscope::policy::policies_client::PoliciesClient;
use periscope_proto::periscope::policy::{
    Direction, ListPoliciesRequest, ListPoliciesResponse, Policy, Rule,
};
use periscope_testbed::agent::Agent;
use periscope_testbed::relay::Relay;
use periscope_testbed::{Testbed, TestbedOptions};

const TOPO: &str = r#"
cluster: pol
nodes: [{name: n1}, {name: n2}]
pods:
  - {name: web-0, namespace: shop, node: n1, labels: {app: web}, ips: [10.219.0.1], workload: {kind: Deployment, name: web}}
  - {name: db, namespace: shop, node: n1, labels: {app: db}, ips: [10.219.0.2]}
  - {name: web-1, namespace: shop, node: n2, labels: {app: web}, ips: [10.219.1.1], workload: {kind: Deployment, name: web}}
  - {name: client, namespace: shop, node: n2, labels: {app: client}, ips: [10.219.1.2]}
"#;

const POLICIES: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-in, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}, {matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "6379", protocol: TCP}]}]
  ingressDeny:
  - fromEntities: [world]
    icmps: [{fields: [{type: 8}]}]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: web-out}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEndpoints: [{matchLabels: {app: db}}]
    toPorts: [{ports: [{port: "6379", protocol: TCP}]}]
  - toCIDR: [192.0.2.0/24]
    toPorts: [{ports: [{port: "8000", endPort: 8080, protocol: TCP}]}]
  egressDeny:
  - toEndpoints: [{matchLabels: {app: nobody}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-in, namespace: shop}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Ingress]
"#;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn list(address: &str) -> ListPoliciesResponse {
    let mut c = PoliciesClient::connect(format!("http://{address}"))
        .await
        .unwrap_or_else(|e| panic!("connect to {address}: {e}"));
    c.list(ListPoliciesRequest {})
        .await
        .unwrap_or_else(|s| panic!("Policies/List of {address}: {s}"))
        .into_inner()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn rule(direction: Direction, deny: bool, peers: &[&str], ports: &[&str]) -> Rule {
    Rule {
        direction: direction as i32,
        deny,
        peers: s(peers),
        ports: s(ports),
    }
}

/// The three policies as the agents of `nodes` report them, with the endpoints selected there.
fn expected(nodes: &[&str], web: &[&str], db: &[&str], client: &[&str]) -> Vec<Policy> {
    use Direction::{Egress, Ingress};
    vec![
        Policy {
            name: "web-out".into(),
            namespace: String::new(),
            kind: "CiliumClusterwideNetworkPolicy".into(),
            selector: "app=web".into(),
            selects: s(web),
            ingress_default_deny: false,
            egress_default_deny: true,
            rules: vec![
                rule(Egress, false, &["shop/db"], &["TCP/6379"]),
                rule(Egress, false, &["cidr:192.0.2.0/24"], &["TCP/8000-8080"]),
                rule(Egress, true, &["selector:app=nobody"], &[]),
            ],
            nodes: s(nodes),
        },
        Policy {
            name: "client-in".into(),
            namespace: "shop".into(),
            kind: "NetworkPolicy".into(),
            selector: "app=client".into(),
            selects: s(client),
            ingress_default_deny: true,
            egress_default_deny: false,
            rules: vec![],
            nodes: s(nodes),
        },
        Policy {
            name: "db-in".into(),
            namespace: "shop".into(),
            kind: "CiliumNetworkPolicy".into(),
            selector: "app=db".into(),
            selects: s(db),
            ingress_default_deny: true,
            egress_default_deny: false,
            rules: vec![
                // Peers on both nodes: web by its workload, client by its pod.
                rule(Ingress, false, &["shop/client", "shop/web"], &["TCP/6379"]),
                rule(Ingress, true, &["reserved:world"], &["ICMP/8"]),
            ],
            nodes: s(nodes),
        },
    ]
}

#[test]
fn agents_and_relays_serve_the_policies_in_force() {
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    let a1 = Agent::start(&tb, "n1", POLICIES, &[]);
    let mut a2 = Agent::start(&tb, "n2", POLICIES, &[]);
    let rt = rt();

    // Each agent: its own node's selections, peers from every node.
    let r1 = rt.block_on(list(&a1.api_address()));
    assert_eq!(
        r1,
        ListPoliciesResponse {
            policies: expected(&["n1"], &["shop/web"], &["shop/db"], &[]),
            errors: vec![],
        }
    );
    let r2 = rt.block_on(list(&a2.api_address()));
    assert_eq!(
        r2.policies,
        expected(&["n2"], &["shop/web"], &[], &["shop/client"])
    );

    // A relay merges both; a relay in front of it passes the merge on (node names renamed for
    // the cluster).
    let east = Relay::start(
        "pol-east",
        &[
            "--cluster-name",
            "east",
            "--peers",
            &a1.api_address(),
            "--peers",
            &a2.api_address(),
        ],
    );
    let merged = rt.block_on(list(&east.address));
    assert_eq!(
        merged,
        ListPoliciesResponse {
            policies: expected(
                &["east/n1", "east/n2"],
                &["shop/web"],
                &["shop/db"],
                &["shop/client"]
            ),
            errors: vec![],
        },
        "relay log:\n{}",
        east.stderr()
    );
    let top_peer = format!("east={}", east.address);
    let top = Relay::start("pol-top", &["--relay-peer", &top_peer]);
    assert_eq!(
        rt.block_on(list(&top.address)),
        merged,
        "relay log:\n{}",
        top.stderr()
    );

    // A policy change is served as soon as the agent applied it.
    let web_out_only = POLICIES.split("---").nth(1).expect("web-out");
    assert_eq!(a1.set_policy(web_out_only), None, "policy applied");
    let r1 = rt.block_on(list(&a1.api_address()));
    assert_eq!(
        r1.policies,
        expected(&["n1"], &["shop/web"], &[], &[])[..1].to_vec()
    );

    // n2's agent goes down: the relays name it, and n1's policies still come through.
    let a2_address = a2.api_address();
    a2.kill9();
    let r = rt.block_on(list(&east.address));
    assert_eq!(
        r.policies,
        expected(&["east/n1"], &["shop/web"], &[], &[])[..1].to_vec()
    );
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert!(r.errors[0].contains(&a2_address), "{:?}", r.errors);
    let r = rt.block_on(list(&top.address));
    assert_eq!(r.policies.len(), 1);
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert!(
        r.errors[0].starts_with("via relay east: ") && r.errors[0].contains(&a2_address),
        "{:?}",
        r.errors
    );
}
