//! End-to-end tests of service load balancing on the real kernel: a client pod connects to a
//! service's cluster IP (and node port), the datapath translates each new connection to one
//! backend pod and the replies back to the service address. Needs root (`cargo xtask test`).
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use periscope_proto::flow::{Flow, Verdict};
use periscope_testbed::agent::{Agent, cli_bin};
use periscope_testbed::traffic::{TcpClientConn, TcpEchoServer, UdpEchoServer, tcp_probe};
use periscope_testbed::{PodHandle, Testbed, TestbedOptions, Topology};

const BACKENDS: [&str; 4] = ["be-1", "be-2", "be-3", "be-4"];
const VIP4: &str = "10.96.0.10";
const VIP6: &str = "fd00:96::10";
const NODE_IP: &str = "192.168.77.1";

const TOPO: &str = r#"
cluster: e2e
nodes: [{name: n1, ips: [192.168.77.1]}]
pods:
  - {name: client, namespace: shop, node: n1, labels: {app: client}, ips: [10.211.0.1, "fd00:211::1"]}
  - {name: other, namespace: shop, node: n1, labels: {app: other}, ips: [10.211.0.2, "fd00:211::2"]}
  - {name: be-1, namespace: shop, node: n1, labels: {app: api}, ips: [10.211.1.1, "fd00:211::1:1"]}
  - {name: be-2, namespace: shop, node: n1, labels: {app: api}, ips: [10.211.1.2, "fd00:211::1:2"]}
  - {name: be-3, namespace: shop, node: n1, labels: {app: api}, ips: [10.211.1.3, "fd00:211::1:3"]}
  - {name: be-4, namespace: shop, node: n1, labels: {app: api}, ips: [10.211.1.4, "fd00:211::1:4"]}
  # A client outside the cluster, reaching the node through its own veth (a node device).
  - {name: outside, node: n1, external: true, ips: [10.211.9.9]}
services:
  - name: api
    namespace: shop
    clusterIPs: [10.96.0.10, "fd00:96::10"]
    ports:
      - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
      - {name: echo, port: 81, protocol: UDP, targetPort: 8081}
    backends:
      - {ip: 10.211.1.1}
      - {ip: 10.211.1.2}
      - {ip: 10.211.1.3}
      - {ip: 10.211.1.4}
      - {ip: "fd00:211::1:1"}
      - {ip: "fd00:211::1:2"}
      - {ip: "fd00:211::1:3"}
      - {ip: "fd00:211::1:4"}
  - name: empty
    namespace: shop
    clusterIP: 10.96.0.11
    ports: [{port: 80, targetPort: 8080}]
  - name: sticky
    namespace: shop
    clusterIP: 10.96.0.12
    sessionAffinityTimeoutSeconds: 600
    ports: [{port: 80, targetPort: 8080}]
    backends: [{ip: 10.211.1.1}, {ip: 10.211.1.2}, {ip: 10.211.1.3}, {ip: 10.211.1.4}]
  - name: weighted
    namespace: shop
    clusterIP: 10.96.0.13
    ports: [{port: 80, targetPort: 8080}]
    backends: [{ip: 10.211.1.1, weight: 1}, {ip: 10.211.1.2, weight: 3}]
"#;

const T: Duration = Duration::from_secs(2);

fn testbed() -> Testbed {
    Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("create test bed")
}

/// TCP and UDP echo servers on every backend.
struct Servers {
    tcp: Vec<TcpEchoServer>,
    udp: Vec<UdpEchoServer>,
}

impl Servers {
    fn start(tb: &Testbed) -> Servers {
        Servers {
            tcp: BACKENDS
                .iter()
                .map(|b| TcpEchoServer::start(tb.pod(b), 8080))
                .collect(),
            udp: BACKENDS
                .iter()
                .map(|b| UdpEchoServer::start(tb.pod(b), 8081))
                .collect(),
        }
    }

    fn accepted(&self) -> Vec<usize> {
        self.tcp.iter().map(|s| s.accepted()).collect()
    }

    fn received(&self) -> Vec<usize> {
        self.udp.iter().map(|s| s.received()).collect()
    }

    /// The backend index that accepted the connection from `client`.
    fn backend_of(&self, client: SocketAddr) -> Option<usize> {
        self.tcp.iter().position(|s| s.peers().contains(&client))
    }
}

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

