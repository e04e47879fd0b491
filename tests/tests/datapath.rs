//! End-to-end tests of the datapath and the agent on the real kernel: pods in network
//! namespaces, the agent's eBPF programs on their veths, real TCP/UDP/ICMP traffic, crafted
//! malformed packets. Needs root (run through `cargo xtask test`).
use std::time::Duration;

use periscope_proto::flow::{DropReason, Flow, TrafficDirection, Verdict, layer4::Protocol};
use periscope_testbed::agent::Agent;
use periscope_testbed::traffic::{
    self, ProbeResult, TcpClientConn, TcpEchoServer, UdpEchoServer, send_raw_frame,
};
use periscope_testbed::{Testbed, TestbedOptions, ports};

const TOPO: &str = r#"
cluster: e2e
nodes: [{name: n1}]
pods:
  - {name: web, namespace: shop, node: n1, labels: {app: web}, ips: [10.210.0.1, "fd00:210::1"]}
  - {name: api, namespace: shop, node: n1, labels: {app: api}, ips: [10.210.0.2, "fd00:210::2"]}
  - {name: db, namespace: data, node: n1, labels: {app: db}, ips: [10.210.1.3, "fd00:210::3"]}
  - {name: other, namespace: data, node: n1, labels: {app: other}, ips: [10.210.1.4, "fd00:210::4"]}
  - {name: world, node: n1, external: true, ips: [192.0.2.50, "2001:db8::50"]}
"#;

const T: Duration = Duration::from_millis(400);

fn testbed() -> Testbed {
    Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("create test bed")
}

// ---- flow helpers -----------------------------------------------------------------------------

fn event_type(f: &Flow) -> i32 {
    f.event_type.map(|e| e.r#type).unwrap_or(0)
}
fn is_pv(f: &Flow) -> bool {
    event_type(f) == 5
}
fn is_drop(f: &Flow) -> bool {
    event_type(f) == 1
}
fn is_trace(f: &Flow) -> bool {
    event_type(f) == 4
}
fn pod_of(ep: &Option<periscope_proto::flow::Endpoint>) -> String {
    ep.as_ref()
        .map(|e| format!("{}/{}", e.namespace, e.pod_name))
        .unwrap_or_default()
}
fn src(f: &Flow) -> String {
    pod_of(&f.source)
}
fn dst(f: &Flow) -> String {
    pod_of(&f.destination)
}
fn ip_src(f: &Flow) -> String {
    f.ip.as_ref().map(|i| i.source.clone()).unwrap_or_default()
}

/// The ingress policy verdict at `dst_pod` for traffic from `from` (pod name or IP) to `dport`.
fn ingress_pv<'a>(flows: &'a [Flow], from: &str, dst_pod: &str, dport: u32) -> Vec<&'a Flow> {
    flows
        .iter()
        .filter(|f| {
            is_pv(f)
                && f.traffic_direction == TrafficDirection::Ingress as i32
                && (src(f) == from || ip_src(f) == from)
                && dst(f) == dst_pod
                && ports(f).1 == dport
        })
        .collect()
}

fn assert_echo(r: ProbeResult, what: &str) {
    assert!(r.is_echoed(), "{what}: expected the echo, got {r:?}");
}

fn assert_blocked(r: ProbeResult, what: &str) {
    assert!(
        matches!(r, ProbeResult::TimedOut | ProbeResult::NoEcho(_)),
        "{what}: expected no answer, got {r:?}"
    );
}

// ---- policies ---------------------------------------------------------------------------------

