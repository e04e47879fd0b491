//! The relay's service over fake agents (in-process gRPC servers on 127.0.0.1): the merge of
//! `number`, following, a peer that dies and comes back, node-name filters, ServerStatus and
//! GetNodes, a relay over relays, and mutual TLS with certificate reloading. No root needed;
//! the real-kernel end-to-end tests are in `tests/tests/relay.rs`.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use periscope_proto::flow::{Flow, FlowFilter};
use periscope_proto::observer::get_flows_response::ResponseTypes;
use periscope_proto::observer::observer_client::ObserverClient;
use periscope_proto::observer::observer_server::ObserverServer;
use periscope_proto::observer::{
    GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNodesRequest, GetNodesResponse,
    ServerStatusRequest,
};
use periscope_proto::relay::NodeState;
use periscope_relay::config::{PeerKind, PeerSpec};
use periscope_relay::fanout::MergeOptions;
use periscope_relay::peers::{Origin, Pool, PoolOptions};
use periscope_relay::server::RelayService;
use periscope_relay::testing::{FakeAgent, serve_on};
use periscope_relay::tls::{PeerTlsFiles, ReloadingServerConfig, ServerTlsFiles, tls_incoming};
use prost_types::Timestamp;
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Request, Response, Status};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn ts(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms / 1000,
        nanos: (ms % 1000) as i32 * 1_000_000,
    }
}

