//! Words, numbers, times and colours for display. Pure functions, unit-tested on the host.
use periscope_ui_api::{
    Direction, Flow, MapEdge, MapNode, NodeKind, RuleInfo, direction, drop_reason, endpoint_name,
    l4, node_id, verdict,
};
use periscope_ui_api::{EdgeLook, PolicyInfo};

/// Escapes text for XML/HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// FNV-1a of `s`: a stable hash (the same in every browser and every session).
pub fn fnv1a(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The colour of a namespace: a hue from its name's hash, the same everywhere.
pub fn namespace_color(ns: &str) -> String {
    if ns.is_empty() {
        return "#5f6b7a".into();
    }
    let h = fnv1a(ns);
    let hue = h % 360;
    // Two lightness steps so that neighbouring hues still differ.
    let light = if (h >> 9) & 1 == 0 { 40 } else { 50 };
    format!("hsl({hue},62%,{light}%)")
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Broken-down local time of Unix nanoseconds at `offset_min` minutes east of UTC.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: i64,
    min: i64,
    sec: i64,
    ms: i64,
}

fn civil(ns: i64, offset_min: i32) -> Civil {
    let ms_total = ns.div_euclid(1_000_000) + offset_min as i64 * 60_000;
    let secs = ms_total.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    Civil {
        year,
        month,
        day,
        hour: sod / 3600,
        min: sod / 60 % 60,
        sec: sod % 60,
        ms: ms_total.rem_euclid(1000),
    }
}

/// `2024-05-01 12:30:01.123` for Unix nanoseconds, `offset_min` minutes east of UTC.
pub fn date_time(ns: i64, offset_min: i32) -> String {
    let c = civil(ns, offset_min);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
        c.year, c.month, c.day, c.hour, c.min, c.sec, c.ms
    )
}

/// `12:30:01.123` for Unix nanoseconds, `offset_min` minutes east of UTC.
pub fn clock(ns: i64, offset_min: i32) -> String {
    let c = civil(ns, offset_min);
    format!("{:02}:{:02}:{:02}.{:03}", c.hour, c.min, c.sec, c.ms)
}

/// Unix nanoseconds of a flow (0 without a time).
pub fn flow_ns(f: &Flow) -> i64 {
    f.time
        .as_ref()
        .map(|t| t.seconds.saturating_mul(1_000_000_000) + t.nanos as i64)
        .unwrap_or(0)
}

/// `1.5 KiB`, `3 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if v < 10.0 {
        format!("{v:.1} {}", UNITS[u])
    } else {
        format!("{v:.0} {}", UNITS[u])
    }
}

/// `950`, `1.2k`, `34k`, `5.6M`.
pub fn count(n: u64) -> String {
    let (v, s) = match n {
        0..1_000 => return n.to_string(),
        1_000..1_000_000 => (n as f64 / 1e3, "k"),
        1_000_000..1_000_000_000 => (n as f64 / 1e6, "M"),
        _ => (n as f64 / 1e9, "G"),
    };
    if v < 10.0 {
        format!("{v:.1}{s}")
    } else {
        format!("{v:.0}{s}")
    }
}

/// A node's short label on the map: the workload name, or the reserved label without
/// `reserved:`.
pub fn node_label(n: &MapNode) -> String {
    let name = n.name.strip_prefix("reserved:").unwrap_or(&n.name);
    truncate(name, 26)
}

/// `s` cut to `max` characters with an ellipsis.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The `data-kind` value of a node kind.
pub fn kind_name(k: NodeKind) -> &'static str {
    match k {
        NodeKind::Workload => "workload",
        NodeKind::World => "world",
        NodeKind::Host => "host",
        NodeKind::RemoteNode => "remote_node",
        NodeKind::Reserved => "reserved",
        NodeKind::Unknown => "unknown",
    }
}

/// The `data-look` value of an edge look.
pub fn look_name(l: EdgeLook) -> &'static str {
    match l {
        EdgeLook::Forwarded => "forwarded",
        EdgeLook::Dropped => "dropped",
        EdgeLook::Mixed => "mixed",
        EdgeLook::Audit => "audit",
    }
}

/// `TCP/6379`, `ICMPv4`, `UDP/53`.
pub fn port_proto(protocol: &str, port: u32) -> String {
    match (protocol.is_empty(), port) {
        (true, 0) => "any".into(),
        (true, p) => p.to_string(),
        (false, 0) => protocol.to_string(),
        (false, p) => format!("{protocol}/{p}"),
    }
}