const MATRIX_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-policy, namespace: data}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  # L3-L4: the api (namespace shop) on TCP/5432.
  - fromEndpoints: [{matchLabels: {app: api, k8s:io.kubernetes.pod.namespace: shop}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
  # Everything in the cluster on TCP/6000 — but see the deny below.
  - fromEntities: [cluster]
    toPorts: [{ports: [{port: "6000", protocol: TCP}]}]
  # Same-namespace endpoints ({} in a namespaced policy) on UDP/53.
  - fromEndpoints: [{}]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
  # ICMP echo from web only.
  - fromEndpoints: [{matchLabels: {app: web, k8s:io.kubernetes.pod.namespace: shop}}]
    icmps: [{fields: [{type: 8}, {type: 128, family: IPv6}]}]
  # World addresses by CIDR on TCP/7000, except the /32 of the world client on TCP/7001.
  - fromCIDR: [192.0.2.0/24, "2001:db8::/64"]
    toPorts: [{ports: [{port: "7000", protocol: TCP}]}]
  - fromCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.50/32]}]
    toPorts: [{ports: [{port: "7001", protocol: TCP}]}]
  # L4-only: anyone on TCP/9000.
  - toPorts: [{ports: [{port: "9000", protocol: TCP}]}]
  ingressDeny:
  # Deny wins over the cluster-wide allow on 6000.
  - fromEndpoints: [{matchLabels: {app: other}}]
    toPorts: [{ports: [{port: "6000", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-policy, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  # L3-only: the api on any port and protocol.
  - fromEndpoints: [{matchLabels: {app: api}}]
"#;

#[test]
fn allow_deny_matrix_tcp_udp_icmp_ipv4_ipv6() {
    let tb = testbed();
    let (web, api, db, other, world) = (
        tb.pod("shop/web"),
        tb.pod("shop/api"),
        tb.pod("data/db"),
        tb.pod("data/other"),
        tb.pod("world"),
    );
    let agent = Agent::start(&tb, "n1", MATRIX_POLICY, &[]);
    let _servers: Vec<TcpEchoServer> = [5432, 6000, 7000, 7001, 8080, 9000]
        .iter()
        .map(|p| TcpEchoServer::start(db, *p))
        .collect();
    let _udp = UdpEchoServer::start(db, 53);
    let _web_tcp = TcpEchoServer::start(web, 1234);
    let _web_udp = UdpEchoServer::start(web, 1235);

    for v6 in [false, true] {
        let at = |p: &periscope_testbed::PodHandle, port| if v6 { p.v6(port) } else { p.v4(port) };
        let fam = if v6 { "IPv6" } else { "IPv4" };
        // Identity + port + protocol.
        assert_echo(
            traffic::tcp_probe(api, at(db, 5432), T),
            &format!("{fam} api -> db:5432"),
        );
        assert_blocked(
            traffic::tcp_probe(web, at(db, 5432), T),
            &format!("{fam} web -> db:5432"),
        );
        assert_blocked(
            traffic::tcp_probe(api, at(db, 8080), T),
            &format!("{fam} api -> db:8080"),
        );
        // Entity cluster, and deny precedence.
        assert_echo(
            traffic::tcp_probe(web, at(db, 6000), T),
            &format!("{fam} web -> db:6000"),
        );
        assert_blocked(
            traffic::tcp_probe(other, at(db, 6000), T),
            &format!("{fam} other -> db:6000 (denied)"),
        );
        assert_blocked(
            traffic::tcp_probe(world, at(db, 6000), T),
            &format!("{fam} world -> db:6000"),
        );
        // Protocol matters: UDP/53 from the same namespace only; TCP/53 not allowed.
        assert_echo(
            traffic::udp_probe(other, at(db, 53), T),
            &format!("{fam} other -> db:53/udp"),
        );
        assert_blocked(
            traffic::udp_probe(api, at(db, 53), T),
            &format!("{fam} api -> db:53/udp"),
        );
        // ICMP echo from web only.
        assert!(traffic::ping(web, at(db, 0).ip(), T), "{fam} web ping db");
        assert!(
            !traffic::ping(api, at(db, 0).ip(), T),
            "{fam} api ping db must fail"
        );
        // CIDR (world) matches.
        assert_echo(
            traffic::tcp_probe(world, at(db, 7000), T),
            &format!("{fam} world -> db:7000"),
        );
        assert_echo(
            traffic::tcp_probe(world, at(db, 9000), T),
            &format!("{fam} world -> db:9000 (L4-only)"),
        );
        assert_echo(
            traffic::tcp_probe(web, at(db, 9000), T),
            &format!("{fam} web -> db:9000 (L4-only)"),
        );
        // L3-only: api reaches web on any port/protocol, db does not.
        assert_echo(
            traffic::tcp_probe(api, at(web, 1234), T),
            &format!("{fam} api -> web:1234"),
        );
        assert_echo(
            traffic::udp_probe(api, at(web, 1235), T),
            &format!("{fam} api -> web:1235/udp"),
        );
        assert_blocked(
            traffic::tcp_probe(db, at(web, 1234), T),
            &format!("{fam} db -> web:1234"),
        );
    }
    // except: the world client's /32 is carved out of the /24 (IPv4 only).
    assert_blocked(
        traffic::tcp_probe(world, db.v4(7001), T),
        "world -> db:7001 (except)",
    );

    // The flows name the verdicts, match types and drop reasons.
    let flows = agent.wait_flows(Duration::from_secs(5), "verdicts of the matrix", |fl| {
        ingress_pv(fl, "world", "data/db", 7001).len()
            + ingress_pv(fl, "192.0.2.50", "data/db", 7001).len()
            >= 1
    });
    let (api_id, web_id, db_id) = (
        agent.identity("shop/api"),
        agent.identity("shop/web"),
        agent.identity("data/db"),
    );
    let pv = ingress_pv(&flows, "shop/api", "data/db", 5432);
    assert_eq!(pv.len(), 2, "one new connection per family");
    for f in &pv {
        assert_eq!(f.verdict, Verdict::Forwarded as i32);
        assert_eq!(f.policy_match_type, 2, "L3-L4");
        assert_eq!(f.source.as_ref().unwrap().identity, api_id);
        assert_eq!(f.destination.as_ref().unwrap().identity, db_id);
        assert!(
            f.destination
                .as_ref()
                .unwrap()
                .labels
                .contains(&"k8s:app=db".to_string())
        );
    }
    let denied = ingress_pv(&flows, "shop/api", "data/db", 8080);
    assert!(!denied.is_empty() && denied.iter().all(|f| f.verdict == Verdict::Dropped as i32));
    let drops: Vec<_> = flows
        .iter()
        .filter(|f| is_drop(f) && src(f) == "shop/api" && ports(f).1 == 8080)
        .collect();
    assert!(
        drops
            .iter()
            .all(|f| f.drop_reason_desc == DropReason::PolicyDenied as i32),
        "default deny is 133"
    );
    let deny = flows
        .iter()
        .filter(|f| is_drop(f) && src(f) == "data/other" && ports(f).1 == 6000)
        .collect::<Vec<_>>();
    assert!(!deny.is_empty());
    assert!(
        deny.iter()
            .all(|f| f.drop_reason_desc == DropReason::PolicyDeny as i32),
        "explicit deny is 181"
    );
    assert!(
        deny.iter().all(|f| f
            .ingress_denied_by
            .first()
            .is_some_and(|p| p.name == "db-policy" && p.namespace == "data")),
        "the deny names its policy"
    );
    let l4only = ingress_pv(&flows, "shop/web", "data/db", 9000);
    assert!(
        l4only.iter().all(|f| f.policy_match_type == 3),
        "L4-only match type"
    );
    let l3only = ingress_pv(&flows, "shop/api", "shop/web", 1234);
    assert!(
        !l3only.is_empty() && l3only.iter().all(|f| f.policy_match_type == 1),
        "L3-only match type"
    );
    let world_pv = flows
        .iter()
        .filter(|f| is_pv(f) && ip_src(f) == "192.0.2.50" && ports(f).1 == 7000)
        .collect::<Vec<_>>();
    assert!(!world_pv.is_empty());
    for f in world_pv {
        let s = f.source.as_ref().unwrap();
        assert!(s.identity >= 1 << 24, "a CIDR identity, got {}", s.identity);
        assert!(
            s.labels.contains(&"cidr:192.0.2.0/24".to_string()),
            "{:?}",
            s.labels
        );
    }
    let icmp = flows
        .iter()
        .filter(|f| {
            is_pv(f)
                && src(f) == "shop/web"
                && dst(f) == "data/db"
                && f.l4.as_ref().is_some_and(|l| {
                    matches!(
                        l.protocol,
                        Some(Protocol::IcmPv4(_)) | Some(Protocol::IcmPv6(_))
                    )
                })
        })
        .count();
    assert!(icmp >= 2, "ICMP policy verdicts for both families");
    let _ = web_id;
}

#[test]
fn replies_pass_conntrack_and_reverse_connections_are_checked() {
    let tb = testbed();
    let (web, db) = (tb.pod("shop/web"), tb.pod("data/db"));
    // db: ingress only from web on 5432, and egress enforced with nothing allowed.
    let policy = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-locked, namespace: data}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web, k8s:io.kubernetes.pod.namespace: shop}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}, {port: "5353", protocol: UDP}]}]
  egress: []