fn flow(node: &str, ms: i64) -> Flow {
    Flow {
        time: Some(ts(ms)),
        node_name: node.into(),
        summary: format!("{node}@{ms}"),
        ..Default::default()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn pool_opts(cluster: &str) -> PoolOptions {
    PoolOptions {
        cluster_name: cluster.into(),
        dial_timeout: Duration::from_secs(1),
        retry_timeout: Duration::from_millis(500),
        tls: None,
    }
}

fn merge_opts() -> MergeOptions {
    MergeOptions {
        sort_buffer: 100,
        drain_timeout: Duration::from_millis(300),
        relay_name: "test-relay".into(),
    }
}

/// A relay over `peers`, served on 127.0.0.1 (plain text) on the caller's runtime.
async fn relay(peers: &[PeerSpec], cluster: &str) -> (SocketAddr, Arc<Pool>, watch::Sender<bool>) {
    let pool = Pool::new(pool_opts(cluster));
    for p in peers {
        pool.add(p.clone(), Origin::Static);
    }
    let (stop_tx, stop) = watch::channel(false);
    let svc = RelayService::new(pool.clone(), merge_opts(), stop);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc.into_server())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    (addr, pool, stop_tx)
}

fn agent(addr: SocketAddr) -> PeerSpec {
    PeerSpec {
        name: None,
        address: addr.to_string(),
        kind: PeerKind::Agent,
    }
}

async fn client(addr: SocketAddr) -> ObserverClient<Channel> {
    ObserverClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

async fn wait_connected(pool: &Pool, n: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let up = pool
                .peers()
                .iter()
                .filter(|p| p.snapshot().state == NodeState::NodeConnected)
                .count();
            if up >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("peers connected within 10 s");
}

async fn collect(c: &mut ObserverClient<Channel>, req: GetFlowsRequest) -> Vec<GetFlowsResponse> {
    let mut s = c.get_flows(req).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(r) = s.message().await.unwrap() {
        out.push(r);
    }
    out
}

fn flows_of(rs: &[GetFlowsResponse]) -> Vec<String> {
    rs.iter()
        .filter_map(|r| match &r.response_types {
            Some(ResponseTypes::Flow(f)) => Some(f.summary.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn number_is_the_last_n_overall_and_filters_see_renamed_nodes() {
    let a = serve_on(
        "127.0.0.1:0",
        FakeAgent::new("n1", vec![flow("n1", 10), flow("n1", 30), flow("n1", 50)]),
    );
    let b = serve_on(
        "127.0.0.1:0",
        FakeAgent::new("n2", vec![flow("n2", 20), flow("n2", 40), flow("n2", 60)]),
    );
    let (addr, pool, _stop) = relay(&[agent(a.addr), agent(b.addr)], "c1").await;
    wait_connected(&pool, 2).await;
    let mut c = client(addr).await;
    let last = collect(
        &mut c,
        GetFlowsRequest {
            number: 3,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(flows_of(&last), ["n2@40", "n1@50", "n2@60"]);
    // Names as clients see them: cluster/node, in the flow and the response.
    for r in &last {
        if let Some(ResponseTypes::Flow(f)) = &r.response_types {
            assert!(f.node_name.starts_with("c1/"), "{f:?}");
            assert_eq!(r.node_name, f.node_name);
        }
    }
    let first = collect(
        &mut c,
        GetFlowsRequest {
            number: 2,
            first: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(flows_of(&first), ["n1@10", "n2@20"]);
    let all = collect(&mut c, GetFlowsRequest::default()).await;
    assert_eq!(
        flows_of(&all),
        ["n1@10", "n2@20", "n1@30", "n2@40", "n1@50", "n2@60"]
    );
    // A node-name filter on the names clients see (the agents know only n1 / n2).
    let only_n2 = collect(
        &mut c,
        GetFlowsRequest {
            whitelist: vec![FlowFilter {
                node_name: vec!["c1/n2".into()],
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(flows_of(&only_n2), ["n2@20", "n2@40", "n2@60"]);
    let not_n2 = collect(
        &mut c,
        GetFlowsRequest {
            blacklist: vec![FlowFilter {
                node_name: vec!["c1/n2".into()],
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(flows_of(&not_n2), ["n1@10", "n1@30", "n1@50"]);

    // ServerStatus sums; GetNodes lists both with their counts.
    let st = c
        .server_status(ServerStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((st.num_flows, st.max_flows), (6, 200));
    assert_eq!(st.num_connected_nodes, Some(2));
    assert_eq!(st.num_unavailable_nodes, Some(0));
    let nodes = c
        .get_nodes(GetNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    let names: Vec<_> = nodes
        .iter()
        .map(|n| (n.name.as_str(), n.state, n.num_flows))
        .collect();
    assert_eq!(
        names,
        [
            ("c1/n1", NodeState::NodeConnected as i32, 3),
            ("c1/n2", NodeState::NodeConnected as i32, 3)
        ]
    );
    assert_eq!(nodes[0].address, a.addr.to_string());
    assert_eq!(nodes[0].version, "fake 1");
    let ns = c
        .get_namespaces(GetNamespacesRequest {})
        .await
        .unwrap()
        .into_inner()
        .namespaces;
    assert_eq!(ns.len(), 2);

    // One agent gone: ServerStatus names it, a request reports it and still gets the other.
    drop(b);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = c
            .server_status(ServerStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if st.num_unavailable_nodes == Some(1) {
            assert_eq!(st.unavailable_nodes, ["c1/n2"]);
            assert_eq!(st.num_connected_nodes, Some(1));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rs = collect(
        &mut c,
        GetFlowsRequest {
            number: 10,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(flows_of(&rs), ["n1@10", "n1@30", "n1@50"]);
    let status: Vec<_> = rs
        .iter()
        .filter_map(|r| match &r.response_types {
            Some(ResponseTypes::NodeStatus(s)) => Some(s.clone()),
            _ => None,
        })
        .collect();
    assert!(
        status
            .iter()
            .any(|s| s.state_change == NodeState::NodeUnavailable as i32
                && s.node_names == ["c1/n2"]),
        "{status:?}"
    );
}

async fn next_flow_or_status(
    s: &mut tonic::Streaming<GetFlowsResponse>,
    within: Duration,
) -> GetFlowsResponse {
    tokio::time::timeout(within, s.message())
        .await
        .expect("a response in time")
        .expect("stream ok")
        .expect("stream open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_survives_a_peer_that_dies_and_comes_back() {
    let t = now_ms();
    let fa = FakeAgent::new("n1", vec![flow("n1", t - 30), flow("n1", t - 10)]);
    let fb = FakeAgent::new("n2", vec![flow("n2", t - 20)]);
    let a = serve_on("127.0.0.1:0", fa.clone());
    let b = serve_on("127.0.0.1:0", fb.clone());
    let b_addr = b.addr;
    let (addr, pool, _stop) = relay(&[agent(a.addr), agent(b.addr)], "default").await;
    wait_connected(&pool, 2).await;
    let mut c = client(addr).await;
    let mut s = c
        .get_flows(GetFlowsRequest {
            number: 2,
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // The last 2 overall, then live flows in time order.
    let mut got = Vec::new();
    while got.len() < 2 {
        let r = next_flow_or_status(&mut s, Duration::from_secs(5)).await;
        got.extend(flows_of(&[r]));
    }
    assert_eq!(got, [format!("n2@{}", t - 20), format!("n1@{}", t - 10)]);
    let t = now_ms();
    fb.send(flow("n2", t + 2));
    fa.send(flow("n1", t + 1));
    got.clear();
    while got.len() < 2 {
        let r = next_flow_or_status(&mut s, Duration::from_secs(5)).await;
        got.extend(flows_of(&[r]));
    }
    assert_eq!(got, [format!("n1@{}", t + 1), format!("n2@{}", t + 2)]);

    // n2 dies: a NODE_UNAVAILABLE notice soon, and n1 goes on.
    drop(b);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = next_flow_or_status(&mut s, Duration::from_secs(5)).await;
        if let Some(ResponseTypes::NodeStatus(st)) = &r.response_types
            && st.state_change == NodeState::NodeUnavailable as i32
        {
            assert_eq!(st.node_names, ["n2"]);
            assert_eq!(r.node_name, "test-relay");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
    }
    let t = now_ms();
    fa.send(flow("n1", t));
    let r = loop {
        let r = next_flow_or_status(&mut s, Duration::from_secs(5)).await;
        if !flows_of(std::slice::from_ref(&r)).is_empty() {
            break r;
        }
    };
    assert_eq!(
        flows_of(&[r]),
        [format!("n1@{t}")],
        "n1 is not held back by n2"
    );

    // n2 comes back on the same address: NODE_CONNECTED, then its new flows.
    let fb2 = FakeAgent::new("n2", vec![]);
    let _b2 = serve_on(&b_addr.to_string(), fb2.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = next_flow_or_status(&mut s, Duration::from_secs(10)).await;
        if let Some(ResponseTypes::NodeStatus(st)) = &r.response_types
            && st.state_change == NodeState::NodeConnected as i32
            && st.node_names == ["n2"]
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
    }
    let t = now_ms();
    fb2.send(flow("n2", t));
    let r = loop {
        let r = next_flow_or_status(&mut s, Duration::from_secs(5)).await;
        if !flows_of(std::slice::from_ref(&r)).is_empty() {
            break r;
        }
    };
    assert_eq!(flows_of(&[r]), [format!("n2@{t}")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_over_relays_names_clusters_and_survives_one() {
    let t = now_ms();
    let fa = FakeAgent::new("n1", vec![flow("n1", t - 10)]);
    let fb = FakeAgent::new("n1", vec![flow("n1", t - 5)]);
    let a = serve_on("127.0.0.1:0", fa.clone());
    let b = serve_on("127.0.0.1:0", fb.clone());
    // Cluster east names its own nodes; cluster west's relay does not (default), so the top
    // relay's `west=` prefix applies.
    let (east, east_pool, _s1) = relay(&[agent(a.addr)], "east").await;
    let (west, west_pool, _s2) = relay(&[agent(b.addr)], "default").await;
    wait_connected(&east_pool, 1).await;
    wait_connected(&west_pool, 1).await;
    let (top, top_pool, _s3) = relay(
        &[
            PeerSpec {
                name: None,
                address: east.to_string(),
                kind: PeerKind::Relay,
            },
            PeerSpec {
                name: Some("west".into()),
                address: west.to_string(),
                kind: PeerKind::Relay,
            },
        ],
        "top",
    )
    .await;
    wait_connected(&top_pool, 2).await;
    let mut c = client(top).await;
    let all = collect(&mut c, GetFlowsRequest::default()).await;
    assert_eq!(
        flows_of(&all),
        [format!("n1@{}", t - 10), format!("n1@{}", t - 5)]
    );
    let names: Vec<_> = all
        .iter()
        .filter_map(|r| match &r.response_types {
            Some(ResponseTypes::Flow(f)) => Some(f.node_name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(names, ["east/n1", "west/n1"]);
    let nodes = c
        .get_nodes(GetNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    let names: Vec<_> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["east/n1", "west/n1"]);
    let st = c
        .server_status(ServerStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.num_connected_nodes, Some(2));

    // Following; the east agent stops answering altogether (its relay reports it), then the
    // west flows keep coming.
    let mut s = c
        .get_flows(GetFlowsRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    drop(a);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = next_flow_or_status(&mut s, Duration::from_secs(10)).await;
        if let Some(ResponseTypes::NodeStatus(st)) = &r.response_types
            && st.state_change == NodeState::NodeUnavailable as i32
        {
            assert_eq!(st.node_names, ["east/n1"]);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
    }
    let t = now_ms();
    fb.send(flow("n1", t));
    let r = loop {
        let r = next_flow_or_status(&mut s, Duration::from_secs(5)).await;
        if !flows_of(std::slice::from_ref(&r)).is_empty() {
            break r;
        }
    };
    match r.response_types {
        Some(ResponseTypes::Flow(f)) => assert_eq!(f.node_name, "west/n1"),
        other => panic!("{other:?}"),
    }
    let st = c
        .server_status(ServerStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.num_connected_nodes, Some(1));
    assert_eq!(st.unavailable_nodes, ["east/n1"]);
}

use periscope_tls::test_ca::TestCa as Ca;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("relay-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn tls_client(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<GetNodesResponse, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((c, k)) = identity {
        tls = tls.identity(Identity::from_pem(c, k));
    }
    let ch = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    ObserverClient::new(ch)
        .get_nodes(GetNodesRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_rejects_unknown_clients_and_reloads_certificates() {
    let dir = scratch("mtls");
    let ca = Ca::new("relay-ca");
    let (server_cert, server_key) = ca.issue(&["localhost", "127.0.0.1"]);
    let (client_cert, client_key) = ca.issue(&["client"]);
    let rogue_ca = Ca::new("rogue");
    let (rogue_cert, rogue_key) = rogue_ca.issue(&["client"]);
    let w = |n: &str, s: &str| {
        std::fs::write(dir.join(n), s).unwrap();
        dir.join(n)
    };
    let files = ServerTlsFiles {
        cert: w("server.pem", &server_cert),
        key: w("server.key", &server_key),
        client_ca: Some(w("ca.pem", &ca.pem)),
    };
    w("client.pem", &client_cert);
    w("client.key", &client_key);

    // A TLS relay (cluster) over a plain agent, and a top relay dialing it with mTLS.
    let fa = FakeAgent::new("n1", vec![flow("n1", 5)]);
    let a = serve_on("127.0.0.1:0", fa);
    let pool = Pool::new(pool_opts("secure"));
    pool.add(agent(a.addr), Origin::Static);
    let (_stop_tx, stop) = watch::channel(false);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let reload = Arc::new(ReloadingServerConfig::new(files.clone()).unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ObserverServer::new(RelayService::new(
                pool.clone(),
                merge_opts(),
                stop,
            )))
            .serve_with_incoming(tls_incoming(l, reload)),
    );
    wait_connected(&pool, 1).await;

    let ok = tls_client(addr, &ca.pem, Some((&client_cert, &client_key))).await;
    assert_eq!(
        ok.expect("a known client certificate is accepted").nodes[0].name,
        "secure/n1"
    );
    let rogue = tls_client(addr, &ca.pem, Some((&rogue_cert, &rogue_key))).await;
    assert!(
        rogue.is_err(),
        "an unknown client certificate is rejected: {rogue:?}"
    );
    let none = tls_client(addr, &ca.pem, None).await;
    assert!(none.is_err(), "no client certificate is rejected: {none:?}");
    let plain = ObserverClient::connect(format!("http://{addr}")).await;
    let plain_ok = match plain {
        Ok(mut c) => c.get_nodes(GetNodesRequest {}).await.is_ok(),
        Err(_) => false,
    };
    assert!(!plain_ok, "plain text is refused");

    let top = Pool::new(PoolOptions {
        tls: Some(PeerTlsFiles {
            ca: dir.join("ca.pem"),
            cert: Some(dir.join("client.pem")),
            key: Some(dir.join("client.key")),
            server_name: Some("localhost".into()),
        }),
        ..pool_opts("default")
    });
    let peer = top.add(
        PeerSpec {
            name: None,
            address: addr.to_string(),
            kind: PeerKind::Relay,
        },
        Origin::Static,
    );
    wait_connected(&top, 1).await;
    assert_eq!(peer.node_names(), ["secure/n1"]);

    // New server certificate from another CA: new connections use it (clients trusting only
    // the old CA fail, the new CA works); the top relay's live connection is unaffected.
    let ca2 = Ca::new("relay-ca-2");
    let (cert2, key2) = ca2.issue(&["localhost", "127.0.0.1"]);
    std::fs::write(dir.join("server.key"), &key2).unwrap();
    std::fs::write(dir.join("server.pem"), &cert2).unwrap();
    let old = tls_client(addr, &ca.pem, Some((&client_cert, &client_key))).await;
    assert!(
        old.is_err(),
        "the old CA no longer verifies the server: {old:?}"
    );
    let new = tls_client(addr, &ca2.pem, Some((&client_cert, &client_key))).await;
    assert!(new.is_ok(), "the new certificate is served: {new:?}");
    assert_eq!(peer.snapshot().state, NodeState::NodeConnected);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A fake Peer service announcing a fixed list of nodes.
struct FakePeerService(Vec<(String, String)>);

#[tonic::async_trait]
impl periscope_proto::peer::peer_server::Peer for FakePeerService {
    type NotifyStream = BoxStream<periscope_proto::peer::ChangeNotification>;

    async fn notify(
        &self,
        _: Request<periscope_proto::peer::NotifyRequest>,
    ) -> Result<Response<Self::NotifyStream>, Status> {
        let list: Vec<_> = self
            .0
            .iter()
            .map(|(name, address)| {
                Ok(periscope_proto::peer::ChangeNotification {
                    name: name.clone(),
                    address: address.clone(),
                    r#type: periscope_proto::peer::ChangeNotificationType::PeerAdded as i32,
                    tls: None,
                })
            })
            .collect();
        Ok(Response::new(Box::pin(
            tokio_stream::iter(list).chain(tokio_stream::pending()),
        )))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_from_the_peer_service_feed_the_ingest_stream() {
    let fa = FakeAgent::new("n1", vec![]);
    let fb = FakeAgent::new("n2", vec![]);
    let a = serve_on("127.0.0.1:0", fa.clone());
    let b = serve_on("127.0.0.1:0", fb.clone());
    let announced = vec![
        ("n1".to_string(), a.addr.to_string()),
        ("n2".to_string(), b.addr.to_string()),
    ];
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = l.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(periscope_proto::peer::peer_server::PeerServer::new(
                FakePeerService(announced),
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    let pool = Pool::new(pool_opts("c9"));
    tokio::spawn(periscope_relay::peers::follow_peer_service(
        pool.clone(),
        service.to_string(),
    ));
    wait_connected(&pool, 2).await;
    let mut names: Vec<_> = pool.peers().iter().flat_map(|p| p.node_names()).collect();
    names.sort();
    assert_eq!(names, ["c9/n1", "c9/n2"]);

    // The ingest stream: every peer's flows, merged, without any client request.
    let (_stop_tx, stop) = watch::channel(false);
    let ingest = periscope_relay::ingest::spawn_ingest(pool.clone(), merge_opts(), stop);
    let mut rx = ingest.subscribe();
    // Wait for the ingest's streams to be open on both peers (nothing is replayed).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fa.followers() + fb.followers() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ingest streams open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = now_ms();
    fb.send(flow("n2", t + 2));
    fa.send(flow("n1", t + 1));
    let mut got = Vec::new();
    while got.len() < 2 {
        let f = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an ingested flow within 5 s")
            .expect("ingest open");
        got.push((f.node_name.clone(), f.summary.clone()));
    }
    assert_eq!(
        got,
        [
            ("c9/n1".to_string(), format!("n1@{}", t + 1)),
            ("c9/n2".to_string(), format!("n2@{}", t + 2))
        ]
    );
}
