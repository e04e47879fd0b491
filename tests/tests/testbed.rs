//! End-to-end tests of the test bed itself: real namespaces, veths and sockets. Need root.
//!
//! Every test creates its own test bed(s) with a unique id, so they run in parallel; every test
//! bed is deleted when dropped, also when an assertion fails (Drop runs while unwinding).
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use periscope_testbed::traffic::{
    self, ProbeResult, TcpClientConn, TcpEchoServer, UdpEchoServer, ping, ping_rtt, tcp_probe,
    tcp_session, udp_probe,
};
use periscope_testbed::{
    PodHandle, Testbed, TestbedError, TestbedOptions, Topology, format_mac, netns,
};

const TOPOLOGY: &str = r#"
cluster: test
nodes: [{name: node-a}, {name: node-b}]
pods:
  - {name: frontend-1, namespace: shop, node: node-a, labels: {app: frontend}, ips: [10.200.1.10, "fd00:200::1:10"]}
  - {name: frontend-2, namespace: shop, node: node-a, labels: {app: frontend}, ips: [10.200.1.11, "fd00:200::1:11"]}
  - {name: backend-1, namespace: shop, node: node-b, labels: {app: backend}, ips: [10.200.2.10, "fd00:200::2:10"]}
  - {name: db-1, namespace: data, node: node-b, labels: {app: db}, ips: [10.200.2.20, "fd00:200::2:20"]}
  - {name: v6only, namespace: data, node: node-b, ips: ["fd00:200::2:30"]}
  - {name: world, node: node-a, external: true, ips: [198.51.100.7, "2001:db8:100::7"]}
"#;

const PORT: u16 = 7000;
const T: Duration = Duration::from_secs(2);

fn topology(yaml: &str) -> Topology {
    Topology::parse(yaml, Path::new("test.yaml"))
        .unwrap_or_else(|e| panic!("bad test topology: {e}"))
}

fn create(yaml: &str) -> Testbed {
    Testbed::create(&topology(yaml), TestbedOptions::default())
        .unwrap_or_else(|e| panic!("creating test bed: {e}"))
}

/// An id for tests that choose their own: unique per process and call.
fn unique_id(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let x = (std::process::id() ^ nanos.rotate_left(7)).wrapping_mul(2_654_435_761) ^ n;
    format!("{tag}{:06x}", x & 0xff_ffff)
}

