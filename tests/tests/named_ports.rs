//! Named ports end to end: a CiliumNetworkPolicy with `port: http` on the test bed, against pods
//! whose topology entries declare container ports. On ingress the name is the selected pod's own
//! port; on egress each peer's (two peers with different numbers for `http` each get theirs);
//! a change of a pod's ports is enforced like a label change. Needs root (`cargo xtask test`).
use std::time::Duration;

use periscope_testbed::agent::Agent;
use periscope_testbed::traffic::{self, ProbeResult, TcpEchoServer};
use periscope_testbed::{Testbed, TestbedOptions};

const TOPO: &str = r#"
cluster: np
nodes: [{name: n1}]
pods:
  - {name: web, namespace: shop, node: n1, labels: {app: web}, ips: [10.217.0.1, "fd00:217::1"], ports: [{name: http, containerPort: 8080}]}
  - {name: api, namespace: shop, node: n1, labels: {app: api}, ips: [10.217.0.2, "fd00:217::2"], ports: [{name: http, containerPort: 9090}, {name: metrics, containerPort: 9100}]}
  - {name: client, namespace: shop, node: n1, labels: {app: client}, ips: [10.217.0.3, "fd00:217::3"]}
"#;

const INGRESS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-http, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: http, protocol: TCP}]}]
"#;

const EGRESS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-out, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchExpressions: [{key: app, operator: In, values: [web, api]}]}]
    toPorts: [{ports: [{port: "http", protocol: TCP}]}]
  - toEndpoints: [{matchLabels: {app: api}}]
    toPorts: [{ports: [{port: grpc, protocol: TCP}]}]
"#;

const T: Duration = Duration::from_millis(400);

fn assert_echo(r: ProbeResult, what: &str) {
    assert!(r.is_echoed(), "{what}: expected the echo, got {r:?}");
}

fn assert_blocked(r: ProbeResult, what: &str) {
    assert!(
        matches!(r, ProbeResult::TimedOut | ProbeResult::NoEcho(_)),
        "{what}: expected no answer, got {r:?}"
    );
}

#[test]
fn ingress_named_port_is_the_selected_pods_own_port() {
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    let agent = Agent::start(&tb, "n1", INGRESS, &[]);
    let (web, client) = (tb.pod("shop/web"), tb.pod("shop/client"));
    let _http = TcpEchoServer::start(web, 8080);
    let _other = TcpEchoServer::start(web, 9090);
    for (addr, what) in [(web.v4(8080), "v4"), (web.v6(8080), "v6")] {
        assert_echo(traffic::tcp_probe(client, addr, T), &format!("{what} http"));
    }
    for (addr, what) in [(web.v4(9090), "v4"), (web.v6(9090), "v6")] {
        assert_blocked(
            traffic::tcp_probe(client, addr, T),
            &format!("{what} another port"),
        );
    }
    // The allowed flow names the policy and the port by number.
    let flows = agent.wait_flows(Duration::from_secs(5), "verdicts on 8080", |fl| {
        fl.iter().any(|f| {
            !f.ingress_allowed_by.is_empty()
                && f.destination.as_ref().is_some_and(|d| d.pod_name == "web")
        })
    });
    let allowed = flows
        .iter()
        .find(|f| !f.ingress_allowed_by.is_empty())
        .unwrap();
    assert_eq!(allowed.ingress_allowed_by[0].name, "web-http");

    // web's http moves to 9090: the policy follows without being touched.
    let mut topo = tb.topology().clone();
    let w = topo
        .pods
        .iter_mut()
        .find(|p| p.name == "web")
        .expect("web in the topology");
    w.ports[0].container_port = 9090;
    assert_eq!(agent.set_topology(&topo), None, "topology applied");
    assert_echo(traffic::tcp_probe(client, web.v4(9090), T), "http now 9090");
    assert_blocked(traffic::tcp_probe(client, web.v4(8080), T), "8080 no more");
    // Without the port on web, the name allows nothing there (api's http is api's, not web's).
    topo.pods
        .iter_mut()
        .find(|p| p.name == "web")
        .unwrap()
        .ports
        .clear();
    assert_eq!(agent.set_topology(&topo), None, "topology applied");
    assert_blocked(traffic::tcp_probe(client, web.v4(9090), T), "no http");
    assert_blocked(traffic::tcp_probe(client, web.v4(8080), T), "no http");
}

#[test]
fn egress_named_port_is_each_peers_own_port() {
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    let agent = Agent::start(&tb, "n1", EGRESS, &[]);
    let (web, api, client) = (
        tb.pod("shop/web"),
        tb.pod("shop/api"),
        tb.pod("shop/client"),
    );
    let _servers: Vec<TcpEchoServer> = [(web, 8080), (web, 9090), (api, 8080), (api, 9090)]
        .into_iter()
        .map(|(pod, port)| TcpEchoServer::start(pod, port))
        .collect();
    assert_echo(traffic::tcp_probe(client, web.v4(8080), T), "web's http");
    assert_echo(traffic::tcp_probe(client, api.v4(9090), T), "api's http");
    assert_echo(
        traffic::tcp_probe(client, api.v6(9090), T),
        "api's http, v6",
    );
    assert_blocked(
        traffic::tcp_probe(client, web.v4(9090), T),
        "api's number to web",
    );
    assert_blocked(
        traffic::tcp_probe(client, api.v4(8080), T),
        "web's number to api",
    );
    // `grpc` is nobody's port: it allows nothing, the policy loads, the status says why.
    let warnings = agent.status()["warnings"].to_string();
    assert!(
        warnings.contains("shop/client-out") && warnings.contains("grpc"),
        "{warnings}"
    );
    let egress_denied = agent.wait_flows(Duration::from_secs(5), "egress denial", |fl| {
        fl.iter().any(|f| {
            f.verdict == 2
                && f.traffic_direction == 2
                && f.destination.as_ref().is_some_and(|d| d.pod_name == "api")
        })
    });
    assert!(!egress_denied.is_empty());

    // A malformed name is rejected, naming file, policy and field; the policy in force stays.
    let err = agent
        .set_policy(&EGRESS.replace("port: grpc", "port: gRPC"))
        .expect("rejected");
    assert!(
        err.contains("policy.yaml")
            && err.contains("CiliumNetworkPolicy shop/client-out")
            && err.contains("spec.egress[1].toPorts[0].ports[0].port")
            && err.contains("\"gRPC\""),
        "{err}"
    );
    assert_echo(
        traffic::tcp_probe(client, api.v4(9090), T),
        "still api's http",
    );
    assert_blocked(
        traffic::tcp_probe(client, api.v4(8080), T),
        "still not 8080",
    );
}
