//! Seed flows and expected query results shared by the 18.16 tests and the chdb (modern) test:
//! both engines run the same queries on the same rows and must give the same answers.

#![allow(dead_code)]

pub mod server;

use periscope_proto::flow::{
    self, CiliumEventType, DropReason, Endpoint, Flow, FlowType, IpVersion, L7FlowType, Layer4,
    Layer7, Policy, TcpFlags, TrafficDirection, Verdict, Workload, layer4::Protocol,
    layer7::Record,
};
use periscope_storage::FlowRow;
use periscope_storage::ParamValue;
use periscope_storage::queries::{
    self, DeniedByPolicy, DnsFailure, HistoryCursor, HistoryFilter, NewWorldDestination, PodFlow,
    QuerySpec, ServiceMapEdge, TcpReset, TopTalker, Window,
};

pub const CLUSTER: &str = "c1";
pub const SEC: i64 = 1_000_000_000;
/// A pod name made to break naive quoting.
pub const EVIL_POD: &str = r"evil'pod\; DROP TABLE flows; --";
/// Strings that would change a query if they were spliced into it.
pub const HOSTILE: [&str; 5] = [
    "' OR '1'='1",
    r"\' OR 1=1 --",
    "'; DROP TABLE flows; --",
    "x\\",
    "{pod:String}?`\n\t",
];

/// The seed's base time: an hour ago, on a minute boundary (recent, so no TTL touches it).
pub fn base_time_ns() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    (now - 3600) / 60 * 60 * SEC
}

#[derive(Clone)]
struct Peer {
    ip: &'static str,
    namespace: &'static str,
    pod: &'static str,
    workload: &'static str,
    identity: u32,
    labels: Vec<String>,
}

fn pod(
    namespace: &'static str,
    pod: &'static str,
    workload: &'static str,
    identity: u32,
    ip: &'static str,
) -> Peer {
    let app = if workload.is_empty() { pod } else { workload };
    Peer {
        ip,
        namespace,
        pod,
        workload,
        identity,
        labels: vec![format!("k8s:app={app}")],
    }
}

fn world(ip: &'static str) -> Peer {
    Peer {
        ip,
        namespace: "",
        pod: "",
        workload: "",
        identity: 2,
        labels: vec!["reserved:world".into()],
    }
}

impl Peer {
    fn endpoint(&self) -> Endpoint {
        Endpoint {
            id: 0,
            identity: self.identity,
            namespace: self.namespace.into(),
            labels: self.labels.clone(),
            pod_name: self.pod.into(),
            workloads: if self.workload.is_empty() {
                vec![]
            } else {
                vec![Workload {
                    name: self.workload.into(),
                    kind: "Deployment".into(),
                }]
            },
        }
    }
}

struct Spec {
    uuid: &'static str,
    at_ms: i64,
    src: Peer,
    dst: Peer,
    l4: Protocol,
    verdict: Verdict,
    direction: TrafficDirection,
    event_type: i32,
    drop_reason: DropReason,
    reply: Option<bool>,
    denied_by: Vec<Policy>,
    names: Vec<String>,
    l7: Option<Layer7>,
}

fn tcp(sport: u32, dport: u32, flags: &[&str]) -> Protocol {
    let mut f = TcpFlags::default();
    for flag in flags {
        match *flag {
            "SYN" => f.syn = true,
            "ACK" => f.ack = true,
            "RST" => f.rst = true,
            "FIN" => f.fin = true,
            other => panic!("flag {other}"),
        }
    }
    Protocol::Tcp(flow::Tcp {
        source_port: sport,
        destination_port: dport,
        flags: Some(f),
    })
}

fn udp(sport: u32, dport: u32) -> Protocol {
    Protocol::Udp(flow::Udp {
        source_port: sport,
        destination_port: dport,
    })
}

fn spec(uuid: &'static str, at_ms: i64, src: &Peer, dst: &Peer, l4: Protocol) -> Spec {
    Spec {
        uuid,
        at_ms,
        src: src.clone(),
        dst: dst.clone(),
        l4,
        verdict: Verdict::Forwarded,
        direction: TrafficDirection::Egress,
        event_type: 4,
        drop_reason: DropReason::Unknown,
        reply: Some(false),
        denied_by: vec![],
        names: vec![],
        l7: None,
    }
}

