//! Flag → GetFlowsRequest mapping: one test per row of the wire spec's §3.3
//! (selectors) and §3.4 (filters) tables, plus conflicts and odd inputs. Whole
//! requests are compared.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use periscope_cli::client::raw_filters_yaml;
use periscope_cli::flows_request_from_args;
use periscope_proto::flow::{
    EventTypeFilter, FlowFilter, IpVersion, TcpFlags, TrafficDirection, Verdict, Workload,
};
use periscope_proto::observer::GetFlowsRequest;
use periscope_proto::observer::get_flows_request::Experimental;
use prost_types::{FieldMask, Timestamp};

/// 2023-11-14T22:13:20Z.
const NOW_SECONDS: i64 = 1_700_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_SECONDS as u64)
}

fn argv<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut argv = vec!["periscope", "observe"];
    argv.extend_from_slice(args);
    argv
}

fn request(args: &[&str]) -> GetFlowsRequest {
    flows_request_from_args(argv(args), now()).unwrap_or_else(|e| panic!("{args:?} rejected: {e}"))
}

fn rejection(args: &[&str]) -> String {
    match flows_request_from_args(argv(args), now()) {
        Ok(request) => panic!("{args:?} accepted: {request:?}"),
        Err(e) => e.to_string(),
    }
}

