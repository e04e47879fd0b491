//! The agent's Hubble-compatible gRPC API and metrics, end to end: real traffic between pods on
//! the test bed, flows read back through GetFlows with filters and field masks, ServerStatus,
//! health, Peer, GetNodes, GetNamespaces, GetAgentEvents, GetDebugEvents, and the Prometheus
//! endpoint. Needs root (`cargo xtask test`).
use std::time::Duration;

use periscope_proto::flow::{
    AgentEvent, AgentEventType, FlowFilter, Verdict, agent_event::Notification, layer4::Protocol,
};
use periscope_proto::observer::get_flows_request::Experimental;
use periscope_proto::observer::get_flows_response::ResponseTypes;
use periscope_proto::observer::observer_client::ObserverClient;
use periscope_proto::observer::{
    GetAgentEventsRequest, GetDebugEventsRequest, GetFlowsRequest, GetNamespacesRequest,
    GetNodesRequest, ServerStatusRequest,
};
use periscope_proto::peer::NotifyRequest;
use periscope_proto::peer::peer_client::PeerClient;
use periscope_testbed::agent::Agent;
use periscope_testbed::traffic::{self, TcpEchoServer};
use periscope_testbed::{Testbed, TestbedOptions, http_get};
use tonic::transport::Channel;

const TOPO: &str = r#"
cluster: obs
nodes: [{name: n1, address: "10.9.9.1:4244"}, {name: n2, address: "10.9.9.2:4244"}]
pods:
  - {name: web, namespace: shop, node: n1, labels: {app: web}, ips: [10.213.0.1], workload: {kind: Deployment, name: web}}
  - {name: api, namespace: shop, node: n1, labels: {app: api}, ips: [10.213.0.2, "fd00:213::2"]}
  - {name: db, namespace: data, node: n1, labels: {app: db}, ips: [10.213.1.1, "fd00:213::1"]}
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

const T: Duration = Duration::from_millis(400);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn channel(agent: &Agent) -> Channel {
    Channel::from_shared(format!("http://{}", agent.api_address()))
        .expect("uri")
        .connect()
        .await
        .expect("connect to the agent")
}

async fn get_flows(
    c: &mut ObserverClient<Channel>,
    req: GetFlowsRequest,
) -> Vec<periscope_proto::flow::Flow> {
    let mut s = c.get_flows(req).await.expect("GetFlows").into_inner();
    let mut out = Vec::new();
    while let Some(r) = s.message().await.expect("stream") {
        if let Some(ResponseTypes::Flow(f)) = r.response_types {
            out.push(f);
        }
    }
    out
}

fn dport(f: &periscope_proto::flow::Flow) -> u32 {
    match f.l4.as_ref().and_then(|l| l.protocol) {
        Some(Protocol::Tcp(t)) => t.destination_port,
        _ => 0,
    }
}