"#;
    let agent = Agent::start(&tb, "n1", policy, &[]);
    let _s = TcpEchoServer::start(db, 5432);
    let _u = UdpEchoServer::start(db, 5353);
    let _w = TcpEchoServer::start(web, 80);
    for v6 in [false, true] {
        let at = |p: &periscope_testbed::PodHandle, port| if v6 { p.v6(port) } else { p.v4(port) };
        // A whole TCP conversation: db's replies pass although db's egress allows nothing.
        let got = traffic::tcp_session(web, at(db, 5432), 5, Duration::from_millis(20), T)
            .expect("session");
        assert_eq!(got, 5, "all echoes of the session came back");
        assert_echo(
            traffic::udp_probe(web, at(db, 5353), T),
            "UDP reply through CT",
        );
        // A new connection from db to web is checked against db's egress policy: denied.
        assert_blocked(
            traffic::tcp_probe(db, at(web, 80), T),
            "db -> web:80 is a new connection",
        );
    }
    let flows = agent.wait_flows(Duration::from_secs(5), "reply traces", |fl| {
        fl.iter()
            .filter(|f| is_trace(f) && f.is_reply == Some(true))
            .count()
            >= 2
    });
    // Replies are marked and have no policy verdict of their own.
    let replies: Vec<_> = flows.iter().filter(|f| f.is_reply == Some(true)).collect();
    assert!(
        replies.iter().all(|f| src(f) == "data/db" && is_trace(f)),
        "only db's answers are replies"
    );
    assert!(
        !flows
            .iter()
            .any(|f| is_pv(f) && src(f) == "data/db" && ports(f).0 == 5432),
        "no verdict for replies"
    );
    let egress_denied: Vec<_> = flows
        .iter()
        .filter(|f| {
            is_pv(f)
                && src(f) == "data/db"
                && f.traffic_direction == TrafficDirection::Egress as i32
                && ports(f).1 == 80
        })
        .collect();
    assert!(
        !egress_denied.is_empty()
            && egress_denied
                .iter()
                .all(|f| f.verdict == Verdict::Dropped as i32)
    );
}

