//! Rendering of hand-built flows in every output format.

use periscope_cli::printer::{
    Output, PrintOptions, Printer, compact_flow, host_names, identity_label, tabulate,
    verdict_label,
};
use periscope_proto::flow::{
    AuthType, CiliumEventType, Endpoint, Ethernet, Flow, IcmPv4, Ip, IpVersion, L7FlowType, Layer4,
    Layer7, LostEvent, Service, Tcp, TrafficDirection, Udp, Verdict, layer4::Protocol,
    layer7::Record,
};
use periscope_proto::observer::{GetFlowsResponse, get_flows_response::ResponseTypes};
use periscope_proto::relay::{NodeState, NodeStatusEvent};
use prost_types::Timestamp;

/// 2023-11-14T22:13:20.123Z.
fn time() -> Option<Timestamp> {
    Some(Timestamp {
        seconds: 1_700_000_000,
        nanos: 123_456_789,
    })
}

fn endpoint(namespace: &str, pod: &str, identity: u32) -> Option<Endpoint> {
    Some(Endpoint {
        namespace: namespace.into(),
        pod_name: pod.into(),
        identity,
        ..Endpoint::default()
    })
}

fn tcp(src: u32, dst: u32) -> Option<Layer4> {
    Some(Layer4 {
        protocol: Some(Protocol::Tcp(Tcp {
            source_port: src,
            destination_port: dst,
            flags: None,
        })),
    })
}

/// A trace (to-endpoint) TCP flow from a client pod to a server pod.
fn forward() -> Flow {
    Flow {
        time: time(),
        verdict: Verdict::Forwarded as i32,
        ip: Some(Ip {
            source: "10.0.0.1".into(),
            destination: "10.0.0.2".into(),
            ip_version: IpVersion::IPv4 as i32,
            encrypted: false,
            source_xlated: String::new(),
        }),
        l4: tcp(43210, 80),
        source: endpoint("default", "client", 12345),
        destination: endpoint("default", "server", 2),
        node_name: "kind-worker".into(),
        event_type: Some(CiliumEventType {
            r#type: 4,
            sub_type: 0,
        }),
        is_reply: Some(false),
        summary: "TCP Flags: SYN".into(),
        ..Flow::default()
    }
}

fn response(flow: Flow) -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: flow.node_name.clone(),
        time: flow.time,
        response_types: Some(ResponseTypes::Flow(flow)),
    }
}

fn render(opts: PrintOptions, responses: &[GetFlowsResponse]) -> (String, String) {
    let mut printer = Printer::new(opts);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    for r in responses {
        printer
            .write_response(r, &mut out, &mut err)
            .expect("writes");
    }
    printer.finish(&mut out).expect("finishes");
    (
        String::from_utf8(out).expect("utf-8"),
        String::from_utf8(err).expect("utf-8"),
    )
}

fn opts(output: Output) -> PrintOptions {
    PrintOptions {
        output,
        ..PrintOptions::default()
    }
}

#[test]
fn compact_forward() {
    assert_eq!(
        compact_flow(&forward(), &PrintOptions::default()),
        "Nov 14 22:13:20.123: default/client:43210 (ID:12345) -> default/server:80 (world) to-endpoint FORWARDED (TCP Flags: SYN)"
    );
}

#[test]
fn compact_reply_swaps_sides() {
    let mut flow = forward();
    flow.is_reply = Some(true);
    flow.summary = "TCP Flags: SYN, ACK".into();
    assert_eq!(
        compact_flow(&flow, &PrintOptions::default()),
        "Nov 14 22:13:20.123: default/server:80 (world) <- default/client:43210 (ID:12345) to-endpoint FORWARDED (TCP Flags: SYN, ACK)"
    );
}

#[test]
fn compact_unknown_direction() {
    let mut flow = forward();
    flow.is_reply = None;
    assert!(
        compact_flow(&flow, &PrintOptions::default())
            .contains("default/client:43210 (ID:12345) <> default/server:80 (world)")
    );
}

#[test]
fn compact_drop_label() {
    let mut flow = forward();
    flow.verdict = Verdict::Dropped as i32;
    flow.event_type = Some(CiliumEventType {
        r#type: 1,
        sub_type: 133,
    });
    flow.is_reply = None;
    flow.source = endpoint("", "", 0);
    flow.summary = "UDP".into();
    flow.l4 = Some(Layer4 {
        protocol: Some(Protocol::Udp(Udp {
            source_port: 5353,
            destination_port: 53,
        })),
    });
    assert_eq!(
        compact_flow(&flow, &PrintOptions::default()),
        "Nov 14 22:13:20.123: 10.0.0.1:5353 (unknown) <> default/server:53 (world) Policy denied DROPPED (UDP)"
    );
}

