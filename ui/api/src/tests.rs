use periscope_proto::flow::{
    self, DropReason, Endpoint, Layer4, TrafficDirection, Verdict, Workload, layer4::Protocol,
};

use super::*;

fn ep(ns: &str, pod: &str, workload: &str, labels: &[&str], identity: u32) -> Endpoint {
    Endpoint {
        namespace: ns.into(),
        pod_name: pod.into(),
        identity,
        labels: labels.iter().map(|l| l.to_string()).collect(),
        workloads: if workload.is_empty() {
            vec![]
        } else {
            vec![Workload {
                name: workload.into(),
                kind: "Deployment".into(),
            }]
        },
        ..Default::default()
    }
}

fn tcp_flow(src: Endpoint, dst: Endpoint, port: u32, v: Verdict) -> Flow {
    Flow {
        verdict: v as i32,
        source: Some(src),
        destination: Some(dst),
        traffic_direction: TrafficDirection::Ingress as i32,
        l4: Some(Layer4 {
            protocol: Some(Protocol::Tcp(flow::Tcp {
                source_port: 40000,
                destination_port: port,
                flags: None,
            })),
        }),
        ..Default::default()
    }
}

fn db_policy(default_deny: bool) -> PolicyInfo {
    PolicyInfo {
        policy: PolicyRef {
            name: "db-policy".into(),
            namespace: "prod".into(),
            kind: "CiliumNetworkPolicy".into(),
        },
        selector: "k8s:app=db".into(),
        selects: vec!["prod/db".into()],
        ingress_default_deny: default_deny,
        egress_default_deny: false,
        rules: vec![],
        nodes: vec!["node-a".into()],
    }
}

#[test]
fn endpoints_are_named_like_the_clickhouse_view() {
    let e = ep("prod", "db-7f9c", "db", &["k8s:app=db"], 4242);
    assert_eq!(endpoint_name(&e), ("prod".into(), "db".into()));
    let bare = ep("prod", "debug", "", &["k8s:run=debug"], 7);
    assert_eq!(endpoint_name(&bare), ("prod".into(), "debug".into()));
    let world = ep("", "", "", &["cidr:0.0.0.0/0", "reserved:world"], 2);
    assert_eq!(endpoint_name(&world), ("".into(), "reserved:world".into()));
    let nothing = ep("", "", "", &[], 0);
    assert_eq!(endpoint_name(&nothing), ("".into(), UNKNOWN.into()));
    assert_eq!(node_id("prod", "db"), "prod/db");
    assert_eq!(node_id("", "reserved:world"), "reserved:world");
    assert_eq!(node_id("", ""), UNKNOWN);
    assert_eq!(node_kind("", "reserved:world"), NodeKind::World);
    assert_eq!(node_kind("", "reserved:host"), NodeKind::Host);
    assert_eq!(node_kind("", "reserved:remote-node"), NodeKind::RemoteNode);
    assert_eq!(node_kind("", "reserved:health"), NodeKind::Reserved);
    assert_eq!(node_kind("prod", "db"), NodeKind::Workload);
    assert_eq!(node_kind("", UNKNOWN), NodeKind::Unknown);
    assert_eq!(node_kind("", "entity:cluster"), NodeKind::Reserved);
    assert_eq!(node_kind("", "selector:app=x"), NodeKind::Unknown);
}

#[test]
fn edges_count_requests_not_replies() {
    let mut f = tcp_flow(
        ep("prod", "api-1", "api", &[], 10),
        ep("prod", "db-1", "db", &[], 11),
        5432,
        Verdict::Forwarded,
    );
    let key = edge_of(&f).expect("an edge");
    assert_eq!(
        key,
        EdgeKey {
            source: "prod/api".into(),
            destination: "prod/db".into(),
            port: 5432,
            protocol: "TCP".into()
        }
    );
    // Leaving the source towards a workload: the destination's observation counts instead.
    f.traffic_direction = TrafficDirection::Egress as i32;
    assert_eq!(edge_of(&f), None);
    // Dropped at the source's egress: counts.
    f.verdict = Verdict::Dropped as i32;
    assert!(edge_of(&f).is_some());
    // Forwarded at egress to the world (no destination workload): counts.
    f.verdict = Verdict::Forwarded as i32;
    f.destination = Some(ep("", "", "", &["reserved:world"], 2));
    assert_eq!(edge_of(&f).unwrap().destination, "reserved:world");
    // Policy verdict notifications repeat a trace's or drop's verdict: not counted.
    f.event_type = Some(flow::CiliumEventType {
        r#type: 5,
        sub_type: 0,
    });
    assert_eq!(edge_of(&f), None);
    f.event_type = None;
    f.traffic_direction = TrafficDirection::Ingress as i32;
    f.is_reply = Some(true);
    assert_eq!(edge_of(&f), None);
    f.is_reply = Some(false);
    f.l4 = None;
    assert_eq!(edge_of(&f), None, "no L4: not an edge");
}