#[test]
fn enforcement_modes_and_audit() {
    let tb = testbed();
    let (web, api, db) = (tb.pod("shop/web"), tb.pod("shop/api"), tb.pod("data/db"));
    let _s = TcpEchoServer::start(db, 5432);
    let _a = TcpEchoServer::start(api, 80);
    let only_api = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-only-api, namespace: data}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api, k8s:io.kubernetes.pod.namespace: shop}}]
"#;
    // default: db is selected → default deny for web; api (not selected) is open.
    let mut agent = Agent::start(&tb, "n1", only_api, &[]);
    assert_blocked(
        traffic::tcp_probe(web, db.v4(5432), T),
        "default: web -> db",
    );
    assert_echo(
        traffic::tcp_probe(api, db.v4(5432), T),
        "default: api -> db",
    );
    assert_echo(
        traffic::tcp_probe(web, api.v4(80), T),
        "default: web -> api (no policy)",
    );
    assert!(
        agent.status()["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "data/db" && e["ingress_enforced"] == true)
    );

    // always: no policy selects api, yet everything to it is denied.
    agent.restart(Some(&["--enforcement", "always"]));
    assert_blocked(traffic::tcp_probe(web, api.v4(80), T), "always: web -> api");
    assert_blocked(
        traffic::tcp_probe(api, db.v4(5432), T),
        "always: api's egress is default deny too",
    );

    // never: the policy is ignored.
    agent.restart(Some(&["--enforcement", "never"]));
    assert_echo(traffic::tcp_probe(web, db.v4(5432), T), "never: web -> db");

    // Per-endpoint override: db never, the rest default.
    agent.restart(Some(&["--endpoint-mode", "data/db=never"]));
    assert_echo(
        traffic::tcp_probe(web, db.v4(5432), T),
        "db=never: web -> db",
    );

    // Audit: the would-be drop is forwarded and reported as AUDIT.
    agent.restart(Some(&["--audit"]));
    assert_echo(
        traffic::tcp_probe(web, db.v6(5432), T),
        "audit: web -> db forwarded",
    );
    let flows = agent.wait_flows(Duration::from_secs(5), "an AUDIT verdict", |fl| {
        fl.iter()
            .any(|f| is_pv(f) && f.verdict == Verdict::Audit as i32)
    });
    let audit: Vec<_> = flows
        .iter()
        .filter(|f| is_pv(f) && f.verdict == Verdict::Audit as i32)
        .collect();
    assert!(
        audit
            .iter()
            .all(|f| src(f) == "shop/web" && dst(f) == "data/db"),
        "only web -> db is audited"
    );
    assert!(
        !flows.iter().any(|f| is_drop(f) && src(f) == "shop/web"),
        "nothing dropped in audit mode"
    );
    // Per-endpoint audit only on db: another endpoint still enforces.
    agent.restart(Some(&[
        "--endpoint-mode",
        "data/db=default,audit",
        "--endpoint-mode",
        "shop/api=always",
    ]));
    assert_echo(
        traffic::tcp_probe(web, db.v4(5432), T),
        "db audit: web -> db forwarded",
    );
    assert_blocked(
        traffic::tcp_probe(db, api.v4(80), T),
        "api still enforces (always, no audit)",
    );
}

#[test]
fn flows_match_the_traffic() {
    let tb = testbed();
    let (web, api, db) = (tb.pod("shop/web"), tb.pod("shop/api"), tb.pod("data/db"));
    let agent = Agent::start(&tb, "n1", MATRIX_POLICY, &[]);
    let server = TcpEchoServer::start(db, 5432);
    let mut local_ports = Vec::new();
    for _ in 0..5 {
        let mut c = TcpClientConn::connect(api, db.v4(5432), T).expect("connect");
        c.echo(b"hello").expect("echo");
        local_ports.push(c.local_addr().expect("addr").port() as u32);
        c.close().expect("close");
    }
    for _ in 0..3 {
        assert_blocked(
            traffic::tcp_probe(web, db.v4(5432), Duration::from_millis(200)),
            "web -> db",
        );
    }
    assert_eq!(server.accepted(), 5);
    let flows = agent.wait_flows(
        Duration::from_secs(5),
        "5 allowed and 3 denied verdicts",
        |fl| {
            ingress_pv(fl, "shop/api", "data/db", 5432).len() >= 5
                && ingress_pv(fl, "shop/web", "data/db", 5432).len() >= 3
        },
    );
    let (api_id, web_id, db_id) = (
        agent.identity("shop/api"),
        agent.identity("shop/web"),
        agent.identity("data/db"),
    );
    let allowed = ingress_pv(&flows, "shop/api", "data/db", 5432);
    assert_eq!(allowed.len(), 5, "one verdict per connection");
    let mut seen: Vec<u32> = allowed.iter().map(|f| ports(f).0).collect();
    seen.sort();
    local_ports.sort();
    assert_eq!(
        seen, local_ports,
        "source ports of the verdicts are the clients' ports"
    );
    for f in &allowed {
        assert_eq!(f.verdict, Verdict::Forwarded as i32);
        assert_eq!(
            (
                f.source.as_ref().unwrap().identity,
                f.destination.as_ref().unwrap().identity
            ),
            (api_id, db_id)
        );
        assert_eq!(f.node_name, "n1");
        assert!(!f.uuid.is_empty());
    }
    let denied = ingress_pv(&flows, "shop/web", "data/db", 5432);
    assert_eq!(
        denied.len(),
        3,
        "one verdict per denied SYN (no retransmit within 200 ms)"
    );
    assert!(
        denied.iter().all(|f| f.verdict == Verdict::Dropped as i32
            && f.source.as_ref().unwrap().identity == web_id)
    );
    // The SYN of each allowed connection is traced once, where it is delivered to db (under
    // aggregation, traffic between two local endpoints is reported at delivery only).
    for p in &local_ports {
        let syn_traces = flows.iter().filter(|f| is_trace(f) && ports(f) == (*p, 5432)
            && matches!(f.l4.as_ref().and_then(|l| l.protocol), Some(Protocol::Tcp(t)) if t.flags.is_some_and(|fl| fl.syn && !fl.ack))).count();
        assert_eq!(syn_traces, 1, "SYN of port {p} traced once (to-endpoint)");
    }
    let uuids: std::collections::HashSet<_> = flows.iter().map(|f| f.uuid.clone()).collect();
    assert_eq!(uuids.len(), flows.len(), "flow uuids are unique");
}

