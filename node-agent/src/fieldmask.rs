//! Field masks over `flow.Flow` (`GetFlowsRequest.experimental.field_mask`), with Hubble's
//! semantics: when the mask has paths, every flow sent carries only the selected fields (all
//! others keep their default); a path that is not a field of `flow.Flow` is rejected, naming the
//! path; an empty mask selects the whole flow. Filters always see the whole flow: the mask
//! applies to what is sent.
//!
//! Paths are dotted proto field names (`time`, `source.pod_name`, `l4.TCP.destination_port`,
//! `IP.source`, `is_reply.value`), checked like `fieldmaskpb.New`: every name but the last must be
//! a singular message field (not repeated, not a scalar); the last may be any field. A path
//! below one already selected whole adds nothing (`source` and `source.pod_name` = `source`).
//!
//! The mask is compiled once per request ([`FieldMask::compile`]) into a tree of field indexes.
//! Applying it ([`FieldMask::apply`]) starts from an empty flow and copies only the selected
//! fields, each through a function of a static table per message type: no flow is cloned whole,
//! no field is looked up by name per flow. The tables mirror flow.proto; a unit test checks them
//! against the compiled descriptor set, so a field added to the schema cannot be forgotten here.
use periscope_proto::flow::{
    CiliumEventType, Dns, Endpoint, Ethernet, Flow, Http, IcmPv4, IcmPv6, Ip, Kafka, Layer4,
    Layer7, NetworkInterface, Sctp, Service, Tcp, TcpFlags, TraceContext, TraceParent, Udp, layer4,
    layer7,
};
use prost_types::Timestamp;

/// A field mask path that does not name a field of `flow.Flow`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field mask path {path:?}: {reason}")]
pub struct FieldMaskError {
    /// The path as given.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A compiled field mask over `flow.Flow`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldMask {
    /// The selected fields of `flow.Flow`; None = no mask (whole flows).
    root: Option<Node>,
}

impl FieldMask {
    /// Compiles mask paths; no paths = no mask.
    pub fn compile<S: AsRef<str>>(paths: &[S]) -> Result<FieldMask, FieldMaskError> {
        if paths.is_empty() {
            return Ok(FieldMask::default());
        }
        let mut root = Tree::default();
        for path in paths {
            root.add(path.as_ref(), &FLOW)?;
        }
        Ok(FieldMask {
            root: Some(root.into_node()),
        })
    }

    /// Whether the mask restricts flows at all.
    pub fn is_active(&self) -> bool {
        self.root.is_some()
    }

    /// The flow as the mask lets it through: only the selected fields of `flow` (all of it when
    /// the mask is not active).
    pub fn apply(&self, flow: &Flow) -> Flow {
        match &self.root {
            Some(node) => FLOW.apply(flow, node),
            None => flow.clone(),
        }
    }
}

/// The selected fields of one message: (field index in its table, None = the whole field,
/// Some = only these fields of the field's message).
#[derive(Clone, Debug, Default, PartialEq)]
struct Node(Vec<(usize, Option<Node>)>);

/// A node while paths are added.
#[derive(Default)]
struct Tree {
    whole: bool,
    children: std::collections::BTreeMap<usize, Tree>,
}

impl Tree {
    fn add(&mut self, path: &str, mut schema: &'static dyn Schema) -> Result<(), FieldMaskError> {
        let err = |reason: String| FieldMaskError {
            path: path.to_string(),
            reason,
        };
        let names: Vec<&str> = path.split('.').collect();
        let mut node = Some(self);
        for (i, name) in names.iter().enumerate() {
            let Some((index, nested)) = schema.field(name) else {
                return Err(err(if name.is_empty() {
                    "empty field name".to_string()
                } else {
                    format!("{name:?} is not a field of {}", schema.proto_name())
                }));
            };
            let last = i + 1 == names.len();
            // Below a field selected whole, the rest of the path is only checked.
            node = node.filter(|n| !n.whole).map(|n| {
                let child = n.children.entry(index).or_default();
                if last {
                    child.whole = true;
                    child.children.clear();
                }
                child
            });
            if !last {
                schema = nested.ok_or_else(|| {
                    err(format!(
                        "{}.{name} is not a singular message field; a path cannot go on into it",
                        schema.proto_name()
                    ))
                })?;
            }
        }
        Ok(())
    }

    fn into_node(self) -> Node {
        Node(
            self.children
                .into_iter()
                .map(|(i, t)| (i, (!t.whole).then(|| t.into_node())))
                .collect(),
        )
    }
}

