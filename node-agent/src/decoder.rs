//! The decoder: the one place where a raw datapath event becomes a Hubble `flow.Flow`.
//!
//! The datapath event carries addresses, ports, identities, verdict, match type and CT state;
//! the agent's [`State`] names the endpoints (pod, namespace, labels, workload) and policies.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};

use periscope_datapath_common::{self as dp, EV_F_IPV6, EV_F_REPLY, EV_F_REPLY_KNOWN, FlowEvent};
use periscope_proto::flow::{
    self, CiliumEventType, Endpoint, Ethernet, Flow, FlowType, IcmPv4, IcmPv6, Ip, IpVersion,
    Layer4, NetworkInterface, Tcp, TcpFlags, Udp, Workload, layer4::Protocol,
};
use prost_types::Timestamp;

use crate::agent::State;

/// CLOCK_REALTIME − CLOCK_BOOTTIME in nanoseconds: add to a datapath timestamp for wall time.
pub fn boot_to_realtime_offset_ns() -> i128 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    now - crate::datapath::boottime_ns() as i128
}

/// An event address as an IP address (`EV_F_IPV6` in `ev_flags` says which family).
pub(crate) fn ip_of(ev_flags: u8, a: &[u8; 16]) -> IpAddr {
    if ev_flags & EV_F_IPV6 != 0 {
        IpAddr::V6(Ipv6Addr::from(*a))
    } else {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn mac(m: &[u8; 6]) -> String {
    let mut out = String::with_capacity(17);
    for (i, b) in m.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
    out
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A unique flow id in UUID text form (random per process, then a counter).
fn uuid() -> String {
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        t ^ ((std::process::id() as u64) << 32)
    });
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    // Version-4 layout: 8-4-4-4-12 hex digits of (process base, counter).
    let hi = base.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let bytes: [u8; 16] = ((hi as u128) << 64 | n as u128).to_be_bytes();
    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        let b = match i {
            6 => (b & 0x0f) | 0x40,
            8 => (b & 0x3f) | 0x80,
            _ => *b,
        };
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
    out
}

fn endpoint_for(state: &State, ip: IpAddr, identity: u32, local_id: Option<u32>) -> Endpoint {
    let mut ep = Endpoint {
        identity,
        labels: state.identity_labels(identity),
        ..Default::default()
    };
    if let Some(id) = local_id {
        ep.id = id;
    }
    // Hosts outside the cluster (external in the topology) are not endpoints: shown by address.
    if let Some(pod) = state.pods_by_ip.get(&ip).filter(|p| !p.external) {
        ep.namespace = pod.namespace.clone();
        ep.pod_name = pod.name.clone();
        if let Some(w) = &pod.workload {
            ep.workloads = vec![Workload {
                name: w.name.clone(),
                kind: w.kind.clone(),
            }];
        }
    }
    ep
}

fn tcp_flags(f: u8) -> TcpFlags {
    use dp::tcp::*;
    TcpFlags {
        fin: f & FIN != 0,
        syn: f & SYN != 0,
        rst: f & RST != 0,
        psh: f & PSH != 0,
        ack: f & ACK != 0,
        urg: f & URG != 0,
        ece: f & ECE != 0,
        cwr: f & CWR != 0,
        ns: false,
    }
}

/// Hubble's summary text for L3/L4 flows (`TCP Flags: SYN, ACK`, `UDP`, `ICMPv4 EchoRequest`).
pub fn summary(ev: &FlowEvent) -> String {
    match ev.proto {
        dp::proto::TCP => {
            let names = [
                (dp::tcp::SYN, "SYN"),
                (dp::tcp::FIN, "FIN"),
                (dp::tcp::RST, "RST"),
                (dp::tcp::PSH, "PSH"),
                (dp::tcp::ACK, "ACK"),
                (dp::tcp::URG, "URG"),
                (dp::tcp::ECE, "ECE"),
                (dp::tcp::CWR, "CWR"),
            ];
            let set: Vec<&str> = names
                .iter()
                .filter(|(b, _)| ev.tcp_flags & b != 0)
                .map(|(_, n)| *n)
                .collect();
            format!("TCP Flags: {}", set.join(", "))
        }
        dp::proto::UDP => "UDP".into(),
        dp::proto::ICMP => format!("ICMPv4 {}", icmp4_name(ev.icmp_type)),
        dp::proto::ICMPV6 => format!("ICMPv6 {}", icmp6_name(ev.icmp_type)),
        p => format!("IP protocol {p}"),
    }
}

fn icmp4_name(t: u8) -> String {
    match t {
        0 => "EchoReply".into(),
        3 => "DestinationUnreachable".into(),
        5 => "Redirect".into(),
        8 => "EchoRequest".into(),
        11 => "TimeExceeded".into(),
        12 => "ParameterProblem".into(),
        t => format!("Type{t}"),
    }
}

fn icmp6_name(t: u8) -> String {
    match t {
        1 => "DestinationUnreachable".into(),
        2 => "PacketTooBig".into(),
        3 => "TimeExceeded".into(),
        4 => "ParameterProblem".into(),
        128 => "EchoRequest".into(),
        129 => "EchoReply".into(),
        t => format!("Type{t}"),
    }
}

/// Turns a datapath event into a Hubble flow, naming endpoints and policies from `state`.
/// `boot_offset_ns` is [`boot_to_realtime_offset_ns`].
pub fn decode(ev: &FlowEvent, state: &State, boot_offset_ns: i128) -> Flow {
    let src = ip_of(ev.flags, &ev.src_ip);
    let dst = ip_of(ev.flags, &ev.dst_ip);
    let wall = ev.ts_ns as i128 + boot_offset_ns;
    let local = state.endpoint_by_id(ev.ep_id as u32);
    let egress = ev.direction == dp::dir::EGRESS;
    let local_id = local.map(|e| e.id);
    let source = endpoint_for(
        state,
        src,
        ev.src_identity,
        if egress { local_id } else { None },
    );
    let destination = endpoint_for(
        state,
        dst,
        ev.dst_identity,
        if egress { None } else { local_id },
    );

    let l4 = match ev.proto {
        dp::proto::TCP => Some(Protocol::Tcp(Tcp {
            source_port: ev.src_port as u32,
            destination_port: ev.dst_port as u32,
            flags: Some(tcp_flags(ev.tcp_flags)),
        })),
        dp::proto::UDP => Some(Protocol::Udp(Udp {
            source_port: ev.src_port as u32,
            destination_port: ev.dst_port as u32,
        })),
        dp::proto::ICMP => Some(Protocol::IcmPv4(IcmPv4 {
            r#type: ev.icmp_type as u32,
            code: ev.icmp_code as u32,
        })),
        dp::proto::ICMPV6 => Some(Protocol::IcmPv6(IcmPv6 {
            r#type: ev.icmp_type as u32,
            code: ev.icmp_code as u32,
        })),
        _ => None,
    };
    let is_reply = (ev.flags & EV_F_REPLY_KNOWN != 0).then_some(ev.flags & EV_F_REPLY != 0);
    let dropped = ev.verdict == dp::verdict::DROPPED;
    let mut f = Flow {
        time: Some(Timestamp {
            seconds: wall.div_euclid(1_000_000_000) as i64,
            nanos: wall.rem_euclid(1_000_000_000) as i32,
        }),
        verdict: ev.verdict as i32,
        ethernet: Some(Ethernet {
            source: mac(&ev.src_mac),
            destination: mac(&ev.dst_mac),
        }),
        ip: Some(Ip {
            source: src.to_string(),
            destination: dst.to_string(),
            ip_version: if src.is_ipv6() {
                IpVersion::IPv6
            } else {
                IpVersion::IPv4
            } as i32,
            encrypted: false,
            source_xlated: String::new(),
        }),
        l4: l4.map(|p| Layer4 { protocol: Some(p) }),
        source: Some(source),
        destination: Some(destination),
        r#type: FlowType::L3L4 as i32,
        node_name: state.node.clone(),
        reply: is_reply.unwrap_or(false),
        is_reply,
        event_type: Some(CiliumEventType {
            r#type: ev.kind as i32,
            sub_type: ev.sub_type as i32,
        }),
        traffic_direction: match ev.direction {
            dp::dir::INGRESS => flow::TrafficDirection::Ingress as i32,
            dp::dir::EGRESS => flow::TrafficDirection::Egress as i32,
            _ => 0,
        },
        policy_match_type: ev.match_type as u32,
        interface: Some(NetworkInterface {
            index: ev.ifindex,
            name: state
                .ifname_of(ev.ep_id as u32)
                .unwrap_or_default()
                .to_string(),
        }),
        uuid: uuid(),
        summary: summary(ev),
        ..Default::default()
    };
    if dropped {
        f.drop_reason = ev.sub_type as u32;
        f.drop_reason_desc = ev.sub_type as i32;
    }
    let service = |ip: &IpAddr| {
        state.services.get(ip).map(|(ns, name)| flow::Service {
            name: name.clone(),
            namespace: ns.clone(),
        })
    };
    f.source_service = service(&src);
    f.destination_service = service(&dst);
    // A connection through a service frontend (load balancing): the datapath names the
    // frontend. Packets towards the backend have it as destination service; replies (which the
    // client's side translates back to the frontend's address) as source service.
    if ev.rev_nat != 0
        && let Some(fe) = state.lb_frontends.get(&ev.rev_nat)
    {
        let svc = Some(flow::Service {
            name: fe.name.clone(),
            namespace: fe.namespace.clone(),
        });
        if is_reply == Some(true) {
            f.source_service = svc;
            // Where the reply was translated back (the client's ingress): the flow shows the
            // backend as source and the service address it now carries.
            if ev.direction == dp::dir::INGRESS
                && let Some(ip) = f.ip.as_mut()
            {
                ip.source_xlated = fe.addr.ip().to_string();
            }
        } else {
            f.destination_service = svc;
        }
    }
    // The policy behind the decision (rule ids index the policy set in force).
    if let Some(p) = state.policies.by_rule_id(ev.rule_id) {
        let policy = flow::Policy {
            name: p.name.clone(),
            namespace: p.namespace.clone().unwrap_or_default(),
            labels: vec![format!("k8s:io.cilium.k8s.policy.name={}", p.name)],
            revision: state.revision,
            kind: p.kind.clone(),
        };
        let list = match (ev.direction, dropped) {
            (dp::dir::INGRESS, false) => &mut f.ingress_allowed_by,
            (dp::dir::EGRESS, false) => &mut f.egress_allowed_by,
            (dp::dir::INGRESS, true) => &mut f.ingress_denied_by,
            _ => &mut f.egress_denied_by,
        };
        list.push(policy);
    }
    if ev.kind == dp::msg::TRACE {
        f.trace_observation_point = match ev.sub_type {
            dp::obs::TO_ENDPOINT => flow::TraceObservationPoint::ToEndpoint as i32,
            other => other as i32,
        };
    }
    f
}

/// One-line rendering in the layout of Hubble's compact output:
/// `TIME [NODE]: SRC (ID:n) -> DST (ID:m) TYPE VERDICT (SUMMARY)`.
pub fn compact(f: &Flow) -> String {
    let time = f
        .time
        .as_ref()
        .map(|t| {
            let secs = t.seconds.rem_euclid(86400);
            format!(
                "{:02}:{:02}:{:02}.{:03}",
                secs / 3600,
                (secs / 60) % 60,
                secs % 60,
                t.nanos / 1_000_000
            )
        })
        .unwrap_or_else(|| "N/A".into());
    let (sport, dport) = match f.l4.as_ref().and_then(|l| l.protocol) {
        Some(Protocol::Tcp(t)) => (t.source_port, t.destination_port),
        Some(Protocol::Udp(u)) => (u.source_port, u.destination_port),
        _ => (0, 0),
    };
    let host = |ep: &Option<Endpoint>, ip: &str, port: u32| {
        let name = match ep {
            Some(e) if !e.pod_name.is_empty() => format!("{}/{}", e.namespace, e.pod_name),
            _ => ip.to_string(),
        };
        if port == 0 {
            name
        } else if name.contains(':') {
            format!("[{name}]:{port}")
        } else {
            format!("{name}:{port}")
        }
    };
    let ident = |ep: &Option<Endpoint>| {
        let id = ep.as_ref().map(|e| e.identity).unwrap_or(0);
        match id {
            0 => "(unknown)".to_string(),
            1 => "(host)".into(),
            2 => "(world)".into(),
            3 => "(unmanaged)".into(),
            4 => "(health)".into(),
            5 => "(init)".into(),
            6 => "(remote-node)".into(),
            7 => "(kube-apiserver)".into(),
            8 => "(ingress)".into(),
            n => format!("(ID:{n})"),
        }
    };
    let ip = f.ip.clone().unwrap_or_default();
    let mut s = (host(&f.source, &ip.source, sport), ident(&f.source));
    let mut d = (
        host(&f.destination, &ip.destination, dport),
        ident(&f.destination),
    );
    let arrow = match f.is_reply {
        None => "<>",
        Some(false) => "->",
        Some(true) => {
            std::mem::swap(&mut s, &mut d);
            "<-"
        }
    };
    let verdict = flow::Verdict::try_from(f.verdict)
        .map(|v| v.as_str_name())
        .unwrap_or("UNKNOWN");
    let is_pv = f.event_type.map(|e| e.r#type) == Some(dp::msg::POLICY_VERDICT as i32);
    let verdict = match (is_pv, verdict) {
        (true, "FORWARDED" | "REDIRECTED") => "ALLOWED",
        (true, "DROPPED" | "ERROR") => "DENIED",
        (true, "AUDIT") => "AUDITED",
        (_, v) => v,
    };
    format!(
        "{time} [{}]: {} {} {arrow} {} {} {} {verdict} ({})",
        f.node_name,
        s.0,
        s.1,
        d.0,
        d.1,
        periscope_proto::util::flow_type_label(f),
        f.summary
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{BuildConfig, Remote, State};
    use crate::policy::PolicySet;
    use periscope_topology::Topology;
    use std::path::Path;

    fn state() -> State {
        let t = Topology::parse(
            r#"
nodes: [{name: n1}]
pods:
  - {name: web, namespace: shop, node: n1, labels: {app: web}, ips: [10.0.0.1], workload: {kind: Deployment, name: web}}
  - {name: db, namespace: shop, node: n1, labels: {app: db}, ips: [10.0.0.2, "fd00::2"]}
"#,
            Path::new("t.yaml"),
        )
        .unwrap();
        let (mut s, specs) = State::build(
            "n1",
            &t,
            &Remote::default(),
            PolicySet::default(),
            &BuildConfig::default(),
        );
        let ids = specs
            .iter()
            .enumerate()
            .map(|(i, sp)| (sp.ifname.clone(), i as u32 + 1))
            .collect();
        s.set_endpoint_ids(&ids);
        s
    }

    #[test]
    fn drop_event_becomes_a_named_flow() {
        let st = state();
        let web = st
            .endpoints
            .values()
            .find(|e| e.pod.name == "web")
            .unwrap()
            .clone();
        let db = st
            .endpoints
            .values()
            .find(|e| e.pod.name == "db")
            .unwrap()
            .clone();
        let mut ev = FlowEvent {
            kind: dp::msg::DROP,
            version: dp::EVENT_VERSION,
            sub_type: dp::drop::POLICY_DENIED,
            verdict: dp::verdict::DROPPED,
            direction: dp::dir::INGRESS,
            proto: dp::proto::TCP,
            tcp_flags: dp::tcp::SYN,
            ep_id: db.id as u16,
            src_identity: web.identity,
            dst_identity: db.identity,
            src_port: 40000,
            dst_port: 5432,
            ts_ns: 5_000_000_000,
            ..Default::default()
        };
        ev.src_ip[..4].copy_from_slice(&[10, 0, 0, 1]);
        ev.dst_ip[..4].copy_from_slice(&[10, 0, 0, 2]);
        let f = decode(&ev, &st, 1_000_000_000_000_000_000);
        assert_eq!(f.verdict, flow::Verdict::Dropped as i32);
        assert_eq!(f.drop_reason_desc, flow::DropReason::PolicyDenied as i32);
        assert_eq!(f.drop_reason, 133);
        let s = f.source.as_ref().unwrap();
        let d = f.destination.as_ref().unwrap();
        assert_eq!((s.namespace.as_str(), s.pod_name.as_str()), ("shop", "web"));
        assert_eq!(s.workloads[0].kind, "Deployment");
        assert_eq!(s.id, 0, "remote side has no local endpoint id");
        assert_eq!(d.id, db.id);
        assert!(d.labels.contains(&"k8s:app=db".to_string()));
        assert_eq!(f.time.unwrap().seconds, 1_000_000_005);
        assert_eq!(f.summary, "TCP Flags: SYN");
        assert_eq!(f.is_reply, None);
        let line = compact(&f);
        assert!(line.contains("shop/web:40000 (ID:"), "{line}");
        assert!(line.contains("<> shop/db:5432"), "{line}");
        assert!(
            line.contains("Policy denied DROPPED (TCP Flags: SYN)"),
            "{line}"
        );
    }

    proptest::proptest! {
        /// The fuzz target's property in CI: any 128+ byte sample with our version decodes and
        /// renders without panicking (arbitrary kinds, reasons, addresses, ports, rule ids).
        #[test]
        fn arbitrary_samples_decode(mut bytes in proptest::collection::vec(proptest::num::u8::ANY, 128..200)) {
            bytes[1] = dp::EVENT_VERSION;
            let st = state();
            let ev = crate::monitor::parse_sample(&bytes).expect("whole sample");
            let f = decode(&ev, &st, 0);
            let _ = compact(&f);
            proptest::prop_assert!(f.event_type.is_some());
        }
    }

    #[test]
    fn trace_reply_and_ipv6() {
        let st = state();
        let db = st
            .endpoints
            .values()
            .find(|e| e.pod.name == "db")
            .unwrap()
            .clone();
        let mut ev = FlowEvent {
            kind: dp::msg::TRACE,
            version: dp::EVENT_VERSION,
            sub_type: dp::obs::FROM_ENDPOINT,
            verdict: dp::verdict::FORWARDED,
            direction: dp::dir::EGRESS,
            flags: EV_F_IPV6 | EV_F_REPLY_KNOWN | EV_F_REPLY,
            proto: dp::proto::ICMPV6,
            icmp_type: 129,
            ep_id: db.id as u16,
            src_identity: db.identity,
            dst_identity: dp::IDENTITY_WORLD,
            ..Default::default()
        };
        ev.src_ip = "fd00::2".parse::<Ipv6Addr>().unwrap().octets();
        ev.dst_ip = "fd00::99".parse::<Ipv6Addr>().unwrap().octets();
        let f = decode(&ev, &st, 0);
        assert_eq!(f.is_reply, Some(true));
        assert_eq!(
            f.trace_observation_point,
            flow::TraceObservationPoint::FromEndpoint as i32
        );
        assert_eq!(f.ip.as_ref().unwrap().ip_version, IpVersion::IPv6 as i32);
        assert_eq!(f.summary, "ICMPv6 EchoReply");
        assert_eq!(
            f.destination.as_ref().unwrap().labels,
            vec!["reserved:world".to_string()]
        );
        let line = compact(&f);
        assert!(line.contains("fd00::99 (world) <- shop/db (ID:"), "{line}");
        assert!(line.contains("from-endpoint FORWARDED"), "{line}");
    }
}