/// Flows carry the bytes and packets of their connection (`periscope_bytes` /
/// `periscope_packets`): under aggregation a connection has few records, and its records that are
/// not replies, at one observation point, add up to its traffic both ways.
#[test]
fn flows_carry_the_bytes_of_their_connection() {
    let tb = testbed();
    let (web, api, db) = (tb.pod("shop/web"), tb.pod("shop/api"), tb.pod("data/db"));
    let agent = Agent::start(
        &tb,
        "n1",
        MATRIX_POLICY,
        &["--monitor-aggregation", "medium"],
    );
    let server = TcpEchoServer::start(db, 5432);
    const MESSAGES: usize = 20;
    const SIZE: usize = 1000;
    let mut c = TcpClientConn::connect(api, db.v4(5432), T).expect("connect");
    let port = c.local_addr().expect("addr").port() as u32;
    for i in 0..MESSAGES {
        c.echo(&[b'a' + (i % 26) as u8; SIZE]).expect("echo");
    }
    c.close().expect("close");
    assert_blocked(
        traffic::tcp_probe(web, db.v4(5432), Duration::from_millis(200)),
        "web -> db",
    );
    // The client's FIN is the connection's last record in the request direction.
    let is_fin = |f: &Flow| {
        matches!(f.l4.as_ref().and_then(|l| l.protocol),
            Some(Protocol::Tcp(t)) if t.flags.is_some_and(|fl| fl.fin))
    };
    let at_db = |f: &Flow| {
        is_trace(f)
            && ports(f) == (port, 5432)
            && f.traffic_direction == TrafficDirection::Ingress as i32
            && f.is_reply == Some(false)
    };
    let flows = agent.wait_flows(Duration::from_secs(5), "the FIN at db and a drop", |fl| {
        fl.iter().any(|f| at_db(f) && is_fin(f))
            && fl.iter().any(|f| is_drop(f) && src(f) == "shop/web")
    });
    assert_eq!(server.bytes_echoed(), (MESSAGES * SIZE) as u64);

    let records: Vec<&Flow> = flows.iter().filter(|f| at_db(f)).collect();
    let bytes: u64 = records.iter().map(|f| f.periscope_bytes).sum();
    let packets: u64 = records.iter().map(|f| f.periscope_packets).sum();
    let payload = 2 * (MESSAGES * SIZE) as u64;
    // Every request and every echo, with the handshake; far fewer records than packets.
    assert!(
        packets >= 2 * MESSAGES as u64 + 3,
        "{packets} packets in {} records",
        records.len()
    );
    assert!(
        records.len() < packets as usize / 4,
        "aggregated: {} records for {packets} packets",
        records.len()
    );
    // Each packet: Ethernet (14) + IPv4 (20) + TCP (20 to 60) headers, plus the payload.
    assert!(
        bytes >= payload + 54 * packets && bytes <= payload + 94 * packets,
        "{bytes} bytes for {payload} bytes of payload in {packets} packets"
    );
    eprintln!(
        "{} records at db: {bytes} bytes, {packets} packets ({payload} bytes of payload)",
        records.len()
    );
    // Replies carry none (their bytes are on the request direction's records).
    let replies: Vec<&Flow> = flows
        .iter()
        .filter(|f| is_trace(f) && ports(f) == (5432, port) && f.is_reply == Some(true))
        .collect();
    assert!(!replies.is_empty(), "the echo's replies are traced");
    assert!(
        replies
            .iter()
            .all(|f| f.periscope_bytes == 0 && f.periscope_packets == 0)
    );
    // A drop carries its packet (a SYN: headers only); its policy verdict carries nothing.
    let drop = flows
        .iter()
        .find(|f| is_drop(f) && src(f) == "shop/web")
        .expect("the drop");
    assert_eq!(drop.periscope_packets, 1);
    assert!(
        (54..=94).contains(&drop.periscope_bytes),
        "a SYN of {} bytes",
        drop.periscope_bytes
    );
    assert!(
        flows
            .iter()
            .filter(|f| is_pv(f))
            .all(|f| f.periscope_bytes == 0 && f.periscope_packets == 0)
    );
}

