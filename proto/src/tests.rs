//! Wire-level checks of the generated code against the Hubble wire spec.

use prost::Message;
use prost_types::{FieldMask, FileDescriptorSet, Timestamp};

use crate::flow::{
    self, AgentEventType, CiliumEventType, DebugCapturePoint, DropReason, Endpoint, EventType,
    Flow, FlowFilter, FlowType, IpVersion, L7FlowType, Layer4, Layer7, LostEventSource,
    TraceObservationPoint, TrafficDirection, Verdict, layer4, layer7,
};
use crate::observer::{
    self, GetFlowsRequest, GetFlowsResponse, get_flows_request::Experimental, get_flows_response,
};
use crate::{peer, relay};

fn sample_flow() -> Flow {
    Flow {
        time: Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_789,
        }),
        verdict: Verdict::Forwarded as i32,
        ip: Some(flow::Ip {
            source: "10.0.0.1".into(),
            destination: "10.0.0.2".into(),
            ip_version: IpVersion::IPv4 as i32,
            encrypted: false,
            source_xlated: String::new(),
        }),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(flow::Tcp {
                source_port: 43_210,
                destination_port: 80,
                flags: Some(flow::TcpFlags {
                    syn: true,
                    ack: true,
                    ..Default::default()
                }),
            })),
        }),
        source: Some(Endpoint {
            id: 42,
            identity: 12_345,
            namespace: "default".into(),
            labels: vec!["k8s:app=client".into()],
            pod_name: "client-0".into(),
            workloads: vec![flow::Workload {
                name: "client".into(),
                kind: "StatefulSet".into(),
            }],
        }),
        destination: Some(Endpoint {
            identity: 2,
            labels: vec!["reserved:world".into()],
            ..Default::default()
        }),
        r#type: FlowType::L3L4 as i32,
        node_name: "kind/node-1".into(),
        event_type: Some(CiliumEventType {
            r#type: 4,
            sub_type: 0,
        }),
        traffic_direction: TrafficDirection::Egress as i32,
        trace_observation_point: TraceObservationPoint::ToEndpoint as i32,
        is_reply: Some(false),
        reply: false,
        uuid: "0d1a2b3c-0000-4000-8000-000000000001".into(),
        summary: "TCP Flags: SYN, ACK".into(),
        ..Default::default()
    }
}