/// `n` short TCP connections from `pod` to `dst`, each echoing a few bytes; panics on a failure.
/// Checks that the peer every connection sees is `dst` (replies come from the service address).
fn connections(pod: &PodHandle, dst: SocketAddr, n: usize) {
    pod.run(move || {
        for i in 0..n {
            let mut s = TcpStream::connect_timeout(&dst, T)
                .unwrap_or_else(|e| panic!("connection {i} to {dst}: {e}"));
            s.set_read_timeout(Some(T)).unwrap();
            assert_eq!(s.peer_addr().unwrap(), dst, "the client sees the service");
            s.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf)
                .unwrap_or_else(|e| panic!("echo {i} via {dst}: {e}"));
            assert_eq!(&buf, b"ping");
        }
    })
}

fn deltas(after: &[usize], before: &[usize]) -> Vec<usize> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

/// Every backend's share of `n` connections is within the bounds of a fair spread (binomial:
/// n/4 ± 4.5 standard deviations).
fn assert_spread(d: &[usize], n: usize, what: &str) {
    assert_eq!(
        d.iter().sum::<usize>(),
        n,
        "{what}: every connection served: {d:?}"
    );
    let mean = n as f64 / d.len() as f64;
    let sd = (n as f64 * 0.25 * 0.75).sqrt();
    for x in d {
        assert!(
            (*x as f64 - mean).abs() <= 4.5 * sd,
            "{what}: uneven spread {d:?} (mean {mean})"
        );
    }
}

fn service_of(s: &Option<periscope_proto::flow::Service>) -> String {
    s.as_ref()
        .map(|s| format!("{}/{}", s.namespace, s.name))
        .unwrap_or_default()
}

/// Sends `n` datagrams from one UDP socket (one 5-tuple) of `pod` to `dst`, each answered.
fn udp_same_tuple(pod: &PodHandle, dst: SocketAddr, n: usize) {
    pod.run(move || {
        let bind: SocketAddr = if dst.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let s = UdpSocket::bind(bind).unwrap();
        // Connected: the kernel drops answers from any address but the service's.
        s.connect(dst).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        for i in 0..n {
            s.send(format!("dgram {i}").as_bytes()).unwrap();
            let mut buf = [0u8; 64];
            s.recv(&mut buf)
                .unwrap_or_else(|e| panic!("answer {i} from {dst}: {e}"));
        }
    })
}