/// An edge's counts in words: `40 forwarded, 2 dropped, 1.2 KiB`.
pub fn edge_counts(e: &MapEdge) -> String {
    let mut parts = Vec::new();
    for (n, w) in [
        (e.forwarded, "forwarded"),
        (e.dropped, "dropped"),
        (e.audit, "audit"),
        (e.other, "other"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {w}"));
        }
    }
    if parts.is_empty() {
        parts.push("no flows".into());
    }
    if e.bytes > 0 {
        parts.push(bytes(e.bytes));
    }
    parts.join(", ")
}

/// An edge's short label on the map: `TCP/6379 · 42` (and the bytes when known).
pub fn edge_label(e: &MapEdge) -> String {
    let mut s = format!(
        "{} · {}",
        port_proto(&e.key.protocol, e.key.port),
        count(e.flows())
    );
    if e.bytes > 0 {
        s.push_str(" · ");
        s.push_str(&bytes(e.bytes));
    }
    s
}

/// An endpoint of a flow as the table shows it: `ns/pod`, else its map name.
pub fn endpoint(ep: Option<&periscope_proto::flow::Endpoint>) -> String {
    let Some(ep) = ep else {
        return "?".into();
    };
    if !ep.pod_name.is_empty() {
        return if ep.namespace.is_empty() {
            ep.pod_name.clone()
        } else {
            format!("{}/{}", ep.namespace, ep.pod_name)
        };
    }
    let (ns, name) = endpoint_name(ep);
    node_id(&ns, &name)
}

/// `10.0.0.1:40000` (or the address alone for port-less protocols).
pub fn address(ip: &str, port: u32) -> String {
    match (ip.is_empty(), port, ip.contains(':')) {
        (true, _, _) => String::new(),
        (false, 0, _) => ip.to_string(),
        (false, p, true) => format!("[{ip}]:{p}"),
        (false, p, false) => format!("{ip}:{p}"),
    }
}

/// The flow's source and destination addresses with ports.
pub fn addresses(f: &Flow) -> (String, String) {
    let (_, sport, dport) = l4(f);
    let (sip, dip) =
        f.ip.as_ref()
            .map(|ip| (ip.source.as_str(), ip.destination.as_str()))
            .unwrap_or(("", ""));
    (address(sip, sport), address(dip, dport))
}

/// The verdict's name (`FORWARDED`, `DROPPED`, ...).
pub fn verdict_name(f: &Flow) -> &'static str {
    match verdict(f) {
        periscope_proto::flow::Verdict::Unknown => "UNKNOWN",
        v => v.as_str_name(),
    }
}

/// The drop reason's name, or empty when the flow was not dropped for a reason.
pub fn drop_reason_name(f: &Flow) -> String {
    if f.drop_reason_desc == 0 {
        return String::new();
    }
    match drop_reason(f) {
        periscope_proto::flow::DropReason::Unknown => f.drop_reason_desc.to_string(),
        r => r.as_str_name().to_string(),
    }
}

/// `ingress`, `egress` or empty.
pub fn direction_name(f: &Flow) -> &'static str {
    use periscope_proto::flow::TrafficDirection as D;
    match direction(f) {
        D::Ingress => "ingress",
        D::Egress => "egress",
        D::Unknown => "",
    }
}

/// The bytes and packets of its connection the flow record accounts for (Periscope's agent
/// counts them; see `Flow.periscope_bytes`): `1.5 KiB in 4 packets`, or a dash for none (replies,
/// verdict notifications, other producers).
pub fn traffic(f: &Flow) -> String {
    match (f.periscope_bytes, f.periscope_packets) {
        (0, 0) => "—".into(),
        (b, 1) => format!("{} in 1 packet", bytes(b)),
        (b, p) => format!("{} in {p} packets", bytes(b)),
    }
}

/// The TCP flags set on the flow: `SYN ACK`.
pub fn tcp_flags(f: &Flow) -> String {
    use periscope_proto::flow::layer4::Protocol;
    let Some(Protocol::Tcp(t)) = f.l4.as_ref().and_then(|l| l.protocol.as_ref()) else {
        return String::new();
    };
    let Some(fl) = &t.flags else {
        return String::new();
    };
    [
        (fl.syn, "SYN"),
        (fl.ack, "ACK"),
        (fl.fin, "FIN"),
        (fl.rst, "RST"),
        (fl.psh, "PSH"),
        (fl.urg, "URG"),
        (fl.ece, "ECE"),
        (fl.cwr, "CWR"),
        (fl.ns, "NS"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| *n)
    .collect::<Vec<_>>()
    .join(" ")
}

/// The layer-7 record of a flow in words (DNS, HTTP, Kafka), if it has one.
pub fn l7(f: &Flow) -> Option<String> {
    use periscope_proto::flow::layer7::Record;
    let l7 = f.l7.as_ref()?;
    let kind = match l7.r#type {
        1 => "request",
        2 => "response",
        _ => "",
    };
    let mut s = match l7.record.as_ref()? {
        Record::Dns(d) => {
            let mut s = format!("DNS {}", d.query);
            if !d.qtypes.is_empty() {
                s.push(' ');
                s.push_str(&d.qtypes.join(","));
            }
            if !d.ips.is_empty() {
                s.push_str(" → ");
                s.push_str(&d.ips.join(", "));
            }
            if d.rcode != 0 {
                s.push_str(&format!(" (rcode {})", d.rcode));
            }
            s
        }
        Record::Http(h) => {
            let mut s = format!("HTTP {} {}", h.method, h.url);
            if h.code != 0 {
                s.push_str(&format!(" → {}", h.code));
            }
            s
        }
        Record::Kafka(k) => format!("Kafka {} {}", k.api_key, k.topic),
    };
    if !kind.is_empty() {
        s = format!("{s} ({kind})");
    }
    if l7.latency_ns > 0 {
        s.push_str(&format!(" {:.1} ms", l7.latency_ns as f64 / 1e6));
    }
    Some(s)
}

