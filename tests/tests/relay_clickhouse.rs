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
    let relay = Relay::start(
        "clickhouse",
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
    );
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
        let since = prost_types::Timestamp::from(start);
        let history = |c: &mut ObserverClient<tonic::transport::Channel>| {
            let mut c = c.clone();
            async move {
                let mut s = c
                    .get_flows(GetFlowsRequest {
                        since: Some(since),
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
