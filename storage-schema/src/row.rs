//! [`FlowRow`]: the storage projection of a Hubble `Flow`, and its inverse.

use periscope_proto::flow::{
    self, AuthType, CiliumEventType, DebugCapturePoint, DropReason, Endpoint, Ethernet, Flow,
    FlowType, IpVersion, L7FlowType, Layer4, Layer7, NetworkInterface, Policy, Service,
    SocketTranslationPoint, TcpFlags, TraceObservationPoint, TrafficDirection, Verdict, Workload,
    layer4::Protocol, layer7::Record,
};
use prost_types::Timestamp;
use serde::{Deserialize, Serialize};

/// Name of the flows table.
pub const FLOWS_TABLE: &str = "flows";

/// A stored value that does not map back onto the Flow schema.
#[derive(Debug, thiserror::Error)]
#[error("flow {uuid}: column {column} holds {value:?}, which is not {expected}")]
pub struct RowError {
    /// The row's uuid.
    pub uuid: String,
    /// The column.
    pub column: &'static str,
    /// What it holds.
    pub value: String,
    /// What was expected.
    pub expected: &'static str,
}

/// One row of the `flows` table: every field of a Hubble `Flow` that is stored, flattened into
/// columns. Field order is the table's column order (RowBinary needs it); the names and the
/// RowBinary encoding are the same in both dialects, so one struct serves both.
///
/// Conventions:
/// - Enums are stored by their proto name (`DROPPED`, `POLICY_DENIED`, `INGRESS`), or as the
///   decimal number when the value has no name.
/// - Booleans are `UInt8` (0/1); `is_reply` is `Nullable(UInt8)` (unknown = NULL).
/// - Optional sub-messages are flattened with default values for "absent"; [`FlowRow::to_flow`]
///   rebuilds a sub-message when any of its stored fields is set (see there).
/// - Lists of messages become parallel arrays (`*_workload_names` / `*_workload_kinds`,
///   `*_by` / `*_by_namespaces` / ... for the four policy lists, `http_header_keys` / `_values`).
///
/// Fields are owned: the row is also read back (history) and converted into a `Flow`, and the
/// relay's spool keeps rows beyond the Flow's lifetime.
#[derive(Clone, Debug, Default, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct FlowRow {
    /// Flow.uuid: the deduplication key.
    pub uuid: String,
    /// Flow.time in nanoseconds since the Unix epoch (`time` is derived from it by the table).
    pub time_ns: i64,
    /// The cluster the relay serves (not part of Flow; set by [`FlowRow::from_flow`]).
    pub cluster: String,
    /// Flow.node_name.
    pub node_name: String,
    /// Flow.verdict.
    pub verdict: String,
    /// Flow.drop_reason (deprecated numeric code).
    pub drop_reason: u32,
    /// Flow.drop_reason_desc.
    pub drop_reason_desc: String,
    /// Flow.auth_type.
    pub auth_type: String,
    /// Flow.Type (`L3_L4`, `L7`, `SOCK`).
    pub flow_type: String,
    /// Flow.event_type.type (monitor message type: 1 drop, 4 trace, 5 policy verdict, ...).
    pub event_type: i32,
    /// Flow.event_type.sub_type.
    pub event_sub_type: i32,
    /// Flow.traffic_direction.
    pub traffic_direction: String,
    /// Flow.trace_observation_point.
    pub trace_observation_point: String,
    /// Flow.debug_capture_point.
    pub debug_capture_point: String,
    /// Flow.sock_xlate_point.
    pub sock_xlate_point: String,
    /// Flow.policy_match_type.
    pub policy_match_type: u32,
    /// Flow.is_reply: NULL when unknown.
    pub is_reply: Option<u8>,
    /// Flow.reply (deprecated).
    pub reply: u8,
    /// Flow.ethernet.source.
    pub ethernet_source: String,
    /// Flow.ethernet.destination.
    pub ethernet_destination: String,
    /// Flow.IP.ipVersion.
    pub ip_version: String,
    /// Flow.IP.source.
    pub source_ip: String,
    /// Flow.IP.destination.
    pub destination_ip: String,
    /// Flow.IP.encrypted.
    pub ip_encrypted: u8,
    /// Which Flow.l4 protocol is set: `TCP`, `UDP`, `ICMPv4`, `ICMPv6`, `SCTP`, or empty.
    pub protocol: String,
    /// TCP/UDP/SCTP source port.
    pub source_port: u32,
    /// TCP/UDP/SCTP destination port.
    pub destination_port: u32,
    /// TCP flags that are set, in the order FIN SYN RST PSH ACK URG ECE CWR NS.
    pub tcp_flags: Vec<String>,
    /// ICMPv4/ICMPv6 type.
    pub icmp_type: u32,
    /// ICMPv4/ICMPv6 code.
    pub icmp_code: u32,
    /// Flow.source.ID.
    pub source_endpoint_id: u32,
    /// Flow.source.identity.
    pub source_identity: u32,
    /// Flow.source.namespace.
    pub source_namespace: String,
    /// Flow.source.pod_name.
    pub source_pod_name: String,
    /// Flow.source.labels.
    pub source_labels: Vec<String>,
    /// Name of the source's first workload (a sorting-key column).
    pub source_workload: String,
    /// Kind of the source's first workload.
    pub source_workload_kind: String,
    /// Names of all the source's workloads.
    pub source_workload_names: Vec<String>,
    /// Kinds of all the source's workloads.
    pub source_workload_kinds: Vec<String>,
    /// Flow.source_names (DNS names of the source).
    pub source_names: Vec<String>,
    /// Flow.source_service.name.
    pub source_service_name: String,
    /// Flow.source_service.namespace.
    pub source_service_namespace: String,
    /// Flow.destination.ID.
    pub destination_endpoint_id: u32,
    /// Flow.destination.identity.
    pub destination_identity: u32,
    /// Flow.destination.namespace.
    pub destination_namespace: String,
    /// Flow.destination.pod_name.
    pub destination_pod_name: String,
    /// Flow.destination.labels.
    pub destination_labels: Vec<String>,
    /// Name of the destination's first workload.
    pub destination_workload: String,
    /// Kind of the destination's first workload.
    pub destination_workload_kind: String,
    /// Names of all the destination's workloads.
    pub destination_workload_names: Vec<String>,
    /// Kinds of all the destination's workloads.
    pub destination_workload_kinds: Vec<String>,
    /// Flow.destination_names (DNS names of the destination).
    pub destination_names: Vec<String>,
    /// Flow.destination_service.name.
    pub destination_service_name: String,
    /// Flow.destination_service.namespace.
    pub destination_service_namespace: String,
    /// Flow.interface.index.
    pub interface_index: u32,
    /// Flow.interface.name.
    pub interface_name: String,
    /// Flow.proxy_port.
    pub proxy_port: u32,
    /// Flow.trace_context.parent.trace_id.
    pub trace_id: String,
    /// Flow.socket_cookie.
    pub socket_cookie: u64,
    /// Flow.cgroup_id.
    pub cgroup_id: u64,
    /// Names of Flow.ingress_allowed_by.
    pub ingress_allowed_by: Vec<String>,
    /// Namespaces of Flow.ingress_allowed_by.
    pub ingress_allowed_by_namespaces: Vec<String>,
    /// Kinds of Flow.ingress_allowed_by.
    pub ingress_allowed_by_kinds: Vec<String>,
    /// Revisions of Flow.ingress_allowed_by.
    pub ingress_allowed_by_revisions: Vec<u64>,
    /// Labels of Flow.ingress_allowed_by.
    pub ingress_allowed_by_labels: Vec<Vec<String>>,
    /// Names of Flow.egress_allowed_by.
    pub egress_allowed_by: Vec<String>,
    /// Namespaces of Flow.egress_allowed_by.
    pub egress_allowed_by_namespaces: Vec<String>,
    /// Kinds of Flow.egress_allowed_by.
    pub egress_allowed_by_kinds: Vec<String>,
    /// Revisions of Flow.egress_allowed_by.
    pub egress_allowed_by_revisions: Vec<u64>,
    /// Labels of Flow.egress_allowed_by.
    pub egress_allowed_by_labels: Vec<Vec<String>>,
    /// Names of Flow.ingress_denied_by.
    pub ingress_denied_by: Vec<String>,
    /// Namespaces of Flow.ingress_denied_by.
    pub ingress_denied_by_namespaces: Vec<String>,
    /// Kinds of Flow.ingress_denied_by.
    pub ingress_denied_by_kinds: Vec<String>,
    /// Revisions of Flow.ingress_denied_by.
    pub ingress_denied_by_revisions: Vec<u64>,
    /// Labels of Flow.ingress_denied_by.
    pub ingress_denied_by_labels: Vec<Vec<String>>,
    /// Names of Flow.egress_denied_by.
    pub egress_denied_by: Vec<String>,
    /// Namespaces of Flow.egress_denied_by.
    pub egress_denied_by_namespaces: Vec<String>,
    /// Kinds of Flow.egress_denied_by.
    pub egress_denied_by_kinds: Vec<String>,
    /// Revisions of Flow.egress_denied_by.
    pub egress_denied_by_revisions: Vec<u64>,
    /// Labels of Flow.egress_denied_by.
    pub egress_denied_by_labels: Vec<Vec<String>>,
    /// Flow.l7.type.
    pub l7_type: String,
    /// Which Flow.l7 record is set: `dns`, `http`, `kafka`, or empty.
    pub l7_protocol: String,
    /// Flow.l7.latency_ns.
    pub l7_latency_ns: u64,
    /// DNS query name (with the trailing dot).
    pub dns_query: String,
    /// DNS answer IPs.
    pub dns_ips: Vec<String>,
    /// DNS TTL.
    pub dns_ttl: u32,
    /// DNS CNAMEs.
    pub dns_cnames: Vec<String>,
    /// Who observed the DNS record.
    pub dns_observation_source: String,
    /// DNS response code (0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, ...).
    pub dns_rcode: u32,
    /// DNS question types.
    pub dns_qtypes: Vec<String>,
    /// DNS answer record types.
    pub dns_rrtypes: Vec<String>,
    /// HTTP status code.
    pub http_code: u32,
    /// HTTP method.
    pub http_method: String,
    /// HTTP URL.
    pub http_url: String,
    /// HTTP protocol version.
    pub http_protocol: String,
    /// HTTP header names.
    pub http_header_keys: Vec<String>,
    /// HTTP header values (same order as the names).
    pub http_header_values: Vec<String>,
    /// Kafka error code.
    pub kafka_error_code: i32,
    /// Kafka API version.
    pub kafka_api_version: i32,
    /// Kafka API key.
    pub kafka_api_key: String,
    /// Kafka correlation id.
    pub kafka_correlation_id: i32,
    /// Kafka topic.
    pub kafka_topic: String,
    /// Flow.Summary.
    pub summary: String,
    /// Flow.periscope_bytes: the bytes of its connection this flow record accounts for (both
    /// directions; see the field in `flow.proto`). 0 from producers that do not count (Hubble's
    /// Flow has no byte count).
    pub bytes: u64,
    /// Flow.periscope_packets: the packets counted the same way.
    pub packets: u64,
}