/// `ip netns list`, names only.
fn ip_netns_list() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(
        out.status.success(),
        "ip netns list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

fn assert_no_namespaces(id: &str) {
    let prefix = format!("pt{id}-");
    let left: Vec<String> = ip_netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(
        left.is_empty(),
        "namespaces of test bed {id} left behind: {left:?}"
    );
}

fn run_ok(pod_or_node_ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["-n", pod_or_node_ns])
        .args(args)
        .output()
        .expect("ip");
    assert!(
        out.status.success(),
        "ip -n {pod_or_node_ns} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// TCP echo, UDP echo and ping from `from` to `to` over every address family both have.
fn assert_reaches(from: &PodHandle, to: &PodHandle, port: u16) {
    let mut families = 0;
    let dsts = [
        (from.ipv4().is_some(), to.ipv4().map(IpAddr::V4)),
        (from.ipv6().is_some(), to.ipv6().map(IpAddr::V6)),
    ];
    for (has_src, dst) in dsts {
        let (true, Some(dst)) = (has_src, dst) else {
            continue;
        };
        families += 1;
        let what = format!("{} -> {} ({dst})", from.name(), to.name());
        let addr = SocketAddr::new(dst, port);
        let r = tcp_probe(from, addr, T);
        assert!(r.is_echoed(), "TCP {what}: {r:?}");
        let r = udp_probe(from, addr, T);
        assert!(r.is_echoed(), "UDP {what}: {r:?}");
        let r = ping_rtt(from, dst, T);
        assert!(r.is_ok(), "ping {what}: {r:?}");
    }
    assert!(
        families > 0,
        "{} and {} share no address family",
        from.name(),
        to.name()
    );
}

#[test]
fn pods_reach_each_other_on_the_same_node_and_across_nodes() {
    let tb = create(TOPOLOGY);
    let servers: Vec<(TcpEchoServer, UdpEchoServer)> = tb
        .pods()
        .iter()
        .map(|p| (TcpEchoServer::start(p, PORT), UdpEchoServer::start(p, PORT)))
        .collect();

    // The very first packets after creation: no DAD, ARP or NDP delay worth speaking of.
    for dst in [tb.pod("backend-1").v6(PORT), tb.pod("frontend-2").v4(PORT)] {
        let start = Instant::now();
        let r = tcp_probe(tb.pod("frontend-1"), dst, T);
        assert!(r.is_echoed(), "first probe to {dst}: {r:?}");
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "first probe to {dst} took {:?}",
            start.elapsed()
        );
    }

    let pairs = [
        ("shop/frontend-1", "shop/frontend-2"), // same node
        ("shop/frontend-2", "shop/frontend-1"),
        ("shop/frontend-1", "shop/backend-1"), // across nodes
        ("data/db-1", "shop/frontend-2"),
        ("shop/backend-1", "data/db-1"), // same node, the other one
        ("data/v6only", "shop/frontend-1"), // IPv6 only, across nodes
        ("shop/frontend-2", "data/v6only"),
        ("world", "shop/frontend-1"), // external, same node
        ("world", "data/db-1"),       // external, across nodes
        ("data/db-1", "world"),
    ];
    for (from, to) in pairs {
        assert_reaches(tb.pod(from), tb.pod(to), PORT);
    }

    // Servers see the real client addresses (nothing is NATed) and count connections.
    let (fe1_tcp, fe1_udp) = &servers[0];
    assert_eq!(tb.pods()[0].name(), "shop/frontend-1");
    let world = tb.pod("world");
    for ip in [
        IpAddr::from(world.ipv4().unwrap()),
        world.ipv6().unwrap().into(),
    ] {
        assert!(
            fe1_tcp.peers().iter().any(|p| p.ip() == ip),
            "frontend-1 TCP peers {:?} lack {ip}",
            fe1_tcp.peers()
        );
        assert!(
            fe1_udp.peers().iter().any(|p| p.ip() == ip),
            "frontend-1 UDP peers {:?} lack {ip}",
            fe1_udp.peers()
        );
    }
    // Probes to frontend-1 came from frontend-2 (2 families), v6only (1) and world (2).
    assert_eq!(
        fe1_tcp.accepted(),
        5,
        "frontend-1 accepted {:?}",
        fe1_tcp.peers()
    );
    assert_eq!(fe1_udp.received(), 5);

    // A node reaches its own pods and the other node's pods (e.g. for agent health checks).
    for dst in [tb.pod("frontend-1").v4(PORT), tb.pod("backend-1").v6(PORT)] {
        let r = tb.in_node("node-a", || {
            std::net::TcpStream::connect_timeout(&dst, T).map(|_| ())
        });
        assert!(r.is_ok(), "node-a -> {dst}: {r:?}");
    }
}

#[test]
fn layout_matches_the_design() {
    let tb = create(TOPOLOGY);
    let id = tb.id().to_string();
    assert_eq!(id.len(), 5);

    // Namespaces: one per node, one per pod, the fabric.
    let listed = ip_netns_list();
    let mut expected = vec![
        tb.node_netns("node-a").to_string(),
        tb.node_netns("node-b").to_string(),
    ];
    expected.push(
        tb.fabric_netns()
            .expect("two nodes have a fabric")
            .to_string(),
    );
    expected.extend(tb.pods().iter().map(|p| p.netns.clone()));
    assert_eq!(expected.len(), 9);
    assert_eq!(expected[0], format!("pt{id}-node-a"));
    assert_eq!(
        tb.pod("shop/frontend-1").netns,
        format!("pt{id}-frontend-1")
    );
    for name in &expected {
        assert!(
            listed.contains(name),
            "{name} not in `ip netns list`: {listed:?}"
        );
        assert!(tb.namespaces().contains(name));
    }
    assert_eq!(
        tb.node_netns_path("node-b"),
        Path::new("/run/netns").join(format!("pt{id}-node-b"))
    );

    // Forwarding on in nodes (checked with sysctl(8) via `ip netns exec`, and via the thread helper).
    for node in ["node-a", "node-b"] {
        let out = tb.node(node).exec(
            "sysctl",
            ["-n", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"],
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["1", "1"],
            "{node}"
        );
        let path = tb.node_netns_path(node);
        assert_eq!(
            netns::read_sysctl(&path, "net.ipv4.ip_forward").unwrap(),
            "1"
        );
    }
    let pod = tb.pod("frontend-1");
    assert_eq!(
        netns::read_sysctl(&pod.netns_path, "net.ipv4.ip_forward").unwrap(),
        "0",
        "pods do not forward"
    );

    for pod in tb.pods() {
        // Pod side: eth0 with /32 and /128, not tentative; routes via the gateway.
        let addrs = run_ok(&pod.netns, &["-o", "addr", "show", "dev", "eth0"]);
        if let Some(v4) = pod.ipv4() {
            assert!(
                addrs.contains(&format!("inet {v4}/32")),
                "{}: {addrs}",
                pod.name()
            );
        }
        if let Some(v6) = pod.ipv6() {
            assert!(
                addrs.contains(&format!("inet6 {v6}/128")),
                "{}: {addrs}",
                pod.name()
            );
        }
        assert!(
            !addrs.contains("tentative"),
            "{}: addresses still tentative: {addrs}",
            pod.name()
        );
        let link = run_ok(&pod.netns, &["-o", "link", "show", "dev", "eth0"]);
        assert!(
            link.contains(&format_mac(&pod.eth0_mac())),
            "{}: {link}",
            pod.name()
        );
        // Host side: the veth in the node namespace, with the MAC the test bed reports.
        let host = run_ok(
            &pod.node_netns,
            &["-o", "link", "show", "dev", &pod.host_ifname],
        );
        assert!(
            host.contains(&format_mac(&tb.host_mac(&pod.name()))),
            "{}: {host}",
            pod.name()
        );
        assert!(host.contains("state UP"), "{}: {host}", pod.name());
        assert_eq!(pod.host_ifname, pod.spec.host_ifname());
        assert_eq!(pod.node_netns, tb.node_netns(&pod.spec.node));
    }

    // Node routes: local pods on their veth, remote pods via the other node's fabric address.
    let routes = run_ok(tb.node_netns("node-a"), &["route"]);
    let fe1 = tb.pod("frontend-1");
    assert!(
        routes.contains(&format!("10.200.1.10 dev {} scope link", fe1.host_ifname)),
        "{routes}"
    );
    assert!(
        routes.contains("10.200.2.10 via 172.31.255.2 dev fab0"),
        "{routes}"
    );
    let routes6 = run_ok(tb.node_netns("node-a"), &["-6", "route"]);
    assert!(
        routes6.contains("fd00:200::2:30 via fd00:fab::2 dev fab0"),
        "{routes6}"
    );
    let ports = run_ok(
        tb.fabric_netns().unwrap(),
        &["-o", "link", "show", "master", "br0"],
    );
    assert_eq!(ports.lines().count(), 2, "{ports}");

    // ARP and NDP resolve both ways, to the MACs the test bed reports.
    let (fe1, be1) = (tb.pod("frontend-1"), tb.pod("backend-1"));
    assert!(ping(fe1, be1.ipv4().unwrap().into(), T));
    assert!(ping(fe1, be1.ipv6().unwrap().into(), T));
    let host_mac = format_mac(&fe1.host_mac());
    for (gw, flag) in [("169.254.1.1", "-4"), ("fe80::1", "-6")] {
        let neigh = run_ok(&fe1.netns, &[flag, "neigh", "show", "dev", "eth0"]);
        let line = neigh
            .lines()
            .find(|l| l.starts_with(&format!("{gw} ")))
            .unwrap_or_else(|| panic!("{neigh}"));
        assert!(
            line.contains(&host_mac) && !line.contains("FAILED"),
            "{line}"
        );
    }
    let neigh = run_ok(&fe1.node_netns, &["neigh", "show", "dev", &fe1.host_ifname]);
    assert!(neigh.contains(&format_mac(&fe1.eth0_mac())), "{neigh}");
}

#[test]
fn two_test_beds_of_the_same_topology_are_independent() {
    let a = create(TOPOLOGY);
    let b = create(TOPOLOGY);
    assert_ne!(a.id(), b.id());
    for name in a.namespaces() {
        assert!(!b.namespaces().contains(name), "{name} in both");
    }
    let (a_srv, b_srv) = (
        TcpEchoServer::start(a.pod("backend-1"), PORT),
        TcpEchoServer::start(b.pod("backend-1"), PORT),
    );
    let dst = a.pod("backend-1").v4(PORT);
    assert_eq!(dst, b.pod("backend-1").v4(PORT), "same addresses in both");
    for _ in 0..2 {
        assert!(tcp_probe(a.pod("frontend-1"), dst, T).is_echoed());
    }
    assert!(tcp_probe(b.pod("world"), b.pod("backend-1").v6(PORT), T).is_echoed());
    assert_eq!(
        (a_srv.accepted(), b_srv.accepted()),
        (2, 1),
        "each test bed's traffic stays in it"
    );
    // Dropping one leaves the other working.
    let a_namespaces = a.namespaces().to_vec();
    let a_id = a.id().to_string();
    drop(a_srv);
    drop(a);
    assert_no_namespaces(&a_id);
    assert!(a_namespaces.iter().all(|n| !netns::netns_path(n).exists()));
    assert!(tcp_probe(b.pod("frontend-1"), dst, T).is_echoed());
    assert_eq!(b_srv.accepted(), 2);
}

#[test]
fn dropping_deletes_every_namespace_even_when_panicking() {
    let tb = create(TOPOLOGY);
    let id = tb.id().to_string();
    assert_eq!(Testbed::list_namespaces(&id).unwrap().len(), 9);
    drop(tb);
    assert_no_namespaces(&id);

    let mut id = String::new();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let tb = create(TOPOLOGY);
        id = tb.id().to_string();
        let _srv = TcpEchoServer::start(tb.pod("db-1"), PORT);
        panic!("deliberate test failure");
    }));
    assert!(result.is_err());
    assert_eq!(id.len(), 5);
    assert_no_namespaces(&id);

    let tb = create(TOPOLOGY);
    let id = tb.id().to_string();
    tb.teardown().unwrap_or_else(|e| panic!("teardown: {e}"));
    assert_no_namespaces(&id);
}

