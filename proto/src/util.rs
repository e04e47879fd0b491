//! Small helpers shared by every consumer of the Hubble API.
//!
//! Enum names are not repeated here: prost generates `as_str_name()` /
//! `from_str_name()` for every enum.

use crate::flow::{
    DebugCapturePoint, Flow, L7FlowType, Layer7, SocketTranslationPoint, TcpFlags,
    TrafficDirection, layer7::Record,
};

/// The TCP flag names of `flow.TCPFlags`, in its field order.
pub const TCP_FLAG_NAMES: [&str; 9] =
    ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS"];

/// The field of `flags` named `name` (upper case, as in [`TCP_FLAG_NAMES`]).
pub fn tcp_flag_mut<'a>(flags: &'a mut TcpFlags, name: &str) -> Option<&'a mut bool> {
    Some(match name {
        "FIN" => &mut flags.fin,
        "SYN" => &mut flags.syn,
        "RST" => &mut flags.rst,
        "PSH" => &mut flags.psh,
        "ACK" => &mut flags.ack,
        "URG" => &mut flags.urg,
        "ECE" => &mut flags.ece,
        "CWR" => &mut flags.cwr,
        "NS" => &mut flags.ns,
        _ => return None,
    })
}

/// The names of the flags set in `f`, in [`TCP_FLAG_NAMES`] order.
pub fn tcp_flags_set(f: &TcpFlags) -> impl Iterator<Item = &'static str> {
    let set = [f.fin, f.syn, f.rst, f.psh, f.ack, f.urg, f.ece, f.cwr, f.ns];
    TCP_FLAG_NAMES
        .into_iter()
        .zip(set)
        .filter_map(|(n, on)| on.then_some(n))
}

/// Monitor message types carried in `CiliumEventType.type` / `EventTypeFilter.type`
/// (the `-t` names of `hubble observe`).
pub mod message_type {
    /// `drop`: packet dropped; subtype = drop reason code.
    pub const DROP: i32 = 1;
    /// `debug`: datapath debug message.
    pub const DEBUG: i32 = 2;
    /// `capture`: debug packet capture; subtype = capture point.
    pub const CAPTURE: i32 = 3;
    /// `trace`: packet seen at an observation point (subtype 0–11).
    pub const TRACE: i32 = 4;
    /// `policy-verdict`: policy decision.
    pub const POLICY_VERDICT: i32 = 5;
    /// `recorder`: packet recorder.
    pub const RECORDER: i32 = 6;
    /// `trace-sock`: socket-level load-balancer translation.
    pub const TRACE_SOCK: i32 = 7;
    /// `l7`: record from the L7 proxy.
    pub const L7: i32 = 129;
    /// `agent`: agent notification.
    pub const AGENT: i32 = 130;
}