impl Spec {
    fn dropped(mut self, event_type: i32, reason: DropReason) -> Self {
        self.verdict = Verdict::Dropped;
        self.direction = TrafficDirection::Ingress;
        self.event_type = event_type;
        self.drop_reason = reason;
        self
    }
    /// Observed with this verdict, direction and monitor event type (drops: POLICY_DENIED).
    fn seen(mut self, verdict: Verdict, direction: TrafficDirection, event_type: i32) -> Self {
        self.verdict = verdict;
        self.direction = direction;
        self.event_type = event_type;
        if verdict == Verdict::Dropped {
            self.drop_reason = DropReason::PolicyDenied;
        }
        self
    }
    fn reply(mut self) -> Self {
        self.reply = Some(true);
        self
    }
    fn denied_by(mut self, name: &str, namespace: &str) -> Self {
        self.denied_by.push(Policy {
            name: name.into(),
            namespace: namespace.into(),
            labels: vec![format!("k8s:io.cilium.k8s.policy.name={name}")],
            revision: 4,
            kind: if namespace.is_empty() {
                "CiliumClusterwideNetworkPolicy".into()
            } else {
                "CiliumNetworkPolicy".into()
            },
        });
        self
    }
    fn names(mut self, names: &[&str]) -> Self {
        self.names = names.iter().map(|n| (*n).to_owned()).collect();
        self
    }
    fn dns_response(mut self, query: &str, rcode: u32) -> Self {
        self.reply = Some(true);
        self.event_type = 129;
        self.l7 = Some(Layer7 {
            r#type: L7FlowType::Response as i32,
            latency_ns: 1500,
            record: Some(Record::Dns(flow::Dns {
                query: query.into(),
                rcode,
                qtypes: vec!["A".into()],
                observation_source: "proxy".into(),
                ..Default::default()
            })),
        });
        self
    }

    fn flow(self, t0: i64) -> Flow {
        let t = t0 + self.at_ms * 1_000_000;
        let dropped = self.verdict == Verdict::Dropped;
        Flow {
            time: Some(prost_types::Timestamp {
                seconds: t.div_euclid(SEC),
                nanos: t.rem_euclid(SEC) as i32,
            }),
            uuid: self.uuid.into(),
            verdict: self.verdict as i32,
            drop_reason: if dropped { self.drop_reason as u32 } else { 0 },
            drop_reason_desc: self.drop_reason as i32,
            ip: Some(flow::Ip {
                source: self.src.ip.into(),
                destination: self.dst.ip.into(),
                ip_version: IpVersion::IPv4 as i32,
                encrypted: false,
                source_xlated: String::new(),
            }),
            l4: Some(Layer4 {
                protocol: Some(self.l4),
            }),
            source: Some(self.src.endpoint()),
            destination: Some(self.dst.endpoint()),
            r#type: if self.l7.is_some() {
                FlowType::L7
            } else {
                FlowType::L3L4
            } as i32,
            node_name: "node-1".into(),
            destination_names: self.names,
            l7: self.l7,
            reply: self.reply.unwrap_or(false),
            is_reply: self.reply,
            event_type: Some(CiliumEventType {
                r#type: self.event_type,
                sub_type: 0,
            }),
            traffic_direction: self.direction as i32,
            ingress_denied_by: self.denied_by,
            summary: format!("seed {}", self.uuid),
            periscope_bytes: seed_bytes(self.uuid),
            periscope_packets: 1,
            ..Default::default()
        }
    }
}

/// The bytes of a seed flow: 60 + its number (`f05`: 65), so that sums tell flows apart, and 0
/// for the [`REPLAYED`] ones: byte sums count a replayed copy again (storage-schema/README.md,
/// "Bytes on the map's edges"), and how many copies a run stores varies (a Replicated table
/// drops a block it already has); [`edge_rule`] shows the double count. 1000 for the other
/// flows.
fn seed_bytes(uuid: &str) -> u64 {
    if REPLAYED.contains(&uuid) {
        return 0;
    }
    uuid.strip_prefix('f')
        .and_then(|n| n.parse::<u64>().ok())
        .map_or(1000, |n| 60 + n)
}

/// The seed flows, `t0` = [`base_time_ns`]. Uuids `f01`..`f19` (f00 are not used).
pub fn seed_flows(t0: i64) -> Vec<Flow> {
    let fe = pod("shop", "frontend-1", "frontend", 52827, "10.0.1.1");
    let api = pod("shop", "api-1", "api", 4122, "10.0.1.2");
    let db = pod("data", "db-1", "db", 65281, "10.0.2.1");
    let intruder = pod("shop", "intruder-1", "", 777, "10.0.1.9");
    let dns = pod("kube-system", "coredns-1", "coredns", 102, "10.0.3.1");
    let evil = pod("shop", EVIL_POD, "", 778, "10.0.1.10");
    let scanner = world("203.0.113.7");
    let known = world("198.51.100.10");
    let fresh = world("192.0.2.55");
    vec![
        spec("f01", 0, &fe, &api, tcp(41000, 8080, &["SYN"])),
        spec("f02", 1_000, &api, &fe, tcp(8080, 41000, &["SYN", "ACK"])).reply(),
        spec("f03", 2_000, &api, &db, tcp(42000, 5432, &["SYN"])),
        // Default deny: the policy verdict and the drop of the same packet.
        spec("f04", 3_000, &fe, &db, tcp(41001, 5432, &["SYN"])).dropped(5, DropReason::Unknown),
        spec("f05", 3_000, &fe, &db, tcp(41001, 5432, &["SYN"]))
            .dropped(1, DropReason::PolicyDenied),
        spec("f06", 4_000, &intruder, &db, tcp(43000, 5432, &["SYN"]))
            .dropped(1, DropReason::PolicyDenied)
            .denied_by("db-deny", "data"),
        spec("f07", 5_000, &scanner, &fe, tcp(50000, 22, &["SYN"]))
            .dropped(1, DropReason::PolicyDeny)
            .denied_by("deny-ssh", ""),
        spec("f08", 10_000, &api, &known, tcp(44000, 443, &["SYN"])).names(&["api.example.com"]),
        spec("f09", 11_000, &fe, &fresh, tcp(41002, 443, &["SYN"])).names(&["cdn.example.net"]),
        spec("f10", 12_000, &fe, &fresh, tcp(41003, 80, &["SYN"])),
        spec("f11", 20_000, &dns, &fe, udp(53, 41100)).dns_response("nope.example.com.", 3),
        spec("f12", 21_000, &dns, &fe, udp(53, 41101)).dns_response("nope.example.com.", 3),
        spec("f13", 22_000, &dns, &fe, udp(53, 41102)).dns_response("api.example.com.", 0),
        spec("f19", 23_000, &dns, &api, udp(53, 41103))
            .dns_response("db.data.svc.cluster.local.", 2),
        spec("f14", 30_000, &db, &api, tcp(5432, 42000, &["RST"])).reply(),
        spec("f15", 31_000, &api, &db, tcp(42001, 5432, &["RST", "ACK"])),
        spec("f18", 40_000, &evil, &api, tcp(45000, 8080, &["SYN"])),
        // Before the window: the baseline contact with the known world address.
        spec("f16", -1_800_000, &api, &known, tcp(44001, 443, &["SYN"])),
        // After the pod window.
        spec("f17", 300_000, &fe, &api, tcp(41004, 8080, &["SYN"])),
    ]
    .into_iter()
    .map(|s| s.flow(t0))
    .collect()
}