#[test]
fn compact_policy_verdict_wording() {
    let verdict = |v: Verdict| {
        let mut flow = forward();
        flow.verdict = v as i32;
        flow.event_type = Some(CiliumEventType {
            r#type: 5,
            sub_type: 0,
        });
        flow.policy_match_type = 2;
        flow.traffic_direction = TrafficDirection::Ingress as i32;
        flow
    };
    let line = compact_flow(&verdict(Verdict::Forwarded), &PrintOptions::default());
    assert!(
        line.ends_with("policy-verdict:L3-L4 INGRESS ALLOWED (TCP Flags: SYN)"),
        "{line}"
    );
    assert_eq!(verdict_label(&verdict(Verdict::Redirected)), "ALLOWED");
    assert_eq!(verdict_label(&verdict(Verdict::Dropped)), "DENIED");
    assert_eq!(verdict_label(&verdict(Verdict::Error)), "DENIED");
    assert_eq!(verdict_label(&verdict(Verdict::Audit)), "AUDITED");
    assert_eq!(verdict_label(&verdict(Verdict::Traced)), "TRACED");
    // Outside policy verdict events the names stay.
    let mut audit = forward();
    audit.verdict = Verdict::Audit as i32;
    assert_eq!(verdict_label(&audit), "AUDIT");
    audit.verdict = 42;
    assert_eq!(verdict_label(&audit), "42");
}

#[test]
fn compact_auth_summary_and_node_name() {
    let mut flow = forward();
    flow.auth_type = AuthType::Spire as i32;
    let line = compact_flow(
        &flow,
        &PrintOptions {
            node_name: true,
            ..PrintOptions::default()
        },
    );
    assert!(
        line.starts_with("Nov 14 22:13:20.123 [kind-worker]: "),
        "{line}"
    );
    assert!(line.ends_with("(TCP Flags: SYN; Auth: SPIRE)"), "{line}");
}