/// The TYPE column that `hubble observe` prints for a flow (compact, dict and
/// table output), derived like the hubble 0.12 CLI does:
///
/// | flow | label |
/// |---|---|
/// | `l7` set | `http-request`, `dns-response proxy`, `kafka-request`, `l7-sample`, ... |
/// | trace (4) | observation point of the subtype, e.g. `to-endpoint`, `from-network` |
/// | drop (1) | drop reason text of the subtype, e.g. `Policy denied` |
/// | policy verdict (5) | `policy-verdict:<match> <TrafficDirection>`, e.g. `policy-verdict:L3-L4 INGRESS` |
/// | capture (3) | `DebugCapturePoint` name, e.g. `DBG_CAPTURE_DELIVERY` |
/// | trace-sock (7) | `pre-xlate-fwd`, `post-xlate-rev`, ... |
/// | anything else | `UNKNOWN` |
///
/// Trace and drop subtypes are looked up modulo 256 (the CLI narrows them to a
/// byte); unknown ones print as a number (`<n>` for trace, `<n>, 0` for drop).
/// Enum values without a name print as their number, as Go's protobuf does.
pub fn flow_type_label(flow: &Flow) -> String {
    if let Some(l7) = &flow.l7 {
        return l7_label(l7);
    }
    let (event_type, sub_type) = flow
        .event_type
        .as_ref()
        .map_or((0, 0), |e| (e.r#type, e.sub_type));
    match event_type {
        message_type::TRACE => {
            let point = byte(sub_type);
            trace_point_label(point).map_or_else(|| point.to_string(), str::to_owned)
        }
        message_type::DROP => {
            let reason = byte(sub_type);
            drop_reason_label(reason).map_or_else(|| format!("{reason}, 0"), str::to_owned)
        }
        message_type::POLICY_VERDICT => format!(
            "policy-verdict:{} {}",
            policy_match_label(flow.policy_match_type),
            enum_name(flow.traffic_direction, |v| {
                TrafficDirection::try_from(v).ok().map(|d| d.as_str_name())
            }),
        ),
        message_type::CAPTURE => enum_name(flow.debug_capture_point, |v| {
            DebugCapturePoint::try_from(v).ok().map(|p| p.as_str_name())
        }),
        message_type::TRACE_SOCK => sock_xlate_label(flow.sock_xlate_point),
        _ => "UNKNOWN".to_owned(),
    }
}

/// The CLI converts the subtype to an unsigned byte before looking it up.
fn byte(sub_type: i32) -> u8 {
    // Truncation is the point: Go's uint8(int32) keeps the low 8 bits.
    (sub_type & 0xff) as u8
}

/// Name of a known enum value, or the decimal number for an unknown one.
fn enum_name(value: i32, name: impl FnOnce(i32) -> Option<&'static str>) -> String {
    name(value).map_or_else(|| value.to_string(), str::to_owned)
}

fn l7_label(l7: &Layer7) -> String {
    let kind = enum_name(l7.r#type, |v| {
        L7FlowType::try_from(v).ok().map(|t| t.as_str_name())
    })
    .to_lowercase();
    match &l7.record {
        Some(Record::Http(_)) => format!("http-{kind}"),
        // The CLI always adds the separator, even when the source is empty.
        Some(Record::Dns(dns)) => format!("dns-{kind} {}", dns.observation_source),
        Some(Record::Kafka(_)) => format!("kafka-{kind}"),
        None => format!("l7-{kind}"),
    }
}

/// Monitor trace observation points (the numbering of `CiliumEventType.sub_type`,
/// which differs from `TraceObservationPoint` only in 0 = to-endpoint).
fn trace_point_label(point: u8) -> Option<&'static str> {
    Some(match point {
        0 => "to-endpoint",
        1 => "to-proxy",
        2 => "to-host",
        3 => "to-stack",
        4 => "to-overlay",
        5 => "from-endpoint",
        6 => "from-proxy",
        7 => "from-host",
        8 => "from-stack",
        9 => "from-overlay",
        10 => "from-network",
        11 => "to-network",
        _ => return None,
    })
}

fn policy_match_label(match_type: u32) -> &'static str {
    match match_type {
        0 => "none",
        1 => "L3-Only",
        2 => "L3-L4",
        3 => "L4-Only",
        4 => "all",
        5 => "L3-Proto",
        6 => "Proto-Only",
        _ => "unknown",
    }
}

fn sock_xlate_label(point: i32) -> String {
    match SocketTranslationPoint::try_from(point) {
        Ok(SocketTranslationPoint::SockXlatePointPreDirectionFwd) => "pre-xlate-fwd".to_owned(),
        Ok(SocketTranslationPoint::SockXlatePointPostDirectionFwd) => "post-xlate-fwd".to_owned(),
        Ok(SocketTranslationPoint::SockXlatePointPreDirectionRev) => "pre-xlate-rev".to_owned(),
        Ok(SocketTranslationPoint::SockXlatePointPostDirectionRev) => "post-xlate-rev".to_owned(),
        Ok(other) => other.as_str_name().to_owned(),
        Err(_) => point.to_string(),
    }
}