#[test]
fn creation_failures_clean_up_partial_state() {
    // A pod interface that clashes with the node's fabric interface: namespaces, the fabric and
    // the first pods' veths exist by the time it fails.
    let clash_fabric = TOPOLOGY.replace(
        "{name: db-1, namespace: data, node: node-b,",
        "{name: db-1, namespace: data, node: node-b, interface: fab0,",
    );
    // Same on a single node, with the loopback's name.
    let clash_lo = "nodes: [{name: n1}]\npods:\n  - {name: a, namespace: x, node: n1, ips: [10.9.0.1]}\n  - {name: b, namespace: x, node: n1, interface: lo, ips: [10.9.0.2]}\n";
    for (yaml, link) in [(clash_fabric.as_str(), "fab0"), (clash_lo, "lo")] {
        let id = unique_id("f");
        let options = TestbedOptions {
            id: Some(id.clone()),
            ..Default::default()
        };
        let err = Testbed::create(&topology(yaml), options).expect_err("must fail");
        match &err {
            TestbedError::Command {
                netns,
                command,
                stderr,
            } => {
                assert!(
                    netns
                        .as_deref()
                        .is_some_and(|n| n.starts_with(&format!("pt{id}-"))),
                    "{err}"
                );
                assert!(command.contains(&format!("link add {link} ")), "{err}");
                assert!(stderr.contains("exists"), "{err}");
            }
            other => panic!("unexpected error {other}"),
        }
        assert_no_namespaces(&id);
    }

    // Invalid options and topologies: nothing is created.
    let id = "Not-Valid".to_string();
    let err = Testbed::create(
        &topology(TOPOLOGY),
        TestbedOptions {
            id: Some(id),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, TestbedError::InvalidOption { option: "id", .. }),
        "{err}"
    );
    let mut bad = topology(TOPOLOGY);
    bad.pods[1].node = "nowhere".into();
    let err = Testbed::create(&bad, TestbedOptions::default()).unwrap_err();
    assert!(
        matches!(err, TestbedError::Topology(_)) && err.to_string().contains("nowhere"),
        "{err}"
    );
}

