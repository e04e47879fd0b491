//! The relay end to end: real agents on a two-node test bed, real `periscope-relay` processes,
//! the `periscope` CLI. Merged and time-ordered streams, ServerStatus and GetNodes over the
//! nodes, an agent killed and restarted (NODE_UNAVAILABLE, the other node goes on, reconnect),
//! two clusters under a top relay with one cluster's relay killed, and mutual TLS between
//! relays with an unknown client certificate rejected. Needs root (`cargo xtask test`).
use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use periscope_proto::flow::Flow;
use periscope_proto::observer::get_flows_response::ResponseTypes;
use periscope_proto::observer::observer_client::ObserverClient;
use periscope_proto::observer::{
    GetAgentEventsRequest, GetFlowsRequest, GetFlowsResponse, GetNodesRequest, Node,
    ServerStatusRequest,
};
use periscope_proto::relay::NodeState;
use periscope_testbed::agent::{Agent, agent_bin, cli_bin};
use periscope_testbed::k8s_api::FakeApiServer;
use periscope_testbed::relay::{Relay, relay_bin};
use periscope_testbed::traffic::{self, TcpEchoServer};
use periscope_testbed::{PodHandle, Testbed, TestbedOptions};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const TOPO: &str = r#"
cluster: rel
nodes: [{name: n1}, {name: n2}]
pods:
  - {name: web, namespace: shop, node: n1, labels: {app: web}, ips: [10.217.0.1]}
  - {name: db, namespace: shop, node: n1, labels: {app: db}, ips: [10.217.0.2]}
  - {name: api, namespace: shop, node: n2, labels: {app: api}, ips: [10.217.1.1]}
  - {name: cache, namespace: shop, node: n2, labels: {app: cache}, ips: [10.217.1.2]}
"#;