/// Policy names of a flow's `*_allowed_by` / `*_denied_by` lists: `prod/db-policy`.
pub fn policy_names(list: &[periscope_proto::flow::Policy]) -> Vec<String> {
    list.iter()
        .map(|p| {
            if p.namespace.is_empty() {
                p.name.clone()
            } else {
                format!("{}/{}", p.namespace, p.name)
            }
        })
        .collect()
}

/// The match type of a flow (`Flow.policy_match_type`) in words (empty when it has none).
pub fn match_type(f: &Flow) -> &'static str {
    match f.policy_match_type {
        1 => "L3-Only (the peer's identity, any port)",
        2 => "L3-L4 (the peer's identity and the port)",
        3 => "L4-Only (the port, any peer)",
        4 => "all (every peer on every port)",
        5 => "L3-Proto (the peer's identity and the protocol)",
        6 => "Proto-Only (the protocol, any peer)",
        _ => "",
    }
}

/// A policy's name as the list shows it: `prod/db-policy`, or `name` for cluster-wide ones.
pub fn policy_title(p: &PolicyInfo) -> String {
    if p.policy.namespace.is_empty() {
        p.policy.name.clone()
    } else {
        format!("{}/{}", p.policy.namespace, p.policy.name)
    }
}

/// A rule in words: `Allow ingress from prod/frontend on TCP/6379`.
pub fn rule_words(r: &RuleInfo) -> String {
    let verb = if r.deny { "Deny" } else { "Allow" };
    let (dir, prep) = match r.direction {
        Direction::Ingress => ("ingress", "from"),
        Direction::Egress => ("egress", "to"),
    };
    let peers = if r.peers.is_empty() {
        "any peer".to_string()
    } else {
        r.peers.join(", ")
    };
    let ports = if r.ports.is_empty() {
        "any port".to_string()
    } else {
        r.ports.join(", ")
    };
    format!("{verb} {dir} {prep} {peers} on {ports}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use periscope_proto::flow::{
        self as ft, Endpoint, Layer4, Layer7, TcpFlags, layer4::Protocol, layer7::Record,
    };
    use periscope_ui_api::EdgeKey;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn namespace_colours_are_stable_and_differ() {
        assert_eq!(namespace_color("prod"), namespace_color("prod"));
        assert_ne!(namespace_color("prod"), namespace_color("staging"));
        assert!(namespace_color("kube-system").starts_with("hsl("));
        // FNV-1a reference values.
        assert_eq!(fnv1a(""), 0x811c9dc5);
        assert_eq!(fnv1a("a"), 0xe40c292c);
    }

    #[test]
    fn times_in_any_offset() {
        // 2024-05-01T12:30:01.123456789Z
        let ns = 1_714_566_601_123_456_789;
        assert_eq!(date_time(ns, 0), "2024-05-01 12:30:01.123");
        assert_eq!(date_time(ns, 120), "2024-05-01 14:30:01.123");
        assert_eq!(date_time(ns, -13 * 60), "2024-04-30 23:30:01.123");
        assert_eq!(clock(ns, 0), "12:30:01.123");
        assert_eq!(date_time(0, 0), "1970-01-01 00:00:00.000");
        assert_eq!(date_time(-1, 0), "1969-12-31 23:59:59.999");
        // Leap day.
        assert_eq!(
            date_time(951_782_400_000_000_000, 0),
            "2000-02-29 00:00:00.000"
        );
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(bytes(0), "0 B");
        let mut f = Flow::default();
        assert_eq!(traffic(&f), "—");
        (f.periscope_bytes, f.periscope_packets) = (74, 1);
        assert_eq!(traffic(&f), "74 B in 1 packet");
        (f.periscope_bytes, f.periscope_packets) = (1536, 4);
        assert_eq!(traffic(&f), "1.5 KiB in 4 packets");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(50 * 1024 * 1024), "50 MiB");
        assert_eq!(count(999), "999");
        assert_eq!(count(1234), "1.2k");
        assert_eq!(count(56_000), "56k");
        assert_eq!(count(5_600_000), "5.6M");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }

    #[test]
    fn edges_in_words() {
        let mut e = MapEdge::new(EdgeKey {
            source: "prod/frontend".into(),
            destination: "prod/db".into(),
            port: 6379,
            protocol: "TCP".into(),
        });
        e.forwarded = 40;
        e.dropped = 2;
        assert_eq!(edge_counts(&e), "40 forwarded, 2 dropped");
        assert_eq!(edge_label(&e), "TCP/6379 · 42");
        e.bytes = 2048;
        assert_eq!(edge_label(&e), "TCP/6379 · 42 · 2.0 KiB");
        assert_eq!(port_proto("ICMPv4", 0), "ICMPv4");
        assert_eq!(look_name(e.look()), "mixed");
        assert_eq!(kind_name(NodeKind::RemoteNode), "remote_node");
        let world = MapNode::new("", "reserved:world");
        assert_eq!(node_label(&world), "world");
    }

    fn flow() -> Flow {
        Flow {
            verdict: ft::Verdict::Dropped as i32,
            drop_reason_desc: ft::DropReason::PolicyDenied as i32,
            traffic_direction: ft::TrafficDirection::Ingress as i32,
            source: Some(Endpoint {
                namespace: "prod".into(),
                pod_name: "frontend-1".into(),
                ..Default::default()
            }),
            destination: Some(Endpoint {
                labels: vec!["reserved:world".into()],
                ..Default::default()
            }),
            ip: Some(ft::Ip {
                source: "10.0.0.1".into(),
                destination: "fd00::1".into(),
                ..Default::default()
            }),
            l4: Some(Layer4 {
                protocol: Some(Protocol::Tcp(ft::Tcp {
                    source_port: 40000,
                    destination_port: 443,
                    flags: Some(TcpFlags {
                        syn: true,
                        ack: true,
                        ..Default::default()
                    }),
                })),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn flow_cells() {
        let f = flow();
        assert_eq!(endpoint(f.source.as_ref()), "prod/frontend-1");
        assert_eq!(endpoint(f.destination.as_ref()), "reserved:world");
        assert_eq!(endpoint(None), "?");
        assert_eq!(
            addresses(&f),
            ("10.0.0.1:40000".into(), "[fd00::1]:443".into())
        );
        assert_eq!(verdict_name(&f), "DROPPED");
        assert_eq!(drop_reason_name(&f), "POLICY_DENIED");
        assert_eq!(direction_name(&f), "ingress");
        assert_eq!(tcp_flags(&f), "SYN ACK");
        assert_eq!(l7(&f), None);
        let mut g = f.clone();
        g.drop_reason_desc = 0;
        g.verdict = 0;
        assert_eq!(drop_reason_name(&g), "");
        assert_eq!(verdict_name(&g), "UNKNOWN");
    }

    #[test]
    fn l7_records_in_words() {
        let mut f = flow();
        f.l7 = Some(Layer7 {
            r#type: 2,
            latency_ns: 1_500_000,
            record: Some(Record::Dns(ft::Dns {
                query: "db.prod.svc.".into(),
                ips: vec!["10.0.0.9".into()],
                qtypes: vec!["A".into()],
                ..Default::default()
            })),
        });
        assert_eq!(
            l7(&f).unwrap(),
            "DNS db.prod.svc. A → 10.0.0.9 (response) 1.5 ms"
        );
        f.l7 = Some(Layer7 {
            r#type: 1,
            latency_ns: 0,
            record: Some(Record::Http(ft::Http {
                code: 0,
                method: "GET".into(),
                url: "http://web/".into(),
                ..Default::default()
            })),
        });
        assert_eq!(l7(&f).unwrap(), "HTTP GET http://web/ (request)");
    }

    #[test]
    fn rules_in_words() {
        let r = RuleInfo {
            direction: Direction::Ingress,
            deny: false,
            peers: vec!["prod/frontend".into()],
            ports: vec!["TCP/6379".into()],
        };
        assert_eq!(
            rule_words(&r),
            "Allow ingress from prod/frontend on TCP/6379"
        );
        let r = RuleInfo {
            direction: Direction::Egress,
            deny: true,
            peers: vec![],
            ports: vec![],
        };
        assert_eq!(rule_words(&r), "Deny egress to any peer on any port");
    }
}