#[test]
fn stale_namespaces_of_an_id_are_reported_and_cleaned_only_on_request() {
    let id = unique_id("s");
    let stale = format!("pt{id}-node-a");
    let other = format!("pt{id}x-node-a"); // another id that merely starts alike
    for name in [&stale, &other] {
        let out = Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cleanup = || {
        let _ = Command::new("ip").args(["netns", "del", &stale]).output();
        let _ = Command::new("ip").args(["netns", "del", &other]).output();
    };
    let result = std::panic::catch_unwind(|| {
        let options = TestbedOptions {
            id: Some(id.clone()),
            ..Default::default()
        };
        let err = Testbed::create(&topology(TOPOLOGY), options.clone()).unwrap_err();
        assert!(
            matches!(&err, TestbedError::Exists { netns, .. } if *netns == stale),
            "{err}"
        );
        assert!(
            netns::netns_path(&stale).exists(),
            "a namespace we did not create must be left alone"
        );

        let tb = Testbed::create(
            &topology(TOPOLOGY),
            TestbedOptions {
                replace_stale: true,
                ..options.clone()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(tcp_probe(tb.pod("frontend-1"), tb.pod("backend-1").v4(9), T).is_refused());
        drop(tb);
        assert_no_namespaces(&id);

        let kept = Testbed::create(
            &topology(TOPOLOGY),
            TestbedOptions {
                keep: true,
                ..options
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let names = kept.namespaces().to_vec();
        drop(kept);
        assert!(
            names.iter().all(|n| netns::netns_path(n).exists()),
            "keep: namespaces stay after drop"
        );
        let mut removed = Testbed::cleanup_stale(&id).unwrap_or_else(|e| panic!("{e}"));
        removed.sort();
        let mut names = names;
        names.sort();
        assert_eq!(removed, names);
        assert_no_namespaces(&id);
        assert!(
            netns::netns_path(&other).exists(),
            "cleanup_stale({id}) must not touch {other}"
        );
    });
    cleanup();
    if let Err(panic) = result {
        let _ = Testbed::cleanup_stale(&id);
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn failing_probes_are_quick_or_bounded_by_their_timeout() {
    let tb = create(TOPOLOGY);
    let (client, server) = (tb.pod("frontend-1"), tb.pod("backend-1"));
    let _udp_elsewhere = UdpEchoServer::start(server, PORT + 1);

    // Closed port: refused at once (TCP RST / ICMP port unreachable).
    for dst in [
        server.v4(PORT),
        server.v6(PORT),
        tb.pod("frontend-2").v4(PORT),
    ] {
        let start = Instant::now();
        let r = tcp_probe(client, dst, T);
        assert_eq!(r, ProbeResult::Refused, "TCP {dst}");
        assert!(
            start.elapsed() < Duration::from_millis(300),
            "TCP refused took {:?}",
            start.elapsed()
        );
        let start = Instant::now();
        let r = udp_probe(client, dst, T);
        assert_eq!(r, ProbeResult::Refused, "UDP {dst}");
        assert!(
            start.elapsed() < Duration::from_millis(300),
            "UDP refused took {:?}",
            start.elapsed()
        );
    }

    // Blackholed address (dropped silently in the node): time out, within the timeout.
    let timeout = Duration::from_millis(300);
    let bounded = |what: &str, start: Instant| {
        let took = start.elapsed();
        assert!(
            took >= timeout - Duration::from_millis(5)
                && took < timeout + Duration::from_millis(300),
            "{what} took {took:?}"
        );
    };
    for ip in [
        IpAddr::from(tb.blackhole_ipv4()),
        tb.blackhole_ipv6().into(),
    ] {
        assert!(tb.pods().iter().all(|p| !p.spec.ips.contains(&ip)));
        let dst = SocketAddr::new(ip, PORT);
        let start = Instant::now();
        assert_eq!(
            tcp_probe(client, dst, timeout),
            ProbeResult::TimedOut,
            "TCP {dst}"
        );
        bounded("TCP", start);
        let start = Instant::now();
        assert_eq!(
            udp_probe(client, dst, timeout),
            ProbeResult::TimedOut,
            "UDP {dst}"
        );
        bounded("UDP", start);
        let start = Instant::now();
        let r = ping_rtt(client, ip, timeout);
        assert_eq!(
            r.as_ref().map_err(|e| e.kind()),
            Err(std::io::ErrorKind::TimedOut),
            "ping {ip}: {r:?}"
        );
        bounded("ping", start);
    }
    // Not routed at all (the nodes have no default route, so nothing leaves the test bed): the
    // node answers with ICMP unreachable (or, rate-limited, nothing), never beyond the timeout.
    for ip in [
        "203.0.113.9".parse::<IpAddr>().unwrap(),
        "2001:db8:99::9".parse().unwrap(),
    ] {
        let start = Instant::now();
        let r = tcp_probe(client, SocketAddr::new(ip, 80), timeout);
        assert!(
            matches!(r, ProbeResult::Unreachable(_) | ProbeResult::TimedOut),
            "TCP {ip}: {r:?}"
        );
        let r = ping_rtt(client, ip, timeout).map_err(|e| e.kind());
        use std::io::ErrorKind::{HostUnreachable, NetworkUnreachable, TimedOut};
        assert!(
            matches!(r, Err(NetworkUnreachable | HostUnreachable | TimedOut)),
            "ping {ip}: {r:?}"
        );
        assert!(
            start.elapsed() < 2 * timeout + Duration::from_millis(300),
            "{ip}: {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn long_tcp_sessions_and_connections() {
    let tb = create(TOPOLOGY);
    let (client, server) = (tb.pod("world"), tb.pod("db-1"));
    let srv = TcpEchoServer::start(server, 0);
    assert_ne!(srv.port(), 0);
    let dst = server.v6(srv.port());

    let start = Instant::now();
    let echoed =
        tcp_session(client, dst, 5, Duration::from_millis(20), T).expect("tcp_session connects");
    assert_eq!(echoed, 5);
    assert!(
        start.elapsed() >= Duration::from_millis(80),
        "messages are spaced by the interval"
    );
    assert_eq!(srv.accepted(), 1, "one connection for the whole session");

    let mut conn = TcpClientConn::connect(client, server.v4(srv.port()), T).expect("connect");
    let local = conn.local_addr().unwrap();
    assert_eq!(local.ip(), IpAddr::from(client.ipv4().unwrap()));
    for i in 0..3 {
        conn.echo(format!("hello {i}").as_bytes()).expect("echo");
    }
    assert_eq!(srv.accepted(), 2);
    assert_eq!(
        srv.peers()[1],
        local,
        "the server sees the client's own address and port"
    );
    conn.close().expect("graceful close");
    assert!(srv.bytes_echoed() > 0);

    // Nothing listening: the session cannot connect.
    let err = tcp_session(client, server.v4(1), 3, Duration::ZERO, T).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

/// rx_packets of `ifname` from /proc/thread-self/net/dev (of the calling thread's namespace).
fn rx_packets(ifname: &str) -> u64 {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev").expect("read net/dev");
    let line = dev
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{ifname}:")))
        .expect("interface in net/dev");
    line.split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn raw_frames_leave_the_pod_with_the_right_macs() {
    let tb = create(TOPOLOGY);
    let (from, to) = (tb.pod("frontend-1"), tb.pod("backend-1"));
    let srv = UdpEchoServer::start(to, PORT);
    let src = from.v4(40_000);
    let frame = traffic::udp4_frame(
        from.eth0_mac(),
        from.host_mac(),
        src,
        to.v4(PORT),
        b"raw hello",
    );
    traffic::send_raw_frame(from, &frame).expect("send frame");
    let start = Instant::now();
    while srv.received() == 0 && start.elapsed() < T {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        srv.received(),
        1,
        "the crafted UDP frame is routed across nodes to the server"
    );
    assert_eq!(srv.peers(), [src]);

    // A malformed frame (truncated IPv4 header) is sent as is and reaches the host-side veth.
    let node = tb.node(&from.spec.node);
    let before = node.run(|| rx_packets(&from.host_ifname));
    let mut bad = frame[..14 + 12].to_vec();
    bad[14] = 0x4f; // IHL 60 bytes, beyond the frame
    traffic::send_raw_frame(from, &bad).expect("send malformed frame");
    let mut after = before;
    let start = Instant::now();
    while after == before && start.elapsed() < T {
        std::thread::sleep(Duration::from_millis(5));
        after = node.run(|| rx_packets(&from.host_ifname));
    }
    assert!(after > before, "host veth rx_packets {before} -> {after}");
    assert_eq!(srv.received(), 1);
}

#[test]
fn run_spawn_and_exec_are_inside_the_namespace() {
    let tb = create(
        "nodes: [{name: solo}]\npods:\n  - {name: a, namespace: x, node: solo, ips: [10.9.0.1, \"fd00:9::1\"]}\n  - {name: b, namespace: x, node: solo, ips: [10.9.0.2, \"fd00:9::2\"]}\n",
    );
    assert!(tb.fabric_netns().is_none(), "one node: no fabric");
    assert_eq!(tb.namespaces().len(), 3);
    let (a, b) = (tb.pod("x/a"), tb.pod("b"));
    let _servers = (TcpEchoServer::start(b, PORT), UdpEchoServer::start(b, PORT));
    assert_reaches(a, b, PORT);

    let host_if = a.host_ifname.clone();
    let in_pod = a.run(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap());
    assert!(
        in_pod.contains("eth0:") && !in_pod.contains(&format!("{host_if}:")),
        "{in_pod}"
    );
    let in_node = tb.in_node("solo", || {
        std::fs::read_to_string("/proc/thread-self/net/dev").unwrap()
    });
    assert!(
        in_node.contains(&format!("{host_if}:")) && !in_node.contains("eth0:"),
        "{in_node}"
    );

    let out = a.exec("ip", ["-o", "addr", "show", "dev", "eth0"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("10.9.0.1/32"));
    assert_eq!(a.spawn(|| 6 * 7).join().unwrap(), 42);

    let panic =
        std::panic::catch_unwind(AssertUnwindSafe(|| a.run(|| panic!("boom in pod")))).unwrap_err();
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"boom in pod"));

    let unknown = std::panic::catch_unwind(AssertUnwindSafe(|| tb.pod("nope").name())).unwrap_err();
    let msg = unknown
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        msg.contains("no pod \"nope\"") && msg.contains("x/a"),
        "{msg}"
    );
}
