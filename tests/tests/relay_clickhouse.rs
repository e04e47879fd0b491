//! The relay with ClickHouse, end to end: real traffic on the test bed → agent → relay → a real
//! ClickHouse server (18.16, a private instance); history through the relay's gRPC API
//! (`since`) returns the same flows the live stream delivered, also once the agent is gone.
//! Needs root (`cargo xtask test`).
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use periscope_proto::flow::Flow;
use periscope_proto::observer::GetFlowsRequest;
use periscope_proto::observer::get_flows_response::ResponseTypes;
use periscope_proto::observer::observer_client::ObserverClient;
use periscope_storage::testing::TestServer;
use periscope_testbed::agent::Agent;
use periscope_testbed::relay::Relay;
use periscope_testbed::traffic::{self, TcpEchoServer};
use periscope_testbed::{Testbed, TestbedOptions};

const TOPO: &str = r#"
cluster: chrelay
nodes: [{name: n1}]
pods:
  - {name: web, namespace: shop, node: n1, labels: {app: web}, ips: [10.218.0.1]}
  - {name: api, namespace: shop, node: n1, labels: {app: api}, ips: [10.218.0.2]}
  - {name: db, namespace: data, node: n1, labels: {app: db}, ips: [10.218.1.1]}
"#;

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-from-api, namespace: data}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api, k8s:io.kubernetes.pod.namespace: shop}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
"#;

/// What must be equal between a live flow and its stored copy.
fn key(
    f: &Flow,
) -> (
    i64,
    i32,
    i32,
    String,
    String,
    String,
    String,
    Option<bool>,
    u32,
) {
    let t = f
        .time
        .as_ref()
        .map_or(0, |t| t.seconds * 1_000_000_000 + t.nanos as i64);
    let ep = |e: &Option<periscope_proto::flow::Endpoint>| {
        e.as_ref().map_or(String::new(), |e| {
            format!("{}/{}/{}", e.namespace, e.pod_name, e.identity)
        })
    };
    (
        t,
        f.verdict,
        f.traffic_direction,
        ep(&f.source),
        ep(&f.destination),
        f.ip.as_ref()
            .map_or(String::new(), |i| i.destination.clone()),
        f.node_name.clone(),
        f.is_reply,
        f.drop_reason,
    )
}

#[test]
fn history_from_clickhouse_equals_the_live_stream() {
    let ch = TestServer::start().expect("clickhouse-server");
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    let mut agent = Agent::start(&tb, "n1", POLICY, &[]);
    let (web, api, db) = (tb.pod("shop/web"), tb.pod("shop/api"), tb.pod("data/db"));
    let _srv = TcpEchoServer::start(db, 5432);
    let spool = std::env::temp_dir().join(format!("periscope-e2e-spool-{}", tb.id()));
    let relay = storing_relay("clickhouse", &agent, &ch, &spool);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = ObserverClient::connect(format!("http://{}", relay.address))
            .await
            .expect("connect to the relay");
        // The live stream, from now on.
        let start = std::time::SystemTime::now();
        let mut live_stream = c
            .get_flows(GetFlowsRequest {
                follow: true,
                ..Default::default()
            })
            .await
            .expect("GetFlows follow")
            .into_inner();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let traffic = tokio::task::spawn_blocking({
            let (web, api, db) = (web.clone(), api.clone(), db.clone());
            move || {
                let t = Duration::from_millis(300);
                for _ in 0..4 {
                    assert!(traffic::tcp_probe(&api, db.v4(5432), t).is_echoed());
                    assert!(!traffic::tcp_probe(&web, db.v4(5432), t).is_echoed());
                }
            }
        });
        // Collect the live flows until the traffic is over and the stream is quiet.
        let mut live: BTreeMap<String, Flow> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout(Duration::from_secs(3), live_stream.message()).await {
                Ok(Ok(Some(r))) => {
                    if let Some(ResponseTypes::Flow(f)) = r.response_types {
                        live.insert(f.uuid.clone(), f);
                    }
                }
                Ok(other) => panic!("live stream ended: {other:?}"),
                Err(_) if traffic.is_finished() => break,
                Err(_) => {}
            }
            assert!(Instant::now() < deadline, "traffic did not finish");
        }
        traffic.await.unwrap();
        assert!(live.len() >= 16, "{} live flows", live.len());
        assert!(live.values().any(|f| f.verdict == 2));

        // History through the same API: since the start, answered from ClickHouse (the relay
        // commits at least every few seconds: wait until everything is there).
        let history = |c: &mut ObserverClient<tonic::transport::Channel>| {
            let c = c.clone();
            history_since(c, start)
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let by_uuid = |v: &[Flow]| -> BTreeMap<String, Flow> {
            v.iter().map(|f| (f.uuid.clone(), f.clone())).collect()
        };
        let stored = loop {
            let h = by_uuid(&history(&mut c).await);
            if live.keys().all(|u| h.contains_key(u)) {
                break h;
            }
            assert!(
                Instant::now() < deadline,
                "history has {} of the {} live flows:\n{}",
                live.keys().filter(|u| h.contains_key(*u)).count(),
                live.len(),
                relay.stderr()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        for (uuid, f) in &live {
            assert_eq!(key(&stored[uuid]), key(f), "flow {uuid}");
            assert_eq!(stored[uuid].summary, f.summary, "flow {uuid}");
            assert_eq!(
                stored[uuid].egress_denied_by.len() + stored[uuid].ingress_denied_by.len(),
                f.egress_denied_by.len() + f.ingress_denied_by.len(),
                "flow {uuid}"
            );
        }
        // History is oldest first and holds nothing twice.
        let again = history(&mut c).await;
        assert_eq!(by_uuid(&again).len(), again.len(), "a flow came back twice");
        assert!(
            again.windows(2).all(|w| key(&w[0]).0 <= key(&w[1]).0),
            "history is not in time order"
        );

        // With the agent gone, history still comes from ClickHouse.
        agent.kill9();
        let after = by_uuid(&history(&mut c).await);
        assert!(live.keys().all(|u| after.contains_key(u)));
    });
    let _ = std::fs::remove_dir_all(&spool);
}

