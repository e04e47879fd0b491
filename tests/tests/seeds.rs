//! The CiliumNetworkPolicy examples of the seed articles (deploy/examples/seed-policies, loaded
//! unchanged) enforced on the test bed with real traffic; the flows read back through gRPC carry
//! pod names, namespaces, labels, identities, verdicts, policy names, ports and TCP flags.
//! Needs root (`cargo xtask test`).
use std::path::Path;
use std::time::Duration;

use periscope_proto::flow::{Flow, FlowFilter, TrafficDirection, Verdict, layer4::Protocol};
use periscope_proto::observer::GetFlowsRequest;
use periscope_proto::observer::get_flows_response::ResponseTypes;
use periscope_proto::observer::observer_client::ObserverClient;
use periscope_testbed::agent::Agent;
use periscope_testbed::traffic::{self, ProbeResult, TcpEchoServer};
use periscope_testbed::{Testbed, TestbedOptions};

const T: Duration = Duration::from_millis(400);

fn seed(file: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples/seed-policies")
        .join(file);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn ok(r: ProbeResult, what: &str) {
    assert!(r.is_echoed(), "{what}: expected the echo, got {r:?}");
}

fn blocked(r: ProbeResult, what: &str) {
    assert!(!r.is_echoed(), "{what}: expected no answer, got {r:?}");
}

fn flows_via_grpc(agent: &Agent, filter: FlowFilter) -> Vec<Flow> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = ObserverClient::connect(format!("http://{}", agent.api_address()))
            .await
            .expect("connect");
        let mut s = c
            .get_flows(GetFlowsRequest {
                number: 10_000,
                whitelist: vec![filter],
                ..Default::default()
            })
            .await
            .expect("GetFlows")
            .into_inner();
        let mut out = Vec::new();
        while let Some(r) = s.message().await.unwrap() {
            if let Some(ResponseTypes::Flow(f)) = r.response_types {
                out.push(f);
            }
        }
        out
    })
}