/// A message type seen without its Rust type, to compile paths against.
trait Schema: Sync {
    /// Full proto name, e.g. `flow.Flow`.
    fn proto_name(&self) -> &'static str;
    /// Index of the field called `name`, with the schema of its type when it is a singular
    /// message (paths may go on into it).
    fn field(&self, name: &str) -> Option<(usize, Option<&'static dyn Schema>)>;
    /// Every field: name and nested schema (for the schema test).
    #[cfg(test)]
    fn fields(&self) -> Vec<(&'static str, Option<&'static dyn Schema>)>;
}

/// One field of message type `T`.
struct Field<T: 'static> {
    /// Proto field name.
    name: &'static str,
    /// Copies the whole field.
    copy: fn(&mut T, &T),
    /// For a singular message field: its type's table, and how to copy a selection of it.
    nested: Option<Nested<T>>,
}

struct Nested<T: 'static> {
    message: &'static dyn Schema,
    copy: fn(&mut T, &T, &Node),
}

/// The fields of message type `T`.
struct Message<T: 'static> {
    proto_name: &'static str,
    fields: &'static [Field<T>],
}

impl<T: Default> Message<T> {
    fn apply(&self, src: &T, node: &Node) -> T {
        let mut dst = T::default();
        for (index, sub) in &node.0 {
            let f = &self.fields[*index];
            match (sub, &f.nested) {
                (Some(sub), Some(nested)) => (nested.copy)(&mut dst, src, sub),
                _ => (f.copy)(&mut dst, src),
            }
        }
        dst
    }
}

impl<T> Schema for Message<T> {
    fn proto_name(&self) -> &'static str {
        self.proto_name
    }

    fn field(&self, name: &str) -> Option<(usize, Option<&'static dyn Schema>)> {
        self.fields
            .iter()
            .position(|f| f.name == name)
            .map(|i| (i, self.fields[i].nested.as_ref().map(|n| n.message)))
    }

    #[cfg(test)]
    fn fields(&self) -> Vec<(&'static str, Option<&'static dyn Schema>)> {
        self.fields
            .iter()
            .map(|f| (f.name, f.nested.as_ref().map(|n| n.message)))
            .collect()
    }
}

/// One entry of a message table, by kind of field.
macro_rules! field {
    // Copied as it is: scalars, strings, enums, repeated fields.
    ($t:ty, value $name:literal $f:ident) => {
        Field::<$t> {
            name: $name,
            copy: |d, s| d.$f.clone_from(&s.$f),
            nested: None,
        }
    };
    // A singular message (`Option<M>`) whose table is the static `$m`.
    ($t:ty, message $name:literal $f:ident $m:ident) => {
        Field::<$t> {
            name: $name,
            copy: |d, s| d.$f.clone_from(&s.$f),
            nested: Some(Nested {
                message: &$m,
                copy: |d, s, n| d.$f = s.$f.as_ref().map(|v| $m.apply(v, n)),
            }),
        }
    };
    // A message member of the oneof field `$o`, as enum variant `$v`, with the table `$m`.
    ($t:ty, oneof $name:literal $o:ident $m:ident $($v:ident)::+) => {
        Field::<$t> {
            name: $name,
            copy: |d, s| {
                if let Some($($v)::+(v)) = &s.$o {
                    d.$o = Some($($v)::+(v.clone()));
                }
            },
            nested: Some(Nested {
                message: &$m,
                copy: |d, s, n| {
                    if let Some($($v)::+(v)) = &s.$o {
                        d.$o = Some($($v)::+($m.apply(v, n)));
                    }
                },
            }),
        }
    };
}

/// The static table of a message type: `message!(STATIC: Type = "proto.Name" [(entry), …])`.
macro_rules! message {
    ($static:ident: $t:ty = $name:literal [ $( ( $($entry:tt)+ ) ),* $(,)? ]) => {
        static $static: Message<$t> = Message {
            proto_name: $name,
            fields: &[ $( field!($t, $($entry)+) ),* ],
        };
    };
}