/// A relay over `agent` storing its flows in `ch` (spool in `spool`).
fn storing_relay(name: &str, agent: &Agent, ch: &TestServer, spool: &std::path::Path) -> Relay {
    Relay::start(
        name,
        &[
            "--peers",
            &agent.api_address(),
            "--clickhouse-url",
            &ch.url(),
            "--spool-dir",
            spool.to_str().unwrap(),
            "--sort-drain-timeout",
            "300ms",
        ],
    )
}

/// The flows of a relay's history (GetFlows with `since`).
async fn history_since(
    mut c: ObserverClient<tonic::transport::Channel>,
    since: std::time::SystemTime,
) -> Vec<Flow> {
    let mut s = c
        .get_flows(GetFlowsRequest {
            since: Some(prost_types::Timestamp::from(since)),
            ..Default::default()
        })
        .await
        .expect("GetFlows since")
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = s.message().await.expect("history stream") {
        if let Some(ResponseTypes::Flow(f)) = r.response_types {
            out.push(f);
        }
    }
    out
}

/// `SELECT` on the private server's HTTP interface, the answer's text.
fn ch_query(ch: &TestServer, sql: &str) -> String {
    let addr = ch
        .url()
        .trim_start_matches("http://")
        .parse()
        .expect("ClickHouse address");
    let query: String = sql
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let (status, body) = periscope_testbed::browser::http_request(
        addr,
        "GET",
        &format!("/?query={query}"),
        &[],
        None,
        Duration::from_secs(30),
    )
    .expect("ClickHouse HTTP");
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{sql}: {text}");
    text
}

/// Many relays (README "Many relays"): a shard relay stores its agent's flows; a top relay over
/// it (`--relay-peer`) reads history from the same ClickHouse without writing a flow
/// (`--clickhouse-read-only`): its history has every stored flow, also with the shard relay
/// gone, and it wrote nothing.
#[test]
fn a_read_only_top_relay_serves_what_a_shard_relay_stored() {
    let ch = TestServer::start().expect("clickhouse-server");
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    let agent = Agent::start(&tb, "n1", POLICY, &[]);
    let (web, api, db) = (tb.pod("shop/web"), tb.pod("shop/api"), tb.pod("data/db"));
    let _srv = TcpEchoServer::start(db, 5432);
    let spool = std::env::temp_dir().join(format!("periscope-e2e-spool-top-{}", tb.id()));
    let mut shard = storing_relay("shard", &agent, &ch, &spool);
    let top_http = format!("127.0.0.1:{}", periscope_testbed::relay::free_port());
    let top = Relay::start(
        "top",
        &[
            "--relay-peer",
            &shard.address,
            "--clickhouse-url",
            &ch.url(),
            "--clickhouse-read-only",
            "--http-listen",
            &top_http,
            "--sort-drain-timeout",
            "300ms",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !top.stderr().contains("flows are not written") {
        assert!(Instant::now() < deadline, "{}", top.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    let start = std::time::SystemTime::now();
    let start_ns = start
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let t = Duration::from_millis(300);
    for _ in 0..4 {
        assert!(traffic::tcp_probe(api, db.v4(5432), t).is_echoed());
        assert!(!traffic::tcp_probe(web, db.v4(5432), t).is_echoed());
    }
    // The shard relay commits them.
    let stored_uuids = |()| -> std::collections::BTreeSet<String> {
        ch_query(
            &ch,
            &format!("SELECT DISTINCT uuid FROM periscope.flows WHERE time_ns >= {start_ns}"),
        )
        .lines()
        .map(str::to_owned)
        .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let s = stored_uuids(());
        if s.len() >= 16 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "{} flows stored:\n{}",
            s.len(),
            shard.stderr()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // Only ClickHouse can answer once the shard relay is gone.
    shard.kill9();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let history: Vec<Flow> = rt.block_on(async {
        let c = ObserverClient::connect(format!("http://{}", top.address))
            .await
            .expect("connect to the top relay");
        history_since(c, start).await
    });
    let answered: std::collections::BTreeSet<String> =
        history.iter().map(|f| f.uuid.clone()).collect();
    assert!(
        stored.iter().all(|u| answered.contains(u)),
        "the top relay's history has {} of the {} stored flows:\n{}",
        stored.iter().filter(|u| answered.contains(*u)).count(),
        stored.len(),
        top.stderr()
    );
    // The top relay wrote nothing: its writer counters are zero, and every stored flow's row
    // came from the shard relay (one row per flow: nothing was merged away in between, as the
    // table keeps copies until a merge, and the rows are many fewer than twice the flows).
    let (status, body) = periscope_testbed::browser::http_request(
        top_http.parse().unwrap(),
        "GET",
        "/metrics",
        &[],
        None,
        Duration::from_secs(10),
    )
    .expect("top relay /metrics");
    let metrics = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics.contains("periscope_relay_store_rows_written_total 0"),
        "{metrics}"
    );
    let rows: u64 = ch_query(
        &ch,
        &format!("SELECT count() FROM periscope.flows WHERE time_ns >= {start_ns}"),
    )
    .trim()
    .parse()
    .unwrap();
    assert!(
        rows < 2 * stored.len() as u64,
        "{rows} rows for {} flows",
        stored.len()
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&spool);
}