#[test]
fn get_flows_with_filters_status_health_peers_and_metrics() {
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    let (web, api, db) = (tb.pod("shop/web"), tb.pod("shop/api"), tb.pod("data/db"));
    let agent = Agent::start(&tb, "n1", POLICY, &["--ring-capacity", "1023"]);
    let _srv = TcpEchoServer::start(db, 5432);
    for _ in 0..3 {
        assert!(traffic::tcp_probe(api, db.v4(5432), T).is_echoed());
        assert!(!traffic::tcp_probe(web, db.v4(5432), T).is_echoed());
    }
    assert!(traffic::tcp_probe(api, db.v6(5432), T).is_echoed());
    agent.wait_flows(Duration::from_secs(5), "all flows recorded", |fl| {
        fl.len() >= 20
    });
    let api_id = agent.identity("shop/api");

    rt().block_on(async {
        let ch = channel(&agent).await;
        let mut obs = ObserverClient::new(ch.clone());

        // Health, as `hubble status` checks it.
        let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
        let h = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "hubble.server.Observer".into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(
            h.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );

        // ServerStatus.
        let st = obs
            .server_status(ServerStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.max_flows, 1023);
        assert!(
            st.num_flows >= 20 && st.seen_flows >= st.num_flows,
            "{st:?}"
        );
        assert!(st.num_connected_nodes.is_none(), "unset on an agent");
        assert!(st.version.contains("periscope"));

        // The last 20 flows by default (what `hubble observe` asks for), oldest first.
        let last = get_flows(
            &mut obs,
            GetFlowsRequest {
                number: 20,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(last.len(), 20);
        // Chronological, up to the reordering of per-CPU perf rings that the agent's reader
        // interval bounds (the relay's merge orders strictly).
        let ns: Vec<i128> = last
            .iter()
            .map(|f| f.time.unwrap())
            .map(|t| t.seconds as i128 * 1_000_000_000 + t.nanos as i128)
            .collect();
        for w in ns.windows(2) {
            assert!(
                w[1] >= w[0] - 20_000_000,
                "flows out of order by more than 20 ms: {ns:?}"
            );
        }
        assert!(
            last.iter()
                .all(|f| !f.summary.is_empty() && f.node_name == "n1")
        );

        // Filters: dropped flows to db from namespace shop (whitelist), minus the ones of web
        // (blacklist) → none; the drops are all web's.
        let dropped = get_flows(
            &mut obs,
            GetFlowsRequest {
                number: 1000,
                whitelist: vec![FlowFilter {
                    verdict: vec![Verdict::Dropped as i32],
                    destination_pod: vec!["data/db".into()],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
        .await;
        assert!(!dropped.is_empty());
        assert!(
            dropped
                .iter()
                .all(|f| f.source.as_ref().unwrap().pod_name == "web")
        );
        let none = get_flows(
            &mut obs,
            GetFlowsRequest {
                number: 1000,
                whitelist: vec![FlowFilter {
                    verdict: vec![Verdict::Dropped as i32],
                    ..Default::default()
                }],
                blacklist: vec![FlowFilter {
                    source_pod: vec!["shop/web".into()],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
        .await;
        assert!(none.is_empty(), "{none:?}");
        // Identity + port + label + IPv6 filters.
        let by_id = get_flows(
            &mut obs,
            GetFlowsRequest {
                number: 1000,
                whitelist: vec![FlowFilter {
                    source_identity: vec![api_id],
                    destination_port: vec!["5432".into()],
                    destination_label: vec!["k8s:app=db".into()],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
        .await;
        assert!(
            !by_id.is_empty()
                && by_id
                    .iter()
                    .all(|f| f.source.as_ref().unwrap().identity == api_id && dport(f) == 5432)
        );
        let v6 = get_flows(
            &mut obs,
            GetFlowsRequest {
                number: 1000,
                whitelist: vec![FlowFilter {
                    destination_ip: vec!["fd00:213::/64".into()],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
        .await;
        assert!(
            v6.iter()
                .any(|f| f.ip.as_ref().unwrap().destination == "fd00:213::1")
        );
        assert!(
            v6.iter()
                .all(|f| f.ip.as_ref().unwrap().destination.starts_with("fd00:213::")),
            "{v6:?}"
        );
        assert!(
            v6.len() < last.len() + 1000
                && v6.iter().all(|f| f.ip.as_ref().unwrap().ip_version == 2)
        );
        // `first`: the oldest flows.
        let first = get_flows(
            &mut obs,
            GetFlowsRequest {
                number: 3,
                first: true,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(first.len(), 3);
        let ts = |f: &periscope_proto::flow::Flow| f.time.map(|t| (t.seconds, t.nanos));
        assert!(ts(&first[0]) <= ts(&last[0]));

        // A bad filter is InvalidArgument naming the field.
        let err = obs
            .get_flows(GetFlowsRequest {
                number: 1,
                whitelist: vec![FlowFilter {
                    source_ip: vec!["10.0.0.300".into()],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
            .expect_err("bad CIDR");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("source_ip") && err.message().contains("10.0.0.300"),
            "{}",
            err.message()
        );
        let err = obs
            .get_flows(GetFlowsRequest {
                number: 1,
                whitelist: vec![FlowFilter {
                    dns_query: vec!["(".into()],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
            .expect_err("bad regex");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);

        // follow: new flows arrive on the open stream.
        let mut follow = obs
            .get_flows(GetFlowsRequest {
                follow: true,
                whitelist: vec![FlowFilter {
                    source_pod: vec!["shop/api".into()],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let probe = tokio::task::spawn_blocking({
            let api = api.clone();
            let dst = db.v4(5432);
            move || traffic::tcp_probe(&api, dst, T)
        });
        let got = tokio::time::timeout(Duration::from_secs(5), follow.message())
            .await
            .expect("a followed flow");
        let f = match got.unwrap().unwrap().response_types {
            Some(ResponseTypes::Flow(f)) => f,
            other => panic!("{other:?}"),
        };
        assert_eq!(f.source.as_ref().unwrap().pod_name, "api");
        assert!(probe.await.unwrap().is_echoed());

        // GetNodes, GetNamespaces, Peer.
        let nodes = obs
            .get_nodes(GetNodesRequest {})
            .await
            .unwrap()
            .into_inner()
            .nodes;
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].name, "n1");
        let ns = obs
            .get_namespaces(GetNamespacesRequest {})
            .await
            .unwrap()
            .into_inner()
            .namespaces;
        let mut names: Vec<_> = ns
            .iter()
            .map(|n| (n.cluster.as_str(), n.namespace.as_str()))
            .collect();
        names.sort();
        assert_eq!(names, vec![("obs", "data"), ("obs", "shop")]);
        let mut peers = PeerClient::new(ch.clone())
            .notify(NotifyRequest {})
            .await
            .unwrap()
            .into_inner();
        let mut seen = Vec::new();
        for _ in 0..2 {
            let n = tokio::time::timeout(Duration::from_secs(2), peers.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            seen.push((n.name, n.address));
        }
        seen.sort();
        assert_eq!(seen[0].0, "n1");
        assert_eq!(seen[0].1, agent.api_address());
        assert_eq!(seen[1], ("n2".to_string(), "10.9.9.2:4244".to_string()));
    });

    // Prometheus metrics with Hubble's names.
    let text = http_get(&agent.metrics_address(), "/metrics");
    assert!(
        text.contains("hubble_drop_total{protocol=\"TCP\",reason=\"POLICY_DENIED\"}"),
        "{text}"
    );
    assert!(text.contains("hubble_policy_verdicts_total{action=\"forwarded\",direction=\"ingress\",match=\"l3-l4\"}"), "{text}");
    assert!(text.contains("hubble_flows_processed_total{"), "{text}");
    assert!(
        text.contains("hubble_tcp_flags_total{family=\"IPv4\",flag=\"SYN\"}"),
        "{text}"
    );
    assert!(http_get(&agent.metrics_address(), "/nope").contains("not found"));
}

async fn agent_events(c: &mut ObserverClient<Channel>, number: u64) -> Vec<AgentEvent> {
    let mut s = c
        .get_agent_events(GetAgentEventsRequest {
            number,
            ..Default::default()
        })
        .await
        .expect("GetAgentEvents")
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = s.message().await.expect("stream") {
        assert_eq!(r.node_name, "n1");
        assert!(r.time.is_some());
        out.push(r.agent_event.expect("an agent event"));
    }
    out
}

fn kind(e: &AgentEvent) -> AgentEventType {
    AgentEventType::try_from(e.r#type).expect("a known type")
}

/// (labels, revision, rule count) of a policy event.
fn policy_update(e: &AgentEvent) -> (Vec<String>, u64, i64) {
    match &e.notification {
        Some(Notification::PolicyUpdate(p)) => (p.labels.clone(), p.revision, p.rule_count),
        other => panic!("not a policy event: {other:?}"),
    }
}

#[test]
fn agent_events_debug_events_and_field_masks() {
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    let (api, db) = (tb.pod("shop/api"), tb.pod("data/db"));
    let agent = Agent::start(&tb, "n1", POLICY, &[]);
    let _srv = TcpEchoServer::start(db, 5432);
    assert!(traffic::tcp_probe(api, db.v4(5432), T).is_echoed());
    agent.wait_flows(Duration::from_secs(5), "api -> db", |fl| fl.len() >= 4);

    rt().block_on(async {
        let mut obs = ObserverClient::new(channel(&agent).await);

        // After the start: what the agent started with, then AGENT_STARTED.
        let events = agent_events(&mut obs, 0).await;
        let kinds: Vec<AgentEventType> = events.iter().map(kind).collect();
        assert_eq!(
            kinds.last(),
            Some(&AgentEventType::AgentStarted),
            "{kinds:?}"
        );
        let Some(Notification::AgentStart(start)) = &events.last().unwrap().notification else {
            panic!("{:?}", events.last());
        };
        assert!(start.time.is_some_and(|t| t.seconds > 1_600_000_000));
        let policies: Vec<_> = events
            .iter()
            .filter(|e| kind(e) == AgentEventType::PolicyUpdated)
            .map(policy_update)
            .collect();
        assert_eq!(policies.len(), 1, "{events:?}");
        assert!(
            policies[0]
                .0
                .contains(&"k8s:io.cilium.k8s.policy.name=db-from-api".to_string())
        );
        assert_eq!((policies[0].1, policies[0].2), (1, 1));
        let mut created: Vec<String> = events
            .iter()
            .filter_map(|e| match &e.notification {
                Some(Notification::EndpointUpdate(u))
                    if kind(e) == AgentEventType::EndpointCreated =>
                {
                    assert!(u.id > 0, "{u:?}");
                    Some(format!("{}/{}", u.namespace, u.pod_name))
                }
                _ => None,
            })
            .collect();
        created.sort();
        assert_eq!(created, ["data/db", "shop/api", "shop/web"]);
        let db_ip = events
            .iter()
            .filter_map(|e| match &e.notification {
                Some(Notification::IpcacheUpdate(n)) => Some(n),
                _ => None,
            })
            .find(|n| n.cidr == "10.213.1.1/32")
            .expect("db's address in the ipcache");
        assert_eq!(db_ip.identity, agent.identity("data/db"));
        assert_eq!(agent_events(&mut obs, 1).await.len(), 1, "number");

        // A follower sees a policy change as POLICY_UPDATED with the new revision, then its
        // removal as POLICY_DELETED.
        let mut follow = obs
            .get_agent_events(GetAgentEventsRequest {
                follow: true,
                ..Default::default()
            })
            .await
            .expect("follow")
            .into_inner();
        let revision = agent.status()["revision"].as_u64().unwrap();
        assert_eq!(agent.set_policy(&POLICY.replace("5432", "5433")), None);
        let mut next_policy_event = async || loop {
            let r = tokio::time::timeout(Duration::from_secs(5), follow.message())
                .await
                .expect("an agent event within 5 s")
                .expect("stream")
                .expect("open");
            let e = r.agent_event.expect("an agent event");
            if matches!(
                kind(&e),
                AgentEventType::PolicyUpdated | AgentEventType::PolicyDeleted
            ) {
                return e;
            }
        };
        let updated = next_policy_event().await;
        assert_eq!(kind(&updated), AgentEventType::PolicyUpdated);
        assert_eq!(policy_update(&updated).1, revision + 1);
        assert_eq!(agent.set_policy(""), None);
        let deleted = next_policy_event().await;
        assert_eq!(kind(&deleted), AgentEventType::PolicyDeleted);
        assert!(
            policy_update(&deleted)
                .0
                .contains(&"k8s:io.cilium.k8s.policy.namespace=data".to_string())
        );
        // Both are also in the history, newest last.
        let recent: Vec<AgentEventType> = agent_events(&mut obs, 0)
            .await
            .iter()
            .map(kind)
            .filter(|k| {
                matches!(
                    k,
                    AgentEventType::PolicyUpdated | AgentEventType::PolicyDeleted
                )
            })
            .collect();
        assert_eq!(
            recent,
            [
                AgentEventType::PolicyUpdated,
                AgentEventType::PolicyUpdated,
                AgentEventType::PolicyDeleted
            ]
        );

        // Debug events: none (the datapath emits none), and the stream ends.
        let mut debug = obs
            .get_debug_events(GetDebugEventsRequest {
                number: 20,
                ..Default::default()
            })
            .await
            .expect("GetDebugEvents")
            .into_inner();
        assert!(debug.message().await.expect("stream").is_none());

        // Field masks: only the named fields; filters still see whole flows.
        let mask = |paths: &[&str]| {
            Some(Experimental {
                field_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| p.to_string()).collect(),
                }),
            })
        };
        let masked = get_flows(
            &mut obs,
            GetFlowsRequest {
                number: 100,
                whitelist: vec![FlowFilter {
                    destination_pod: vec!["data/db".into()],
                    ..Default::default()
                }],
                experimental: mask(&[
                    "time",
                    "source.pod_name",
                    "verdict",
                    "l4.TCP.destination_port",
                ]),
                ..Default::default()
            },
        )
        .await;
        assert!(!masked.is_empty());
        for f in &masked {
            assert!(f.time.is_some() && f.verdict != 0, "{f:?}");
            let src = f.source.as_ref().expect("source");
            assert_eq!(
                (src.pod_name.as_str(), src.namespace.as_str(), src.identity),
                ("api", "", 0),
                "{f:?}"
            );
            assert_eq!(dport(f), 5432, "{f:?}");
            match f.l4.as_ref().and_then(|l| l.protocol) {
                Some(Protocol::Tcp(t)) => assert_eq!((t.source_port, t.flags), (0, None)),
                other => panic!("{other:?}"),
            }
            assert!(
                f.destination.is_none()
                    && f.ip.is_none()
                    && f.summary.is_empty()
                    && f.node_name.is_empty()
                    && f.event_type.is_none(),
                "{f:?}"
            );
        }
        let err = obs
            .get_flows(GetFlowsRequest {
                number: 1,
                experimental: mask(&["time", "source.pod"]),
                ..Default::default()
            })
            .await
            .expect_err("a path that is no field");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("source.pod"), "{}", err.message());
    });
}