#[test]
fn maglev_spreads_pins_and_translates_back_ipv4_ipv6_nodeport() {
    let tb = testbed();
    let agent = Agent::start(&tb, "n1", "", &[]);
    let servers = Servers::start(&tb);
    let client = tb.pod("client");

    // Many connections spread over the four backends, IPv4 and IPv6; replies come from the VIP.
    let before = servers.accepted();
    connections(client, sock(VIP4, 80), 400);
    assert_spread(&deltas(&servers.accepted(), &before), 400, "maglev, IPv4");
    let before = servers.accepted();
    connections(client, sock(VIP6, 80), 200);
    assert_spread(&deltas(&servers.accepted(), &before), 200, "maglev, IPv6");
    // The node port on the node's address.
    let before = servers.accepted();
    connections(client, sock(NODE_IP, 30080), 40);
    assert_eq!(
        deltas(&servers.accepted(), &before).iter().sum::<usize>(),
        40
    );

    // One 5-tuple stays on one backend (UDP: one connected socket, many datagrams).
    for vip in [VIP4, VIP6] {
        let before = servers.received();
        udp_same_tuple(client, sock(vip, 81), 20);
        let d = deltas(&servers.received(), &before);
        assert_eq!(
            d.iter().filter(|x| **x > 0).count(),
            1,
            "one tuple, one backend: {d:?}"
        );
        assert_eq!(d.iter().sum::<usize>(), 20);
    }

    // A service without backends drops with SERVICE_BACKEND_NOT_FOUND.
    let r = tcp_probe(client, sock("10.96.0.11", 80), Duration::from_millis(500));
    assert!(!r.is_echoed(), "no backend, no connection: {r:?}");

    // The flows name the service and show the translation.
    let flows = agent.wait_flows(
        Duration::from_secs(10),
        "translated, reply and no-backend flows",
        |fl| {
            fl.iter().any(|f| f.verdict == Verdict::Translated as i32)
                && fl.iter().any(|f| f.drop_reason_desc == 158)
                && fl.iter().any(|f| {
                    f.is_reply == Some(true) && service_of(&f.source_service) == "shop/api"
                })
        },
    );
    let translated: Vec<&Flow> = flows
        .iter()
        .filter(|f| f.verdict == Verdict::Translated as i32)
        .collect();
    for f in &translated {
        assert_eq!(service_of(&f.destination_service), "shop/api", "{f:?}");
        let dst = f.destination.as_ref().map(|d| d.pod_name.clone());
        assert!(
            dst.as_deref().is_some_and(|d| d.starts_with("be-")),
            "translated to a backend pod: {f:?}"
        );
    }
    let nobackend = flows
        .iter()
        .find(|f| f.drop_reason_desc == 158)
        .expect("drop");
    assert_eq!(service_of(&nobackend.destination_service), "shop/empty");
    assert_eq!(
        nobackend.ip.as_ref().map(|i| i.destination.as_str()),
        Some("10.96.0.11")
    );
    // Delivered to the backend: the to-endpoint traces name the service too.
    assert!(
        flows.iter().any(|f| f.trace_observation_point == 101
            && service_of(&f.destination_service) == "shop/api"),
        "to-endpoint trace with destination_service"
    );

    // Replies delivered to the client: translated back, the backend as source, the service
    // address as the translated source (Hubble's IP.source_xlated).
    let reply = flows
        .iter()
        .find(|f| {
            f.is_reply == Some(true)
                && f.traffic_direction == 1
                && f.destination
                    .as_ref()
                    .is_some_and(|d| d.pod_name == "client")
                && service_of(&f.source_service) == "shop/api"
        })
        .expect("a reply flow at the client");
    let ip = reply.ip.as_ref().unwrap();
    assert!(
        [VIP4, VIP6].contains(&ip.source_xlated.as_str()),
        "source_xlated is the service address: {reply:?}"
    );
    assert!(ip.source.starts_with("10.211.1.") || ip.source.starts_with("fd00:211::1:"));

    // `periscope observe --to-service` selects them through the Observer API.
    let out = std::process::Command::new(cli_bin())
        .args(["--server", &agent.api_address()])
        .args([
            "observe",
            "--to-service",
            "shop/api",
            "--last",
            "2000",
            "-o",
            "json",
        ])
        .output()
        .expect("run periscope");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert!(lines.len() > 10, "flows to the service: {}", lines.len());
    for l in &lines {
        let f = if l["flow"].is_null() { l } else { &l["flow"] };
        assert_eq!(f["destination_service"]["name"], "api", "{l}");
        assert_eq!(f["destination_service"]["namespace"], "shop", "{l}");
    }
}

#[test]
fn session_affinity_keeps_a_client_on_one_backend() {
    let tb = testbed();
    let _agent = Agent::start(&tb, "n1", "", &[]);
    let servers = Servers::start(&tb);
    for pod in ["client", "other"] {
        let before = servers.accepted();
        connections(tb.pod(pod), sock("10.96.0.12", 80), 60);
        let d = deltas(&servers.accepted(), &before);
        assert_eq!(
            d.iter().filter(|x| **x > 0).collect::<Vec<_>>(),
            vec![&60],
            "{pod}: every connection on one backend: {d:?}"
        );
    }
}

