//! Test support: a Flow fixture with every stored field set, and (feature `test-server`) a
//! private ClickHouse server.

use periscope_proto::flow::{
    self, AuthType, CiliumEventType, DebugCapturePoint, DropReason, Endpoint, Ethernet, Flow,
    FlowType, IpVersion, L7FlowType, Layer4, Layer7, NetworkInterface, Policy, Service,
    SocketTranslationPoint, TcpFlags, TraceObservationPoint, TrafficDirection, Verdict, Workload,
    layer4::Protocol, layer7::Record,
};
use prost_types::Timestamp;

#[cfg(feature = "test-server")]
mod cluster;
#[cfg(feature = "test-server")]
mod server;
#[cfg(feature = "test-server")]
pub use cluster::{TestCluster, TestZooKeeper};
#[cfg(feature = "test-server")]
pub use server::{TestServer, server_binary};

/// A flow with every stored field set to something other than its default.
pub fn full_flow() -> Flow {
    Flow {
        time: Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_789,
        }),
        verdict: Verdict::Dropped as i32,
        drop_reason: 133,
        ethernet: Some(Ethernet {
            source: "02:00:00:00:00:01".into(),
            destination: "02:00:00:00:00:02".into(),
        }),
        ip: Some(flow::Ip {
            source: "10.0.0.1".into(),
            destination: "fd00::2".into(),
            ip_version: IpVersion::IPv6 as i32,
            encrypted: true,
            source_xlated: String::new(),
        }),
        l4: Some(Layer4 {
            protocol: Some(Protocol::Tcp(flow::Tcp {
                source_port: 41234,
                destination_port: 5432,
                flags: Some(TcpFlags {
                    syn: true,
                    ack: true,
                    ns: true,
                    ..Default::default()
                }),
            })),
        }),
        source: Some(Endpoint {
            id: 11,
            identity: 52827,
            namespace: "shop".into(),
            labels: vec!["k8s:app=frontend".into(), "k8s:tier=web".into()],
            pod_name: "frontend-1".into(),
            workloads: vec![
                Workload {
                    name: "frontend".into(),
                    kind: "Deployment".into(),
                },
                Workload {
                    name: "frontend-rs".into(),
                    kind: "ReplicaSet".into(),
                },
            ],
        }),
        destination: Some(Endpoint {
            id: 12,
            identity: 65281,
            namespace: "data".into(),
            labels: vec!["k8s:app=db".into()],
            pod_name: "db-1".into(),
            workloads: vec![Workload {
                name: "db".into(),
                kind: "StatefulSet".into(),
            }],
        }),
        r#type: FlowType::L7 as i32,
        node_name: "node-1".into(),
        source_names: vec!["frontend.shop.svc".into()],
        destination_names: vec!["db.data.svc".into(), "db".into()],
        l7: Some(Layer7 {
            r#type: L7FlowType::Response as i32,
            latency_ns: 1234,
            record: Some(Record::Dns(flow::Dns {
                query: "db.data.svc.cluster.local.".into(),
                ips: vec!["10.0.0.2".into()],
                ttl: 30,
                cnames: vec!["x.".into()],
                observation_source: "proxy".into(),
                rcode: 3,
                qtypes: vec!["A".into()],
                rrtypes: vec!["A".into(), "CNAME".into()],
            })),
        }),
        reply: true,
        event_type: Some(CiliumEventType {
            r#type: 5,
            sub_type: 2,
        }),
        source_service: Some(Service {
            name: "frontend".into(),
            namespace: "shop".into(),
        }),
        destination_service: Some(Service {
            name: "db".into(),
            namespace: "data".into(),
        }),
        traffic_direction: TrafficDirection::Ingress as i32,
        policy_match_type: 2,
        trace_observation_point: TraceObservationPoint::ToEndpoint as i32,
        drop_reason_desc: DropReason::PolicyDenied as i32,
        is_reply: Some(true),
        debug_capture_point: DebugCapturePoint::DbgCaptureDelivery as i32,
        interface: Some(NetworkInterface {
            index: 7,
            name: "lxc1".into(),
        }),
        proxy_port: 10001,
        trace_context: Some(flow::TraceContext {
            parent: Some(flow::TraceParent {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            }),
        }),
        sock_xlate_point: SocketTranslationPoint::SockXlatePointPostDirectionFwd as i32,
        socket_cookie: u64::MAX - 1,
        cgroup_id: 4242,
        uuid: "3f8a2c1e-0000-4000-8000-000000000001".into(),
        auth_type: AuthType::Spire as i32,
        egress_allowed_by: vec![Policy {
            name: "allow-egress".into(),
            namespace: "shop".into(),
            labels: vec!["k8s:io.cilium.k8s.policy.name=allow-egress".into()],
            revision: 3,
            kind: "CiliumNetworkPolicy".into(),
        }],
        ingress_allowed_by: vec![],
        egress_denied_by: vec![
            Policy {
                name: "deny-a".into(),
                namespace: "".into(),
                labels: vec![],
                revision: 1,
                kind: "CiliumClusterwideNetworkPolicy".into(),
            },
            Policy {
                name: "deny-b".into(),
                namespace: "data".into(),
                labels: vec!["a".into(), "b".into()],
                revision: 2,
                kind: "CiliumNetworkPolicy".into(),
            },
        ],
        ingress_denied_by: vec![Policy {
            name: "db-ingress".into(),
            namespace: "data".into(),
            labels: vec!["k8s:x=y".into()],
            revision: 9,
            kind: "CiliumNetworkPolicy".into(),
        }],
        summary: "TCP Flags: SYN, ACK".into(),
        periscope_bytes: 9_148,
        periscope_packets: 5,
    }
}