#[test]
fn edge_looks_follow_verdicts() {
    let key = EdgeKey {
        source: "a/x".into(),
        destination: "a/y".into(),
        port: 80,
        protocol: "TCP".into(),
    };
    let mut e = MapEdge::new(key.clone());
    e.count(Verdict::Forwarded, 100, 5);
    assert_eq!(e.look(), EdgeLook::Forwarded);
    e.count(Verdict::Dropped, 60, 3);
    assert_eq!(e.look(), EdgeLook::Mixed);
    assert_eq!(
        (e.first_seen_ns, e.last_seen_ns, e.bytes, e.flows()),
        (3, 5, 160, 2)
    );
    let mut d = MapEdge::new(key.clone());
    d.count(Verdict::Dropped, 0, 1);
    assert_eq!(d.look(), EdgeLook::Dropped);
    let mut a = MapEdge::new(key);
    a.count(Verdict::Audit, 0, 1);
    a.count(Verdict::Forwarded, 0, 2);
    assert_eq!(a.look(), EdgeLook::Audit);
    let mut m = d.clone();
    m.merge(&a);
    assert_eq!((m.forwarded, m.dropped, m.audit), (1, 1, 1));
    assert_eq!(m.look(), EdgeLook::Mixed);
}

#[test]
fn default_deny_drop_names_the_selecting_policy() {
    let mut f = tcp_flow(
        ep("prod", "web-1", "web", &[], 12345),
        ep("prod", "db-1", "db", &[], 4242),
        6379,
        Verdict::Dropped,
    );
    f.drop_reason_desc = DropReason::PolicyDenied as i32;
    let e = explain(&f, &[db_policy(true)]);
    assert_eq!(
        e.headline,
        "denied by default-deny: no ingress rule of 'db-policy' in namespace prod allows identity 12345 on TCP/6379"
    );
    // A policy that does not default-deny ingress is not the cause.
    let e = explain(&f, &[db_policy(false)]);
    assert_eq!(
        e.headline,
        "denied by default-deny: no ingress rule allows identity 12345 on TCP/6379"
    );
}

#[test]
fn deny_rules_and_allows_are_named() {
    let mut f = tcp_flow(
        ep("prod", "web-1", "web", &[], 12345),
        ep("prod", "db-1", "db", &[], 4242),
        6379,
        Verdict::Dropped,
    );
    f.drop_reason_desc = DropReason::PolicyDeny as i32;
    f.ingress_denied_by = vec![flow::Policy {
        name: "no-web".into(),
        namespace: "prod".into(),
        ..Default::default()
    }];
    let e = explain(&f, &[]);
    assert_eq!(
        e.headline,
        "denied by a deny rule of 'no-web' in namespace prod: ingress from identity 12345 on TCP/6379 is denied"
    );

    let mut ok = tcp_flow(
        ep("prod", "api-1", "api", &[], 77),
        ep("prod", "db-1", "db", &[], 4242),
        6379,
        Verdict::Forwarded,
    );
    ok.policy_match_type = 2;
    ok.ingress_allowed_by = vec![flow::Policy {
        name: "db-policy".into(),
        namespace: "prod".into(),
        ..Default::default()
    }];
    let e = explain(&ok, &[]);
    assert_eq!(
        e.headline,
        "allowed by 'db-policy' in namespace prod: ingress from identity 77 on TCP/6379"
    );
    assert!(
        e.details[0].starts_with("Match type L3-L4"),
        "{:?}",
        e.details
    );

    let mut egress = tcp_flow(
        ep("prod", "api-1", "api", &[], 77),
        ep("", "", "", &["reserved:world"], 2),
        443,
        Verdict::Dropped,
    );
    egress.traffic_direction = TrafficDirection::Egress as i32;
    egress.drop_reason_desc = DropReason::PolicyDenied as i32;
    let mut p = db_policy(false);
    p.selects = vec!["prod/api".into()];
    p.egress_default_deny = true;
    p.policy.name = "api-egress".into();
    let e = explain(&egress, &[p]);
    assert_eq!(
        e.headline,
        "denied by default-deny: no egress rule of 'api-egress' in namespace prod allows identity 2 on TCP/443"
    );
}

#[test]
fn other_drops_say_the_reason() {
    let mut f = tcp_flow(
        ep("prod", "web-1", "web", &[], 1),
        ep("prod", "db-1", "db", &[], 2),
        80,
        Verdict::Dropped,
    );
    f.drop_reason_desc = DropReason::CtMissingTcpAckFlag as i32;
    let e = explain(&f, &[]);
    assert_eq!(
        e.headline,
        "dropped by the datapath: ct missing tcp ack flag (reason 136)"
    );
}

#[test]
fn map_types_round_trip_as_json() {
    let mut e = MapEdge::new(EdgeKey {
        source: "prod/api".into(),
        destination: "reserved:world".into(),
        port: 443,
        protocol: "TCP".into(),
    });
    e.count(Verdict::Forwarded, 10, 1);
    let m = ServiceMap {
        since_ns: 0,
        until_ns: 2,
        source: DataSource::Live,
        nodes: vec![
            MapNode::new("prod", "api"),
            MapNode::new("", "reserved:world"),
        ],
        edges: vec![e],
        truncated: false,
    };
    let text = serde_json::to_string(&m).unwrap();
    assert!(
        text.contains(r#""source":"prod/api""#),
        "edge key flattened: {text}"
    );
    assert!(text.contains(r#""kind":"world""#), "{text}");
    let back: ServiceMap = serde_json::from_str(&text).unwrap();
    assert_eq!(back, m);
    let q = FlowQuery {
        verdict: Some("DROPPED".into()),
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_string(&q).unwrap(),
        r#"{"verdict":"DROPPED"}"#
    );
}