#[test]
fn compact_ipv6_brackets_and_icmp() {
    let mut flow = forward();
    flow.ip = Some(Ip {
        source: "fd00::1".into(),
        destination: "fd00::2".into(),
        ip_version: IpVersion::IPv6 as i32,
        encrypted: false,
        source_xlated: String::new(),
    });
    flow.source = None;
    flow.destination = None;
    assert_eq!(
        host_names(&flow, true),
        ("[fd00::1]:43210".to_owned(), "[fd00::2]:80".to_owned())
    );
    flow.l4 = Some(Layer4 {
        protocol: Some(Protocol::IcmPv4(IcmPv4 { r#type: 8, code: 0 })),
    });
    assert_eq!(
        host_names(&flow, true),
        ("fd00::1".to_owned(), "fd00::2".to_owned())
    );
    // Port 0 is not printed either.
    flow.l4 = tcp(0, 0);
    assert_eq!(host_names(&flow, true).0, "fd00::1");
}

#[test]
fn host_name_precedence() {
    let mut flow = forward();
    // Pod wins over service and names.
    flow.source_service = Some(Service {
        name: "web".into(),
        namespace: "prod".into(),
    });
    flow.source_names = vec!["a.example".into()];
    // ...but the service's namespace replaces the endpoint's, as upstream does.
    assert_eq!(host_names(&flow, true).0, "prod/client:43210");
    // No pod: the service.
    flow.source = endpoint("default", "", 7);
    assert_eq!(host_names(&flow, true).0, "prod/web:43210");
    // No pod, no service: the names, joined.
    flow.source_service = None;
    flow.source_names = vec!["a.example".into(), "b.example".into()];
    assert_eq!(host_names(&flow, true).0, "a.example,b.example:43210");
    // Nothing: the IP.
    flow.source_names.clear();
    assert_eq!(host_names(&flow, true).0, "10.0.0.1:43210");
    // A pod without a namespace prints alone.
    flow.source = endpoint("", "lonely", 7);
    assert_eq!(host_names(&flow, true).0, "lonely:43210");
    // --numeric: always the IP.
    assert_eq!(
        host_names(&forward(), false),
        ("10.0.0.1:43210".to_owned(), "10.0.0.2:80".to_owned())
    );
    let numeric = PrintOptions {
        ip_translation: false,
        ..PrintOptions::default()
    };
    assert_eq!(
        compact_flow(&forward(), &numeric),
        "Nov 14 22:13:20.123: 10.0.0.1:43210 (ID:12345) -> 10.0.0.2:80 (world) to-endpoint FORWARDED (TCP Flags: SYN)"
    );
}

#[test]
fn ethernet_only_and_empty_flows() {
    let flow = Flow {
        ethernet: Some(Ethernet {
            source: "aa:bb:cc:dd:ee:ff".into(),
            destination: "ff:ff:ff:ff:ff:ff".into(),
        }),
        l4: tcp(1, 2),
        ..Flow::default()
    };
    assert_eq!(
        host_names(&flow, true),
        (
            "aa:bb:cc:dd:ee:ff".to_owned(),
            "ff:ff:ff:ff:ff:ff".to_owned()
        )
    );
    assert_eq!(
        compact_flow(&Flow::default(), &PrintOptions::default()),
        "N/A:  (unknown) <>  (unknown) UNKNOWN VERDICT_UNKNOWN ()"
    );
}

#[test]
fn identities() {
    assert_eq!(identity_label(0), "(unknown)");
    assert_eq!(identity_label(1), "(host)");
    assert_eq!(identity_label(2), "(world)");
    assert_eq!(identity_label(3), "(unmanaged)");
    assert_eq!(identity_label(4), "(health)");
    assert_eq!(identity_label(5), "(init)");
    assert_eq!(identity_label(6), "(remote-node)");
    assert_eq!(identity_label(7), "(kube-apiserver)");
    assert_eq!(identity_label(8), "(ingress)");
    assert_eq!(identity_label(9), "(ID:9)");
    assert_eq!(identity_label(16_777_217), "(ID:16777217)");
}

#[test]
fn time_formats() {
    let rfc3339 = PrintOptions {
        time_layout: periscope_cli::time::layout_for_name("RFC3339"),
        ..PrintOptions::default()
    };
    assert!(compact_flow(&forward(), &rfc3339).starts_with("2023-11-14T22:13:20Z: "));
    let nano = PrintOptions {
        time_layout: periscope_cli::time::layout_for_name("RFC3339Nano"),
        ..PrintOptions::default()
    };
    assert!(compact_flow(&forward(), &nano).starts_with("2023-11-14T22:13:20.123456789Z: "));
}

#[test]
fn l7_type_column() {
    let mut flow = forward();
    flow.l7 = Some(Layer7 {
        r#type: L7FlowType::Request as i32,
        latency_ns: 0,
        record: Some(Record::Http(Default::default())),
    });
    flow.summary = "HTTP/1.1 GET http://server/".into();
    assert!(
        compact_flow(&flow, &PrintOptions::default())
            .ends_with("http-request FORWARDED (HTTP/1.1 GET http://server/)")
    );
}

#[test]
fn dict_output() {
    let mut reply = forward();
    reply.is_reply = Some(true);
    let (out, err) = render(opts(Output::Dict), &[response(forward()), response(reply)]);
    assert_eq!(
        out,
        "  TIMESTAMP: Nov 14 22:13:20.123
     SOURCE: default/client:43210
DESTINATION: default/server:80
       TYPE: to-endpoint
    VERDICT: FORWARDED
    SUMMARY: TCP Flags: SYN
------------
  TIMESTAMP: Nov 14 22:13:20.123
     SOURCE: default/client:43210
DESTINATION: default/server:80
       TYPE: to-endpoint
    VERDICT: FORWARDED
    SUMMARY: TCP Flags: SYN
"
    );
    assert_eq!(err, "");
    let (out, _) = render(
        PrintOptions {
            output: Output::Dict,
            node_name: true,
            ..PrintOptions::default()
        },
        &[response(forward())],
    );
    assert!(out.contains("\n       NODE: kind-worker\n"), "{out}");
}

#[test]
fn table_output() {
    let mut drop = forward();
    drop.verdict = Verdict::Dropped as i32;
    drop.event_type = Some(CiliumEventType {
        r#type: 1,
        sub_type: 181,
    });
    drop.destination = endpoint("kube-system", "coredns-5d78c9869d-abcde", 100);
    let (out, _) = render(opts(Output::Table), &[response(forward()), response(drop)]);
    assert_eq!(
        out,
        "TIMESTAMP             SOURCE                 DESTINATION                               TYPE                        VERDICT     SUMMARY
Nov 14 22:13:20.123   default/client:43210   default/server:80                         to-endpoint                 FORWARDED   TCP Flags: SYN
Nov 14 22:13:20.123   default/client:43210   kube-system/coredns-5d78c9869d-abcde:80   Policy denied by denylist   DROPPED     TCP Flags: SYN
"
    );
    let (out, _) = render(
        PrintOptions {
            output: Output::Table,
            node_name: true,
            ..PrintOptions::default()
        },
        &[response(forward())],
    );
    assert!(
        out.starts_with("TIMESTAMP             NODE          SOURCE"),
        "{out}"
    );
    // Nothing at all without flows.
    assert_eq!(render(opts(Output::Table), &[]).0, "");
}

#[test]
fn tabulate_like_go_tabwriter() {
    let rows = vec![
        vec!["A".to_owned(), "BB".to_owned(), "tail".to_owned()],
        vec!["".to_owned(), "B".to_owned(), "x".to_owned()],
    ];
    assert_eq!(tabulate(&rows), "A   BB   tail\n    B    x\n");
    assert_eq!(tabulate(&[vec!["only".to_owned()]]), "only\n");
}

#[test]
fn json_output() {
    let (out, _) = render(opts(Output::Json), &[response(forward())]);
    assert!(out.ends_with('\n'));
    let value: serde_json::Value = serde_json::from_str(out.trim_end()).expect("one JSON line");
    assert_eq!(value["node_name"], "kind-worker");
    assert_eq!(value["time"], "2023-11-14T22:13:20.123456789Z");
    assert_eq!(value["flow"]["verdict"], "FORWARDED");
    assert_eq!(value["flow"]["IP"]["source"], "10.0.0.1");
    assert_eq!(value["flow"]["source"]["pod_name"], "client");
    assert_eq!(value["flow"]["is_reply"], false);
    assert_eq!(value["flow"]["Summary"], "TCP Flags: SYN");
    let back: GetFlowsResponse = serde_json::from_value(value).expect("parses back");
    assert_eq!(back, response(forward()));
    // jsonpb is the same.
    assert_eq!(render(opts(Output::Jsonpb), &[response(forward())]).0, out);
}

fn node_status(state: NodeState, message: &str) -> GetFlowsResponse {
    GetFlowsResponse {
        response_types: Some(ResponseTypes::NodeStatus(NodeStatusEvent {
            state_change: state as i32,
            node_names: vec!["node-a".into(), "node-b".into()],
            message: message.into(),
        })),
        node_name: "relay".into(),
        time: time(),
    }
}

#[test]
fn node_status_goes_to_stderr() {
    let responses = [
        node_status(NodeState::NodeUnavailable, ""),
        node_status(NodeState::NodeError, "boom"),
        node_status(NodeState::NodeConnected, ""),
        node_status(NodeState::NodeGone, ""),
    ];
    let (out, err) = render(PrintOptions::default(), &responses);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "Nov 14 22:13:20.123 [relay]: 2 nodes are unavailable: node-a, node-b
Nov 14 22:13:20.123 [relay]: Error \"boom\" on 2 nodes: node-a, node-b
"
    );
    // --debug shows every state.
    let (_, err) = render(
        PrintOptions {
            debug: true,
            ..PrintOptions::default()
        },
        &responses,
    );
    assert!(
        err.contains("Receiving flows from 2 nodes: node-a, node-b"),
        "{err}"
    );
    assert!(
        err.contains("2 nodes removed from cluster: node-a, node-b"),
        "{err}"
    );
    // JSON output: the response as JSON, on stderr.
    let (out, err) = render(opts(Output::Json), &responses[..1]);
    assert_eq!(out, "");
    assert!(
        err.contains("\"state_change\":\"NODE_UNAVAILABLE\""),
        "{err}"
    );
}

#[test]
fn node_names_are_cut_off() {
    let mut r = node_status(NodeState::NodeUnavailable, "");
    if let Some(ResponseTypes::NodeStatus(event)) = &mut r.response_types {
        event.node_names = (0..20).map(|i| format!("worker-node-{i:02}")).collect();
    }
    let (_, err) = render(PrintOptions::default(), &[r]);
    assert_eq!(
        err,
        "Nov 14 22:13:20.123 [relay]: 20 nodes are unavailable: worker-node-00, worker-node-01, worker-node-02 (and 17 more)\n"
    );
}

#[test]
fn lost_events_only_with_debug() {
    let lost = GetFlowsResponse {
        response_types: Some(ResponseTypes::LostEvents(LostEvent {
            source: 3,
            num_events_lost: 7,
            cpu: None,
        })),
        ..Default::default()
    };
    assert_eq!(
        render(PrintOptions::default(), std::slice::from_ref(&lost)),
        (String::new(), String::new())
    );
    let (out, err) = render(
        PrintOptions {
            debug: true,
            ..PrintOptions::default()
        },
        &[lost, GetFlowsResponse::default()],
    );
    assert_eq!(out, "");
    assert!(
        err.starts_with("unknown response type: LostEvents"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
}