#[test]
fn random_selection_spreads_too_and_follows_weights() {
    let tb = testbed();
    let agent = Agent::start(&tb, "n1", "", &["--lb-algorithm", "random"]);
    let servers = Servers::start(&tb);
    // status.json shows the services with their frontends and backends.
    let status = agent.status();
    let weighted = status["services"]
        .as_array()
        .expect("services in status.json")
        .iter()
        .find(|s| s["name"] == "weighted")
        .unwrap_or_else(|| panic!("the weighted service in {:#}", status["services"]));
    assert_eq!(weighted["namespace"], "shop");
    assert_eq!(
        weighted["frontends"],
        serde_json::json!(["10.96.0.13:80/TCP"])
    );
    assert_eq!(
        weighted["backends"],
        serde_json::json!([
            {"address": "10.211.1.1:8080", "weight": 1, "state": "active"},
            {"address": "10.211.1.2:8080", "weight": 3, "state": "active"},
        ])
    );
    let before = servers.accepted();
    connections(tb.pod("client"), sock(VIP4, 80), 400);
    assert_spread(&deltas(&servers.accepted(), &before), 400, "random");

    // Weights 1:3 over be-1 and be-2: their shares a quarter and three quarters of the
    // connections (binomial, ± 4.5 standard deviations), none elsewhere.
    let before = servers.accepted();
    connections(tb.pod("client"), sock("10.96.0.13", 80), 400);
    let d = deltas(&servers.accepted(), &before);
    let sd = (400.0f64 * 0.25 * 0.75).sqrt();
    assert_eq!(
        d.iter().sum::<usize>(),
        400,
        "weighted: every connection served: {d:?}"
    );
    assert_eq!(
        &d[2..],
        [0, 0],
        "weighted: only the service's backends: {d:?}"
    );
    assert!(
        (d[0] as f64 - 100.0).abs() <= 4.5 * sd && (d[1] as f64 - 300.0).abs() <= 4.5 * sd,
        "weighted: shares {d:?}, expected about 100 and 300"
    );
}

fn with_backends(tb: &Testbed, backends: &[(&str, &str)]) -> Topology {
    let mut t = tb.topology().clone();
    let api = t
        .services
        .iter_mut()
        .find(|s| s.name == "api")
        .expect("api service");
    api.backends = backends
        .iter()
        .map(|(ip, state)| {
            serde_yaml::from_str(&format!("{{ip: \"{ip}\", state: {state}}}")).expect("backend")
        })
        .collect();
    t
}

#[test]
fn backend_removal_terminating_readd_and_no_backends_keep_established_connections() {
    let tb = testbed();
    let agent = Agent::start(&tb, "n1", "", &["--lb-maglev-table-size", "1021"]);
    let servers = Servers::start(&tb);
    let client = tb.pod("client");
    let vip = sock(VIP4, 80);

    // Long-lived connections, some on every backend.
    let mut conns: Vec<(TcpClientConn, usize)> = Vec::new();
    for _ in 0..24 {
        let mut c = TcpClientConn::connect(client, vip, T).expect("connect");
        c.echo(b"hello").expect("echo");
        let b = servers
            .backend_of(c.local_addr().unwrap())
            .expect("a backend accepted it");
        conns.push((c, b));
    }
    let echo_all = |conns: &mut Vec<(TcpClientConn, usize)>, what: &str| {
        for (c, b) in conns.iter_mut() {
            c.echo(b"still there").unwrap_or_else(|e| {
                panic!("{what}: established connection on be-{} lost: {e}", *b + 1)
            });
        }
    };

    // be-1 removed, be-2 terminating: no new connections for them, the old ones go on.
    let t = with_backends(
        &tb,
        &[
            ("10.211.1.2", "terminating"),
            ("10.211.1.3", "active"),
            ("10.211.1.4", "active"),
        ],
    );
    assert_eq!(agent.set_topology(&t), None);
    echo_all(&mut conns, "after removal");
    let before = servers.accepted();
    connections(client, vip, 200);
    let d = deltas(&servers.accepted(), &before);
    assert_eq!(
        (d[0], d[1]),
        (0, 0),
        "removed/terminating take nothing: {d:?}"
    );
    assert_eq!(d[2] + d[3], 200);

    // be-1 back: it takes new connections again.
    let t = with_backends(
        &tb,
        &[
            ("10.211.1.1", "active"),
            ("10.211.1.3", "active"),
            ("10.211.1.4", "active"),
        ],
    );
    assert_eq!(agent.set_topology(&t), None);
    let before = servers.accepted();
    connections(client, vip, 150);
    let d = deltas(&servers.accepted(), &before);
    assert!(d[0] > 10 && d[1] == 0, "be-1 re-added, be-2 gone: {d:?}");
    echo_all(&mut conns, "after re-add");

    // No backends at all: new connections are dropped, established ones still go on.
    let t = with_backends(&tb, &[]);
    assert_eq!(agent.set_topology(&t), None);
    let r = tcp_probe(client, vip, Duration::from_millis(500));
    assert!(!r.is_echoed(), "no backend, no connection: {r:?}");
    echo_all(&mut conns, "with no backends");
    agent.wait_flows(
        Duration::from_secs(10),
        "no-backend drop of shop/api",
        |fl| {
            fl.iter().any(|f| {
                f.drop_reason_desc == 158 && service_of(&f.destination_service) == "shop/api"
            })
        },
    );
    for (c, _) in conns {
        c.close().expect("graceful close");
    }
}