/// Text the CLI shows for a datapath drop code. Some texts intentionally differ
/// from the `DropReason` enum names (136 and 161).
fn drop_reason_label(code: u8) -> Option<&'static str> {
    Some(match code {
        0 => "Success",
        130 => "Invalid source mac",
        131 => "Invalid destination mac",
        132 => "Invalid source ip",
        133 => "Policy denied",
        134 => "Invalid packet",
        135 => "CT: Truncated or invalid header",
        136 => "Fragmentation needed",
        137 => "CT: Unknown L4 protocol",
        138 => "CT: Can't create entry from packet",
        139 => "Unsupported L3 protocol",
        140 => "Missed tail call",
        141 => "Error writing to packet",
        142 => "Unknown L4 protocol",
        143 => "Unknown ICMPv4 code",
        144 => "Unknown ICMPv4 type",
        145 => "Unknown ICMPv6 code",
        146 => "Unknown ICMPv6 type",
        147 => "Error retrieving tunnel key",
        148 => "Error retrieving tunnel options",
        149 => "Invalid Geneve option",
        150 => "Unknown L3 target address",
        151 => "Stale or unroutable IP",
        152 => "No matching local container found",
        153 => "Error while correcting L3 checksum",
        154 => "Error while correcting L4 checksum",
        155 => "CT: Map insertion failed",
        156 => "Invalid IPv6 extension header",
        157 => "IP fragmentation not supported",
        158 => "Service backend not found",
        160 => "No tunnel/encapsulation endpoint (datapath BUG!)",
        161 => "NAT 46/64 not enabled",
        162 => "Reached EDT rate-limiting drop horizon",
        163 => "Unknown connection tracking state",
        164 => "Local host is unreachable",
        165 => "No configuration available to perform policy decision",
        166 => "Unsupported L2 protocol",
        167 => "No mapping for NAT masquerade",
        168 => "Unsupported protocol for NAT masquerade",
        169 => "FIB lookup failed",
        170 => "Encapsulation traffic is prohibited",
        171 => "Invalid identity",
        172 => "Unknown sender",
        173 => "NAT not needed",
        174 => "Is a ClusterIP",
        175 => "First logical datagram fragment not found",
        176 => "Forbidden ICMPv6 message",
        177 => "Denied by LB src range check",
        178 => "Socket lookup failed",
        179 => "Socket assign failed",
        180 => "Proxy redirection not supported for protocol",
        181 => "Policy denied by denylist",
        182 => "VLAN traffic disallowed by VLAN filter",
        183 => "Incorrect VNI from VTEP",
        184 => "Failed to update or lookup TC buffer",
        185 => "No SID was found for the IP address",
        186 => "SRv6 state was removed during tail call",
        187 => "L3 translation from IPv4 to IPv6 failed (NAT46)",
        188 => "L3 translation from IPv6 to IPv4 failed (NAT64)",
        189 => "Authentication required",
        190 => "No conntrack map found",
        191 => "No nat map found",
        192 => "Invalid ClusterID",
        193 => "Unsupported packet protocol for DSR encapsulation",
        194 => "No egress gateway found",
        196 => "TTL exceeded",
        197 => "No node ID found",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{CiliumEventType, Dns, DropReason, Http, Kafka, Verdict};

    fn event(r#type: i32, sub_type: i32) -> Flow {
        Flow {
            event_type: Some(CiliumEventType { r#type, sub_type }),
            ..Flow::default()
        }
    }

    fn l7(kind: L7FlowType, record: Option<Record>) -> Flow {
        Flow {
            l7: Some(Layer7 {
                r#type: kind as i32,
                record,
                ..Layer7::default()
            }),
            // The L7 row wins over the event type.
            event_type: Some(CiliumEventType {
                r#type: message_type::L7,
                sub_type: 0,
            }),
            ..Flow::default()
        }
    }

    #[test]
    fn l7_labels() {
        let http = || Some(Record::Http(Http::default()));
        assert_eq!(
            flow_type_label(&l7(L7FlowType::Request, http())),
            "http-request"
        );
        assert_eq!(
            flow_type_label(&l7(L7FlowType::Response, http())),
            "http-response"
        );
        assert_eq!(
            flow_type_label(&l7(L7FlowType::UnknownL7Type, http())),
            "http-unknown_l7_type"
        );
        let kafka = Some(Record::Kafka(Kafka::default()));
        assert_eq!(
            flow_type_label(&l7(L7FlowType::Request, kafka)),
            "kafka-request"
        );
        assert_eq!(flow_type_label(&l7(L7FlowType::Sample, None)), "l7-sample");

        let dns = |source: &str| {
            Some(Record::Dns(Dns {
                observation_source: source.to_owned(),
                ..Dns::default()
            }))
        };
        assert_eq!(
            flow_type_label(&l7(L7FlowType::Response, dns("proxy"))),
            "dns-response proxy"
        );
        // Separator kept even without a source, exactly like the CLI.
        assert_eq!(
            flow_type_label(&l7(L7FlowType::Request, dns(""))),
            "dns-request "
        );

        // An L7 type number without a name prints as the number.
        let mut odd = l7(L7FlowType::Request, http());
        odd.l7.as_mut().unwrap().r#type = 42;
        assert_eq!(flow_type_label(&odd), "http-42");

        // L7 wins even over a trace event type.
        let mut traced = l7(L7FlowType::Request, http());
        traced.event_type = Some(CiliumEventType {
            r#type: message_type::TRACE,
            sub_type: 0,
        });
        assert_eq!(flow_type_label(&traced), "http-request");
    }

    #[test]
    fn trace_labels() {
        let expected = [
            "to-endpoint",
            "to-proxy",
            "to-host",
            "to-stack",
            "to-overlay",
            "from-endpoint",
            "from-proxy",
            "from-host",
            "from-stack",
            "from-overlay",
            "from-network",
            "to-network",
        ];
        for (sub_type, label) in (0..).zip(expected) {
            assert_eq!(
                flow_type_label(&event(message_type::TRACE, sub_type)),
                label
            );
        }
        assert_eq!(flow_type_label(&event(message_type::TRACE, 12)), "12");
        assert_eq!(flow_type_label(&event(message_type::TRACE, 101)), "101");
        // Subtypes are narrowed to a byte before the lookup.
        assert_eq!(
            flow_type_label(&event(message_type::TRACE, 256 + 3)),
            "to-stack"
        );
        assert_eq!(flow_type_label(&event(message_type::TRACE, -1)), "255");
    }

    #[test]
    fn drop_labels() {
        let drop = |code| flow_type_label(&event(message_type::DROP, code));
        assert_eq!(drop(0), "Success");
        assert_eq!(drop(130), "Invalid source mac");
        assert_eq!(drop(133), "Policy denied");
        assert_eq!(drop(134), "Invalid packet");
        assert_eq!(drop(138), "CT: Can't create entry from packet");
        assert_eq!(
            drop(160),
            "No tunnel/encapsulation endpoint (datapath BUG!)"
        );
        assert_eq!(drop(181), "Policy denied by denylist");
        assert_eq!(drop(187), "L3 translation from IPv4 to IPv6 failed (NAT46)");
        assert_eq!(drop(197), "No node ID found");
        // Labels that differ from the enum names.
        assert_eq!(drop(136), "Fragmentation needed");
        assert_eq!(drop(161), "NAT 46/64 not enabled");
        // Unassigned / unknown codes.
        assert_eq!(drop(159), "159, 0");
        assert_eq!(drop(195), "195, 0");
        assert_eq!(drop(2), "2, 0");
        assert_eq!(drop(255), "255, 0");
        assert_eq!(drop(256 + 133), "Policy denied");

        // The label follows the event subtype, not drop_reason_desc.
        let mut flow = event(message_type::DROP, 133);
        flow.verdict = Verdict::Dropped as i32;
        flow.drop_reason_desc = DropReason::PolicyDeny as i32;
        assert_eq!(flow_type_label(&flow), "Policy denied");
    }

    #[test]
    fn every_drop_reason_has_a_label_and_vice_versa() {
        for code in 0..=u8::MAX {
            assert_eq!(
                DropReason::try_from(i32::from(code)).is_ok(),
                drop_reason_label(code).is_some(),
                "drop code {code}"
            );
        }
    }

    #[test]
    fn policy_verdict_labels() {
        let verdict = |match_type, direction: i32| {
            let mut flow = event(message_type::POLICY_VERDICT, 0);
            flow.policy_match_type = match_type;
            flow.traffic_direction = direction;
            flow_type_label(&flow)
        };
        let ingress = TrafficDirection::Ingress as i32;
        let egress = TrafficDirection::Egress as i32;
        assert_eq!(verdict(0, ingress), "policy-verdict:none INGRESS");
        assert_eq!(verdict(1, egress), "policy-verdict:L3-Only EGRESS");
        assert_eq!(verdict(2, ingress), "policy-verdict:L3-L4 INGRESS");
        assert_eq!(verdict(3, ingress), "policy-verdict:L4-Only INGRESS");
        assert_eq!(verdict(4, egress), "policy-verdict:all EGRESS");
        assert_eq!(verdict(5, ingress), "policy-verdict:L3-Proto INGRESS");
        assert_eq!(verdict(6, ingress), "policy-verdict:Proto-Only INGRESS");
        assert_eq!(verdict(7, ingress), "policy-verdict:unknown INGRESS");
        assert_eq!(
            verdict(2, 0),
            "policy-verdict:L3-L4 TRAFFIC_DIRECTION_UNKNOWN"
        );
        assert_eq!(verdict(2, 9), "policy-verdict:L3-L4 9");
    }

    #[test]
    fn capture_labels() {
        let capture = |point: i32| {
            let mut flow = event(message_type::CAPTURE, point);
            flow.debug_capture_point = point;
            flow_type_label(&flow)
        };
        assert_eq!(
            capture(DebugCapturePoint::DbgCaptureDelivery as i32),
            "DBG_CAPTURE_DELIVERY"
        );
        assert_eq!(capture(11), "DBG_CAPTURE_SNAT_POST");
        assert_eq!(capture(0), "DBG_CAPTURE_POINT_UNKNOWN");
        // Reserved value: no name, so the number.
        assert_eq!(capture(2), "2");
    }

    #[test]
    fn trace_sock_labels() {
        let sock = |point: i32| {
            let mut flow = event(message_type::TRACE_SOCK, 0);
            flow.sock_xlate_point = point;
            flow_type_label(&flow)
        };
        assert_eq!(sock(0), "SOCK_XLATE_POINT_UNKNOWN");
        assert_eq!(sock(1), "pre-xlate-fwd");
        assert_eq!(sock(2), "post-xlate-fwd");
        assert_eq!(sock(3), "pre-xlate-rev");
        assert_eq!(sock(4), "post-xlate-rev");
        assert_eq!(sock(9), "9");
    }

    #[test]
    fn everything_else_is_unknown() {
        assert_eq!(flow_type_label(&Flow::default()), "UNKNOWN");
        assert_eq!(flow_type_label(&event(message_type::L7, 0)), "UNKNOWN");
        assert_eq!(flow_type_label(&event(message_type::DEBUG, 0)), "UNKNOWN");
        assert_eq!(
            flow_type_label(&event(message_type::RECORDER, 0)),
            "UNKNOWN"
        );
        assert_eq!(flow_type_label(&event(message_type::AGENT, 0)), "UNKNOWN");
        assert_eq!(flow_type_label(&event(0, 0)), "UNKNOWN");
    }
}

/// Proleptic Gregorian calendar arithmetic for timestamps (H. Hinnant's algorithms), shared by
/// the protojson Timestamp codec and the CLI's time parsing and formatting.
pub mod calendar {
    /// Whether `year` is a leap year.
    pub fn is_leap(year: i64) -> bool {
        year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
    }

    /// Days of `month` (1–12) in `year`.
    pub fn days_in_month(year: i64, month: i64) -> i64 {
        match month {
            2 if is_leap(year) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }

    /// Days since 1970-01-01 of a date.
    pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// The (year, month, day) of a day count since 1970-01-01 (inverse of [`days_from_civil`]).
    pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        (yoe + era * 400 + i64::from(month <= 2), month, day)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trips_and_known_dates() {
            assert_eq!(days_from_civil(1970, 1, 1), 0);
            assert_eq!(days_from_civil(2000, 3, 1), 11_017);
            assert_eq!(civil_from_days(-1), (1969, 12, 31));
            for d in (-800_000..800_000).step_by(997) {
                let (y, m, dd) = civil_from_days(d);
                assert_eq!(days_from_civil(y, m, dd), d);
                assert!(dd >= 1 && dd <= days_in_month(y, m));
            }
            assert!(is_leap(2000) && !is_leap(1900) && is_leap(2024));
        }
    }
}