/// Uuids of the flows inserted a second time (a spool replay).
pub const REPLAYED: [&str; 7] = ["f01", "f04", "f05", "f06", "f09", "f11", "f14"];

/// Rows as the relay writes them: first every seed flow, then the replay batch.
pub fn seed_batches(t0: i64) -> (Vec<FlowRow>, Vec<FlowRow>) {
    let rows: Vec<FlowRow> = seed_flows(t0)
        .iter()
        .map(|f| FlowRow::from_flow(f, CLUSTER))
        .collect();
    let replay = rows
        .iter()
        .filter(|r| REPLAYED.contains(&r.uuid.as_str()))
        .cloned()
        .collect();
    (rows, replay)
}

/// What a query must return.
pub enum Expected {
    DeniedByPolicy(Vec<DeniedByPolicy>),
    TopTalkers(Vec<TopTalker>),
    NewWorldDestinations(Vec<NewWorldDestination>),
    DnsFailures(Vec<DnsFailure>),
    TcpResets(Vec<TcpReset>),
    PodFlows(Vec<PodFlow>),
    ServiceMapEdges(Vec<ServiceMapEdge>),
    History(Vec<FlowRow>),
}

/// One query run with its parameters and expected result.
pub struct Case {
    pub id: String,
    pub spec: QuerySpec,
    pub params: Vec<(&'static str, ParamValue)>,
    pub expected: Expected,
}

fn s(v: &str) -> String {
    v.to_owned()
}

fn window_params(w: Window, limit: u32) -> Vec<(&'static str, ParamValue)> {
    vec![
        ("since_ns", w.since_ns.into()),
        ("until_ns", w.until_ns.into()),
        ("limit", limit.into()),
    ]
}

fn pod_flow(r: &FlowRow) -> PodFlow {
    PodFlow {
        time_ns: r.time_ns,
        uuid: r.uuid.clone(),
        node_name: r.node_name.clone(),
        verdict: r.verdict.clone(),
        drop_reason_desc: r.drop_reason_desc.clone(),
        traffic_direction: r.traffic_direction.clone(),
        is_reply: r.is_reply,
        source_namespace: r.source_namespace.clone(),
        source_pod_name: r.source_pod_name.clone(),
        source_ip: r.source_ip.clone(),
        source_port: r.source_port,
        destination_namespace: r.destination_namespace.clone(),
        destination_pod_name: r.destination_pod_name.clone(),
        destination_ip: r.destination_ip.clone(),
        destination_port: r.destination_port,
        protocol: r.protocol.clone(),
        tcp_flags: r.tcp_flags.clone(),
        denied_by: r
            .ingress_denied_by
            .iter()
            .chain(&r.egress_denied_by)
            .cloned()
            .collect(),
        summary: r.summary.clone(),
    }
}

fn rows_by_uuid(rows: &[FlowRow], uuids: &[&str]) -> Vec<FlowRow> {
    uuids
        .iter()
        .map(|u| {
            rows.iter()
                .find(|r| r.uuid == *u)
                .unwrap_or_else(|| panic!("no seed {u}"))
                .clone()
        })
        .collect()
}

/// Every shipped query at least once, on the seed of [`seed_batches`]`(t0)`.
pub fn cases(t0: i64) -> Vec<Case> {
    let (rows, _) = seed_batches(t0);
    let at = |ms: i64| t0 + ms * 1_000_000;
    let minute = Window {
        since_ns: t0,
        until_ns: t0 + 60 * SEC,
    };
    let mut cases = Vec::new();

    let denied = |policy: &str,
                  ns: &str,
                  src: &str,
                  id: u32,
                  dport: u32,
                  dst: &str,
                  flows: u64,
                  drops: u64,
                  ms: i64| DeniedByPolicy {
        policy: s(policy),
        traffic_direction: s("INGRESS"),
        source_namespace: s(ns),
        source: s(src),
        source_identity: id,
        destination_namespace: s(if dst == "db" { "data" } else { "shop" }),
        destination: s(dst),
        destination_port: dport,
        protocol: s("TCP"),
        flows,
        drops,
        first_seen_ns: at(ms),
        last_seen_ns: at(ms),
    };
    cases.push(Case {
        id: s("denied_by_policy"),
        spec: queries::DENIED_BY_POLICY,
        params: window_params(minute, 100),
        expected: Expected::DeniedByPolicy(vec![
            denied(
                "(default deny)",
                "shop",
                "frontend",
                52827,
                5432,
                "db",
                2,
                1,
                3_000,
            ),
            denied(
                "data/db-deny",
                "shop",
                "intruder-1",
                777,
                5432,
                "db",
                1,
                1,
                4_000,
            ),
            denied(
                "deny-ssh",
                "",
                "203.0.113.7",
                2,
                22,
                "frontend",
                1,
                1,
                5_000,
            ),
        ]),
    });

    let talker =
        |sns: &str, src: &str, dns: &str, dst: &str, port: u32, flows: u64, dropped: u64| {
            // The seed's flows of the talker (seed_bytes: 60 + the uuid's number; the replayed
            // f01, f04, f05, f06 and f09 carry none).
            let bytes = match (src, dst, port) {
                ("api", "db", _) => 63 + 75,
                ("frontend", "db", _) => 0,
                (_, "frontend", 22) => 67,
                ("api", _, 443) => 68,
                (_, "api", 8080) if src == EVIL_POD => 78,
                ("frontend", _, 80) => 70,
                ("frontend", _, 443) => 0,
                ("frontend", "api", _) => 0,
                ("intruder-1", ..) => 0,
                other => panic!("no seed bytes for {other:?}"),
            };
            TopTalker {
                source_namespace: s(sns),
                source: s(src),
                destination_namespace: s(dns),
                destination: s(dst),
                destination_port: port,
                protocol: s("TCP"),
                flows,
                dropped,
                packets: flows,
                bytes,
            }
        };
    cases.push(Case {
        id: s("top_talkers"),
        spec: queries::TOP_TALKERS,
        params: window_params(minute, 100),
        expected: Expected::TopTalkers(vec![
            talker("shop", "api", "data", "db", 5432, 2, 0),
            talker("shop", "frontend", "data", "db", 5432, 2, 2),
            talker("", "203.0.113.7", "shop", "frontend", 22, 1, 1),
            talker("shop", "api", "", "198.51.100.10", 443, 1, 0),
            talker("shop", EVIL_POD, "shop", "api", 8080, 1, 0),
            talker("shop", "frontend", "", "192.0.2.55", 80, 1, 0),
            talker("shop", "frontend", "", "192.0.2.55", 443, 1, 0),
            talker("shop", "frontend", "shop", "api", 8080, 1, 0),
            talker("shop", "intruder-1", "data", "db", 5432, 1, 1),
        ]),
    });
    cases.push(Case {
        id: s("top_talkers_limit_2"),
        spec: queries::TOP_TALKERS,
        params: window_params(minute, 2),
        expected: Expected::TopTalkers(vec![
            talker("shop", "api", "data", "db", 5432, 2, 0),
            talker("shop", "frontend", "data", "db", 5432, 2, 2),
        ]),
    });

    let mut nw = vec![("baseline_since_ns", ParamValue::Int(t0 - 3600 * SEC))];
    nw.extend(window_params(minute, 100));
    cases.push(Case {
        id: s("new_world_destinations"),
        spec: queries::NEW_WORLD_DESTINATIONS,
        params: nw,
        expected: Expected::NewWorldDestinations(vec![NewWorldDestination {
            destination_ip: s("192.0.2.55"),
            destination_names: vec![s("cdn.example.net")],
            destination_ports: vec![80, 443],
            sources: vec![s("shop/frontend")],
            flows: 2,
            first_seen_ns: at(11_000),
        }]),
    });
    // Without the baseline, the known address is new too.
    let mut nw = vec![("baseline_since_ns", ParamValue::Int(t0))];
    nw.extend(window_params(minute, 100));
    cases.push(Case {
        id: s("new_world_destinations_no_baseline"),
        spec: queries::NEW_WORLD_DESTINATIONS,
        params: nw,
        expected: Expected::NewWorldDestinations(vec![
            NewWorldDestination {
                destination_ip: s("198.51.100.10"),
                destination_names: vec![s("api.example.com")],
                destination_ports: vec![443],
                sources: vec![s("shop/api")],
                flows: 1,
                first_seen_ns: at(10_000),
            },
            NewWorldDestination {
                destination_ip: s("192.0.2.55"),
                destination_names: vec![s("cdn.example.net")],
                destination_ports: vec![80, 443],
                sources: vec![s("shop/frontend")],
                flows: 2,
                first_seen_ns: at(11_000),
            },
        ]),
    });

    cases.push(Case {
        id: s("dns_failures"),
        spec: queries::DNS_FAILURES,
        params: window_params(minute, 100),
        expected: Expected::DnsFailures(vec![
            DnsFailure {
                dns_query: s("nope.example.com."),
                dns_rcode: 3,
                rcode_name: s("NXDOMAIN"),
                client_namespace: s("shop"),
                client_pod: s("frontend-1"),
                failures: 2,
                first_seen_ns: at(20_000),
                last_seen_ns: at(21_000),
            },
            DnsFailure {
                dns_query: s("db.data.svc.cluster.local."),
                dns_rcode: 2,
                rcode_name: s("SERVFAIL"),
                client_namespace: s("shop"),
                client_pod: s("api-1"),
                failures: 1,
                first_seen_ns: at(23_000),
                last_seen_ns: at(23_000),
            },
        ]),
    });

    cases.push(Case {
        id: s("tcp_resets"),
        spec: queries::TCP_RESETS,
        params: window_params(minute, 100),
        expected: Expected::TcpResets(vec![
            TcpReset {
                source_namespace: s("data"),
                source: s("db"),
                destination_namespace: s("shop"),
                destination: s("api"),
                port: 5432,
                resets: 1,
                dropped: 0,
                first_seen_ns: at(30_000),
                last_seen_ns: at(30_000),
            },
            TcpReset {
                source_namespace: s("shop"),
                source: s("api"),
                destination_namespace: s("data"),
                destination: s("db"),
                port: 5432,
                resets: 1,
                dropped: 0,
                first_seen_ns: at(31_000),
                last_seen_ns: at(31_000),
            },
        ]),
    });

    let pod_params = |namespace: &str, pod: &str, limit: u32| {
        vec![
            ("namespace", ParamValue::from(namespace)),
            ("pod", ParamValue::from(pod)),
            ("at_ns", ParamValue::Int(t0)),
            ("around_ns", ParamValue::Int(60 * SEC)),
            ("limit", ParamValue::UInt(limit.into())),
        ]
    };
    let fe_flows = [
        "f01", "f02", "f04", "f05", "f07", "f09", "f10", "f11", "f12", "f13",
    ];
    cases.push(Case {
        id: s("pod_flows"),
        spec: queries::POD_FLOWS,
        params: pod_params("shop", "frontend-1", 100),
        expected: Expected::PodFlows(
            rows_by_uuid(&rows, &fe_flows)
                .iter()
                .map(pod_flow)
                .collect(),
        ),
    });
    cases.push(Case {
        id: s("pod_flows_evil_name"),
        spec: queries::POD_FLOWS,
        params: pod_params("shop", EVIL_POD, 100),
        expected: Expected::PodFlows(rows_by_uuid(&rows, &["f18"]).iter().map(pod_flow).collect()),
    });
    for (i, hostile) in HOSTILE.iter().enumerate() {
        cases.push(Case {
            id: format!("pod_flows_hostile_{i}"),
            spec: queries::POD_FLOWS,
            params: pod_params(hostile, hostile, 100),
            expected: Expected::PodFlows(vec![]),
        });
        cases.push(Case {
            id: format!("pod_flows_hostile_pod_{i}"),
            spec: queries::POD_FLOWS,
            params: pod_params("shop", hostile, 100),
            expected: Expected::PodFlows(vec![]),
        });
    }

    let edge = |sns: &str,
                src: &str,
                dns: &str,
                dst: &str,
                port: u32,
                verdict: &str,
                flows: u64,
                first_ms: i64,
                last_ms: i64| ServiceMapEdge {
        cluster: s(CLUSTER),
        source_namespace: s(sns),
        source: s(src),
        destination_namespace: s(dns),
        destination: s(dst),
        destination_port: port,
        protocol: s("TCP"),
        verdict: s(verdict),
        flows,
        // The seed's flows of the edge (seed_bytes: 60 + the uuid's number; the replayed f05,
        // f06 and f09 carry none).
        bytes: match (src, dst, port) {
            (_, "frontend", 22) => 67,
            ("api", _, 443) => 68,
            ("frontend", _, 80) => 70,
            ("frontend", _, 443) => 0,
            ("frontend", "db", _) => 0,
            ("intruder-1", "db", _) => 0,
            other => panic!("no seed bytes for {other:?}"),
        },
        first_seen_ns: at(first_ms),
        last_seen_ns: at(last_ms),
    };
    // The map counts one observation per packet (migration 0005, the live map's rule): the
    // seed's egress traces towards workloads (f01, f03, f15, f18) and the policy verdict f04 do
    // not count, replies and L7 records neither; drops, and egress towards the world, do.
    cases.push(Case {
        id: s("service_map_edges"),
        spec: queries::SERVICE_MAP_EDGES,
        params: window_params(minute, 100),
        expected: Expected::ServiceMapEdges(vec![
            edge(
                "",
                "reserved:world",
                "shop",
                "frontend",
                22,
                "DROPPED",
                1,
                5_000,
                5_000,
            ),
            edge(
                "shop",
                "api",
                "",
                "reserved:world",
                443,
                "FORWARDED",
                1,
                10_000,
                10_000,
            ),
            edge(
                "shop",
                "frontend",
                "",
                "reserved:world",
                80,
                "FORWARDED",
                1,
                12_000,
                12_000,
            ),
            edge(
                "shop",
                "frontend",
                "",
                "reserved:world",
                443,
                "FORWARDED",
                1,
                11_000,
                11_000,
            ),
            edge(
                "shop", "frontend", "data", "db", 5432, "DROPPED", 1, 3_000, 3_000,
            ),
            edge(
                "shop",
                "intruder-1",
                "data",
                "db",
                5432,
                "DROPPED",
                1,
                4_000,
                4_000,
            ),
        ]),
    });

    // History: everything, oldest first (each flow once although seven were inserted twice).
    let mut all = rows.clone();
    all.sort_by(|a, b| (a.time_ns, &a.uuid).cmp(&(b.time_ns, &b.uuid)));
    let wide = Window {
        since_ns: t0 - 3600 * SEC,
        until_ns: t0 + 3600 * SEC,
    };
    cases.push(Case {
        id: s("history_all"),
        spec: queries::HISTORY,
        params: queries::history_params(&HistoryFilter::window(wide, 1000)),
        expected: Expected::History(all.clone()),
    });
    let mut last3: Vec<FlowRow> = all.iter().rev().take(3).cloned().collect();
    last3.truncate(3);
    cases.push(Case {
        id: s("history_last_3"),
        spec: queries::HISTORY,
        params: queries::history_params(&HistoryFilter {
            descending: true,
            ..HistoryFilter::window(wide, 3)
        }),
        expected: Expected::History(last3),
    });
    // Keyset paging: the page after a cursor, oldest first and newest first (uuid ascending on
    // time ties in both orders).
    cases.push(Case {
        id: s("history_page_after_cursor"),
        spec: queries::HISTORY,
        params: queries::history_params(&HistoryFilter {
            after: Some(HistoryCursor::after(&all[4])),
            ..HistoryFilter::window(wide, 5)
        }),
        expected: Expected::History(all[5..10].to_vec()),
    });
    let mut newest_first = all.clone();
    newest_first.sort_by(|a, b| (b.time_ns, &a.uuid).cmp(&(a.time_ns, &b.uuid)));
    cases.push(Case {
        id: s("history_descending_page_after_cursor"),
        spec: queries::HISTORY,
        params: queries::history_params(&HistoryFilter {
            descending: true,
            after: Some(HistoryCursor::after(&newest_first[2])),
            ..HistoryFilter::window(wide, 4)
        }),
        expected: Expected::History(newest_first[3..7].to_vec()),
    });
    cases.push(Case {
        id: s("history_dropped_in_data"),
        spec: queries::HISTORY,
        params: queries::history_params(&HistoryFilter {
            namespace: s("data"),
            verdict: s("DROPPED"),
            cluster: s(CLUSTER),
            node_name: s("node-1"),
            ..HistoryFilter::window(wide, 1000)
        }),
        expected: Expected::History(rows_by_uuid(&rows, &["f04", "f05", "f06"])),
    });
    cases.push(Case {
        id: s("history_pod_exact_window"),
        spec: queries::HISTORY,
        params: queries::history_params(&HistoryFilter {
            namespace: s("shop"),
            pod: s("frontend-1"),
            // Nanosecond-exact bounds: f04 and f05 (at 3 s) are in, f02 (1 s) and f07 (5 s) out.
            ..HistoryFilter::window(
                Window {
                    since_ns: at(1_000) + 1,
                    until_ns: at(5_000) - 1,
                },
                1000,
            )
        }),
        expected: Expected::History(rows_by_uuid(&rows, &["f04", "f05"])),
    });
    for (i, hostile) in HOSTILE.iter().enumerate() {
        cases.push(Case {
            id: format!("history_hostile_{i}"),
            spec: queries::HISTORY,
            params: queries::history_params(&HistoryFilter {
                namespace: s(hostile),
                pod: s(hostile),
                verdict: s(hostile),
                cluster: s(hostile),
                node_name: s(hostile),
                ..HistoryFilter::window(wide, 1000)
            }),
            expected: Expected::History(vec![]),
        });
    }
    cases.push(Case {
        id: s("history_evil_pod"),
        spec: queries::HISTORY,
        params: queries::history_params(&HistoryFilter {
            pod: s(EVIL_POD),
            ..HistoryFilter::window(wide, 1000)
        }),
        expected: Expected::History(rows_by_uuid(&rows, &["f18"])),
    });

    for spec in queries::ALL {
        assert!(
            cases.iter().any(|c| c.spec.name == spec.name),
            "no case runs {}",
            spec.name
        );
    }
    cases
}

/// Monitor event types of the edge-rule flows.
const TRACE: i32 = 4;
const DROP: i32 = 1;
const POLICY_VERDICT: i32 = 5;

/// The map's edge rule (`periscope_ui_api::edge_of`, the view of migration 0005) on the same
/// flows before and after the migration: `before` is inserted while 0002's view is in place
/// (minute 0 of `t0`), `after` once 0005 has replaced it (minute 2). `windows` are the two
/// minutes with what `service_map_edges` must answer for each: minute 0 keeps 0002's counting
/// (every L3/L4 flow that is not a reply), minute 2 counts one observation per packet.
pub struct EdgeRule {
    /// Flows of minute 0, uuids `b-…`.
    pub before: Vec<FlowRow>,
    /// The same flows in minute 2, uuids `a-…`.
    pub after: Vec<FlowRow>,
    /// `(id, window, expected rows)`: `edge_rule_before` (minute 0), `edge_rule_after` (minute 2).
    pub windows: Vec<(String, Window, Vec<ServiceMapEdge>)>,
}

/// The flows of [`EdgeRule`], `at` = the first nanosecond of their minute, uuids prefixed by
/// `tag`: each case of the rule, commented with the views that count it (0002's, 0005's).
pub fn edge_rule_flows(at: i64, tag: &str) -> Vec<FlowRow> {
    use TrafficDirection::{Egress, Ingress};
    use Verdict::{Audit, Dropped, Forwarded, Redirected, Traced, Translated};
    let fe = pod("shop", "frontend-1", "frontend", 52827, "10.0.1.1");
    let api = pod("shop", "api-1", "api", 4122, "10.0.1.2");
    let db = pod("data", "db-1", "db", 65281, "10.0.2.1");
    let out = world("192.0.2.55");
    let to_api = |sport| tcp(sport, 8080, &["SYN"]);
    let to_db = |sport| tcp(sport, 5432, &["SYN"]);
    let mut specs = vec![
        // Two packets frontend → api, each seen leaving frontend and arriving at api: the
        // egress traces count only under 0002, the ingress traces under both.
        spec("egress-fwd-1", 1_000, &fe, &api, to_api(41000)).seen(Forwarded, Egress, TRACE),
        spec("ingress-fwd-1", 1_100, &fe, &api, to_api(41000)).seen(Forwarded, Ingress, TRACE),
        spec("egress-fwd-2", 2_000, &fe, &api, to_api(41001)).seen(Forwarded, Egress, TRACE),
        spec("ingress-fwd-2", 2_100, &fe, &api, to_api(41001)).seen(Forwarded, Ingress, TRACE),
        // The other forwarding verdicts at egress towards a workload: 0002 only.
        spec("egress-redirected", 3_000, &fe, &api, to_api(41002)).seen(Redirected, Egress, TRACE),
        spec("egress-translated", 3_100, &fe, &api, to_api(41003)).seen(Translated, Egress, TRACE),
        spec("egress-traced", 3_200, &fe, &api, to_api(41004)).seen(Traced, Egress, TRACE),
        // Two packets frontend → db denied at db's ingress, each a policy verdict notification
        // and a drop: the notifications count only under 0002, the drops under both.
        spec("verdict-1", 4_000, &fe, &db, to_db(42000)).seen(Dropped, Ingress, POLICY_VERDICT),
        spec("ingress-drop-1", 4_000, &fe, &db, to_db(42000)).seen(Dropped, Ingress, DROP),
        spec("verdict-2", 4_500, &fe, &db, to_db(42001)).seen(Dropped, Ingress, POLICY_VERDICT),
        spec("ingress-drop-2", 4_500, &fe, &db, to_db(42001)).seen(Dropped, Ingress, DROP),
        // Dropped at the source's egress: both.
        spec("egress-drop", 5_000, &api, &db, to_db(42002)).seen(Dropped, Egress, DROP),
        // AUDIT is not a forwarding verdict: counted at egress too, both.
        spec("egress-audit", 5_500, &fe, &db, to_db(42003)).seen(Audit, Egress, TRACE),
        // Leaving towards the world (no destination namespace): both.
        spec("egress-world", 6_000, &fe, &out, tcp(41005, 443, &["SYN"]))
            .seen(Forwarded, Egress, TRACE),
        spec(
            "egress-world-traced",
            6_500,
            &fe,
            &out,
            tcp(41006, 80, &["SYN"]),
        )
        .seen(Traced, Egress, TRACE),
        // A reply, delivered to frontend: neither.
        spec("reply", 7_000, &api, &fe, tcp(8080, 41000, &["SYN", "ACK"]))
            .seen(Forwarded, Ingress, TRACE)
            .reply(),
        // Reply or not unknown (no conntrack verdict): counted, as the live map does.
        spec("ingress-unknown-reply", 7_500, &api, &db, to_db(42004))
            .seen(Forwarded, Ingress, TRACE),
    ];
    specs.last_mut().expect("flows").reply = None;
    let mut flows: Vec<Flow> = specs.into_iter().map(|s| s.flow(at)).collect();
    // An L3/L4 record without L4 (the protocol was not decoded): 0002 only.
    let mut no_l4 = spec("no-l4", 8_000, &fe, &api, to_api(0))
        .seen(Forwarded, Ingress, TRACE)
        .flow(at);
    no_l4.l4 = None;
    flows.push(no_l4);
    flows
        .iter_mut()
        .map(|f| {
            f.uuid = format!("{tag}{}", f.uuid);
            FlowRow::from_flow(f, CLUSTER)
        })
        .collect()
}

/// The scenario of [`EdgeRule`] with `t0` = [`base_time_ns`].
pub fn edge_rule(t0: i64) -> EdgeRule {
    let minute = |m: i64| Window {
        since_ns: t0 + m * 60 * SEC,
        until_ns: t0 + (m + 1) * 60 * SEC - 1,
    };
    let edge = |m: i64| {
        move |sns: &str,
              src: &str,
              dns: &str,
              dst: &str,
              port: u32,
              protocol: &str,
              verdict: &str,
              flows: u64,
              first_ms: i64,
              last_ms: i64| ServiceMapEdge {
            cluster: s(CLUSTER),
            source_namespace: s(sns),
            source: s(src),
            destination_namespace: s(dns),
            destination: s(dst),
            destination_port: port,
            protocol: s(protocol),
            verdict: s(verdict),
            flows,
            // 1000 bytes per flow (seed_bytes), inserted twice (the replay adds its bytes
            // again: sums, unlike the uuid sets); minute 0 was aggregated before 0007.
            bytes: if m == 0 { 0 } else { 2 * 1000 * flows },
            first_seen_ns: t0 + m * 60 * SEC + first_ms * 1_000_000,
            last_seen_ns: t0 + m * 60 * SEC + last_ms * 1_000_000,
        }
    };
    let (old, new) = (edge(0), edge(2));
    let world = "reserved:world";
    EdgeRule {
        before: edge_rule_flows(minute(0).since_ns, "b-"),
        after: edge_rule_flows(minute(2).since_ns, "a-"),
        windows: vec![
            (
                s("edge_rule_before"),
                minute(0),
                vec![
                    // Both observations of both packets, the verdicts with the drops.
                    old(
                        "shop", "frontend", "data", "db", 5432, "TCP", "DROPPED", 4, 4_000, 4_500,
                    ),
                    old(
                        "shop",
                        "frontend",
                        "shop",
                        "api",
                        8080,
                        "TCP",
                        "FORWARDED",
                        4,
                        1_000,
                        2_100,
                    ),
                    old(
                        "shop", "api", "data", "db", 5432, "TCP", "DROPPED", 1, 5_000, 5_000,
                    ),
                    old(
                        "shop",
                        "api",
                        "data",
                        "db",
                        5432,
                        "TCP",
                        "FORWARDED",
                        1,
                        7_500,
                        7_500,
                    ),
                    old(
                        "shop", "frontend", "", world, 80, "TCP", "TRACED", 1, 6_500, 6_500,
                    ),
                    old(
                        "shop",
                        "frontend",
                        "",
                        world,
                        443,
                        "TCP",
                        "FORWARDED",
                        1,
                        6_000,
                        6_000,
                    ),
                    old(
                        "shop", "frontend", "data", "db", 5432, "TCP", "AUDIT", 1, 5_500, 5_500,
                    ),
                    old(
                        "shop",
                        "frontend",
                        "shop",
                        "api",
                        0,
                        "",
                        "FORWARDED",
                        1,
                        8_000,
                        8_000,
                    ),
                    old(
                        "shop",
                        "frontend",
                        "shop",
                        "api",
                        8080,
                        "TCP",
                        "REDIRECTED",
                        1,
                        3_000,
                        3_000,
                    ),
                    old(
                        "shop", "frontend", "shop", "api", 8080, "TCP", "TRACED", 1, 3_200, 3_200,
                    ),
                    old(
                        "shop",
                        "frontend",
                        "shop",
                        "api",
                        8080,
                        "TCP",
                        "TRANSLATED",
                        1,
                        3_100,
                        3_100,
                    ),
                ],
            ),
            (
                s("edge_rule_after"),
                minute(2),
                vec![
                    // One observation per packet: the drops, the ingress traces.
                    new(
                        "shop", "frontend", "data", "db", 5432, "TCP", "DROPPED", 2, 4_000, 4_500,
                    ),
                    new(
                        "shop",
                        "frontend",
                        "shop",
                        "api",
                        8080,
                        "TCP",
                        "FORWARDED",
                        2,
                        1_100,
                        2_100,
                    ),
                    new(
                        "shop", "api", "data", "db", 5432, "TCP", "DROPPED", 1, 5_000, 5_000,
                    ),
                    new(
                        "shop",
                        "api",
                        "data",
                        "db",
                        5432,
                        "TCP",
                        "FORWARDED",
                        1,
                        7_500,
                        7_500,
                    ),
                    new(
                        "shop", "frontend", "", world, 80, "TCP", "TRACED", 1, 6_500, 6_500,
                    ),
                    new(
                        "shop",
                        "frontend",
                        "",
                        world,
                        443,
                        "TCP",
                        "FORWARDED",
                        1,
                        6_000,
                        6_000,
                    ),
                    new(
                        "shop", "frontend", "data", "db", 5432, "TCP", "AUDIT", 1, 5_500, 5_500,
                    ),
                ],
            ),
        ],
    }
}