const T: Duration = Duration::from_millis(400);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Probes web→db (node n1) and api→cache (node n2) every 200 ms until dropped.
struct Traffic {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Traffic {
    fn start(tb: &Testbed) -> Traffic {
        let pairs: Vec<(PodHandle, std::net::SocketAddr)> = vec![
            (tb.pod("shop/web").clone(), tb.pod("shop/db").v4(5432)),
            (tb.pod("shop/api").clone(), tb.pod("shop/cache").v4(6379)),
        ];
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for (from, to) in &pairs {
                    let _ = traffic::tcp_probe(from, *to, T);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Traffic {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Both nodes' echo servers and a few probes, with the flows recorded by both agents.
fn some_traffic(tb: &Testbed, a1: &Agent, a2: &Agent) -> (TcpEchoServer, TcpEchoServer) {
    let s1 = TcpEchoServer::start(tb.pod("shop/db"), 5432);
    let s2 = TcpEchoServer::start(tb.pod("shop/cache"), 6379);
    for _ in 0..3 {
        assert!(traffic::tcp_probe(tb.pod("shop/web"), tb.pod("shop/db").v4(5432), T).is_echoed());
        assert!(
            traffic::tcp_probe(tb.pod("shop/api"), tb.pod("shop/cache").v4(6379), T).is_echoed()
        );
    }
    a1.wait_flows(Duration::from_secs(5), "n1 flows", |f| f.len() >= 6);
    a2.wait_flows(Duration::from_secs(5), "n2 flows", |f| f.len() >= 6);
    (s1, s2)
}

async fn connect(address: &str) -> ObserverClient<Channel> {
    ObserverClient::connect(format!("http://{address}"))
        .await
        .unwrap_or_else(|e| panic!("connect to {address}: {e}"))
}

async fn nodes(c: &mut ObserverClient<Channel>) -> Vec<Node> {
    c.get_nodes(GetNodesRequest {})
        .await
        .expect("GetNodes")
        .into_inner()
        .nodes
}

/// Waits until GetNodes lists exactly `names` with the given states.
async fn wait_nodes(c: &mut ObserverClient<Channel>, want: &[(&str, NodeState)], relay: &Relay) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = nodes(c).await;
        let pairs: Vec<(String, i32)> = got.iter().map(|n| (n.name.clone(), n.state)).collect();
        let wanted: Vec<(String, i32)> = want
            .iter()
            .map(|(n, s)| (n.to_string(), *s as i32))
            .collect();
        if pairs == wanted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GetNodes {pairs:?}, want {wanted:?} within 20 s; relay log:\n{}",
            relay.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn flows(c: &mut ObserverClient<Channel>, req: GetFlowsRequest) -> Vec<Flow> {
    let mut s = c.get_flows(req).await.expect("GetFlows").into_inner();
    let mut out = Vec::new();
    while let Some(r) = s.message().await.expect("stream") {
        if let Some(ResponseTypes::Flow(f)) = r.response_types {
            out.push(f);
        }
    }
    out
}

fn ns(f: &Flow) -> i128 {
    let t = f.time.expect("flow time");
    t.seconds as i128 * 1_000_000_000 + t.nanos as i128
}

fn periscope(server: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(cli_bin())
        .args(["--server", server])
        .args(args)
        .output()
        .expect("run periscope");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Reads a follow stream until `done` says so for a response; panics after `within`.
async fn read_until(
    s: &mut tonic::Streaming<GetFlowsResponse>,
    within: Duration,
    what: &str,
    seen: &mut Vec<GetFlowsResponse>,
    mut done: impl FnMut(&GetFlowsResponse) -> bool,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let r = tokio::time::timeout_at(deadline, s.message())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out after {within:?} waiting for {what}; seen {} responses, last: {:?}",
                    seen.len(),
                    seen.iter().rev().take(3).collect::<Vec<_>>()
                )
            })
            .expect("stream ok")
            .expect("stream open");
        let stop = done(&r);
        seen.push(r);
        if stop {
            return;
        }
    }
}

fn flow_node(r: &GetFlowsResponse) -> Option<&str> {
    match &r.response_types {
        Some(ResponseTypes::Flow(f)) => Some(f.node_name.as_str()),
        _ => None,
    }
}

fn is_status(r: &GetFlowsResponse, state: NodeState, node: &str) -> bool {
    matches!(&r.response_types, Some(ResponseTypes::NodeStatus(s))
        if s.state_change == state as i32 && s.node_names.iter().any(|n| n == node))
}

/// Consecutive flows of a merged follow stream are in time order up to the agents' own
/// reordering of per-CPU perf rings (tens of ms); checks that and returns the flows' times.
fn assert_time_ordered(rs: &[GetFlowsResponse]) {
    let times: Vec<(i128, String)> = rs
        .iter()
        .filter_map(|r| match &r.response_types {
            Some(ResponseTypes::Flow(f)) => Some((ns(f), f.node_name.clone())),
            _ => None,
        })
        .collect();
    for w in times.windows(2) {
        assert!(
            w[1].0 >= w[0].0 - 100_000_000,
            "merged stream out of order by more than 100 ms: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
}

#[test]
fn two_agents_merged_status_nodes_and_a_node_failure() {
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    let a1 = Agent::start(&tb, "n1", "", &[]);
    let mut a2 = Agent::start(&tb, "n2", "", &[]);
    let _servers = some_traffic(&tb, &a1, &a2);
    let relay = Relay::start(
        "merge",
        &[
            "--peers",
            &a1.api_address(),
            "--peers",
            &a2.api_address(),
            "--retry-timeout",
            "2s",
            "--sort-drain-timeout",
            "500ms",
        ],
    );
    rt().block_on(async {
        let mut c = connect(&relay.address).await;
        wait_nodes(
            &mut c,
            &[
                ("n1", NodeState::NodeConnected),
                ("n2", NodeState::NodeConnected),
            ],
            &relay,
        )
        .await;
        let listed = nodes(&mut c).await;
        for n in &listed {
            assert!(n.version.contains("periscope-agent"), "{n:?}");
            assert!(
                n.max_flows > 0 && n.seen_flows >= n.num_flows && n.num_flows > 0,
                "{n:?}"
            );
            assert!(n.address.starts_with("127.0.0.1:"), "{n:?}");
        }

        // One merged history of both nodes, strictly in time order (not following: sorted).
        let all = flows(
            &mut c,
            GetFlowsRequest {
                number: 10_000,
                ..Default::default()
            },
        )
        .await;
        let names: BTreeSet<&str> = all.iter().map(|f| f.node_name.as_str()).collect();
        assert_eq!(names, BTreeSet::from(["n1", "n2"]), "both nodes' flows");
        assert!(
            all.windows(2).all(|w| ns(&w[0]) <= ns(&w[1])),
            "merged history in time order"
        );
        // `number` is the newest N overall.
        let last = flows(
            &mut c,
            GetFlowsRequest {
                number: 10,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(last.len(), 10);
        assert!(last.windows(2).all(|w| ns(&w[0]) <= ns(&w[1])));
        assert!(
            ns(&last[0]) >= ns(&all[all.len() - 10]),
            "the last 10 are the newest 10 overall"
        );

        // ServerStatus: the nodes summed.
        let mut sum = (0u64, 0u64);
        for a in [&a1, &a2] {
            let st = connect(&a.api_address())
                .await
                .server_status(ServerStatusRequest {})
                .await
                .unwrap()
                .into_inner();
            sum.0 += st.max_flows;
            sum.1 += st.num_flows;
        }
        let st = c
            .server_status(ServerStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.max_flows, sum.0, "{st:?}");
        assert!(
            st.num_flows >= sum.1 && st.seen_flows >= st.num_flows,
            "{st:?}"
        );
        assert_eq!(st.num_connected_nodes, Some(2));
        assert_eq!(st.num_unavailable_nodes, Some(0));
        assert!(st.version.contains("periscope-relay"), "{st:?}");
        assert!(st.uptime_ns > 0);

        // Agent events are forwarded and merged too.
        let mut s = c
            .get_agent_events(GetAgentEventsRequest {
                number: 1000,
                ..Default::default()
            })
            .await
            .expect("GetAgentEvents")
            .into_inner();
        let (mut names, mut times) = (BTreeSet::new(), Vec::new());
        while let Some(e) = s.message().await.expect("agent events") {
            assert!(e.agent_event.is_some());
            names.insert(e.node_name);
            let t = e.time.expect("event time");
            times.push(t.seconds as i128 * 1_000_000_000 + t.nanos as i128);
        }
        assert_eq!(names, BTreeSet::from(["n1".to_string(), "n2".to_string()]));
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "agent events in time order"
        );
    });

    // The CLI against the relay.
    let (ok, out, err) = periscope(
        &relay.address,
        &["observe", "--last", "1000", "--print-node-name"],
    );
    assert!(ok, "{err}");
    assert!(out.contains(" [n1]: ") && out.contains(" [n2]: "), "{out}");
    assert!(
        out.contains("shop/web:") && out.contains("shop/cache:6379"),
        "{out}"
    );
    let (ok, out, err) = periscope(&relay.address, &["status"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("Healthcheck (via ") && out.contains("Ok"),
        "{out}"
    );
    assert!(out.contains("Connected Nodes: 2/2"), "{out}");
    let (ok, out, err) = periscope(&relay.address, &["list", "nodes"]);
    assert!(ok, "{err}");
    let connected: Vec<&str> = out.lines().filter(|l| l.contains("Connected")).collect();
    assert_eq!(connected.len(), 2, "{out}");
    assert!(
        connected[0].starts_with("n1") && connected[1].starts_with("n2"),
        "{out}"
    );

    // Following while n2's agent is killed and restarted.
    let traffic = Traffic::start(&tb);
    rt().block_on(async {
        let mut c = connect(&relay.address).await;
        let mut s = c
            .get_flows(GetFlowsRequest {
                follow: true,
                ..Default::default()
            })
            .await
            .expect("GetFlows follow")
            .into_inner();
        let mut seen = Vec::new();
        let mut nodes_seen = BTreeSet::new();
        read_until(
            &mut s,
            Duration::from_secs(15),
            "flows of both nodes",
            &mut seen,
            |r| {
                if let Some(n) = flow_node(r) {
                    nodes_seen.insert(n.to_string());
                }
                nodes_seen.len() == 2
            },
        )
        .await;

        a2.kill9();
        let killed = Instant::now();
        read_until(
            &mut s,
            Duration::from_secs(10),
            "NODE_UNAVAILABLE for n2",
            &mut seen,
            |r| is_status(r, NodeState::NodeUnavailable, "n2"),
        )
        .await;
        eprintln!("NODE_UNAVAILABLE {:?} after the kill", killed.elapsed());
        let mut n1_after = 0;
        read_until(
            &mut s,
            Duration::from_secs(10),
            "n1 flows after n2 died",
            &mut seen,
            |r| {
                if flow_node(r) == Some("n1") {
                    n1_after += 1;
                }
                n1_after >= 5
            },
        )
        .await;
        let st = c
            .server_status(ServerStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.num_connected_nodes, Some(1), "{st:?}");
        assert_eq!(st.unavailable_nodes, ["n2"], "{st:?}");
        wait_nodes(
            &mut c,
            &[
                ("n1", NodeState::NodeConnected),
                ("n2", NodeState::NodeUnavailable),
            ],
            &relay,
        )
        .await;
        let (ok, out, err) = periscope(&relay.address, &["status"]);
        assert!(ok, "{err}");
        assert!(
            out.contains("Connected Nodes: 1/2") && out.contains("Unavailable Nodes: 1\n  - n2"),
            "{out}"
        );

        // n2 comes back at the same address: the relay reconnects and the stream has its flows
        // again.
        // Up to here (one node killed), the merged stream is in time order.
        assert_time_ordered(&seen);
        let before_restart = seen.len();
        a2.restart_same_address();
        read_until(
            &mut s,
            Duration::from_secs(30),
            "n2 flows after the restart",
            &mut seen,
            |r| flow_node(r) == Some("n2"),
        )
        .await;
        wait_nodes(
            &mut c,
            &[
                ("n1", NodeState::NodeConnected),
                ("n2", NodeState::NodeConnected),
            ],
            &relay,
        )
        .await;
        // What the restarted agent recorded before the relay was back is delivered late (not
        // lost), so only each node's own flows are in order from here on.
        for node in ["n1", "n2"] {
            let own: Vec<GetFlowsResponse> = seen[before_restart..]
                .iter()
                .filter(|r| flow_node(r) == Some(node))
                .cloned()
                .collect();
            assert_time_ordered(&own);
        }
    });
    drop(traffic);
}

#[test]
fn two_clusters_under_a_top_relay_one_cluster_killed() {
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    let a1 = Agent::start(&tb, "n1", "", &[]);
    let a2 = Agent::start(&tb, "n2", "", &[]);
    let _servers = some_traffic(&tb, &a1, &a2);
    let mut east = Relay::start(
        "east",
        &[
            "--cluster-name",
            "east",
            "--peers",
            &a1.api_address(),
            "--retry-timeout",
            "2s",
        ],
    );
    let west = Relay::start(
        "west",
        &[
            "--cluster-name",
            "west",
            "--peers",
            &a2.api_address(),
            "--retry-timeout",
            "2s",
        ],
    );
    // One relay peer named by its flows' prefix, one with the `cluster=` form.
    let west_peer = format!("west={}", west.address);
    let top = Relay::start(
        "top",
        &[
            "--relay-peer",
            &east.address,
            "--relay-peer",
            &west_peer,
            "--retry-timeout",
            "2s",
            "--sort-drain-timeout",
            "500ms",
        ],
    );
    let traffic = Traffic::start(&tb);
    rt().block_on(async {
        let mut c = connect(&top.address).await;
        wait_nodes(
            &mut c,
            &[
                ("east/n1", NodeState::NodeConnected),
                ("west/n2", NodeState::NodeConnected),
            ],
            &top,
        )
        .await;
        let st = c
            .server_status(ServerStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.num_connected_nodes, Some(2), "{st:?}");
        let hist = flows(
            &mut c,
            GetFlowsRequest {
                number: 200,
                ..Default::default()
            },
        )
        .await;
        let names: BTreeSet<&str> = hist.iter().map(|f| f.node_name.as_str()).collect();
        assert_eq!(names, BTreeSet::from(["east/n1", "west/n2"]));
        assert!(hist.windows(2).all(|w| ns(&w[0]) <= ns(&w[1])));

        let mut s = c
            .get_flows(GetFlowsRequest {
                follow: true,
                ..Default::default()
            })
            .await
            .expect("GetFlows follow")
            .into_inner();
        let mut seen = Vec::new();
        let mut nodes_seen = BTreeSet::new();
        read_until(
            &mut s,
            Duration::from_secs(15),
            "flows of both clusters",
            &mut seen,
            |r| {
                if let Some(n) = flow_node(r) {
                    nodes_seen.insert(n.to_string());
                }
                nodes_seen.len() == 2
            },
        )
        .await;
        assert_eq!(
            nodes_seen,
            BTreeSet::from(["east/n1".to_string(), "west/n2".to_string()])
        );

        // Cluster east's relay dies: its nodes are reported, west's flows keep coming.
        east.kill9();
        read_until(
            &mut s,
            Duration::from_secs(10),
            "NODE_UNAVAILABLE for east/n1",
            &mut seen,
            |r| is_status(r, NodeState::NodeUnavailable, "east/n1"),
        )
        .await;
        let mut west_after = 0;
        read_until(
            &mut s,
            Duration::from_secs(10),
            "west flows after east died",
            &mut seen,
            |r| {
                if flow_node(r) == Some("west/n2") {
                    west_after += 1;
                }
                west_after >= 5
            },
        )
        .await;
        assert_time_ordered(&seen);
        let st = c
            .server_status(ServerStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.num_connected_nodes, Some(1), "{st:?}");
        assert_eq!(st.unavailable_nodes, ["east/n1"], "{st:?}");
    });
    let (ok, out, err) = periscope(&top.address, &["list", "nodes"]);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("east/n1") && l.contains("Unavailable"))
            && out
                .lines()
                .any(|l| l.starts_with("west/n2") && l.contains("Connected")),
        "{out}"
    );
    // A SIGTERM stops a relay cleanly, streams and all.
    let mut west = west;
    let status = west.terminate().expect("west relay was running");
    assert!(
        status.success(),
        "west relay exit status {status}:\n{}",
        west.stderr()
    );
    drop(traffic);
}

use periscope_tls::test_ca::TestCa as Ca;

async fn tls_get_nodes(
    address: &str,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<Vec<Node>, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((c, k)) = identity {
        tls = tls.identity(Identity::from_pem(c, k));
    }
    let ch = tonic::transport::Endpoint::from_shared(format!("https://{address}"))
        .expect("uri")
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    ObserverClient::new(ch)
        .get_nodes(GetNodesRequest {})
        .await
        .map(|r| r.into_inner().nodes)
        .map_err(|s| format!("{s:?}"))
}

#[test]
fn mutual_tls_between_relays_rejects_unknown_clients() {
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    let dir = std::env::temp_dir().join(format!("periscope-e2e-mtls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("cert dir");
    let ca = Ca::new("periscope test CA");
    let (server_cert, server_key) = ca.issue(&["localhost", "127.0.0.1"]);
    let (client_cert, client_key) = ca.issue(&["top-relay"]);
    let rogue = Ca::new("unknown CA");
    let (rogue_cert, rogue_key) = rogue.issue(&["top-relay"]);
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write cert file");
        p.display().to_string()
    };
    let (ca_f, cert_f, key_f) = (
        file("ca.pem", &ca.pem),
        file("server.pem", &server_cert),
        file("server.key", &server_key),
    );
    let (ccert_f, ckey_f) = (
        file("client.pem", &client_cert),
        file("client.key", &client_key),
    );
    let (rcert_f, rkey_f) = (
        file("rogue.pem", &rogue_cert),
        file("rogue.key", &rogue_key),
    );

    // The agent serves its API with mutual TLS: the relay dials it with a client certificate.
    let a1 = Agent::start(
        &tb,
        "n1",
        "",
        &[
            "--tls-cert",
            &cert_f,
            "--tls-key",
            &key_f,
            "--tls-client-ca",
            &ca_f,
        ],
    );
    let _db = TcpEchoServer::start(tb.pod("shop/db"), 5432);
    assert!(traffic::tcp_probe(tb.pod("shop/web"), tb.pod("shop/db").v4(5432), T).is_echoed());
    a1.wait_flows(Duration::from_secs(5), "n1 flows", |f| f.len() >= 2);
    let agent_address = a1.api_address().replace("0.0.0.0", "127.0.0.1");

    // A bad certificate path is a start-up error naming the flag and the file.
    let out = Command::new(relay_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent/server.pem",
            "--tls-key",
            &key_f,
        ])
        .output()
        .expect("run periscope-relay");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--tls-cert /nonexistent/server.pem"), "{err}");
    // The agent too, before it touches the datapath.
    let out = Command::new(agent_bin())
        .args(["--topology", "/nonexistent/topology.yaml", "--node", "n1"])
        .args([
            "--tls-cert",
            &cert_f,
            "--tls-key",
            "/nonexistent/server.key",
        ])
        .output()
        .expect("run periscope-agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--tls-key /nonexistent/server.key"), "{err}");

    let secure = Relay::start(
        "secure",
        &[
            "--cluster-name",
            "sec",
            "--peers",
            &agent_address,
            "--peer-tls-ca",
            &ca_f,
            "--peer-tls-cert",
            &ccert_f,
            "--peer-tls-key",
            &ckey_f,
            "--peer-tls-server-name",
            "localhost",
            "--tls-cert",
            &cert_f,
            "--tls-key",
            &key_f,
            "--tls-client-ca",
            &ca_f,
        ],
    );
    let top = Relay::start(
        "top-tls",
        &[
            "--relay-peer",
            &secure.address,
            "--peer-tls-ca",
            &ca_f,
            "--peer-tls-cert",
            &ccert_f,
            "--peer-tls-key",
            &ckey_f,
            "--peer-tls-server-name",
            "localhost",
            "--retry-timeout",
            "2s",
        ],
    );
    let intruder = Relay::start(
        "intruder",
        &[
            "--relay-peer",
            &secure.address,
            "--peer-tls-ca",
            &ca_f,
            "--peer-tls-cert",
            &rcert_f,
            "--peer-tls-key",
            &rkey_f,
            "--peer-tls-server-name",
            "localhost",
            "--retry-timeout",
            "2s",
        ],
    );
    rt().block_on(async {
        // The right client certificate: the top relay gets the secure cluster's node and flows.
        let mut c = connect(&top.address).await;
        wait_nodes(&mut c, &[("sec/n1", NodeState::NodeConnected)], &top).await;
        let fl = flows(
            &mut c,
            GetFlowsRequest {
                number: 100,
                ..Default::default()
            },
        )
        .await;
        assert!(
            !fl.is_empty() && fl.iter().all(|f| f.node_name == "sec/n1"),
            "{fl:?}"
        );
        let ok = tls_get_nodes(&secure.address, &ca.pem, Some((&client_cert, &client_key))).await;
        assert_eq!(
            ok.expect("a known client certificate is accepted")[0].name,
            "sec/n1"
        );

        // An unknown client certificate, none, or plain text: rejected.
        let bad = tls_get_nodes(&secure.address, &ca.pem, Some((&rogue_cert, &rogue_key))).await;
        assert!(bad.is_err(), "unknown client certificate accepted: {bad:?}");
        let none = tls_get_nodes(&secure.address, &ca.pem, None).await;
        assert!(
            none.is_err(),
            "missing client certificate accepted: {none:?}"
        );
        let plain = match ObserverClient::connect(format!("http://{}", secure.address)).await {
            Ok(mut p) => p.get_nodes(GetNodesRequest {}).await.is_ok(),
            Err(_) => false,
        };
        assert!(!plain, "plain text accepted by a TLS relay");
        // The agent itself: the relay's certificate is accepted, others and plain text are not,
        // and GetNodes says TLS is on.
        let agent_nodes = tls_get_nodes(&agent_address, &ca.pem, Some((&client_cert, &client_key)))
            .await
            .expect("the agent accepts a known client certificate");
        assert!(
            agent_nodes[0].tls.as_ref().is_some_and(|t| t.enabled),
            "{agent_nodes:?}"
        );
        let bad = tls_get_nodes(&agent_address, &ca.pem, Some((&rogue_cert, &rogue_key))).await;
        assert!(
            bad.is_err(),
            "agent accepted an unknown client certificate: {bad:?}"
        );
        let none = tls_get_nodes(&agent_address, &ca.pem, None).await;
        assert!(
            none.is_err(),
            "agent accepted a client without certificate: {none:?}"
        );
        let plain = match ObserverClient::connect(format!("http://{agent_address}")).await {
            Ok(mut p) => p.get_nodes(GetNodesRequest {}).await.is_ok(),
            Err(_) => false,
        };
        assert!(!plain, "plain text accepted by a TLS agent");
        // The relay with the unknown certificate never gets the cluster.
        let mut i = connect(&intruder.address).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let listed = nodes(&mut i).await;
        assert!(
            listed
                .iter()
                .all(|n| n.state != NodeState::NodeConnected as i32),
            "{listed:?}"
        );
        assert!(
            flows(
                &mut i,
                GetFlowsRequest {
                    number: 100,
                    ..Default::default()
                }
            )
            .await
            .is_empty()
        );
    });
    assert!(
        secure.stderr().contains("TLS handshake failed"),
        "{}",
        secure.stderr()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A port free on both 127.0.0.2 and 127.0.0.3 (two "nodes" whose agents listen on the same
/// port, as a DaemonSet's do).
fn port_free_on_two_loopbacks() -> u16 {
    for _ in 0..50 {
        let a = std::net::TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
        let port = a.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.3", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on 127.0.0.2 and 127.0.0.3");
}

fn agent_pod(name: &str, node: &str, ip: &str, phase: &str, rv: u64) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": name, "namespace": "periscope", "uid": format!("uid-{name}"),
            "resourceVersion": rv.to_string(),
            "labels": {"app.kubernetes.io/name": "periscope-agent"}},
        "spec": {"nodeName": node, "hostNetwork": true,
            "containers": [{"name": "agent", "image": "periscope-agent"}]},
        "status": {"phase": phase, "podIP": ip, "hostIP": ip},
    })
}

/// The relay finds the agents as the pods of a DaemonSet through the Kubernetes API (a fake API
/// server: no real one can run on this machine; the agents, the relay and the traffic are
/// real), follows a pod's deletion, and ignores pods that are not running.
#[test]
fn agents_found_in_kubernetes() {
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    let port = port_free_on_two_loopbacks();
    let (l1, l2) = (format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}"));
    let a1 = Agent::start(&tb, "n1", "", &["--listen", &l1]);
    let a2 = Agent::start(&tb, "n2", "", &["--listen", &l2]);
    let _servers = some_traffic(&tb, &a1, &a2);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pods_path = "/api/v1/namespaces/periscope/pods";
    let list = serde_json::json!({
        "kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "10"},
        "items": [
            agent_pod("agent-a", "n1", "127.0.0.2", "Running", 7),
            agent_pod("agent-b", "n2", "127.0.0.3", "Running", 8),
            agent_pod("agent-c", "n3", "127.0.0.4", "Pending", 9),
        ],
    });
    let api = runtime.block_on(FakeApiServer::start(
        0,
        [(pods_path.to_string(), list)].into_iter().collect(),
    ));
    let relay = Relay::start(
        "k8s",
        &[
            "--k8s-api-server",
            &api.url(),
            "--k8s-agent-port",
            &port.to_string(),
            "--retry-timeout",
            "2s",
        ],
    );
    runtime.block_on(async {
        let mut c = connect(&relay.address).await;
        wait_nodes(
            &mut c,
            &[
                ("n1", NodeState::NodeConnected),
                ("n2", NodeState::NodeConnected),
            ],
            &relay,
        )
        .await;
        let fl = flows(
            &mut c,
            GetFlowsRequest {
                number: 200,
                ..Default::default()
            },
        )
        .await;
        let seen: BTreeSet<&str> = fl.iter().map(|f| f.node_name.as_str()).collect();
        assert_eq!(seen, BTreeSet::from(["n1", "n2"]), "flows of both agents");

        // The relay asked for the agents' pods by label, and watches them.
        let asked = api.requests();
        assert!(
            asked.iter().any(|r| r.path == pods_path
                && r.query.get("labelSelector").map(String::as_str)
                    == Some("app.kubernetes.io/name=periscope-agent")),
            "{asked:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while api.watches(pods_path) == 0 {
            assert!(Instant::now() < deadline, "no watch of the pods");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // agent-b's pod is deleted: n2 leaves the relay; n1 stays.
        let deleted = serde_json::json!({"type": "DELETED",
            "object": agent_pod("agent-b", "n2", "127.0.0.3", "Running", 11)});
        api.push_event(pods_path, &deleted.to_string());
        wait_nodes(&mut c, &[("n1", NodeState::NodeConnected)], &relay).await;

        // It comes back (a new pod on the node): n2 is merged again.
        let added = serde_json::json!({"type": "ADDED",
            "object": agent_pod("agent-b2", "n2", "127.0.0.3", "Running", 12)});
        api.push_event(pods_path, &added.to_string());
        wait_nodes(
            &mut c,
            &[
                ("n1", NodeState::NodeConnected),
                ("n2", NodeState::NodeConnected),
            ],
            &relay,
        )
        .await;
    });
    // A bad API server setting is a start-up error naming the flag.
    let out = Command::new(relay_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--k8s-api-server",
            "kubernetes:443",
        ])
        .output()
        .expect("run periscope-relay");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--k8s-api-server"), "{err}");
    runtime.block_on(api.stop());
}