#[test]
fn flow_round_trip() {
    let flow = sample_flow();
    let bytes = flow.encode_to_vec();
    let decoded = Flow::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(decoded, flow);
    assert_eq!(
        decoded.is_reply,
        Some(false),
        "presence of is_reply survives"
    );
    assert_eq!(decoded.summary, "TCP Flags: SYN, ACK");

    let response = GetFlowsResponse {
        response_types: Some(get_flows_response::ResponseTypes::Flow(flow.clone())),
        node_name: flow.node_name.clone(),
        time: flow.time,
    };
    let decoded = GetFlowsResponse::decode(response.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(decoded, response);
}

#[test]
fn unset_wrapper_stays_unset() {
    let flow = Flow {
        summary: "x".into(),
        ..Default::default()
    };
    let decoded = Flow::decode(flow.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(decoded.is_reply, None);
}

#[test]
fn flow_tags_on_the_wire() {
    // Summary = 100000, length-delimited.
    let flow = Flow {
        summary: "x".into(),
        ..Default::default()
    };
    assert_eq!(flow.encode_to_vec(), [0x82, 0xEA, 0x30, 0x01, b'x']);

    // is_reply = 26 as a google.protobuf.BoolValue message.
    let flow = Flow {
        is_reply: Some(true),
        ..Default::default()
    };
    assert_eq!(flow.encode_to_vec(), [0xD2, 0x01, 0x02, 0x08, 0x01]);
    // BoolValue{false} is an empty message but still present.
    let flow = Flow {
        is_reply: Some(false),
        ..Default::default()
    };
    assert_eq!(flow.encode_to_vec(), [0xD2, 0x01, 0x00]);

    // IP = 5 (message), Type = 10 (varint), event_type = 19, drop_reason_desc = 25.
    let flow = Flow {
        ip: Some(flow::Ip::default()),
        r#type: FlowType::L7 as i32,
        event_type: Some(CiliumEventType::default()),
        drop_reason_desc: DropReason::PolicyDenied as i32,
        ..Default::default()
    };
    assert_eq!(
        flow.encode_to_vec(),
        [
            0x2A, 0x00, 0x50, 0x02, 0x9A, 0x01, 0x00, 0xC8, 0x01, 0x85, 0x01
        ]
    );

    // Layer7 oneof members 100/101/102.
    let record = |record| {
        Layer7 {
            record: Some(record),
            ..Default::default()
        }
        .encode_to_vec()
    };
    assert_eq!(
        record(layer7::Record::Dns(flow::Dns::default())),
        [0xA2, 0x06, 0x00]
    );
    assert_eq!(
        record(layer7::Record::Http(flow::Http::default())),
        [0xAA, 0x06, 0x00]
    );
    assert_eq!(
        record(layer7::Record::Kafka(flow::Kafka::default())),
        [0xB2, 0x06, 0x00]
    );
}

#[test]
fn flow_filter_tags_on_the_wire() {
    // traffic_direction = 30, packed repeated enum.
    let filter = FlowFilter {
        traffic_direction: vec![
            TrafficDirection::Ingress as i32,
            TrafficDirection::Egress as i32,
        ],
        ..Default::default()
    };
    assert_eq!(filter.encode_to_vec(), [0xF2, 0x01, 0x02, 0x01, 0x02]);

    // verdict = 5 and reply = 15, packed.
    let filter = FlowFilter {
        verdict: vec![Verdict::Dropped as i32],
        reply: vec![true],
        ..Default::default()
    };
    assert_eq!(filter.encode_to_vec(), [0x2A, 0x01, 0x02, 0x7A, 0x01, 0x01]);

    // Unpacked encodings (as other encoders may send) must decode too.
    let decoded = FlowFilter::decode(&[0xF0, 0x01, 0x02, 0x28, 0x02, 0x78, 0x01][..])
        .expect("decodes unpacked");
    assert_eq!(decoded.traffic_direction, [TrafficDirection::Egress as i32]);
    assert_eq!(decoded.verdict, [Verdict::Dropped as i32]);
    assert_eq!(decoded.reply, [true]);

    // uuid = 29, string.
    let filter = FlowFilter {
        uuid: vec!["u".into()],
        ..Default::default()
    };
    assert_eq!(filter.encode_to_vec(), [0xEA, 0x01, 0x01, b'u']);
}

#[test]
fn observer_tags_on_the_wire() {
    // experimental = 999, with field_mask = 1 inside.
    let request = GetFlowsRequest {
        experimental: Some(Experimental {
            field_mask: Some(FieldMask {
                paths: vec!["IP".into()],
            }),
        }),
        ..Default::default()
    };
    assert_eq!(
        request.encode_to_vec(),
        [0xBA, 0x3E, 0x06, 0x0A, 0x04, 0x0A, 0x02, b'I', b'P']
    );

    // `hubble observe --all -f --first`-style scalars: number 1, follow 3, first 9.
    let request = GetFlowsRequest {
        number: u64::MAX,
        follow: true,
        first: true,
        ..Default::default()
    };
    let mut expected = vec![0x08];
    expected.extend([0xFF; 9]);
    expected.extend([0x01, 0x18, 0x01, 0x48, 0x01]);
    assert_eq!(request.encode_to_vec(), expected);

    // node_name = 1000, time = 1001.
    let response = GetFlowsResponse {
        node_name: "n".into(),
        time: Some(Timestamp::default()),
        ..Default::default()
    };
    assert_eq!(
        response.encode_to_vec(),
        [0xC2, 0x3E, 0x01, b'n', 0xCA, 0x3E, 0x00]
    );

    // follow is field 2 in the agent/debug event requests.
    let request = observer::GetAgentEventsRequest {
        follow: true,
        ..Default::default()
    };
    assert_eq!(request.encode_to_vec(), [0x10, 0x01]);
    let request = observer::GetDebugEventsRequest {
        follow: true,
        ..Default::default()
    };
    assert_eq!(request.encode_to_vec(), [0x10, 0x01]);

    // ServerStatusResponse.num_connected_nodes = 5 as UInt32Value; 0 is still present.
    let status = observer::ServerStatusResponse {
        num_connected_nodes: Some(0),
        ..Default::default()
    };
    assert_eq!(status.encode_to_vec(), [0x2A, 0x00]);

    // GetFlowsResponse.node_status = 2 (relay.NodeStatusEvent).
    let response = GetFlowsResponse {
        response_types: Some(get_flows_response::ResponseTypes::NodeStatus(
            relay::NodeStatusEvent {
                state_change: relay::NodeState::NodeError as i32,
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    assert_eq!(response.encode_to_vec(), [0x12, 0x02, 0x08, 0x04]);
}

#[test]
fn enum_values() {
    assert_eq!(TraceObservationPoint::ToEndpoint as i32, 101);
    assert_eq!(TraceObservationPoint::ToNetwork as i32, 11);
    assert_eq!(DropReason::PolicyDeny as i32, 181);
    assert_eq!(DropReason::PolicyDenied as i32, 133);
    assert_eq!(DropReason::NoNodeId as i32, 197);
    assert!(DropReason::try_from(159).is_err());
    assert!(DropReason::try_from(195).is_err());
    assert_eq!(Verdict::Audit as i32, 4);
    assert_eq!(Verdict::Translated as i32, 7);
    assert_eq!(FlowType::Sock as i32, 3);
    assert_eq!(L7FlowType::Sample as i32, 3);
    assert_eq!(IpVersion::IPv6 as i32, 2);
    assert_eq!(DebugCapturePoint::DbgCaptureDelivery as i32, 4);
    assert_eq!(EventType::EventSample as i32, 9);
    assert_eq!(EventType::RecordLost as i32, 2);
    assert_eq!(LostEventSource::HubbleRingBuffer as i32, 3);
    assert_eq!(AgentEventType::AgentStarted as i32, 2);
    assert_eq!(AgentEventType::ServiceDeleted as i32, 12);
    assert_eq!(flow::DebugEventType::DbgSkAssign as i32, 64);
    assert_eq!(relay::NodeState::NodeGone as i32, 3);
    assert_eq!(peer::ChangeNotificationType::PeerUpdated as i32, 3);

    // Proto names (used by JSON, filters and CLI output) are the spec's.
    assert_eq!(
        TraceObservationPoint::ToEndpoint.as_str_name(),
        "TO_ENDPOINT"
    );
    assert_eq!(DropReason::PolicyDeny.as_str_name(), "POLICY_DENY");
    assert_eq!(Verdict::Audit.as_str_name(), "AUDIT");
    assert_eq!(IpVersion::IPv4.as_str_name(), "IPv4");
    assert_eq!(
        Verdict::from_str_name("FORWARDED"),
        Some(Verdict::Forwarded)
    );
}

fn descriptors() -> FileDescriptorSet {
    FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).expect("descriptor set decodes")
}

fn message<'a>(
    set: &'a FileDescriptorSet,
    file: &str,
    name: &str,
) -> &'a prost_types::DescriptorProto {
    set.file
        .iter()
        .find(|f| f.name() == file)
        .unwrap_or_else(|| panic!("{file} missing from descriptor set"))
        .message_type
        .iter()
        .find(|m| m.name() == name)
        .unwrap_or_else(|| panic!("{name} missing from {file}"))
}

fn field(
    message: &prost_types::DescriptorProto,
    number: i32,
) -> &prost_types::FieldDescriptorProto {
    message
        .field
        .iter()
        .find(|f| f.number() == number)
        .unwrap_or_else(|| panic!("{} has no field {number}", message.name()))
}

#[test]
fn descriptor_set_files_and_packages() {
    let set = descriptors();
    let files: Vec<(&str, &str)> = set.file.iter().map(|f| (f.name(), f.package())).collect();
    for expected in [
        ("flow/flow.proto", "flow"),
        ("relay/relay.proto", "relay"),
        ("peer/peer.proto", "peer"),
        ("observer/observer.proto", "observer"),
        ("google/protobuf/timestamp.proto", "google.protobuf"),
        ("google/protobuf/wrappers.proto", "google.protobuf"),
        ("google/protobuf/field_mask.proto", "google.protobuf"),
    ] {
        assert!(files.contains(&expected), "{expected:?} not in {files:?}");
    }

    let observer_file = set
        .file
        .iter()
        .find(|f| f.name() == "observer/observer.proto")
        .expect("observer.proto");
    let flow_import = observer_file
        .dependency
        .iter()
        .position(|d| d == "flow/flow.proto")
        .expect("observer imports flow") as i32;
    assert_eq!(observer_file.public_dependency, [flow_import]);
    assert!(
        observer_file
            .dependency
            .iter()
            .any(|d| d == "relay/relay.proto")
    );
}

#[test]
fn descriptor_set_field_names() {
    let set = descriptors();
    let flow = message(&set, "flow/flow.proto", "Flow");
    for (number, name) in [
        (5, "IP"),
        (10, "Type"),
        (26, "is_reply"),
        (100_000, "Summary"),
    ] {
        assert_eq!(field(flow, number).name(), name);
    }
    assert!(
        field(flow, 100_000)
            .options
            .as_ref()
            .is_some_and(|o| o.deprecated())
    );
    assert!(
        field(flow, 16)
            .options
            .as_ref()
            .is_some_and(|o| o.deprecated())
    );
    assert_eq!(field(flow, 26).type_name(), ".google.protobuf.BoolValue");
    let reserved: Vec<i32> = flow
        .reserved_range
        .iter()
        .flat_map(|r| r.start()..r.end())
        .collect();
    assert_eq!(reserved, [7, 12, 17, 18]);

    let ip = message(&set, "flow/flow.proto", "IP");
    assert_eq!(field(ip, 3).name(), "ipVersion");
    let endpoint = message(&set, "flow/flow.proto", "Endpoint");
    assert_eq!(field(endpoint, 1).name(), "ID");
    let layer4 = message(&set, "flow/flow.proto", "Layer4");
    assert_eq!(field(layer4, 3).name(), "ICMPv4");
    assert_eq!(field(layer4, 3).oneof_index, Some(0));

    let filter = message(&set, "flow/flow.proto", "FlowFilter");
    assert_eq!(filter.field.len(), 30);
    assert_eq!(field(filter, 30).name(), "traffic_direction");

    let request = message(&set, "observer/observer.proto", "GetFlowsRequest");
    assert_eq!(field(request, 999).name(), "experimental");
    assert_eq!(
        field(request, 999).type_name(),
        ".observer.GetFlowsRequest.Experimental"
    );
    assert_eq!(field(request, 5).type_name(), ".flow.FlowFilter");
}

#[test]
fn descriptor_set_services() {
    let set = descriptors();
    let service = |file: &str| {
        let file = set
            .file
            .iter()
            .find(|f| f.name() == file)
            .expect("file present");
        assert_eq!(file.service.len(), 1);
        file.service[0].clone()
    };

    let observer = service("observer/observer.proto");
    assert_eq!(observer.name(), "Observer");
    let methods: Vec<(&str, &str, &str, bool)> = observer
        .method
        .iter()
        .map(|m| {
            (
                m.name(),
                m.input_type(),
                m.output_type(),
                m.server_streaming(),
            )
        })
        .collect();
    assert_eq!(
        methods,
        [
            (
                "GetFlows",
                ".observer.GetFlowsRequest",
                ".observer.GetFlowsResponse",
                true
            ),
            (
                "GetAgentEvents",
                ".observer.GetAgentEventsRequest",
                ".observer.GetAgentEventsResponse",
                true
            ),
            (
                "GetDebugEvents",
                ".observer.GetDebugEventsRequest",
                ".observer.GetDebugEventsResponse",
                true
            ),
            (
                "GetNodes",
                ".observer.GetNodesRequest",
                ".observer.GetNodesResponse",
                false
            ),
            (
                "GetNamespaces",
                ".observer.GetNamespacesRequest",
                ".observer.GetNamespacesResponse",
                false
            ),
            (
                "ServerStatus",
                ".observer.ServerStatusRequest",
                ".observer.ServerStatusResponse",
                false
            ),
        ]
    );
    assert!(observer.method.iter().all(|m| !m.client_streaming()));

    let peer = service("peer/peer.proto");
    assert_eq!(peer.name(), "Peer");
    assert_eq!(peer.method.len(), 1);
    assert_eq!(peer.method[0].name(), "Notify");
    assert_eq!(peer.method[0].output_type(), ".peer.ChangeNotification");
    assert!(peer.method[0].server_streaming());
}

#[cfg(feature = "server")]
#[test]
fn server_stubs_have_hubble_service_names() {
    use tonic::server::NamedService;

    struct Unused;
    #[tonic::async_trait]
    impl crate::peer::peer_server::Peer for Unused {
        type NotifyStream = std::pin::Pin<
            Box<
                dyn tonic::codegen::tokio_stream::Stream<
                        Item = Result<crate::peer::ChangeNotification, tonic::Status>,
                    > + Send,
            >,
        >;
        async fn notify(
            &self,
            _: tonic::Request<crate::peer::NotifyRequest>,
        ) -> Result<tonic::Response<Self::NotifyStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("test"))
        }
    }

    assert_eq!(
        <crate::peer::peer_server::PeerServer<Unused> as NamedService>::NAME,
        "peer.Peer"
    );
    assert_eq!(
        crate::observer::observer_server::SERVICE_NAME,
        "observer.Observer"
    );
}

#[cfg(feature = "client")]
#[test]
fn client_stubs_exist() {
    // Type-level check only: constructing a channel needs a runtime.
    fn _accepts(
        _: crate::observer::observer_client::ObserverClient<tonic::transport::Channel>,
        _: crate::peer::peer_client::PeerClient<tonic::transport::Channel>,
    ) {
    }
}

#[cfg(feature = "json")]
mod json {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn flow_json_round_trip() {
        let flow = sample_flow();
        let text = serde_json::to_string(&flow).expect("serializes");
        let back: Flow = serde_json::from_str(&text).expect("deserializes");
        assert_eq!(back, flow);

        let response = GetFlowsResponse {
            response_types: Some(get_flows_response::ResponseTypes::Flow(flow.clone())),
            node_name: flow.node_name.clone(),
            time: flow.time,
        };
        let text = serde_json::to_string(&response).expect("serializes");
        let back: GetFlowsResponse = serde_json::from_str(&text).expect("deserializes");
        assert_eq!(back, response);
    }

    #[test]
    fn flow_json_names_like_hubble() {
        let value = serde_json::to_value(sample_flow()).expect("serializes");
        // Proto field names, not lowerCamelCase.
        assert_eq!(value["time"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(value["verdict"], "FORWARDED");
        assert_eq!(value["IP"]["source"], "10.0.0.1");
        assert_eq!(value["IP"]["ipVersion"], "IPv4");
        assert_eq!(value["l4"]["TCP"]["destination_port"], 80);
        assert_eq!(
            value["l4"]["TCP"]["flags"],
            json!({"SYN": true, "ACK": true})
        );
        assert_eq!(value["source"]["ID"], 42);
        assert_eq!(value["source"]["pod_name"], "client-0");
        assert_eq!(value["source"]["workloads"][0]["kind"], "StatefulSet");
        assert_eq!(value["Type"], "L3_L4");
        assert_eq!(value["node_name"], "kind/node-1");
        assert_eq!(value["event_type"], json!({"type": 4}));
        assert_eq!(value["traffic_direction"], "EGRESS");
        assert_eq!(value["trace_observation_point"], "TO_ENDPOINT");
        // BoolValue is a plain bool, and false is still written (it is present).
        assert_eq!(value["is_reply"], false);
        assert_eq!(value["Summary"], "TCP Flags: SYN, ACK");
        // Defaults are left out (proto3 JSON without EmitUnpopulated).
        let object = value.as_object().expect("object");
        for absent in ["reply", "drop_reason", "destination_names", "l7", "isReply"] {
            assert!(!object.contains_key(absent), "{absent} present: {value}");
        }

        // Unset wrapper: no key at all.
        let value = serde_json::to_value(Flow::default()).expect("serializes");
        assert_eq!(value, json!({}));
    }

    #[test]
    fn observer_json_shapes() {
        let status = observer::ServerStatusResponse {
            num_flows: 3,
            max_flows: 4096,
            num_connected_nodes: Some(0),
            ..Default::default()
        };
        // 64-bit integers are strings; a present-but-zero wrapper is written.
        assert_eq!(
            serde_json::to_value(&status).expect("serializes"),
            json!({"num_flows": "3", "max_flows": "4096", "num_connected_nodes": 0})
        );

        let request = GetFlowsRequest {
            number: 20,
            since: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            whitelist: vec![FlowFilter {
                verdict: vec![Verdict::Dropped as i32],
                source_pod: vec!["kube-system/".into()],
                ..Default::default()
            }],
            experimental: Some(Experimental {
                field_mask: Some(FieldMask {
                    paths: vec!["source.pod_name".into(), "IP".into()],
                }),
            }),
            ..Default::default()
        };
        let value = serde_json::to_value(&request).expect("serializes");
        assert_eq!(
            value,
            json!({
                "number": "20",
                "whitelist": [{"source_pod": ["kube-system/"], "verdict": ["DROPPED"]}],
                "since": "2023-11-14T22:13:20Z",
                "experimental": {"field_mask": "source.podName,IP"},
            })
        );
        let back: GetFlowsRequest = serde_json::from_value(value).expect("deserializes");
        assert_eq!(back, request);
    }

    #[test]
    fn json_input_accepts_both_spellings_and_numbers() {
        let proto_names: FlowFilter = serde_json::from_str(
            r#"{"reply":[true],"dns_query":["kube.*"],"source_pod":["a/"],"verdict":["DROPPED",1]}"#,
        )
        .expect("proto names");
        let camel: FlowFilter = serde_json::from_str(
            r#"{"reply":[true],"dnsQuery":["kube.*"],"sourcePod":["a/"],"verdict":["DROPPED","FORWARDED"]}"#,
        )
        .expect("lowerCamelCase names");
        assert_eq!(proto_names, camel);
        assert_eq!(camel.reply, [true]);
        assert_eq!(camel.dns_query, ["kube.*"]);
        assert_eq!(
            camel.verdict,
            [Verdict::Dropped as i32, Verdict::Forwarded as i32]
        );

        let flow: Flow = serde_json::from_str(
            r#"{"isReply":true,"nodeName":"n","time":"2023-11-14T23:13:20+01:00","eventType":{"type":4,"subType":3}}"#,
        )
        .expect("camel-case flow");
        assert_eq!(flow.is_reply, Some(true));
        assert_eq!(flow.node_name, "n");
        assert_eq!(flow.time.map(|t| t.seconds), Some(1_700_000_000));
        assert_eq!(
            flow.event_type,
            Some(CiliumEventType {
                r#type: 4,
                sub_type: 3
            })
        );

        // Unknown fields and bad timestamps are errors, like protojson.
        assert!(serde_json::from_str::<FlowFilter>(r#"{"no_such_field":1}"#).is_err());
        assert!(serde_json::from_str::<Flow>(r#"{"time":"yesterday"}"#).is_err());
    }

    #[test]
    fn unnamed_enum_values_are_numbers() {
        let flow = Flow {
            verdict: 42,
            traffic_direction: TrafficDirection::Ingress as i32,
            ..Default::default()
        };
        let value: Value = serde_json::to_value(&flow).expect("serializes");
        assert_eq!(
            value,
            json!({"verdict": 42, "traffic_direction": "INGRESS"})
        );

        let filter = FlowFilter {
            ip_version: vec![IpVersion::IPv6 as i32, 7],
            ..Default::default()
        };
        let value: Value = serde_json::to_value(&filter).expect("serializes");
        assert_eq!(value, json!({"ip_version": ["IPv6", 7]}));
    }

    #[test]
    fn relay_and_peer_json() {
        let event = relay::NodeStatusEvent {
            state_change: relay::NodeState::NodeUnavailable as i32,
            node_names: vec!["a".into()],
            message: String::new(),
        };
        assert_eq!(
            serde_json::to_value(&event).expect("serializes"),
            json!({"state_change": "NODE_UNAVAILABLE", "node_names": ["a"]})
        );
        let change = peer::ChangeNotification {
            name: "n".into(),
            r#type: peer::ChangeNotificationType::PeerAdded as i32,
            tls: Some(peer::Tls {
                server_name: "x".into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&change).expect("serializes"),
            json!({"name": "n", "type": "PEER_ADDED", "tls": {"server_name": "x"}})
        );
    }
}