/// A proto enum stored by name.
trait ProtoEnum: Sized + TryFrom<i32> + Into<i32> {
    fn name(&self) -> &'static str;
    fn from_name(name: &str) -> Option<Self>;
}

macro_rules! proto_enums {
    ($($ty:ty),*) => {$(
        impl ProtoEnum for $ty {
            fn name(&self) -> &'static str {
                self.as_str_name()
            }
            fn from_name(name: &str) -> Option<Self> {
                Self::from_str_name(name)
            }
        }
    )*};
}

proto_enums!(
    Verdict,
    DropReason,
    AuthType,
    FlowType,
    TrafficDirection,
    TraceObservationPoint,
    DebugCapturePoint,
    SocketTranslationPoint,
    IpVersion,
    L7FlowType
);

fn enum_name<E: ProtoEnum>(value: i32) -> String {
    E::try_from(value)
        .map(|e| e.name().to_owned())
        .unwrap_or_else(|_| value.to_string())
}

fn tcp_flag_names(f: &TcpFlags) -> Vec<String> {
    periscope_proto::util::tcp_flags_set(f)
        .map(str::to_owned)
        .collect()
}

/// Nanoseconds since the Unix epoch of a protobuf timestamp (saturating; `None` is 0).
pub fn time_ns_of(time: Option<&Timestamp>) -> i64 {
    time.map_or(0, |t| {
        t.seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(t.nanos))
    })
}