#[test]
fn service_updates_under_traffic_lose_no_established_connection() {
    let tb = testbed();
    let agent = Agent::start(&tb, "n1", "", &[]);
    let servers = Servers::start(&tb);
    let client = tb.pod("client");
    let vip = sock(VIP4, 80);
    let mut conns: Vec<TcpClientConn> = (0..16)
        .map(|_| TcpClientConn::connect(client, vip, T).expect("connect"))
        .collect();
    let sets: [&[(&str, &str)]; 4] = [
        &[("10.211.1.1", "active"), ("10.211.1.2", "active")],
        &[("10.211.1.3", "active"), ("10.211.1.4", "terminating")],
        &[
            ("10.211.1.1", "active"),
            ("10.211.1.2", "active"),
            ("10.211.1.3", "active"),
            ("10.211.1.4", "active"),
        ],
        &[("10.211.1.4", "active")],
    ];
    for (round, set) in sets.iter().enumerate() {
        assert_eq!(agent.set_topology(&with_backends(&tb, set)), None);
        for (i, c) in conns.iter_mut().enumerate() {
            c.echo(format!("round {round} conn {i}").as_bytes())
                .unwrap_or_else(|e| panic!("round {round}: connection {i} lost: {e}"));
        }
        // New connections keep working while the set changes.
        connections(client, vip, 20);
    }
    let _ = servers;
}

#[test]
fn translation_survives_an_agent_restart() {
    let tb = testbed();
    let mut agent = Agent::start(&tb, "n1", "", &[]);
    let servers = Servers::start(&tb);
    let client = tb.pod("client");
    let vip = sock(VIP4, 80);
    let mut conns: Vec<TcpClientConn> = (0..8)
        .map(|_| TcpClientConn::connect(client, vip, T).expect("connect"))
        .collect();
    for c in conns.iter_mut() {
        c.echo(b"hello").expect("echo"); // accepted by now
    }
    let bound: Vec<Option<usize>> = conns
        .iter()
        .map(|c| servers.backend_of(c.local_addr().unwrap()))
        .collect();
    // Killed: the pinned datapath goes on translating both ways.
    agent.kill9();
    for c in conns.iter_mut() {
        c.echo(b"agent gone")
            .expect("established connection while the agent is down");
    }
    connections(client, vip, 20);
    // Restarted: it takes the tables over; connections keep their backends.
    agent.restart(None);
    for c in conns.iter_mut() {
        c.echo(b"agent back")
            .expect("established connection after the restart");
    }
    let before = servers.accepted();
    connections(client, vip, 200);
    assert_spread(
        &deltas(&servers.accepted(), &before),
        200,
        "after a restart",
    );
    let after: Vec<Option<usize>> = conns
        .iter()
        .map(|c| servers.backend_of(c.local_addr().unwrap()))
        .collect();
    assert_eq!(bound, after);
}

