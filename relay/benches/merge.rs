//! Merge throughput of the relay (`cargo xtask bench relay`): 4 agents → relay → 1 client, in
//! flows per second, against the same client reading one agent directly (the baseline of the
//! same run: what one gRPC stream of these flows costs on this machine).
//!
//! The agents are fake (in-process gRPC servers with a fixed history; the real agent cannot
//! produce 500k flows/s on this machine — its datapath and kernel are the limit, not the relay),
//! the relay is the real `RelayService` with its merge, and every hop is real gRPC over TCP on
//! 127.0.0.1. Plain timing, printed; nothing is asserted.
use std::sync::Arc;
use std::time::{Duration, Instant};

use periscope_proto::flow::{Endpoint, Flow, Ip, Verdict};
use periscope_proto::observer::GetFlowsRequest;
use periscope_proto::observer::get_flows_response::ResponseTypes;
use periscope_proto::observer::observer_client::ObserverClient;
use periscope_relay::config::{PeerKind, PeerSpec};
use periscope_relay::fanout::MergeOptions;
use periscope_relay::peers::{Origin, Pool, PoolOptions};
use periscope_relay::server::RelayService;
use periscope_relay::testing::{FakeAgent, serve_on};
use prost_types::Timestamp;

const AGENTS: usize = 4;

fn flows(node: usize, n: usize, start_ns: i64) -> Vec<Flow> {
    (0..n)
        .map(|i| {
            // Interleaved times across agents, as concurrent nodes produce them.
            let t = start_ns + (i * AGENTS + node) as i64 * 1_000;
            Flow {
                time: Some(Timestamp {
                    seconds: t / 1_000_000_000,
                    nanos: (t % 1_000_000_000) as i32,
                }),
                uuid: format!("{node:02}-{i:08}"),
                verdict: Verdict::Forwarded as i32,
                node_name: format!("node-{node}"),
                ip: Some(Ip {
                    source: format!("10.0.{node}.{}", i % 250),
                    destination: "10.1.0.1".into(),
                    ..Default::default()
                }),
                source: Some(Endpoint {
                    namespace: "shop".into(),
                    pod_name: format!("web-{}", i % 16),
                    labels: vec![
                        "k8s:app=web".into(),
                        "k8s:io.kubernetes.pod.namespace=shop".into(),
                    ],
                    identity: 1234,
                    ..Default::default()
                }),
                destination: Some(Endpoint {
                    namespace: "data".into(),
                    pod_name: "db-0".into(),
                    labels: vec!["k8s:app=db".into()],
                    identity: 5678,
                    ..Default::default()
                }),
                summary: "TCP Flags: ACK".into(),
                ..Default::default()
            }
        })
        .collect()
}

async fn read_all(addr: String, expect: usize) -> (usize, Duration) {
    let mut c = ObserverClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
        .max_decoding_message_size(16 << 20);
    let start = Instant::now();
    let mut s = c
        .get_flows(GetFlowsRequest {
            since: Some(Timestamp::default()),
            until: Some(Timestamp::from(std::time::SystemTime::now())),
            ..Default::default()
        })
        .await
        .expect("GetFlows")
        .into_inner();
    let mut n = 0;
    while let Some(r) = s.message().await.expect("stream") {
        if let Some(ResponseTypes::Flow(_)) = r.response_types {
            n += 1;
        }
    }
    assert_eq!(n, expect, "flows received");
    (n, start.elapsed())
}

fn main() {
    let per_agent: usize = std::env::var("PERISCOPE_BENCH_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let start_ns = 1_700_000_000_000_000_000;
    let agents: Vec<_> = (0..AGENTS)
        .map(|i| {
            serve_on(
                "127.0.0.1:0",
                FakeAgent::new(&format!("node-{i}"), flows(i, per_agent, start_ns)),
            )
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Baseline: one agent read directly.
        let (n, d) = read_all(agents[0].addr.to_string(), per_agent).await;
        let direct = n as f64 / d.as_secs_f64();

        // The relay over the four agents.
        let pool = Pool::new(PoolOptions {
            cluster_name: "default".into(),
            dial_timeout: Duration::from_secs(2),
            retry_timeout: Duration::from_secs(1),
            tls: None,
        });
        for a in &agents {
            pool.add(
                PeerSpec {
                    name: None,
                    address: a.addr.to_string(),
                    kind: PeerKind::Agent,
                },
                Origin::Static,
            );
        }
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let svc = RelayService::new(
            Arc::clone(&pool),
            MergeOptions {
                sort_buffer: 100,
                drain_timeout: Duration::from_secs(1),
                relay_name: "bench".into(),
            },
            stop,
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc.into_server().max_encoding_message_size(16 << 20))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
        // Wait until the pool has connected every agent.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool
            .peers()
            .iter()
            .filter(|p| p.snapshot().state == periscope_proto::relay::NodeState::NodeConnected)
            .count()
            < AGENTS
        {
            assert!(Instant::now() < deadline, "agents not connected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut rates = Vec::new();
        for _ in 0..3 {
            let (n, d) = read_all(addr.to_string(), per_agent * AGENTS).await;
            rates.push(n as f64 / d.as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        let merged = rates[1];
        println!("relay-merge flows={} direct_one_agent={direct:.0} merged_four_agents={merged:.0} ratio={:.2}", per_agent * AGENTS, merged / direct);
    });
}