fn is_pv(f: &Flow) -> bool {
    f.event_type.map(|e| e.r#type) == Some(5)
}

const TOPO: &str = r#"
cluster: seeds
nodes: [{name: n1}]
pods:
  # seed 002 (Star Wars demo)
  - {name: deathstar, namespace: default, node: n1, labels: {org: empire, class: deathstar}, ips: [10.214.0.1]}
  - {name: tiefighter, namespace: default, node: n1, labels: {org: empire, class: tiefighter}, ips: [10.214.0.2]}
  - {name: xwing, namespace: default, node: n1, labels: {org: alliance, class: xwing}, ips: [10.214.0.3]}
  - {name: myservice, namespace: default, node: n1, labels: {app: myService}, ips: [10.214.0.4]}
  # seed 000
  - {name: protected-db, namespace: default, node: n1, labels: {app: protected-db}, ips: [10.214.0.5]}
  - {name: employee, namespace: default, node: n1, labels: {app: employee}, ips: [10.214.0.6]}
  - {name: stranger, namespace: default, node: n1, labels: {app: stranger}, ips: [10.214.0.7]}
  # seed 004
  - {name: istiod, namespace: infra-istio, node: n1, labels: {app: istiod}, ips: [10.214.1.1]}
  - {name: vmagent, namespace: vmagent-system, node: n1, labels: {app: vmagent, io.cilium.k8s.policy.serviceaccount: victoria-metrics-agent-usr}, ips: [10.214.2.1]}
  - {name: exporter, namespace: desired-namespace, node: n1, labels: {app: exporter}, ips: [10.214.3.1]}
  # hosts outside the cluster for the CIDR rule of seed 002
  - {name: ext-allowed, node: n1, external: true, ips: [20.1.1.1]}
  - {name: ext-in-10, node: n1, external: true, ips: [10.50.0.9]}
  - {name: ext-excepted, node: n1, external: true, ips: [10.96.0.5]}
"#;

#[test]
fn seed_000_and_002_policies_enforced_and_named_in_flows() {
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    let policy = [
        seed("000-clustermesh-ingress-l4-policy.yaml"),
        seed("002-rule1-l3-l4.yaml"),
        seed("002-cidr-rule.yaml"),
    ]
    .join("\n---\n");
    let agent = Agent::start(&tb, "n1", &policy, &[]);
    let p = |n: &str| tb.pod(n);
    let _servers = [
        TcpEchoServer::start(p("default/deathstar"), 80),
        TcpEchoServer::start(p("default/deathstar"), 8080),
        TcpEchoServer::start(p("default/protected-db"), 6379),
        TcpEchoServer::start(p("ext-allowed"), 443),
        TcpEchoServer::start(p("ext-in-10"), 443),
        TcpEchoServer::start(p("ext-excepted"), 443),
    ];
    // seed 002 rule1: only empire ships reach the deathstar, on TCP/80.
    ok(
        traffic::tcp_probe(p("default/tiefighter"), p("default/deathstar").v4(80), T),
        "tiefighter -> deathstar:80",
    );
    blocked(
        traffic::tcp_probe(p("default/xwing"), p("default/deathstar").v4(80), T),
        "xwing -> deathstar:80",
    );
    blocked(
        traffic::tcp_probe(p("default/tiefighter"), p("default/deathstar").v4(8080), T),
        "tiefighter -> deathstar:8080",
    );
    // seed 000: only the employee reaches the protected db, on TCP/6379.
    ok(
        traffic::tcp_probe(p("default/employee"), p("default/protected-db").v4(6379), T),
        "employee -> protected-db",
    );
    blocked(
        traffic::tcp_probe(p("default/stranger"), p("default/protected-db").v4(6379), T),
        "stranger -> protected-db",
    );
    // seed 002 cidr-rule: myService may only talk to 20.1.1.1 and 10.0.0.0/8 minus 10.96.0.0/12.
    let ms = p("default/myservice");
    ok(
        traffic::tcp_probe(ms, p("ext-allowed").v4(443), T),
        "myService -> 20.1.1.1",
    );
    ok(
        traffic::tcp_probe(ms, p("ext-in-10").v4(443), T),
        "myService -> 10.50.0.9",
    );
    blocked(
        traffic::tcp_probe(ms, p("ext-excepted").v4(443), T),
        "myService -> 10.96.0.5 (except)",
    );
    blocked(
        traffic::tcp_probe(ms, p("default/deathstar").v4(80), T),
        "toCIDR does not select cluster endpoints",
    );

    let flows = flows_via_grpc(
        &agent,
        FlowFilter {
            destination_pod: vec!["default/deathstar".into()],
            ..Default::default()
        },
    );
    let pv_of = |src: &str, port: u32| -> Vec<&Flow> {
        flows
            .iter()
            .filter(|f| {
                is_pv(f)
                    && f.traffic_direction == TrafficDirection::Ingress as i32
                    && f.source.as_ref().is_some_and(|s| s.pod_name == src)
                    && matches!(f.l4.as_ref().and_then(|l| l.protocol), Some(Protocol::Tcp(t)) if t.destination_port == port)
            })
            .collect()
    };
    let allowed = pv_of("tiefighter", 80);
    assert_eq!(allowed.len(), 1);
    let f = allowed[0];
    assert_eq!(f.verdict, Verdict::Forwarded as i32);
    assert_eq!(f.policy_match_type, 2, "L3-L4");
    let (s, d) = (f.source.as_ref().unwrap(), f.destination.as_ref().unwrap());
    assert_eq!(
        (s.namespace.as_str(), d.namespace.as_str()),
        ("default", "default")
    );
    assert!(
        s.labels.contains(&"k8s:org=empire".to_string())
            && d.labels.contains(&"k8s:class=deathstar".to_string())
    );
    assert_eq!(s.identity, agent.identity("default/tiefighter"));
    assert_eq!(d.identity, agent.identity("default/deathstar"));
    assert_eq!(f.ingress_allowed_by.len(), 1);
    let pol = &f.ingress_allowed_by[0];
    assert_eq!(
        (pol.name.as_str(), pol.namespace.as_str(), pol.kind.as_str()),
        ("rule1", "default", "CiliumNetworkPolicy")
    );
    assert!(
        matches!(f.l4.as_ref().and_then(|l| l.protocol), Some(Protocol::Tcp(t)) if t.flags.is_some_and(|fl| fl.syn && !fl.ack))
    );
    let denied = pv_of("xwing", 80);
    assert!(
        !denied.is_empty()
            && denied
                .iter()
                .all(|f| f.verdict == Verdict::Dropped as i32 && f.ingress_allowed_by.is_empty())
    );
    assert!(f.summary.contains("TCP Flags: SYN"));

    let db_flows = flows_via_grpc(
        &agent,
        FlowFilter {
            destination_label: vec!["app=protected-db".into()],
            ..Default::default()
        },
    );
    let emp = db_flows
        .iter()
        .find(|f| {
            is_pv(f)
                && f.traffic_direction == TrafficDirection::Ingress as i32
                && f.source.as_ref().unwrap().pod_name == "employee"
        })
        .expect("employee verdict");
    assert_eq!(
        emp.ingress_allowed_by[0].name,
        "clustermesh-ingress-l4-policy"
    );
    let egress = flows_via_grpc(
        &agent,
        FlowFilter {
            source_pod: vec!["default/myservice".into()],
            ..Default::default()
        },
    );
    let to_ext = egress
        .iter()
        .find(|f| {
            is_pv(f)
                && f.traffic_direction == TrafficDirection::Egress as i32
                && f.ip.as_ref().unwrap().destination == "20.1.1.1"
        })
        .expect("cidr verdict");
    assert_eq!(to_ext.egress_allowed_by[0].name, "cidr-rule");
    assert!(
        to_ext
            .destination
            .as_ref()
            .unwrap()
            .labels
            .contains(&"cidr:20.1.1.1/32".to_string())
    );
}

#[test]
fn seed_004_policies_enforced() {
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    // The policies without metadata.namespace land in `default`, as with a plain
    // `kubectl apply`; the vmagent policy selects pods of vmagent-system, so it is applied there,
    // as `kubectl apply -n vmagent-system` would.
    let policies = seed("004-examples.yaml").replace(
        "  name: vmagent-allow-desired-namespace\n",
        "  name: vmagent-allow-desired-namespace\n  namespace: vmagent-system\n",
    );
    assert_ne!(policies, seed("004-examples.yaml"));
    let agent = Agent::start(&tb, "n1", &policies, &[]);
    let p = |n: &str| tb.pod(n);
    let _servers = [
        TcpEchoServer::start(p("infra-istio/istiod"), 8443),
        TcpEchoServer::start(p("infra-istio/istiod"), 80),
        TcpEchoServer::start(p("desired-namespace/exporter"), 9100),
        TcpEchoServer::start(p("default/deathstar"), 80),
        TcpEchoServer::start(p("default/protected-db"), 6379),
    ];
    // Every pod may reach Istio on 8443 (clusterwide egress rule), nothing else there.
    ok(
        traffic::tcp_probe(p("default/xwing"), p("infra-istio/istiod").v4(8443), T),
        "xwing -> istiod:8443",
    );
    ok(
        traffic::tcp_probe(
            p("desired-namespace/exporter"),
            p("infra-istio/istiod").v4(8443),
            T,
        ),
        "exporter -> istiod:8443",
    );
    blocked(
        traffic::tcp_probe(p("default/xwing"), p("infra-istio/istiod").v4(80), T),
        "xwing -> istiod:80",
    );
    // Everything inside the namespace `default` is allowed, both ways.
    ok(
        traffic::tcp_probe(p("default/xwing"), p("default/deathstar").v4(80), T),
        "within default",
    );
    ok(
        traffic::tcp_probe(p("default/stranger"), p("default/protected-db").v4(6379), T),
        "within default",
    );
    // Leaving the namespace is not (the clusterwide rule made egress default-deny).
    blocked(
        traffic::tcp_probe(
            p("default/xwing"),
            p("desired-namespace/exporter").v4(9100),
            T,
        ),
        "default -> desired-namespace",
    );
    // vmagent (by service account and namespace) scrapes the desired namespace.
    ok(
        traffic::tcp_probe(
            p("vmagent-system/vmagent"),
            p("desired-namespace/exporter").v4(9100),
            T,
        ),
        "vmagent -> exporter",
    );
    blocked(
        traffic::tcp_probe(
            p("vmagent-system/vmagent"),
            p("default/deathstar").v4(80),
            T,
        ),
        "vmagent -> default",
    );
    let st = agent.status();
    assert!(
        st["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("nodeSelector")),
        "{st}"
    );
    let flows = flows_via_grpc(
        &agent,
        FlowFilter {
            source_pod: vec!["vmagent-system/".into()],
            ..Default::default()
        },
    );
    let allowed = flows
        .iter()
        .find(|f| is_pv(f) && f.verdict == Verdict::Forwarded as i32)
        .expect("vmagent verdict");
    assert_eq!(
        allowed.egress_allowed_by[0].name,
        "vmagent-allow-desired-namespace"
    );
}