fn ts(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

fn filter(build: impl FnOnce(&mut FlowFilter)) -> FlowFilter {
    let mut f = FlowFilter::default();
    build(&mut f);
    f
}

/// The default selector (number 20) with these lists.
fn filtered(whitelist: Vec<FlowFilter>, blacklist: Vec<FlowFilter>) -> GetFlowsRequest {
    GetFlowsRequest {
        number: 20,
        whitelist,
        blacklist,
        ..Default::default()
    }
}

fn s(v: &str) -> String {
    v.to_owned()
}

// ---- §3.3 selectors -------------------------------------------------------

#[test]
fn selector_none() {
    assert_eq!(
        request(&[]),
        GetFlowsRequest {
            number: 20,
            ..Default::default()
        }
    );
}

#[test]
fn selector_last() {
    assert_eq!(
        request(&["--last", "5"]),
        GetFlowsRequest {
            number: 5,
            ..Default::default()
        }
    );
}

#[test]
fn selector_first() {
    assert_eq!(
        request(&["--first", "7"]),
        GetFlowsRequest {
            number: 7,
            first: true,
            ..Default::default()
        }
    );
}

#[test]
fn selector_all() {
    assert_eq!(
        request(&["--all"]),
        GetFlowsRequest {
            number: u64::MAX,
            ..Default::default()
        }
    );
}

#[test]
fn selector_follow() {
    let expected = GetFlowsRequest {
        number: 0,
        follow: true,
        ..Default::default()
    };
    assert_eq!(request(&["-f"]), expected);
    assert_eq!(request(&["--follow"]), expected);
}

#[test]
fn selector_follow_last() {
    assert_eq!(
        request(&["-f", "--last", "3"]),
        GetFlowsRequest {
            number: 3,
            follow: true,
            ..Default::default()
        }
    );
}

#[test]
fn selector_since() {
    assert_eq!(
        request(&["--since", "3s"]),
        GetFlowsRequest {
            since: ts(NOW_SECONDS - 3),
            ..Default::default()
        }
    );
}

#[test]
fn selector_until() {
    assert_eq!(
        request(&["--until", "2023-11-14T22:00:00Z"]),
        GetFlowsRequest {
            until: ts(NOW_SECONDS - 800),
            ..Default::default()
        }
    );
}

#[test]
fn selector_since_until() {
    assert_eq!(
        request(&["--since", "1h43m", "--until", "4m"]),
        GetFlowsRequest {
            since: ts(NOW_SECONDS - 6180),
            until: ts(NOW_SECONDS - 240),
            ..Default::default()
        }
    );
}

#[test]
fn selector_since_follow() {
    assert_eq!(
        request(&["--since", "2023-11-14", "-f"]),
        GetFlowsRequest {
            follow: true,
            since: ts(NOW_SECONDS - 80_000),
            ..Default::default()
        }
    );
}

#[test]
fn selector_until_follow_drops_until() {
    assert_eq!(
        request(&["--until", "1m", "-f"]),
        GetFlowsRequest {
            follow: true,
            ..Default::default()
        }
    );
}

#[test]
fn selector_since_last() {
    assert_eq!(
        request(&["--since", "10s", "--last", "4"]),
        GetFlowsRequest {
            number: 4,
            since: ts(NOW_SECONDS - 10),
            ..Default::default()
        }
    );
}

#[test]
fn selector_rejections() {
    assert_eq!(
        rejection(&["--first", "1", "--follow"]),
        "cannot set both --first and --follow"
    );
    assert_eq!(
        rejection(&["--first", "1", "--last", "2"]),
        "cannot set both --first and --last"
    );
    assert_eq!(
        rejection(&["--first", "1", "--all"]),
        "cannot set both --first and --all"
    );
    assert_eq!(
        rejection(&["--last", "1", "--all"]),
        "cannot set both --last and --all"
    );
    assert_eq!(
        rejection(&["--since", "yesterday"]),
        "failed to parse the since time: failed to convert yesterday to time"
    );
    assert_eq!(
        rejection(&["--until", "2023-13-01"]),
        "failed to parse the until time: failed to convert 2023-13-01 to time"
    );
    assert_eq!(
        rejection(&["-o", "table", "-f"]),
        "table output format is not compatible with follow mode"
    );
}

#[test]
fn time_formats() {
    let since = |t: &str| request(&["--since", t]).since.expect("since set");
    let at = |seconds, nanos| Timestamp { seconds, nanos };
    assert_eq!(since("2023-11-14T22Z"), at(NOW_SECONDS - 800, 0));
    assert_eq!(since("2023-11-14T22:13Z"), at(NOW_SECONDS - 20, 0));
    assert_eq!(since("2023-11-14T23:13:20+01:00"), at(NOW_SECONDS, 0));
    assert_eq!(
        since("2023-11-14T22:13:20.5Z"),
        at(NOW_SECONDS, 500_000_000)
    );
    assert_eq!(
        since("2023-11-14T22:13:20.123456789Z"),
        at(NOW_SECONDS, 123_456_789)
    );
    assert_eq!(since("Tue, 14 Nov 2023 22:13:20 +0000"), at(NOW_SECONDS, 0));
    assert_eq!(since("1.5h"), at(NOW_SECONDS - 5400, 0));
}

// ---- §3.4 filters ---------------------------------------------------------

#[test]
fn filter_uuid() {
    assert_eq!(
        request(&["--uuid", "abc"]),
        filtered(vec![filter(|f| f.uuid = vec![s("abc")])], vec![])
    );
}

#[test]
fn filter_from_ip_to_ip() {
    assert_eq!(
        request(&["--from-ip", "10.0.0.1"]),
        filtered(vec![filter(|f| f.source_ip = vec![s("10.0.0.1")])], vec![])
    );
    assert_eq!(
        request(&["--to-ip", "10.0.0.0/24"]),
        filtered(
            vec![filter(|f| f.destination_ip = vec![s("10.0.0.0/24")])],
            vec![]
        )
    );
    // Both one-sided flags land in the same (single) filter.
    assert_eq!(
        request(&["--from-ip", "1.1.1.1", "--to-ip", "2.2.2.2"]),
        filtered(
            vec![filter(|f| {
                f.source_ip = vec![s("1.1.1.1")];
                f.destination_ip = vec![s("2.2.2.2")];
            })],
            vec![]
        )
    );
}

#[test]
fn filter_ip_both_sides() {
    assert_eq!(
        request(&["--ip", "10.0.0.1"]),
        filtered(
            vec![
                filter(|f| f.source_ip = vec![s("10.0.0.1")]),
                filter(|f| f.destination_ip = vec![s("10.0.0.1")]),
            ],
            vec![]
        )
    );
}

#[test]
fn filter_from_pod_to_pod() {
    assert_eq!(
        request(&["--from-pod", "xwing"]),
        filtered(vec![filter(|f| f.source_pod = vec![s("xwing")])], vec![])
    );
    assert_eq!(
        request(&["--to-pod", "kube-system/coredns"]),
        filtered(
            vec![filter(
                |f| f.destination_pod = vec![s("kube-system/coredns")]
            )],
            vec![]
        )
    );
}

#[test]
fn filter_pod_both_sides() {
    assert_eq!(
        request(&["--pod", "default/xwing"]),
        filtered(
            vec![
                filter(|f| f.source_pod = vec![s("default/xwing")]),
                filter(|f| f.destination_pod = vec![s("default/xwing")]),
            ],
            vec![]
        )
    );
}

#[test]
fn filter_from_namespace_to_namespace() {
    assert_eq!(
        request(&["--from-namespace", "kube-system"]),
        filtered(
            vec![filter(|f| f.source_pod = vec![s("kube-system/")])],
            vec![]
        )
    );
    assert_eq!(
        request(&["--to-namespace", "default"]),
        filtered(
            vec![filter(|f| f.destination_pod = vec![s("default/")])],
            vec![]
        )
    );
}

#[test]
fn filter_namespace_both_sides() {
    let expected = filtered(
        vec![
            filter(|f| f.source_pod = vec![s("kube-system/")]),
            filter(|f| f.destination_pod = vec![s("kube-system/")]),
        ],
        vec![],
    );
    assert_eq!(request(&["-n", "kube-system"]), expected);
    assert_eq!(request(&["--namespace", "kube-system"]), expected);
}

#[test]
fn filter_fqdn() {
    assert_eq!(
        request(&["--from-fqdn", "*.cilium.io"]),
        filtered(
            vec![filter(|f| f.source_fqdn = vec![s("*.cilium.io")])],
            vec![]
        )
    );
    assert_eq!(
        request(&["--to-fqdn", "api.github.com"]),
        filtered(
            vec![filter(|f| f.destination_fqdn = vec![s("api.github.com")])],
            vec![]
        )
    );
    assert_eq!(
        request(&["--fqdn", "a.b"]),
        filtered(
            vec![
                filter(|f| f.source_fqdn = vec![s("a.b")]),
                filter(|f| f.destination_fqdn = vec![s("a.b")]),
            ],
            vec![]
        )
    );
}

#[test]
fn filter_label() {
    assert_eq!(
        request(&["--from-label", "k8s:app=x"]),
        filtered(
            vec![filter(|f| f.source_label = vec![s("k8s:app=x")])],
            vec![]
        )
    );
    assert_eq!(
        request(&["--to-label", "reserved:world"]),
        filtered(
            vec![filter(|f| f.destination_label = vec![s("reserved:world")])],
            vec![]
        )
    );
    let both = filtered(
        vec![
            filter(|f| f.source_label = vec![s("app=y")]),
            filter(|f| f.destination_label = vec![s("app=y")]),
        ],
        vec![],
    );
    assert_eq!(request(&["-l", "app=y"]), both);
    assert_eq!(request(&["--label", "app=y"]), both);
}

#[test]
fn filter_service() {
    assert_eq!(
        request(&["--from-service", "kube-system/kube-dns"]),
        filtered(
            vec![filter(
                |f| f.source_service = vec![s("kube-system/kube-dns")]
            )],
            vec![]
        )
    );
    assert_eq!(
        request(&["--to-service", "web"]),
        filtered(
            vec![filter(|f| f.destination_service = vec![s("web")])],
            vec![]
        )
    );
    assert_eq!(
        request(&["--service", "web"]),
        filtered(
            vec![
                filter(|f| f.source_service = vec![s("web")]),
                filter(|f| f.destination_service = vec![s("web")]),
            ],
            vec![]
        )
    );
}

#[test]
fn filter_ports() {
    assert_eq!(
        request(&["--from-port", "1234"]),
        filtered(vec![filter(|f| f.source_port = vec![s("1234")])], vec![])
    );
    assert_eq!(
        request(&["--to-port", "80"]),
        filtered(vec![filter(|f| f.destination_port = vec![s("80")])], vec![])
    );
}

#[test]
fn filter_port_both_sides_with_verdict() {
    // The spec's example: one-sided flags go into both filters.
    assert_eq!(
        request(&["--port", "53", "--verdict", "FORWARDED"]),
        filtered(
            vec![
                filter(|f| {
                    f.verdict = vec![Verdict::Forwarded as i32];
                    f.source_port = vec![s("53")];
                }),
                filter(|f| {
                    f.verdict = vec![Verdict::Forwarded as i32];
                    f.destination_port = vec![s("53")];
                }),
            ],
            vec![]
        )
    );
    // Order of the flags does not matter for the result.
    assert_eq!(
        request(&["--verdict", "FORWARDED", "--port", "53"]),
        request(&["--port", "53", "--verdict", "FORWARDED"])
    );
}

#[test]
fn filter_identity_names_and_numbers() {
    assert_eq!(
        request(&["--from-identity", "world"]),
        filtered(vec![filter(|f| f.source_identity = vec![2])], vec![])
    );
    assert_eq!(
        request(&["--to-identity", "12345"]),
        filtered(
            vec![filter(|f| f.destination_identity = vec![12345])],
            vec![]
        )
    );
    assert_eq!(
        request(&["--identity", "host"]),
        filtered(
            vec![
                filter(|f| f.source_identity = vec![1]),
                filter(|f| f.destination_identity = vec![1]),
            ],
            vec![]
        )
    );
    for (name, id) in [
        ("host", 1),
        ("world", 2),
        ("unmanaged", 3),
        ("health", 4),
        ("init", 5),
        ("remote-node", 6),
        ("kube-apiserver", 7),
        ("ingress", 8),
    ] {
        assert_eq!(
            request(&["--from-identity", name]).whitelist[0].source_identity,
            [id],
            "{name}"
        );
    }
    assert!(rejection(&["--identity", "nobody"]).starts_with("invalid security identity"));
}

#[test]
fn filter_workloads() {
    let w = |kind: &str, name: &str| Workload {
        kind: s(kind),
        name: s(name),
    };
    assert_eq!(
        request(&["--from-workload", "Deployment/web"]),
        filtered(
            vec![filter(|f| f.source_workload = vec![w("Deployment", "web")])],
            vec![]
        )
    );
    assert_eq!(
        request(&["--to-workload", "web"]),
        filtered(
            vec![filter(|f| f.destination_workload = vec![w("", "web")])],
            vec![]
        )
    );
    assert_eq!(
        request(&["--workload", "StatefulSet/"]),
        filtered(
            vec![
                filter(|f| f.source_workload = vec![w("StatefulSet", "")]),
                filter(|f| f.destination_workload = vec![w("StatefulSet", "")]),
            ],
            vec![]
        )
    );
}

#[test]
fn filter_verdicts() {
    assert_eq!(
        request(&["--verdict", "DROPPED", "--verdict", "AUDIT"]),
        filtered(
            vec![filter(
                |f| f.verdict = vec![Verdict::Dropped as i32, Verdict::Audit as i32]
            )],
            vec![]
        )
    );
    for name in [
        "FORWARDED",
        "DROPPED",
        "AUDIT",
        "REDIRECTED",
        "ERROR",
        "TRACED",
        "TRANSLATED",
    ] {
        assert_eq!(
            request(&["--verdict", name]).whitelist[0].verdict,
            [Verdict::from_str_name(name).unwrap() as i32]
        );
    }
    assert_eq!(
        rejection(&["--verdict", "dropped"]),
        "invalid --verdict value: dropped"
    );
}

#[test]
fn filter_types() {
    // The spec's verified example.
    assert_eq!(
        request(&["-t", "trace:to-endpoint", "-t", "drop", "-t", "l7"]),
        filtered(
            vec![filter(|f| {
                f.event_type = vec![
                    EventTypeFilter {
                        r#type: 4,
                        match_sub_type: true,
                        sub_type: 0,
                    },
                    EventTypeFilter {
                        r#type: 1,
                        ..Default::default()
                    },
                    EventTypeFilter {
                        r#type: 129,
                        ..Default::default()
                    },
                ]
            })],
            vec![]
        )
    );
    assert_eq!(
        request(&["--type", "policy-verdict"]).whitelist[0].event_type,
        [EventTypeFilter {
            r#type: 5,
            ..Default::default()
        }]
    );
    assert_eq!(
        request(&["--type", "trace:from-network"]).whitelist[0].event_type,
        [EventTypeFilter {
            r#type: 4,
            match_sub_type: true,
            sub_type: 10
        }]
    );
    assert_eq!(
        request(&["-t", "drop:181"]).whitelist[0].event_type,
        [EventTypeFilter {
            r#type: 1,
            match_sub_type: true,
            sub_type: 181
        }]
    );
    assert_eq!(
        request(&["-t", "200"]).whitelist[0].event_type,
        [EventTypeFilter {
            r#type: 200,
            ..Default::default()
        }]
    );
    assert!(
        rejection(&["-t", "trace:nowhere"]).starts_with("unable to parse event sub-type 'nowhere'")
    );
    assert!(rejection(&["-t", "everything"]).starts_with("unable to parse type 'everything'"));
}

#[test]
fn filter_http() {
    assert_eq!(
        request(&[
            "--http-status",
            "5+",
            "--http-method",
            "get",
            "--http-path",
            "/api/.*"
        ]),
        filtered(
            vec![filter(|f| {
                f.http_status_code = vec![s("5+")];
                f.http_method = vec![s("get")];
                f.http_path = vec![s("/api/.*")];
            })],
            vec![]
        )
    );
}

#[test]
fn filter_protocol() {
    assert_eq!(
        request(&["--protocol", "tcp", "--protocol", "dns"]),
        filtered(
            vec![filter(|f| f.protocol = vec![s("tcp"), s("dns")])],
            vec![]
        )
    );
}

#[test]
fn filter_tcp_flags() {
    assert_eq!(
        request(&["--tcp-flags", "syn,ACK", "--tcp-flags", "fin"]),
        filtered(
            vec![filter(|f| {
                f.tcp_flags = vec![
                    TcpFlags {
                        syn: true,
                        ack: true,
                        ..Default::default()
                    },
                    TcpFlags {
                        fin: true,
                        ..Default::default()
                    },
                ]
            })],
            vec![]
        )
    );
    assert_eq!(
        rejection(&["--tcp-flags", "syn,bogus"]),
        "unknown tcp flag: bogus"
    );
}

#[test]
fn filter_node_name() {
    assert_eq!(
        request(&["--node-name", "kind/*worker*"]),
        filtered(
            vec![filter(|f| f.node_name = vec![s("kind/*worker*")])],
            vec![]
        )
    );
}

#[test]
fn filter_ip_versions() {
    let v = |args: &[&str]| request(args).whitelist[0].ip_version.clone();
    assert_eq!(v(&["-4"]), [IpVersion::IPv4 as i32]);
    assert_eq!(v(&["-6"]), [IpVersion::IPv6 as i32]);
    assert_eq!(v(&["--ipv4", "--ipv6"]), [1, 2]);
    for (value, version) in [
        ("4", IpVersion::IPv4),
        ("v4", IpVersion::IPv4),
        ("ipv4", IpVersion::IPv4),
        ("ip4", IpVersion::IPv4),
        ("6", IpVersion::IPv6),
        ("v6", IpVersion::IPv6),
        ("ipv6", IpVersion::IPv6),
        ("ip6", IpVersion::IPv6),
        ("none", IpVersion::IpNotUsed),
        ("whatever", IpVersion::IpNotUsed),
    ] {
        assert_eq!(v(&["--ip-version", value]), [version as i32], "{value}");
    }
    assert_eq!(
        request(&["-4"]),
        filtered(vec![filter(|f| f.ip_version = vec![1])], vec![])
    );
}

#[test]
fn filter_trace_id() {
    assert_eq!(
        request(&["--trace-id", "4bf92f3577b34da6a3ce929d0e0e4736"]),
        filtered(
            vec![filter(
                |f| f.trace_id = vec![s("4bf92f3577b34da6a3ce929d0e0e4736")]
            )],
            vec![]
        )
    );
}

#[test]
fn filter_traffic_direction() {
    assert_eq!(
        request(&[
            "--traffic-direction",
            "ingress",
            "--traffic-direction",
            "EGRESS"
        ]),
        filtered(
            vec![filter(|f| {
                f.traffic_direction = vec![
                    TrafficDirection::Ingress as i32,
                    TrafficDirection::Egress as i32,
                ]
            })],
            vec![]
        )
    );
    assert!(rejection(&["--traffic-direction", "sideways"]).contains("sideways"));
}

#[test]
fn filter_not_goes_to_blacklist() {
    assert_eq!(
        request(&["--not", "--from-ip", "2.2.2.2"]),
        filtered(vec![], vec![filter(|f| f.source_ip = vec![s("2.2.2.2")])])
    );
    // --not applies to exactly the next filter flag.
    assert_eq!(
        request(&[
            "--not",
            "--verdict",
            "DROPPED",
            "--pod",
            "x",
            "--not",
            "--namespace",
            "kube-system"
        ]),
        filtered(
            vec![
                filter(|f| f.source_pod = vec![s("x")]),
                filter(|f| f.destination_pod = vec![s("x")]),
            ],
            vec![
                filter(|f| {
                    f.verdict = vec![Verdict::Dropped as i32];
                    f.source_pod = vec![s("kube-system/")];
                }),
                filter(|f| {
                    f.verdict = vec![Verdict::Dropped as i32];
                    f.destination_pod = vec![s("kube-system/")];
                }),
            ]
        )
    );
    assert_eq!(
        rejection(&["--not", "--not", "--ip", "1"]),
        "consecutive --not statements"
    );
    assert_eq!(
        rejection(&["--ip", "1", "--not"]),
        "trailing --not found in the arguments"
    );
}

#[test]
fn filter_repeats_append() {
    assert_eq!(
        request(&["--ip", "1.1.1.1", "--ip", "2.2.2.2"]),
        filtered(
            vec![
                filter(|f| f.source_ip = vec![s("1.1.1.1"), s("2.2.2.2")]),
                filter(|f| f.destination_ip = vec![s("1.1.1.1"), s("2.2.2.2")]),
            ],
            vec![]
        )
    );
}

#[test]
fn filter_conflicts() {
    let conflict = |args: &[&str], a: &str, b: &str| {
        assert_eq!(
            rejection(args),
            format!("filters --{a} and --{b} cannot be combined"),
            "{args:?}"
        );
    };
    conflict(&["--pod", "x", "--namespace", "y"], "namespace", "pod");
    conflict(
        &["--identity", "1", "--from-identity", "2"],
        "identity",
        "from-identity",
    );
    conflict(&["--port", "1", "--to-port", "2"], "port", "to-port");
    conflict(
        &["--from-ip", "1", "--from-pod", "x"],
        "from-ip",
        "from-pod",
    );
    conflict(
        &["--from-fqdn", "a", "--from-namespace", "x"],
        "from-fqdn",
        "from-namespace",
    );
    conflict(
        &["--from-namespace", "a", "--from-pod", "x"],
        "from-namespace",
        "from-pod",
    );
    conflict(&["--ip", "1", "--to-ip", "2"], "to-ip", "ip");
    conflict(&["--label", "a", "--to-label", "b"], "label", "to-label");
    conflict(
        &["--service", "a", "--from-service", "b"],
        "service",
        "from-service",
    );
    conflict(
        &["--workload", "a", "--to-workload", "b"],
        "workload",
        "to-workload",
    );
    // Different sides and different lists do not conflict.
    request(&["--from-ip", "1", "--to-pod", "x"]);
    request(&["--pod", "x", "--not", "--namespace", "y"]);
    request(&["--from-label", "a", "--to-label", "b"]);
}

#[test]
fn raw_allowlist_and_denylist() {
    assert_eq!(
        request(&[
            "--verdict",
            "DROPPED",
            "--allowlist",
            r#"{"reply":[true],"dns_query":["kube.*"]}"#,
            "--denylist",
            r#"{"source_pod":["kube-system/"]} {"destinationPod":["x/"],"verdict":["FORWARDED"]}"#,
        ]),
        filtered(
            vec![
                filter(|f| f.verdict = vec![Verdict::Dropped as i32]),
                filter(|f| {
                    f.reply = vec![true];
                    f.dns_query = vec![s("kube.*")];
                }),
            ],
            vec![
                filter(|f| f.source_pod = vec![s("kube-system/")]),
                filter(|f| {
                    f.destination_pod = vec![s("x/")];
                    f.verdict = vec![Verdict::Forwarded as i32];
                }),
            ]
        )
    );
    assert!(rejection(&["--allowlist", "{not json"]).starts_with("invalid --allowlist flag"));
    assert!(rejection(&["--denylist", r#"{"bogus":1}"#]).starts_with("invalid --denylist flag"));
}

#[test]
fn field_masks() {
    assert_eq!(
        request(&[
            "-o",
            "json",
            "--experimental-field-mask",
            "time,IP,source.pod_name"
        ]),
        GetFlowsRequest {
            number: 20,
            experimental: Some(Experimental {
                field_mask: Some(FieldMask {
                    paths: vec![s("time"), s("IP"), s("source.pod_name")],
                }),
            }),
            ..Default::default()
        }
    );
    let defaults = request(&["--experimental-use-default-field-masks"]);
    let paths = defaults.experimental.unwrap().field_mask.unwrap().paths;
    assert_eq!(paths.len(), 19);
    assert!(paths.contains(&s("Summary")));
    assert!(
        rejection(&["-o", "json", "--experimental-field-mask", "nope"])
            .contains("invalid path \"nope\"")
    );
    assert!(rejection(&["--experimental-field-mask", "time"]).contains("json"));
}

#[test]
fn print_raw_filters_yaml() {
    let yaml = |args: &[&str]| raw_filters_yaml(&request(args)).expect("yaml");
    assert_eq!(yaml(&[]), "{}\n");
    assert_eq!(
        yaml(&["--port", "53", "--not", "--verdict", "DROPPED"]),
        "allowlist:\n- '{\"source_port\":[\"53\"]}'\n- '{\"destination_port\":[\"53\"]}'\ndenylist:\n- '{\"verdict\":[\"DROPPED\"]}'\n"
    );
    // Single quotes inside are doubled, YAML style.
    assert_eq!(
        yaml(&["--http-path", "it's"]),
        "allowlist:\n- '{\"http_path\":[\"it''s\"]}'\n"
    );
}

#[test]
fn observe_flows_is_the_same_command() {
    let args = ["--ip", "1.2.3.4", "--last", "2", "--not", "-t", "drop"];
    let mut flows = vec!["periscope", "observe", "flows"];
    flows.extend(args);
    assert_eq!(
        flows_request_from_args(flows, now()).expect("flows"),
        request(&args)
    );
}