#[test]
fn aggregation_medium_bounds_events_of_a_long_connection() {
    let tb = testbed();
    let (api, db) = (tb.pod("shop/api"), tb.pod("data/db"));
    let _s = TcpEchoServer::start(db, 5432);
    let count_for = |agent: &Agent, port: u32| {
        agent
            .flows()
            .iter()
            .filter(|f| is_trace(f) && (ports(f).0 == port || ports(f).1 == port))
            .count()
    };
    let mut results = Vec::new();
    for level in ["medium", "none"] {
        let agent = Agent::start(&tb, "n1", "", &["--monitor-aggregation", level]);
        let mut c = TcpClientConn::connect(api, db.v4(5432), T).expect("connect");
        let port = c.local_addr().unwrap().port() as u32;
        for i in 0..150 {
            c.echo(format!("message {i}").as_bytes()).expect("echo");
            std::thread::sleep(Duration::from_millis(5));
        }
        c.close().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        results.push((level, count_for(&agent, port)));
    }
    let (medium, none) = (results[0].1, results[1].1);
    // 150 request/response pairs = at least 600 packet observations (2 points each way).
    assert!(none >= 600, "aggregation none reports every packet: {none}");
    // medium: new connection, first reply, new TCP flags per direction at each observation
    // point, no periodic report within the 5 s interval.
    assert!(
        medium <= 20,
        "aggregation medium must bound the events of one connection, got {medium}"
    );
    assert!(medium >= 4, "still reports the connection: {medium}");
}