fn timestamp_of(ns: i64) -> Timestamp {
    Timestamp {
        seconds: ns.div_euclid(1_000_000_000),
        nanos: ns.rem_euclid(1_000_000_000) as i32,
    }
}

/// The parallel arrays of one policy list.
#[derive(Default)]
struct PolicyColumns {
    names: Vec<String>,
    namespaces: Vec<String>,
    kinds: Vec<String>,
    revisions: Vec<u64>,
    labels: Vec<Vec<String>>,
}

fn policy_columns(policies: &[Policy]) -> PolicyColumns {
    let mut c = PolicyColumns::default();
    for p in policies {
        c.names.push(p.name.clone());
        c.namespaces.push(p.namespace.clone());
        c.kinds.push(p.kind.clone());
        c.revisions.push(p.revision);
        c.labels.push(p.labels.clone());
    }
    c
}

fn b(v: bool) -> u8 {
    u8::from(v)
}

impl FlowRow {
    /// The row of a flow observed in `cluster`. This is the only projection of a Flow into
    /// storage; [`FlowRow::to_flow`] is its inverse for every stored field.
    pub fn from_flow(f: &Flow, cluster: &str) -> Self {
        let mut row = FlowRow {
            uuid: f.uuid.clone(),
            time_ns: time_ns_of(f.time.as_ref()),
            cluster: cluster.to_owned(),
            node_name: f.node_name.clone(),
            verdict: enum_name::<Verdict>(f.verdict),
            drop_reason: f.drop_reason,
            drop_reason_desc: enum_name::<DropReason>(f.drop_reason_desc),
            auth_type: enum_name::<AuthType>(f.auth_type),
            flow_type: enum_name::<FlowType>(f.r#type),
            traffic_direction: enum_name::<TrafficDirection>(f.traffic_direction),
            trace_observation_point: enum_name::<TraceObservationPoint>(f.trace_observation_point),
            debug_capture_point: enum_name::<DebugCapturePoint>(f.debug_capture_point),
            sock_xlate_point: enum_name::<SocketTranslationPoint>(f.sock_xlate_point),
            policy_match_type: f.policy_match_type,
            is_reply: f.is_reply.map(b),
            reply: b(f.reply),
            ip_version: enum_name::<IpVersion>(0),
            l7_type: enum_name::<L7FlowType>(0),
            source_names: f.source_names.clone(),
            destination_names: f.destination_names.clone(),
            proxy_port: f.proxy_port,
            socket_cookie: f.socket_cookie,
            cgroup_id: f.cgroup_id,
            summary: f.summary.clone(),
            bytes: f.periscope_bytes,
            packets: f.periscope_packets,
            ..Default::default()
        };
        if let Some(e) = &f.event_type {
            row.event_type = e.r#type;
            row.event_sub_type = e.sub_type;
        }
        if let Some(e) = &f.ethernet {
            row.ethernet_source = e.source.clone();
            row.ethernet_destination = e.destination.clone();
        }
        if let Some(ip) = &f.ip {
            row.ip_version = enum_name::<IpVersion>(ip.ip_version);
            row.source_ip = ip.source.clone();
            row.destination_ip = ip.destination.clone();
            row.ip_encrypted = b(ip.encrypted);
        }
        match f.l4.as_ref().and_then(|l4| l4.protocol.as_ref()) {
            Some(Protocol::Tcp(t)) => {
                row.protocol = "TCP".into();
                row.source_port = t.source_port;
                row.destination_port = t.destination_port;
                row.tcp_flags = t.flags.as_ref().map(tcp_flag_names).unwrap_or_default();
            }
            Some(Protocol::Udp(u)) => {
                row.protocol = "UDP".into();
                row.source_port = u.source_port;
                row.destination_port = u.destination_port;
            }
            Some(Protocol::Sctp(s)) => {
                row.protocol = "SCTP".into();
                row.source_port = s.source_port;
                row.destination_port = s.destination_port;
            }
            Some(Protocol::IcmPv4(i)) => {
                row.protocol = "ICMPv4".into();
                row.icmp_type = i.r#type;
                row.icmp_code = i.code;
            }
            Some(Protocol::IcmPv6(i)) => {
                row.protocol = "ICMPv6".into();
                row.icmp_type = i.r#type;
                row.icmp_code = i.code;
            }
            None => {}
        }
        if let Some(ep) = &f.source {
            row.source_endpoint_id = ep.id;
            row.source_identity = ep.identity;
            row.source_namespace = ep.namespace.clone();
            row.source_pod_name = ep.pod_name.clone();
            row.source_labels = ep.labels.clone();
            if let Some(w) = ep.workloads.first() {
                row.source_workload = w.name.clone();
                row.source_workload_kind = w.kind.clone();
            }
            row.source_workload_names = ep.workloads.iter().map(|w| w.name.clone()).collect();
            row.source_workload_kinds = ep.workloads.iter().map(|w| w.kind.clone()).collect();
        }
        if let Some(ep) = &f.destination {
            row.destination_endpoint_id = ep.id;
            row.destination_identity = ep.identity;
            row.destination_namespace = ep.namespace.clone();
            row.destination_pod_name = ep.pod_name.clone();
            row.destination_labels = ep.labels.clone();
            if let Some(w) = ep.workloads.first() {
                row.destination_workload = w.name.clone();
                row.destination_workload_kind = w.kind.clone();
            }
            row.destination_workload_names = ep.workloads.iter().map(|w| w.name.clone()).collect();
            row.destination_workload_kinds = ep.workloads.iter().map(|w| w.kind.clone()).collect();
        }
        if let Some(s) = &f.source_service {
            row.source_service_name = s.name.clone();
            row.source_service_namespace = s.namespace.clone();
        }
        if let Some(s) = &f.destination_service {
            row.destination_service_name = s.name.clone();
            row.destination_service_namespace = s.namespace.clone();
        }
        if let Some(i) = &f.interface {
            row.interface_index = i.index;
            row.interface_name = i.name.clone();
        }
        if let Some(p) = f.trace_context.as_ref().and_then(|t| t.parent.as_ref()) {
            row.trace_id = p.trace_id.clone();
        }

        let c = policy_columns(&f.ingress_allowed_by);
        row.ingress_allowed_by = c.names;
        row.ingress_allowed_by_namespaces = c.namespaces;
        row.ingress_allowed_by_kinds = c.kinds;
        row.ingress_allowed_by_revisions = c.revisions;
        row.ingress_allowed_by_labels = c.labels;
        let c = policy_columns(&f.egress_allowed_by);
        row.egress_allowed_by = c.names;
        row.egress_allowed_by_namespaces = c.namespaces;
        row.egress_allowed_by_kinds = c.kinds;
        row.egress_allowed_by_revisions = c.revisions;
        row.egress_allowed_by_labels = c.labels;
        let c = policy_columns(&f.ingress_denied_by);
        row.ingress_denied_by = c.names;
        row.ingress_denied_by_namespaces = c.namespaces;
        row.ingress_denied_by_kinds = c.kinds;
        row.ingress_denied_by_revisions = c.revisions;
        row.ingress_denied_by_labels = c.labels;
        let c = policy_columns(&f.egress_denied_by);
        row.egress_denied_by = c.names;
        row.egress_denied_by_namespaces = c.namespaces;
        row.egress_denied_by_kinds = c.kinds;
        row.egress_denied_by_revisions = c.revisions;
        row.egress_denied_by_labels = c.labels;

        if let Some(l7) = &f.l7 {
            row.l7_type = enum_name::<L7FlowType>(l7.r#type);
            row.l7_latency_ns = l7.latency_ns;
            match &l7.record {
                Some(Record::Dns(d)) => {
                    row.l7_protocol = "dns".into();
                    row.dns_query = d.query.clone();
                    row.dns_ips = d.ips.clone();
                    row.dns_ttl = d.ttl;
                    row.dns_cnames = d.cnames.clone();
                    row.dns_observation_source = d.observation_source.clone();
                    row.dns_rcode = d.rcode;
                    row.dns_qtypes = d.qtypes.clone();
                    row.dns_rrtypes = d.rrtypes.clone();
                }
                Some(Record::Http(h)) => {
                    row.l7_protocol = "http".into();
                    row.http_code = h.code;
                    row.http_method = h.method.clone();
                    row.http_url = h.url.clone();
                    row.http_protocol = h.protocol.clone();
                    row.http_header_keys = h.headers.iter().map(|h| h.key.clone()).collect();
                    row.http_header_values = h.headers.iter().map(|h| h.value.clone()).collect();
                }
                Some(Record::Kafka(k)) => {
                    row.l7_protocol = "kafka".into();
                    row.kafka_error_code = k.error_code;
                    row.kafka_api_version = k.api_version;
                    row.kafka_api_key = k.api_key.clone();
                    row.kafka_correlation_id = k.correlation_id;
                    row.kafka_topic = k.topic.clone();
                }
                None => {}
            }
        }
        row
    }

    fn err(&self, column: &'static str, value: &str, expected: &'static str) -> RowError {
        RowError {
            uuid: self.uuid.clone(),
            column,
            value: value.to_owned(),
            expected,
        }
    }

    fn enum_value<E: ProtoEnum>(
        &self,
        column: &'static str,
        stored: &str,
    ) -> Result<i32, RowError> {
        if let Some(e) = E::from_name(stored) {
            return Ok(e.into());
        }
        stored
            .parse::<i32>()
            .map_err(|_| self.err(column, stored, "an enum name or number"))
    }

    fn check_parallel(&self, column: &'static str, a: usize, b: usize) -> Result<(), RowError> {
        if a == b {
            Ok(())
        } else {
            Err(self.err(
                column,
                &format!("{b} entries for {a} names"),
                "as many entries as names",
            ))
        }
    }

    fn policies(
        &self,
        column: &'static str,
        names: &[String],
        namespaces: &[String],
        kinds: &[String],
        revisions: &[u64],
        labels: &[Vec<String>],
    ) -> Result<Vec<Policy>, RowError> {
        for len in [namespaces.len(), kinds.len(), revisions.len(), labels.len()] {
            self.check_parallel(column, names.len(), len)?;
        }
        Ok((0..names.len())
            .map(|i| Policy {
                name: names[i].clone(),
                namespace: namespaces[i].clone(),
                labels: labels[i].clone(),
                revision: revisions[i],
                kind: kinds[i].clone(),
            })
            .collect())
    }

    #[allow(clippy::too_many_arguments)]
    fn endpoint(
        &self,
        column: &'static str,
        id: u32,
        identity: u32,
        namespace: &str,
        pod_name: &str,
        labels: &[String],
        workload_names: &[String],
        workload_kinds: &[String],
    ) -> Result<Option<Endpoint>, RowError> {
        self.check_parallel(column, workload_names.len(), workload_kinds.len())?;
        let ep = Endpoint {
            id,
            identity,
            namespace: namespace.to_owned(),
            labels: labels.to_vec(),
            pod_name: pod_name.to_owned(),
            workloads: workload_names
                .iter()
                .zip(workload_kinds)
                .map(|(name, kind)| Workload {
                    name: name.clone(),
                    kind: kind.clone(),
                })
                .collect(),
        };
        Ok((ep != Endpoint::default()).then_some(ep))
    }

    /// The Flow this row was made from.
    ///
    /// Every stored field comes back as it was. What is not stored: the cluster (a relay-level
    /// attribute). Presence of optional sub-messages is
    /// inferred: `ethernet`, `IP`, `source`, `destination`, `source_service`,
    /// `destination_service`, `interface`, `event_type`, `trace_context` and `l7` are present
    /// when any of their fields is set, `l4` when the protocol is known, TCP flags whenever the
    /// protocol is TCP, and `time` always. A sub-message that was present with only default
    /// values therefore comes back absent.
    pub fn to_flow(&self) -> Result<Flow, RowError> {
        let mut f = Flow {
            time: Some(timestamp_of(self.time_ns)),
            verdict: self.enum_value::<Verdict>("verdict", &self.verdict)?,
            drop_reason: self.drop_reason,
            r#type: self.enum_value::<FlowType>("flow_type", &self.flow_type)?,
            node_name: self.node_name.clone(),
            source_names: self.source_names.clone(),
            destination_names: self.destination_names.clone(),
            reply: self.reply != 0,
            traffic_direction: self
                .enum_value::<TrafficDirection>("traffic_direction", &self.traffic_direction)?,
            policy_match_type: self.policy_match_type,
            trace_observation_point: self.enum_value::<TraceObservationPoint>(
                "trace_observation_point",
                &self.trace_observation_point,
            )?,
            drop_reason_desc: self
                .enum_value::<DropReason>("drop_reason_desc", &self.drop_reason_desc)?,
            is_reply: self.is_reply.map(|v| v != 0),
            debug_capture_point: self.enum_value::<DebugCapturePoint>(
                "debug_capture_point",
                &self.debug_capture_point,
            )?,
            proxy_port: self.proxy_port,
            sock_xlate_point: self
                .enum_value::<SocketTranslationPoint>("sock_xlate_point", &self.sock_xlate_point)?,
            socket_cookie: self.socket_cookie,
            cgroup_id: self.cgroup_id,
            uuid: self.uuid.clone(),
            auth_type: self.enum_value::<AuthType>("auth_type", &self.auth_type)?,
            summary: self.summary.clone(),
            periscope_bytes: self.bytes,
            periscope_packets: self.packets,
            ..Default::default()
        };
        if self.event_type != 0 || self.event_sub_type != 0 {
            f.event_type = Some(CiliumEventType {
                r#type: self.event_type,
                sub_type: self.event_sub_type,
            });
        }
        if !self.ethernet_source.is_empty() || !self.ethernet_destination.is_empty() {
            f.ethernet = Some(Ethernet {
                source: self.ethernet_source.clone(),
                destination: self.ethernet_destination.clone(),
            });
        }
        let ip = flow::Ip {
            source: self.source_ip.clone(),
            destination: self.destination_ip.clone(),
            ip_version: self.enum_value::<IpVersion>("ip_version", &self.ip_version)?,
            encrypted: self.ip_encrypted != 0,
            source_xlated: String::new(),
        };
        f.ip = (ip != flow::Ip::default()).then_some(ip);

        let protocol = match self.protocol.as_str() {
            "" => None,
            "TCP" => {
                let mut flags = TcpFlags::default();
                for name in &self.tcp_flags {
                    let flag = periscope_proto::util::tcp_flag_mut(&mut flags, name)
                        .ok_or_else(|| self.err("tcp_flags", name, "a TCP flag name"))?;
                    *flag = true;
                }
                Some(Protocol::Tcp(flow::Tcp {
                    source_port: self.source_port,
                    destination_port: self.destination_port,
                    flags: Some(flags),
                }))
            }
            "UDP" => Some(Protocol::Udp(flow::Udp {
                source_port: self.source_port,
                destination_port: self.destination_port,
            })),
            "SCTP" => Some(Protocol::Sctp(flow::Sctp {
                source_port: self.source_port,
                destination_port: self.destination_port,
            })),
            "ICMPv4" => Some(Protocol::IcmPv4(flow::IcmPv4 {
                r#type: self.icmp_type,
                code: self.icmp_code,
            })),
            "ICMPv6" => Some(Protocol::IcmPv6(flow::IcmPv6 {
                r#type: self.icmp_type,
                code: self.icmp_code,
            })),
            other => {
                return Err(self.err("protocol", other, "TCP, UDP, SCTP, ICMPv4, ICMPv6 or empty"));
            }
        };
        f.l4 = protocol.map(|p| Layer4 { protocol: Some(p) });

        f.source = self.endpoint(
            "source_workload_kinds",
            self.source_endpoint_id,
            self.source_identity,
            &self.source_namespace,
            &self.source_pod_name,
            &self.source_labels,
            &self.source_workload_names,
            &self.source_workload_kinds,
        )?;
        f.destination = self.endpoint(
            "destination_workload_kinds",
            self.destination_endpoint_id,
            self.destination_identity,
            &self.destination_namespace,
            &self.destination_pod_name,
            &self.destination_labels,
            &self.destination_workload_names,
            &self.destination_workload_kinds,
        )?;
        let service = |name: &str, namespace: &str| {
            (!name.is_empty() || !namespace.is_empty()).then(|| Service {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
            })
        };
        f.source_service = service(&self.source_service_name, &self.source_service_namespace);
        f.destination_service = service(
            &self.destination_service_name,
            &self.destination_service_namespace,
        );
        if self.interface_index != 0 || !self.interface_name.is_empty() {
            f.interface = Some(NetworkInterface {
                index: self.interface_index,
                name: self.interface_name.clone(),
            });
        }
        if !self.trace_id.is_empty() {
            f.trace_context = Some(flow::TraceContext {
                parent: Some(flow::TraceParent {
                    trace_id: self.trace_id.clone(),
                }),
            });
        }

        f.ingress_allowed_by = self.policies(
            "ingress_allowed_by",
            &self.ingress_allowed_by,
            &self.ingress_allowed_by_namespaces,
            &self.ingress_allowed_by_kinds,
            &self.ingress_allowed_by_revisions,
            &self.ingress_allowed_by_labels,
        )?;
        f.egress_allowed_by = self.policies(
            "egress_allowed_by",
            &self.egress_allowed_by,
            &self.egress_allowed_by_namespaces,
            &self.egress_allowed_by_kinds,
            &self.egress_allowed_by_revisions,
            &self.egress_allowed_by_labels,
        )?;
        f.ingress_denied_by = self.policies(
            "ingress_denied_by",
            &self.ingress_denied_by,
            &self.ingress_denied_by_namespaces,
            &self.ingress_denied_by_kinds,
            &self.ingress_denied_by_revisions,
            &self.ingress_denied_by_labels,
        )?;
        f.egress_denied_by = self.policies(
            "egress_denied_by",
            &self.egress_denied_by,
            &self.egress_denied_by_namespaces,
            &self.egress_denied_by_kinds,
            &self.egress_denied_by_revisions,
            &self.egress_denied_by_labels,
        )?;

        let record = match self.l7_protocol.as_str() {
            "" => None,
            "dns" => Some(Record::Dns(flow::Dns {
                query: self.dns_query.clone(),
                ips: self.dns_ips.clone(),
                ttl: self.dns_ttl,
                cnames: self.dns_cnames.clone(),
                observation_source: self.dns_observation_source.clone(),
                rcode: self.dns_rcode,
                qtypes: self.dns_qtypes.clone(),
                rrtypes: self.dns_rrtypes.clone(),
            })),
            "http" => {
                self.check_parallel(
                    "http_header_values",
                    self.http_header_keys.len(),
                    self.http_header_values.len(),
                )?;
                Some(Record::Http(flow::Http {
                    code: self.http_code,
                    method: self.http_method.clone(),
                    url: self.http_url.clone(),
                    protocol: self.http_protocol.clone(),
                    headers: self
                        .http_header_keys
                        .iter()
                        .zip(&self.http_header_values)
                        .map(|(key, value)| flow::HttpHeader {
                            key: key.clone(),
                            value: value.clone(),
                        })
                        .collect(),
                }))
            }
            "kafka" => Some(Record::Kafka(flow::Kafka {
                error_code: self.kafka_error_code,
                api_version: self.kafka_api_version,
                api_key: self.kafka_api_key.clone(),
                correlation_id: self.kafka_correlation_id,
                topic: self.kafka_topic.clone(),
            })),
            other => return Err(self.err("l7_protocol", other, "dns, http, kafka or empty")),
        };
        let l7 = Layer7 {
            r#type: self.enum_value::<L7FlowType>("l7_type", &self.l7_type)?,
            latency_ns: self.l7_latency_ns,
            record,
        };
        f.l7 = (l7 != Layer7::default()).then_some(l7);
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::full_flow;

    #[test]
    fn every_stored_field_round_trips() {
        let f = full_flow();
        let row = FlowRow::from_flow(&f, "c1");
        assert_eq!(row.cluster, "c1");
        assert_eq!(row.time_ns, 1_700_000_000_123_456_789);
        assert_eq!(row.verdict, "DROPPED");
        assert_eq!(row.tcp_flags, vec!["SYN", "ACK", "NS"]);
        assert_eq!(row.source_workload, "frontend");
        assert_eq!(
            (row.bytes, row.packets),
            (f.periscope_bytes, f.periscope_packets)
        );
        assert_eq!(row.to_flow().unwrap(), f);
    }

    #[test]
    fn other_layers_round_trip() {
        let mut f = full_flow();
        for (l4, l7) in [
            (
                Protocol::Udp(flow::Udp {
                    source_port: 1,
                    destination_port: 53,
                }),
                Record::Http(flow::Http {
                    code: 503,
                    method: "GET".into(),
                    url: "http://a/b?c=d".into(),
                    protocol: "HTTP/1.1".into(),
                    headers: vec![flow::HttpHeader {
                        key: "x-a".into(),
                        value: "1".into(),
                    }],
                }),
            ),
            (
                Protocol::IcmPv4(flow::IcmPv4 { r#type: 8, code: 0 }),
                Record::Kafka(flow::Kafka {
                    error_code: -1,
                    api_version: 2,
                    api_key: "produce".into(),
                    correlation_id: 7,
                    topic: "t".into(),
                }),
            ),
            (
                Protocol::IcmPv6(flow::IcmPv6 {
                    r#type: 128,
                    code: 1,
                }),
                Record::Dns(flow::Dns::default()),
            ),
            (
                Protocol::Sctp(flow::Sctp {
                    source_port: 9,
                    destination_port: 10,
                }),
                Record::Dns(flow::Dns::default()),
            ),
        ] {
            f.l4 = Some(Layer4 { protocol: Some(l4) });
            f.l7.as_mut().unwrap().record = Some(l7);
            let back = FlowRow::from_flow(&f, "c").to_flow().unwrap();
            assert_eq!(back, f);
        }
    }

    #[test]
    fn sparse_flow_round_trips_and_unknown_enums_keep_their_number() {
        let f = Flow {
            time: Some(Timestamp {
                seconds: -5,
                nanos: 1,
            }),
            verdict: 99,
            drop_reason_desc: 1000,
            uuid: "u".into(),
            ..Default::default()
        };
        let row = FlowRow::from_flow(&f, "");
        assert_eq!(row.verdict, "99");
        assert_eq!(row.ip_version, "IP_NOT_USED");
        assert_eq!(row.is_reply, None);
        assert_eq!(row.to_flow().unwrap(), f);
    }

    #[test]
    fn corrupt_rows_are_reported_with_their_column() {
        let mut row = FlowRow::from_flow(&full_flow(), "c");
        row.verdict = "MAYBE".into();
        let err = row.to_flow().unwrap_err();
        assert_eq!(err.column, "verdict");
        assert!(err.to_string().contains("3f8a2c1e"), "{err}");

        let mut row = FlowRow::from_flow(&full_flow(), "c");
        row.egress_denied_by_kinds.pop();
        assert_eq!(row.to_flow().unwrap_err().column, "egress_denied_by");
    }
}