#[test]
fn policy_applies_to_the_backend_behind_the_service() {
    let tb = testbed();
    // The backends accept only the client, on the backend port; the client may only talk to
    // the backends (not to "world", which the service address would be without translation).
    let policy = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api-from-client, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-to-api, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: api}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"#;
    let agent = Agent::start(&tb, "n1", policy, &[]);
    let _servers = Servers::start(&tb);
    connections(tb.pod("client"), sock(VIP4, 80), 20);
    connections(tb.pod("client"), sock(VIP6, 80), 20);
    let r = tcp_probe(tb.pod("other"), sock(VIP4, 80), Duration::from_millis(500));
    assert!(
        !r.is_echoed(),
        "other is not allowed into the backends: {r:?}"
    );
    let flows = agent.wait_flows(Duration::from_secs(10), "policy drop at a backend", |fl| {
        fl.iter().any(|f| {
            f.verdict == Verdict::Dropped as i32
                && f.drop_reason_desc == 133
                && f.source.as_ref().is_some_and(|s| s.pod_name == "other")
        })
    });
    let drop = flows
        .iter()
        .find(|f| {
            f.drop_reason_desc == 133 && f.source.as_ref().is_some_and(|s| s.pod_name == "other")
        })
        .unwrap();
    let dst = drop.destination.as_ref().unwrap();
    assert!(
        dst.pod_name.starts_with("be-"),
        "denied at the backend: {drop:?}"
    );
    assert_eq!(service_of(&drop.destination_service), "shop/api");
    // The client's egress verdicts were taken against the backends' identity and port.
    let allowed: Vec<&Flow> = flows
        .iter()
        .filter(|f| {
            f.event_type.map(|e| e.r#type) == Some(5)
                && f.source.as_ref().is_some_and(|s| s.pod_name == "client")
                && f.traffic_direction == 2
        })
        .collect();
    assert!(!allowed.is_empty());
    for f in allowed {
        assert_eq!(f.verdict, Verdict::Forwarded as i32, "{f:?}");
        assert!(f.destination.as_ref().unwrap().pod_name.starts_with("be-"));
    }
}

#[test]
fn a_bad_service_is_rejected_and_the_old_table_stays() {
    let tb = testbed();
    let agent = Agent::start(&tb, "n1", "", &[]);
    let servers = Servers::start(&tb);
    let client = tb.pod("client");
    let cases: [(&str, &str); 4] = [
        ("protocol: SCTP", "protocol"),
        ("port: 0", "port"),
        ("clusterIP: 10.96.0.10", "duplicate frontend"),
        ("weight0", "weight 0"),
    ];
    for (change, want) in cases {
        let mut t = tb.topology().clone();
        let empty = t.services.iter_mut().find(|s| s.name == "empty").unwrap();
        match change {
            "protocol: SCTP" => empty.ports[0].protocol = "SCTP".into(),
            "port: 0" => empty.ports[0].port = 0,
            "clusterIP: 10.96.0.10" => empty.cluster_ip = Some("10.96.0.10".parse().unwrap()),
            _ => {
                empty.backends = vec![serde_yaml::from_str("{ip: 10.211.1.1, weight: 0}").unwrap()]
            }
        }
        let err = agent
            .set_topology(&t)
            .unwrap_or_else(|| panic!("{change}: accepted"));
        assert!(
            err.contains("topology.yaml") && err.contains("shop/empty") && err.contains(want),
            "{change}: the error names file, service and field: {err}"
        );
        let before = servers.accepted();
        connections(client, sock(VIP4, 80), 20);
        assert_eq!(
            deltas(&servers.accepted(), &before).iter().sum::<usize>(),
            20
        );
    }
}

/// Node ports from outside the node: with the client's interface as a node device
/// (`--nodeport-devices`), connections to the node's address and node port reach the backends,
/// the client sees the node port answer, and the flows at the backends name the service; without
/// it, nothing answers there.
#[test]
fn node_ports_answer_clients_outside_the_node() {
    let tb = testbed();
    let outside = tb.pod("outside");
    let servers = Servers::start(&tb);
    let node_port = sock("192.168.77.1", 30080);
    {
        let _agent = Agent::start(&tb, "n1", "", &[]);
        assert!(
            !tcp_probe(outside, node_port, T).is_echoed(),
            "no node device: the node port is not translated for outside clients"
        );
    }
    let device = outside.host_ifname.clone();
    let agent = Agent::start(&tb, "n1", "", &["--nodeport-devices", &device]);
    let before = servers.accepted();
    // Each connection checks that its peer is the node port (replies translated back).
    connections(outside, node_port, 60);
    let d = deltas(&servers.accepted(), &before);
    assert_eq!(
        d.iter().sum::<usize>(),
        60,
        "every connection served: {d:?}"
    );
    assert!(d.iter().all(|n| *n > 0), "spread over the backends: {d:?}");
    let flows = agent.wait_flows(Duration::from_secs(5), "a flow from outside", |fl| {
        fl.iter().any(|f| {
            f.ip.as_ref().is_some_and(|ip| ip.source == "10.211.9.9")
                && service_of(&f.destination_service) == "shop/api"
        })
    });
    assert!(!flows.is_empty());
}