message!(FLOW: Flow = "flow.Flow" [
    (message "time" time TIMESTAMP),
    (value "verdict" verdict),
    (value "drop_reason" drop_reason),
    (message "ethernet" ethernet ETHERNET),
    (message "IP" ip IP),
    (message "l4" l4 LAYER4),
    (message "source" source ENDPOINT),
    (message "destination" destination ENDPOINT),
    (value "Type" r#type),
    (value "node_name" node_name),
    (value "source_names" source_names),
    (value "destination_names" destination_names),
    (message "l7" l7 LAYER7),
    (value "reply" reply),
    (message "event_type" event_type CILIUM_EVENT_TYPE),
    (message "source_service" source_service SERVICE),
    (message "destination_service" destination_service SERVICE),
    (value "traffic_direction" traffic_direction),
    (value "policy_match_type" policy_match_type),
    (value "trace_observation_point" trace_observation_point),
    (value "drop_reason_desc" drop_reason_desc),
    (message "is_reply" is_reply BOOL_VALUE),
    (value "debug_capture_point" debug_capture_point),
    (message "interface" interface NETWORK_INTERFACE),
    (value "proxy_port" proxy_port),
    (message "trace_context" trace_context TRACE_CONTEXT),
    (value "sock_xlate_point" sock_xlate_point),
    (value "socket_cookie" socket_cookie),
    (value "cgroup_id" cgroup_id),
    (value "uuid" uuid),
    (value "auth_type" auth_type),
    (value "egress_allowed_by" egress_allowed_by),
    (value "ingress_allowed_by" ingress_allowed_by),
    (value "egress_denied_by" egress_denied_by),
    (value "ingress_denied_by" ingress_denied_by),
    (value "Summary" summary),
    (value "periscope_bytes" periscope_bytes),
    (value "periscope_packets" periscope_packets),
]);

message!(TIMESTAMP: Timestamp = "google.protobuf.Timestamp" [
    (value "seconds" seconds),
    (value "nanos" nanos),
]);

/// `google.protobuf.BoolValue`, which prost maps to `Option<bool>`: its table is over the `bool`.
static BOOL_VALUE: Message<bool> = Message {
    proto_name: "google.protobuf.BoolValue",
    fields: &[Field {
        name: "value",
        copy: |d, s| *d = *s,
        nested: None,
    }],
};

message!(ETHERNET: Ethernet = "flow.Ethernet" [
    (value "source" source),
    (value "destination" destination),
]);

message!(IP: Ip = "flow.IP" [
    (value "source" source),
    (value "destination" destination),
    (value "ipVersion" ip_version),
    (value "encrypted" encrypted),
    (value "source_xlated" source_xlated),
]);

message!(LAYER4: Layer4 = "flow.Layer4" [
    (oneof "TCP" protocol TCP layer4::Protocol::Tcp),
    (oneof "UDP" protocol UDP layer4::Protocol::Udp),
    (oneof "ICMPv4" protocol ICMPV4 layer4::Protocol::IcmPv4),
    (oneof "ICMPv6" protocol ICMPV6 layer4::Protocol::IcmPv6),
    (oneof "SCTP" protocol SCTP layer4::Protocol::Sctp),
]);

message!(TCP: Tcp = "flow.TCP" [
    (value "source_port" source_port),
    (value "destination_port" destination_port),
    (message "flags" flags TCP_FLAGS),
]);

message!(TCP_FLAGS: TcpFlags = "flow.TCPFlags" [
    (value "FIN" fin),
    (value "SYN" syn),
    (value "RST" rst),
    (value "PSH" psh),
    (value "ACK" ack),
    (value "URG" urg),
    (value "ECE" ece),
    (value "CWR" cwr),
    (value "NS" ns),
]);

message!(UDP: Udp = "flow.UDP" [
    (value "source_port" source_port),
    (value "destination_port" destination_port),
]);

message!(SCTP: Sctp = "flow.SCTP" [
    (value "source_port" source_port),
    (value "destination_port" destination_port),
]);

message!(ICMPV4: IcmPv4 = "flow.ICMPv4" [
    (value "type" r#type),
    (value "code" code),
]);

message!(ICMPV6: IcmPv6 = "flow.ICMPv6" [
    (value "type" r#type),
    (value "code" code),
]);

message!(ENDPOINT: Endpoint = "flow.Endpoint" [
    (value "ID" id),
    (value "identity" identity),
    (value "namespace" namespace),
    (value "labels" labels),
    (value "pod_name" pod_name),
    (value "workloads" workloads),
]);

message!(LAYER7: Layer7 = "flow.Layer7" [
    (value "type" r#type),
    (value "latency_ns" latency_ns),
    (oneof "dns" record DNS layer7::Record::Dns),
    (oneof "http" record HTTP layer7::Record::Http),
    (oneof "kafka" record KAFKA layer7::Record::Kafka),
]);

message!(DNS: Dns = "flow.DNS" [
    (value "query" query),
    (value "ips" ips),
    (value "ttl" ttl),
    (value "cnames" cnames),
    (value "observation_source" observation_source),
    (value "rcode" rcode),
    (value "qtypes" qtypes),
    (value "rrtypes" rrtypes),
]);

message!(HTTP: Http = "flow.HTTP" [
    (value "code" code),
    (value "method" method),
    (value "url" url),
    (value "protocol" protocol),
    (value "headers" headers),
]);

message!(KAFKA: Kafka = "flow.Kafka" [
    (value "error_code" error_code),
    (value "api_version" api_version),
    (value "api_key" api_key),
    (value "correlation_id" correlation_id),
    (value "topic" topic),
]);

message!(CILIUM_EVENT_TYPE: CiliumEventType = "flow.CiliumEventType" [
    (value "type" r#type),
    (value "sub_type" sub_type),
]);

message!(SERVICE: Service = "flow.Service" [
    (value "name" name),
    (value "namespace" namespace),
]);

message!(NETWORK_INTERFACE: NetworkInterface = "flow.NetworkInterface" [
    (value "index" index),
    (value "name" name),
]);

message!(TRACE_CONTEXT: TraceContext = "flow.TraceContext" [
    (message "parent" parent TRACE_PARENT),
]);

message!(TRACE_PARENT: TraceParent = "flow.TraceParent" [
    (value "trace_id" trace_id),
]);

#[cfg(test)]
mod tests {
    use super::*;
    use periscope_proto::flow::{
        CiliumEventType, HttpHeader, Policy, Verdict, Workload, layer7::Record,
    };
    use prost::Message as _;
    use prost_types::field_descriptor_proto::{Label, Type};
    use prost_types::{DescriptorProto, FileDescriptorSet};

    fn endpoint(name: &str, id: u32) -> Endpoint {
        Endpoint {
            id,
            identity: id + 1000,
            namespace: "shop".into(),
            labels: vec![format!("k8s:app={name}")],
            pod_name: name.into(),
            workloads: vec![Workload {
                name: name.into(),
                kind: "Deployment".into(),
            }],
        }
    }

    /// A flow with every field of `flow.Flow` set to something other than its default.
    fn rich_flow() -> Flow {
        let policy = |n: &str| Policy {
            name: n.into(),
            namespace: "shop".into(),
            labels: vec![format!("k8s:io.cilium.k8s.policy.name={n}")],
            revision: 7,
            kind: "CiliumNetworkPolicy".into(),
        };
        Flow {
            time: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 42,
            }),
            verdict: Verdict::Forwarded as i32,
            drop_reason: 133,
            ethernet: Some(Ethernet {
                source: "02:70:74:00:00:01".into(),
                destination: "02:70:74:01:00:01".into(),
            }),
            ip: Some(Ip {
                source: "10.0.0.1".into(),
                destination: "10.0.0.2".into(),
                ip_version: 1,
                encrypted: true,
                source_xlated: String::new(),
            }),
            l4: Some(Layer4 {
                protocol: Some(layer4::Protocol::Tcp(Tcp {
                    source_port: 41234,
                    destination_port: 8080,
                    flags: Some(TcpFlags {
                        fin: true,
                        syn: true,
                        rst: true,
                        psh: true,
                        ack: true,
                        urg: true,
                        ece: true,
                        cwr: true,
                        ns: true,
                    }),
                })),
            }),
            source: Some(endpoint("web", 1)),
            destination: Some(endpoint("api", 2)),
            r#type: 1,
            node_name: "n1".into(),
            source_names: vec!["web.example".into()],
            destination_names: vec!["api.example".into()],
            l7: Some(Layer7 {
                r#type: 1,
                latency_ns: 5,
                record: Some(Record::Http(Http {
                    code: 200,
                    method: "GET".into(),
                    url: "/x".into(),
                    protocol: "HTTP/1.1".into(),
                    headers: vec![HttpHeader {
                        key: "a".into(),
                        value: "b".into(),
                    }],
                })),
            }),
            reply: true,
            event_type: Some(CiliumEventType {
                r#type: 5,
                sub_type: 1,
            }),
            source_service: Some(Service {
                name: "web".into(),
                namespace: "shop".into(),
            }),
            destination_service: Some(Service {
                name: "api".into(),
                namespace: "shop".into(),
            }),
            traffic_direction: 1,
            policy_match_type: 2,
            trace_observation_point: 101,
            drop_reason_desc: 133,
            is_reply: Some(true),
            debug_capture_point: 4,
            interface: Some(NetworkInterface {
                index: 3,
                name: "lxc0".into(),
            }),
            proxy_port: 15001,
            trace_context: Some(TraceContext {
                parent: Some(TraceParent {
                    trace_id: "abc".into(),
                }),
            }),
            sock_xlate_point: 1,
            socket_cookie: 9,
            cgroup_id: 10,
            uuid: "u-1".into(),
            auth_type: 1,
            egress_allowed_by: vec![policy("e-a")],
            ingress_allowed_by: vec![policy("i-a")],
            egress_denied_by: vec![policy("e-d")],
            ingress_denied_by: vec![policy("i-d")],
            summary: "TCP Flags: SYN".into(),
            periscope_bytes: 9_148,
            periscope_packets: 5,
        }
    }

    fn mask<S: AsRef<str>>(paths: &[S]) -> FieldMask {
        FieldMask::compile(paths).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_empty_mask_is_the_whole_flow() {
        let m = mask::<&str>(&[]);
        assert!(!m.is_active());
        assert_eq!(m.apply(&rich_flow()), rich_flow());
    }

    #[test]
    fn nested_paths_copy_only_what_they_name() {
        let f = rich_flow();
        let got = mask(&[
            "time",
            "source.namespace",
            "source.pod_name",
            "verdict",
            "l4.TCP.destination_port",
            "IP.source",
            "is_reply.value",
            "trace_context.parent.trace_id",
        ])
        .apply(&f);
        let want = Flow {
            time: f.time,
            source: Some(Endpoint {
                namespace: "shop".into(),
                pod_name: "web".into(),
                ..Default::default()
            }),
            verdict: Verdict::Forwarded as i32,
            l4: Some(Layer4 {
                protocol: Some(layer4::Protocol::Tcp(Tcp {
                    destination_port: 8080,
                    ..Default::default()
                })),
            }),
            ip: Some(Ip {
                source: "10.0.0.1".into(),
                ..Default::default()
            }),
            is_reply: Some(true),
            trace_context: f.trace_context.clone(),
            ..Default::default()
        };
        assert_eq!(got, want);
    }

    #[test]
    fn a_whole_field_wins_over_its_sub_paths_and_absent_parts_stay_absent() {
        let f = rich_flow();
        // In both orders: `source` selects the whole endpoint.
        for paths in [["source.pod_name", "source"], ["source", "source.pod_name"]] {
            let got = mask(&paths).apply(&f);
            assert_eq!(got.source, f.source, "{paths:?}");
            assert_eq!(
                got,
                Flow {
                    source: f.source.clone(),
                    ..Default::default()
                }
            );
        }
        // The mask names UDP and an L7 DNS record, the flow is TCP with an HTTP record: the
        // oneofs stay unset (not an empty TCP or a default UDP).
        let got = mask(&["l4.UDP.destination_port", "l7.dns", "destination.ID"]).apply(&f);
        assert_eq!(got.l4, Some(Layer4 { protocol: None }));
        assert_eq!(got.l7.as_ref().and_then(|l| l.record.clone()), None);
        assert_eq!(got.destination.as_ref().map(|d| d.id), Some(2));
        // A sub-message the flow does not have stays unset.
        let bare = Flow {
            verdict: 2,
            ..Default::default()
        };
        let got = mask(&["ethernet.source", "verdict"]).apply(&bare);
        assert_eq!(got, bare);
    }

    #[test]
    fn unknown_and_malformed_paths_are_rejected_naming_the_path() {
        for (path, needle) in [
            ("source.pod", "\"pod\" is not a field of flow.Endpoint"),
            ("ip", "\"ip\" is not a field of flow.Flow"),
            ("l4.tcp", "\"tcp\" is not a field of flow.Layer4"),
            ("source.workloads.name", "flow.Endpoint.workloads is not"),
            ("verdict.value", "flow.Flow.verdict is not"),
            ("time.seconds.x", "google.protobuf.Timestamp.seconds is not"),
            ("source..pod_name", "empty field name"),
            ("", "empty field name"),
        ] {
            let err = FieldMask::compile(&["time", path]).expect_err(path);
            assert_eq!(err.path, path);
            let text = err.to_string();
            assert!(
                text.contains(&format!("{path:?}")) && text.contains(needle),
                "{text:?} should name the path and contain {needle:?}"
            );
        }
    }

    /// Every path of the schema, one per leaf, gives back the whole flow; every top-level field
    /// alone gives a flow that carries exactly that field number on the wire.
    #[test]
    fn the_tables_copy_every_field_into_its_own_place() {
        let f = rich_flow();
        let mut leaves = Vec::new();
        collect_leaves(&FLOW, "", &mut leaves);
        // Layer4 and Layer7 are oneofs: the rich flow holds TCP and HTTP.
        assert_eq!(mask(&leaves).apply(&f), f);
        let desc = descriptor_set();
        let flow_desc = find(&desc, ".flow.Flow");
        for (name, _) in FLOW.fields() {
            let got = mask(&[name]).apply(&f);
            let number = flow_desc
                .field
                .iter()
                .find(|d| d.name() == name)
                .map(|d| d.number() as u32)
                .expect("a field of the descriptor");
            let bytes = got.encode_to_vec();
            assert!(!bytes.is_empty(), "{name}: nothing copied");
            let mut buf = &bytes[..];
            while !buf.is_empty() {
                let (tag, wire) = prost::encoding::decode_key(&mut buf).unwrap();
                assert_eq!(tag, number, "{name} copied into field {tag}");
                prost::encoding::skip_field(wire, tag, &mut buf, Default::default()).unwrap();
            }
        }
        // The other oneof members.
        let udp = Flow {
            l4: Some(Layer4 {
                protocol: Some(layer4::Protocol::Udp(Udp {
                    source_port: 1,
                    destination_port: 53,
                })),
            }),
            l7: Some(Layer7 {
                record: Some(Record::Dns(Dns {
                    query: "a.example.".into(),
                    ..Default::default()
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let got = mask(&["l4.UDP.destination_port", "l7.dns.query"]).apply(&udp);
        let mut want = udp.clone();
        want.l4 = Some(Layer4 {
            protocol: Some(layer4::Protocol::Udp(Udp {
                source_port: 0,
                destination_port: 53,
            })),
        });
        assert_eq!(got, want);
    }

    fn collect_leaves(schema: &dyn Schema, prefix: &str, out: &mut Vec<String>) {
        for (name, nested) in schema.fields() {
            let path = format!("{prefix}{name}");
            match nested {
                Some(n) => collect_leaves(n, &format!("{path}."), out),
                None => out.push(path),
            }
        }
    }

    fn descriptor_set() -> FileDescriptorSet {
        FileDescriptorSet::decode(periscope_proto::FILE_DESCRIPTOR_SET).expect("descriptor set")
    }

    fn find<'a>(set: &'a FileDescriptorSet, full_name: &str) -> &'a DescriptorProto {
        fn search<'a>(
            prefix: &str,
            messages: &'a [DescriptorProto],
            full_name: &str,
        ) -> Option<&'a DescriptorProto> {
            messages.iter().find_map(|m| {
                let name = format!("{prefix}.{}", m.name());
                if name == full_name {
                    Some(m)
                } else {
                    search(&name, &m.nested_type, full_name)
                }
            })
        }
        set.file
            .iter()
            .find_map(|f| search(&format!(".{}", f.package()), &f.message_type, full_name))
            .unwrap_or_else(|| panic!("no message {full_name} in the descriptor set"))
    }

    /// The tables have exactly the fields of the schema, and a nested table exactly for the
    /// singular message fields, with the table of the field's type.
    #[test]
    fn the_tables_match_the_schema() {
        let set = descriptor_set();
        let mut todo: Vec<&dyn Schema> = vec![&FLOW];
        let mut seen = std::collections::BTreeSet::new();
        while let Some(schema) = todo.pop() {
            if !seen.insert(schema.proto_name()) {
                continue;
            }
            let desc = find(&set, &format!(".{}", schema.proto_name()));
            let mut want: Vec<(&str, Option<String>)> = desc
                .field
                .iter()
                .map(|f| {
                    let message = f.r#type() == Type::Message && f.label() != Label::Repeated;
                    (
                        f.name(),
                        message.then(|| f.type_name().trim_start_matches('.').to_string()),
                    )
                })
                .collect();
            let mut got: Vec<(&str, Option<String>)> = schema
                .fields()
                .into_iter()
                .map(|(name, nested)| (name, nested.map(|n| n.proto_name().to_string())))
                .collect();
            want.sort();
            got.sort();
            assert_eq!(got, want, "table of {}", schema.proto_name());
            todo.extend(schema.fields().into_iter().filter_map(|(_, n)| n));
        }
        assert!(seen.len() > 20, "{seen:?}");
    }
}