#[test]
fn lost_events_are_counted_and_reported() {
    let tb = testbed();
    let (api, db) = (tb.pod("shop/api"), tb.pod("data/db"));
    let _u = UdpEchoServer::start(db, 9999);
    // One page per CPU ring and no aggregation: a burst overflows the ring.
    let agent = Agent::start(
        &tb,
        "n1",
        "",
        &["--perf-ring-pages", "1", "--monitor-aggregation", "none"],
    );
    let dst = db.v4(9999);
    api.run(|| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..20000 {
            let _ = s.send_to(b"x", dst);
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let c = agent.counters();
    let lost =
        c["events_lost_ring"].as_u64().unwrap() + c["events_lost_in_kernel"].as_u64().unwrap();
    assert!(lost > 0, "expected lost events with a 1-page ring: {c}");
    assert!(
        agent.stdout().contains("events lost in the perf ring")
            || c["events_lost_in_kernel"].as_u64().unwrap() > 0,
        "losses are reported"
    );
    assert!(c["events_read"].as_u64().unwrap() > 0);
}

fn eth_ipv4(src_mac: [u8; 6], dst_mac: [u8; 6], ip_header_and_payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(ip_header_and_payload);
    f
}

fn ipv4_header(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    total_len: u16,
    ihl: u8,
    frag: u16,
) -> Vec<u8> {
    let mut h = vec![0x40 | ihl, 0];
    h.extend_from_slice(&total_len.to_be_bytes());
    h.extend_from_slice(&[0, 1]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = traffic::internet_checksum(&h[..20]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

#[test]
fn malformed_packets_are_dropped_and_counted() {
    let tb = testbed();
    let (web, db) = (tb.pod("shop/web"), tb.pod("data/db"));
    let agent = Agent::start(&tb, "n1", "", &[]);
    let (smac, dmac) = (web.eth0_mac(), web.host_mac());
    let (s, d) = ([10, 210, 0, 1], [10, 210, 1, 3]);
    let mut frames: Vec<(&str, Vec<u8>)> = Vec::new();
    // IPv4 header claiming more bytes than the frame has.
    frames.push((
        "INVALID_PACKET_DROPPED",
        eth_ipv4(smac, dmac, &ipv4_header(s, d, 17, 200, 5, 0)),
    ));
    // IHL below 5.
    let mut bad_ihl = ipv4_header(s, d, 17, 28, 5, 0);
    bad_ihl[0] = 0x43;
    bad_ihl.extend_from_slice(&[0; 8]);
    frames.push(("INVALID_PACKET_DROPPED", eth_ipv4(smac, dmac, &bad_ihl)));
    // Truncated: only 10 bytes of IPv4 header.
    frames.push((
        "INVALID_PACKET_DROPPED",
        eth_ipv4(smac, dmac, &ipv4_header(s, d, 6, 20, 5, 0)[..10]),
    ));
    // TCP with a data offset below 5 words.
    let mut tcp = ipv4_header(s, d, 6, 40, 5, 0);
    tcp.extend_from_slice(&[
        0x30, 0x39, 0x15, 0x38, 0, 0, 0, 1, 0, 0, 0, 0, 0x20, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    frames.push(("CT_TRUNCATED_OR_INVALID_HEADER", eth_ipv4(smac, dmac, &tcp)));
    // UDP header cut short.
    let mut udp = ipv4_header(s, d, 17, 24, 5, 0);
    udp.extend_from_slice(&[0x30, 0x39, 0, 53]);
    frames.push(("CT_TRUNCATED_OR_INVALID_HEADER", eth_ipv4(smac, dmac, &udp)));
    // A non-first fragment.
    let mut frag = ipv4_header(s, d, 17, 28, 5, 100);
    frag.extend_from_slice(&[0; 8]);
    frames.push((
        "IP_FRAGMENTATION_NOT_SUPPORTED",
        eth_ipv4(smac, dmac, &frag),
    ));
    // Spoofed source address.
    let mut spoof = ipv4_header([10, 210, 0, 99], d, 17, 28, 5, 0);
    spoof.extend_from_slice(&[0x30, 0x39, 0, 53, 0, 8, 0, 0]);
    frames.push(("INVALID_SOURCE_IP", eth_ipv4(smac, dmac, &spoof)));
    // Unknown EtherType.
    let mut weird = eth_ipv4(smac, dmac, &[1, 2, 3, 4, 5, 6, 7, 8]);
    weird[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    frames.push(("UNSUPPORTED_L3_PROTOCOL", weird));
    // An IPv6 packet with a hop-by-hop header pointing past the end.
    let mut v6 = Vec::new();
    v6.extend_from_slice(&dmac);
    v6.extend_from_slice(&smac);
    v6.extend_from_slice(&0x86ddu16.to_be_bytes());
    v6.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 0, 64]);
    v6.extend_from_slice(
        &"fd00:210::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    v6.extend_from_slice(
        &"fd00:210::3"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    v6.extend_from_slice(&[0, 200, 0, 0, 0, 0, 0, 0]);
    frames.push(("INVALID_IPV6_EXTENSION_HEADER", v6));

    let mut expected = std::collections::BTreeMap::<&str, u64>::new();
    for (reason, frame) in &frames {
        for _ in 0..3 {
            send_raw_frame(web, frame).expect("send raw frame");
        }
        *expected.entry(reason).or_default() += 3;
    }
    std::thread::sleep(Duration::from_millis(300));
    let c = agent.counters();
    for (reason, n) in &expected {
        let got = c["dropped"][*reason].as_u64().unwrap_or(0);
        assert!(
            got >= *n,
            "{reason}: expected at least {n} drops, counters: {c}"
        );
    }
    // Drops are reported as flows too, with the reason.
    let flows = agent.wait_flows(Duration::from_secs(5), "drop flows", |fl| {
        fl.iter()
            .any(|f| is_drop(f) && f.drop_reason_desc == DropReason::InvalidSourceIp as i32)
    });
    assert!(
        flows
            .iter()
            .any(|f| is_drop(f) && f.drop_reason_desc == DropReason::InvalidPacketDropped as i32)
    );
    // Nothing crashed: the agent runs and valid traffic flows.
    let _srv = TcpEchoServer::start(db, 5432);
    assert_echo(
        traffic::tcp_probe(web, db.v4(5432), T),
        "valid traffic after malformed packets",
    );
    let mut agent = agent;
    assert!(agent.is_running(), "agent alive:\n{}", agent.stderr());
}

#[test]
fn enforcement_survives_agent_sigkill_and_restart_keeps_state() {
    let tb = testbed();
    let (web, api, db) = (tb.pod("shop/web"), tb.pod("shop/api"), tb.pod("data/db"));
    let mut agent = Agent::start(&tb, "n1", MATRIX_POLICY, &[]);
    let _s = TcpEchoServer::start(db, 5432);
    let ids_before = agent.status()["endpoints"].clone();
    // A long connection opened while the agent runs.
    let mut conn = TcpClientConn::connect(api, db.v4(5432), T).expect("connect");
    conn.echo(b"before").expect("echo before kill");
    let local = conn.local_addr().unwrap().port() as u32;

    agent.kill9();
    // Enforcement continues without the agent: allowed stays allowed, denied stays denied.
    for i in 0..20 {
        conn.echo(format!("during {i}").as_bytes())
            .expect("established connection continues");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_echo(
        traffic::tcp_probe(api, db.v4(5432), T),
        "new allowed connection without agent",
    );
    assert_blocked(
        traffic::tcp_probe(web, db.v4(5432), T),
        "denied without agent",
    );
    assert_blocked(
        traffic::tcp_probe(api, db.v4(8080), T),
        "default deny without agent",
    );

    // Restart: the pinned state is taken over, nothing is flushed.
    agent.restart(None);
    assert!(
        agent
            .stderr()
            .contains("took over pinned endpoint datapath"),
        "{}",
        agent.stderr()
    );
    assert_eq!(
        agent.status()["endpoints"],
        ids_before,
        "same endpoint ids and identities"
    );
    for i in 0..5 {
        conn.echo(format!("after {i}").as_bytes())
            .expect("connection continues after restart");
    }
    assert!(
        agent.counters()["ct_entries"].as_u64().unwrap() > 0,
        "connection tracking kept"
    );
    // Flows resume, for the old connection too (its FIN is a new TCP flag).
    conn.close().unwrap();
    agent.wait_flows(
        Duration::from_secs(5),
        "flows of the pre-restart connection",
        |fl| fl.iter().any(|f| is_trace(f) && ports(f) == (local, 5432)),
    );
    assert_blocked(
        traffic::tcp_probe(web, db.v4(5432), T),
        "still denied after restart",
    );
    let flows = agent.wait_flows(Duration::from_secs(5), "a drop after restart", |fl| {
        fl.iter().any(|f| is_drop(f) && src(f) == "shop/web")
    });
    assert!(
        flows
            .iter()
            .any(|f| is_pv(f) && f.verdict == Verdict::Dropped as i32)
    );
}

#[test]
fn bad_policy_is_rejected_and_the_old_one_stays() {
    let tb = testbed();
    let (web, api, db) = (tb.pod("shop/web"), tb.pod("shop/api"), tb.pod("data/db"));
    let agent = Agent::start(&tb, "n1", MATRIX_POLICY, &[]);
    let _s = TcpEchoServer::start(db, 5432);
    let bad = MATRIX_POLICY.replace("port: \"5432\"", "port: \"99999\"");
    let err = agent
        .set_policy(&bad)
        .expect("the bad policy must be rejected");
    assert!(
        err.contains("policy.yaml") && err.contains("ports[0].port") && err.contains("99999"),
        "{err}"
    );
    assert_echo(
        traffic::tcp_probe(api, db.v4(5432), T),
        "old policy still allows api",
    );
    assert_blocked(
        traffic::tcp_probe(web, db.v4(5432), T),
        "old policy still denies web",
    );
    // A good update applies: now web may connect too.
    let good = MATRIX_POLICY.replace(
        "{matchLabels: {app: api, k8s:io.kubernetes.pod.namespace: shop}}",
        "{matchLabels: {k8s:io.kubernetes.pod.namespace: shop}}",
    );
    assert_eq!(agent.set_policy(&good), None);
    assert_echo(
        traffic::tcp_probe(web, db.v4(5432), T),
        "new policy allows web",
    );
}

#[test]
fn two_nodes_agree_on_identities_and_enforce_across_nodes() {
    let topo = r#"
cluster: e2e
nodes: [{name: n1}, {name: n2}]
pods:
  - {name: api, namespace: shop, node: n1, labels: {app: api}, ips: [10.211.1.1, "fd00:211::1:1"]}
  - {name: web, namespace: shop, node: n1, labels: {app: web}, ips: [10.211.1.2]}
  - {name: db, namespace: data, node: n2, labels: {app: db}, ips: [10.211.2.1, "fd00:211::2:1"]}
"#;
    let tb = Testbed::from_yaml(topo, TestbedOptions::default()).expect("test bed");
    let policy = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: data}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api, k8s:io.kubernetes.pod.namespace: shop}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
"#;
    let a1 = Agent::start(&tb, "n1", policy, &[]);
    let a2 = Agent::start(&tb, "n2", policy, &[]);
    let (api, web, db) = (tb.pod("shop/api"), tb.pod("shop/web"), tb.pod("data/db"));
    let _s = TcpEchoServer::start(db, 5432);
    assert_echo(traffic::tcp_probe(api, db.v4(5432), T), "api@n1 -> db@n2");
    assert_echo(
        traffic::tcp_probe(api, db.v6(5432), T),
        "api@n1 -> db@n2 IPv6",
    );
    assert_blocked(traffic::tcp_probe(web, db.v4(5432), T), "web@n1 -> db@n2");
    // Each node sees its side: n1 the egress of api, n2 the ingress at db, with the same
    // identities although the agents never talked to each other.
    let api_id = a1.identity("shop/api");
    let f2 = a2.wait_flows(Duration::from_secs(5), "ingress verdicts at n2", |fl| {
        !ingress_pv(fl, "shop/api", "data/db", 5432).is_empty()
            && !ingress_pv(fl, "shop/web", "data/db", 5432).is_empty()
    });
    let pv = ingress_pv(&f2, "shop/api", "data/db", 5432);
    assert!(
        pv.iter()
            .all(|f| f.source.as_ref().unwrap().identity == api_id && f.node_name == "n2")
    );
    assert!(
        ingress_pv(&f2, "shop/web", "data/db", 5432)
            .iter()
            .all(|f| f.verdict == Verdict::Dropped as i32)
    );
    let f1 = a1.wait_flows(Duration::from_secs(5), "egress traces at n1", |fl| {
        fl.iter()
            .any(|f| is_trace(f) && src(f) == "shop/api" && dst(f) == "data/db")
    });
    assert!(f1.iter().all(|f| f.node_name == "n1"));
    assert_eq!(
        a2.identity("data/db"),
        a1.status()["identities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["labels"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l == "k8s:app=db"))
            .and_then(|i| i["id"].as_u64())
            .unwrap() as u32,
        "n1 knows db's identity too"
    );
}
