//! Merge throughput of the relay (`cargo xtask bench relay`): 4 agents → relay → 1 client, in
//! flows per second, against the same client reading one agent directly (the baseline of the
//! same run: what one gRPC stream of these flows costs on this machine).
//!
//! The agents are fake (in-process gRPC servers with a fixed history; the real agent cannot
//! produce 500k flows/s on this machine — its datapath and kernel are the limit, not the relay),
//! the relay is the real `RelayService` with its merge, and every hop is real gRPC over TCP on
//! 127.0.0.1. Plain timing, printed; nothing is asserted.
use std::collections::HashMap;
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
/// The relay's sort buffer (flows held per agent).
const SORT_BUFFER: usize = 100;

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

/// Reads the agents' whole history through `addr`: with `follow`, until `expect` flows came
/// (the stream stays open), else to its end (exactly `expect` flows).
async fn read_all(addr: String, expect: usize, follow: bool) -> (usize, Duration) {
    let mut c = ObserverClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
        .max_decoding_message_size(16 << 20);
    let start = Instant::now();
    let mut s = c
        .get_flows(GetFlowsRequest {
            since: Some(Timestamp::default()),
            until: (!follow).then(|| Timestamp::from(std::time::SystemTime::now())),
            follow,
            ..Default::default()
        })
        .await
        .expect("GetFlows")
        .into_inner();
    let mut n = 0;
    while let Some(r) = s.message().await.expect("stream") {
        if let Some(ResponseTypes::Flow(_)) = r.response_types {
            n += 1;
            if follow && n == expect {
                break;
            }
        }
    }
    assert_eq!(n, expect, "flows received");
    (n, start.elapsed())
}

/// CPU time (ns) used so far by this process' threads, by role: the thread's name (the fake
/// agents' runtimes are `fake-server`, the relay's `relay`), `client` for the main thread.
fn cpu_ns() -> HashMap<String, u64> {
    let pid = std::process::id().to_string();
    let mut by = HashMap::new();
    for task in std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
    {
        let dir = task.path();
        let name = if task.file_name().to_str() == Some(pid.as_str()) {
            "client".to_string()
        } else {
            std::fs::read_to_string(dir.join("comm"))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        // schedstat: ns on CPU, ns waiting, timeslices.
        let ns: u64 = std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        *by.entry(name).or_insert(0) += ns;
    }
    by
}

/// CPU µs per flow of each role between two [`cpu_ns`] readings.
fn per_flow(before: &HashMap<String, u64>, after: &HashMap<String, u64>, flows: usize) -> [f64; 3] {
    let d = |k: &str| {
        after
            .get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(k).copied().unwrap_or(0)) as f64
            / 1e3
            / flows as f64
    };
    [d("fake-server"), d("relay"), d("client")]
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
    // The relay on a runtime of its own (like the relay process: one worker per core), the
    // client on this thread.
    let relay_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("relay")
        .enable_all()
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Baseline: one agent read directly.
    let c0 = cpu_ns();
    let (n, d) = rt.block_on(read_all(agents[0].addr.to_string(), per_agent, false));
    let direct = n as f64 / d.as_secs_f64();
    let [direct_agent, _, direct_client] = per_flow(&c0, &cpu_ns(), n);

    // The relay over the four agents.
    let (pool, addr, _stop) = relay_rt.block_on(async {
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
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let svc = RelayService::new(
            Arc::clone(&pool),
            MergeOptions {
                sort_buffer: SORT_BUFFER,
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
        (pool, addr, stop_tx)
    });
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
        std::thread::sleep(Duration::from_millis(20));
    }
    // Not following: the relay gathers every agent's history, then sends it sorted.
    let mut rates = Vec::new();
    let c0 = cpu_ns();
    for _ in 0..3 {
        let (n, d) = rt.block_on(read_all(addr.to_string(), per_agent * AGENTS, false));
        rates.push(n as f64 / d.as_secs_f64());
    }
    let [agent, relay, client] = per_flow(&c0, &cpu_ns(), 3 * per_agent * AGENTS);
    rates.sort_by(f64::total_cmp);
    let merged = rates[1];
    // Following: the streaming merge (sort buffer, drain timeout). At the end of the histories
    // each agent's last `SORT_BUFFER` flows wait for the drain timeout, as designed: the client
    // stops before them.
    let expect = (per_agent - SORT_BUFFER) * AGENTS;
    let mut rates = Vec::new();
    let c0 = cpu_ns();
    for _ in 0..3 {
        let (n, d) = rt.block_on(read_all(addr.to_string(), expect, true));
        rates.push(n as f64 / d.as_secs_f64());
    }
    let [f_agent, f_relay, f_client] = per_flow(&c0, &cpu_ns(), 3 * expect);
    rates.sort_by(f64::total_cmp);
    let follow = rates[1];
    println!(
        "relay-merge flows={} direct_one_agent={direct:.0} merged_four_agents={merged:.0} ratio={:.2} \
         merged_follow={follow:.0} ratio_follow={:.2} \
         cpu_us_per_flow_agents={agent:.2} cpu_us_per_flow_relay={relay:.2} cpu_us_per_flow_client={client:.2} \
         follow_cpu_us_per_flow_agents={f_agent:.2} follow_cpu_us_per_flow_relay={f_relay:.2} follow_cpu_us_per_flow_client={f_client:.2} \
         direct_cpu_us_per_flow_agent={direct_agent:.2} direct_cpu_us_per_flow_client={direct_client:.2}",
        per_agent * AGENTS,
        merged / direct,
        follow / direct,
    );
}
