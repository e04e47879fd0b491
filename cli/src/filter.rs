//! Filter flags → `FlowFilter`s, with the build rules of `hubble observe` 0.12.
//!
//! Flags are applied in command-line order:
//!
//! - a one-sided flag (`--from-ip`, `--verdict`, `-t`, ...) adds its value to every
//!   filter of its list;
//! - a both-sides flag (`--ip`, `--pod`, `--namespace`, `--fqdn`, `--label`,
//!   `--service`, `--port`, `--identity`, `--workload`) adds the source variant to
//!   filter A and the destination variant to filter B;
//! - `--not` sends the next filter flag to the blacklist instead of the whitelist;
//! - a list with identical A and B is sent as one filter;
//! - repeated flags append to the same repeated field (OR inside the field).
//!
//! ```
//! use periscope_cli::filter::FilterBuilder;
//!
//! let mut filters = FilterBuilder::default();
//! filters.set("port", "53").unwrap();
//! filters.set("verdict", "FORWARDED").unwrap();
//! filters.set("not", "").unwrap();
//! filters.set("from-namespace", "kube-system").unwrap();
//! let (whitelist, blacklist) = filters.finish().unwrap();
//! assert_eq!(whitelist.len(), 2); // source_port 53 OR destination_port 53
//! assert_eq!(blacklist[0].source_pod, ["kube-system/"]);
//! ```

use periscope_proto::flow::{
    EventTypeFilter, FlowFilter, IpVersion, TcpFlags, TrafficDirection, Verdict, Workload,
};
use periscope_proto::util::message_type;

/// A filter flag that cannot be applied; the message is what the user sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

/// Every filter flag `FilterBuilder::set` understands (long names, no `--`).
pub const FILTER_FLAGS: &[&str] = &[
    "not",
    "uuid",
    "from-ip",
    "ip",
    "to-ip",
    "from-pod",
    "pod",
    "to-pod",
    "from-namespace",
    "namespace",
    "to-namespace",
    "from-fqdn",
    "fqdn",
    "to-fqdn",
    "from-label",
    "label",
    "to-label",
    "from-service",
    "service",
    "to-service",
    "from-port",
    "port",
    "to-port",
    "from-identity",
    "identity",
    "to-identity",
    "from-workload",
    "workload",
    "to-workload",
    "verdict",
    "type",
    "http-status",
    "http-method",
    "http-path",
    "protocol",
    "tcp-flags",
    "node-name",
    "ipv4",
    "ipv6",
    "ip-version",
    "trace-id",
    "traffic-direction",
];

/// Flags that may not be combined within one list (whitelist or blacklist):
/// any two flags of the same group conflict.
const CONFLICTS: &[&[&str]] = &[
    &[
        "from-fqdn",
        "from-ip",
        "ip",
        "fqdn",
        "from-namespace",
        "namespace",
        "from-pod",
        "pod",
    ],
    &[
        "to-fqdn",
        "to-ip",
        "ip",
        "fqdn",
        "to-namespace",
        "namespace",
        "to-pod",
        "pod",
    ],
    &["label", "from-label"],
    &["label", "to-label"],
    &["service", "from-service"],
    &["service", "to-service"],
    &["port", "to-port"],
    &["port", "from-port"],
    &["identity", "to-identity"],
    &["identity", "from-identity"],
    &["workload", "to-workload"],
    &["workload", "from-workload"],
];

/// Reserved security identities that `--identity` and friends accept by name.
pub const RESERVED_IDENTITIES: &[(&str, u32)] = &[
    ("host", 1),
    ("world", 2),
    ("unmanaged", 3),
    ("health", 4),
    ("init", 5),
    ("remote-node", 6),
    ("kube-apiserver", 7),
    ("ingress", 8),
];

/// Event type names of `-t/--type` (monitor message types).
pub const EVENT_TYPE_NAMES: &[(&str, i32)] = &[
    ("drop", message_type::DROP),
    ("debug", message_type::DEBUG),
    ("capture", message_type::CAPTURE),
    ("trace", message_type::TRACE),
    ("policy-verdict", message_type::POLICY_VERDICT),
    ("recorder", message_type::RECORDER),
    ("trace-sock", message_type::TRACE_SOCK),
    ("l7", message_type::L7),
    ("agent", message_type::AGENT),
];

/// Subtype names of `-t trace:<name>` (observation points).
pub const TRACE_SUBTYPES: &[(&str, i32)] = &[
    ("to-endpoint", 0),
    ("to-proxy", 1),
    ("to-host", 2),
    ("to-stack", 3),
    ("to-overlay", 4),
    ("from-endpoint", 5),
    ("from-proxy", 6),
    ("from-host", 7),
    ("from-stack", 8),
    ("from-overlay", 9),
    ("from-network", 10),
    ("to-network", 11),
];

/// Subtype names of `-t agent:<name>` (agent notification types).
pub const AGENT_SUBTYPES: &[(&str, i32)] = &[
    ("unspecified", 0),
    ("message", 1),
    ("agent-started", 2),
    ("endpoint-regenerate-success", 3),
    ("endpoint-regenerate-failure", 4),
    ("policy-updated", 5),
    ("policy-deleted", 6),
    ("endpoint-created", 7),
    ("endpoint-deleted", 8),
    ("ipcache-upserted", 9),
    ("ipcache-deleted", 10),
    ("service-upserted", 11),
    ("service-deleted", 12),
];

/// The filters of one list: `left OR right`.
#[derive(Debug, Default)]
struct Tracker {
    left: Option<FlowFilter>,
    right: Option<FlowFilter>,
    /// Flags used so far in this list, in first-use order.
    changed: Vec<String>,
}

impl Tracker {
    fn both(&mut self, update: impl Fn(&mut FlowFilter)) {
        update(self.left.get_or_insert_with(FlowFilter::default));
        update(self.right.get_or_insert_with(FlowFilter::default));
    }

    fn split(&mut self, left: impl FnOnce(&mut FlowFilter), right: impl FnOnce(&mut FlowFilter)) {
        left(self.left.get_or_insert_with(FlowFilter::default));
        right(self.right.get_or_insert_with(FlowFilter::default));
    }

    fn check_conflicts(&self) -> Result<(), FilterError> {
        let changed = |flag: &str| self.changed.iter().any(|c| c == flag);
        for group in CONFLICTS {
            for flag in group.iter().filter(|f| changed(f)) {
                if let Some(other) = group.iter().find(|o| *o != flag && changed(o)) {
                    return Err(FilterError(format!(
                        "filters --{flag} and --{other} cannot be combined"
                    )));
                }
            }
        }
        Ok(())
    }

    fn filters(self) -> Vec<FlowFilter> {
        match (self.left, self.right) {
            (Some(left), Some(right)) if left == right => vec![left],
            (left, right) => left.into_iter().chain(right).collect(),
        }
    }
}

/// Accumulates filter flags into a whitelist and a blacklist.
#[derive(Debug, Default)]
pub struct FilterBuilder {
    whitelist: Tracker,
    blacklist: Tracker,
    negate_next: bool,
}

impl FilterBuilder {
    /// Applies one filter flag (`flag` without `--`, e.g. `"from-ip"`; `"not"`
    /// takes no value). Errors are the client-side rejections of the hubble CLI:
    /// conflicting flags, bad values, consecutive `--not`.
    pub fn set(&mut self, flag: &str, value: &str) -> Result<(), FilterError> {
        if flag == "not" {
            if self.negate_next {
                return Err(FilterError("consecutive --not statements".into()));
            }
            self.negate_next = true;
            return Ok(());
        }
        let tracker = if std::mem::take(&mut self.negate_next) {
            &mut self.blacklist
        } else {
            &mut self.whitelist
        };
        if !tracker.changed.iter().any(|c| c == flag) {
            tracker.changed.push(flag.to_owned());
        }
        tracker.check_conflicts()?;
        apply(tracker, flag, value)
    }

    /// The whitelist and blacklist; fails on a trailing `--not`.
    pub fn finish(self) -> Result<(Vec<FlowFilter>, Vec<FlowFilter>), FilterError> {
        if self.negate_next {
            return Err(FilterError("trailing --not found in the arguments".into()));
        }
        Ok((self.whitelist.filters(), self.blacklist.filters()))
    }
}

fn apply(t: &mut Tracker, flag: &str, value: &str) -> Result<(), FilterError> {
    let v = || value.to_owned();
    match flag {
        "uuid" => t.both(|f| f.uuid.push(v())),
        "ip" => t.split(|f| f.source_ip.push(v()), |f| f.destination_ip.push(v())),
        "from-ip" => t.both(|f| f.source_ip.push(v())),
        "to-ip" => t.both(|f| f.destination_ip.push(v())),
        "pod" => t.split(|f| f.source_pod.push(v()), |f| f.destination_pod.push(v())),
        "from-pod" => t.both(|f| f.source_pod.push(v())),
        "to-pod" => t.both(|f| f.destination_pod.push(v())),
        "namespace" => {
            let ns = format!("{value}/");
            t.split(
                |f| f.source_pod.push(ns.clone()),
                |f| f.destination_pod.push(ns.clone()),
            );
        }
        "from-namespace" => t.both(|f| f.source_pod.push(format!("{value}/"))),
        "to-namespace" => t.both(|f| f.destination_pod.push(format!("{value}/"))),
        "fqdn" => t.split(
            |f| f.source_fqdn.push(v()),
            |f| f.destination_fqdn.push(v()),
        ),
        "from-fqdn" => t.both(|f| f.source_fqdn.push(v())),
        "to-fqdn" => t.both(|f| f.destination_fqdn.push(v())),
        "label" => t.split(
            |f| f.source_label.push(v()),
            |f| f.destination_label.push(v()),
        ),
        "from-label" => t.both(|f| f.source_label.push(v())),
        "to-label" => t.both(|f| f.destination_label.push(v())),
        "service" => t.split(
            |f| f.source_service.push(v()),
            |f| f.destination_service.push(v()),
        ),
        "from-service" => t.both(|f| f.source_service.push(v())),
        "to-service" => t.both(|f| f.destination_service.push(v())),
        "port" => t.split(
            |f| f.source_port.push(v()),
            |f| f.destination_port.push(v()),
        ),
        "from-port" => t.both(|f| f.source_port.push(v())),
        "to-port" => t.both(|f| f.destination_port.push(v())),
        "identity" => {
            let id = parse_identity(value)?;
            t.split(
                |f| f.source_identity.push(id),
                |f| f.destination_identity.push(id),
            );
        }
        "from-identity" => {
            let id = parse_identity(value)?;
            t.both(|f| f.source_identity.push(id));
        }
        "to-identity" => {
            let id = parse_identity(value)?;
            t.both(|f| f.destination_identity.push(id));
        }
        "workload" => {
            let w = parse_workload(value);
            t.split(
                |f| f.source_workload.push(w.clone()),
                |f| f.destination_workload.push(w.clone()),
            );
        }
        "from-workload" => t.both(|f| f.source_workload.push(parse_workload(value))),
        "to-workload" => t.both(|f| f.destination_workload.push(parse_workload(value))),
        "verdict" => {
            let verdict = Verdict::from_str_name(value)
                .ok_or_else(|| FilterError(format!("invalid --verdict value: {value}")))?;
            t.both(|f| f.verdict.push(verdict as i32));
        }
        "type" => {
            let filter = parse_event_type(value)?;
            t.both(|f| f.event_type.push(filter));
        }
        "http-status" => t.both(|f| f.http_status_code.push(v())),
        "http-method" => t.both(|f| f.http_method.push(v())),
        "http-path" => t.both(|f| f.http_path.push(v())),
        "protocol" => t.both(|f| f.protocol.push(v())),
        "tcp-flags" => {
            let flags = parse_tcp_flags(value)?;
            t.both(|f| f.tcp_flags.push(flags));
        }
        "node-name" => t.both(|f| f.node_name.push(v())),
        "ipv4" => t.both(|f| f.ip_version.push(IpVersion::IPv4 as i32)),
        "ipv6" => t.both(|f| f.ip_version.push(IpVersion::IPv6 as i32)),
        "ip-version" => {
            let version = parse_ip_version(value);
            t.both(|f| f.ip_version.push(version as i32));
        }
        "trace-id" => t.both(|f| f.trace_id.push(v())),
        "traffic-direction" => {
            let direction = match value.to_ascii_lowercase().as_str() {
                "ingress" => TrafficDirection::Ingress,
                "egress" => TrafficDirection::Egress,
                _ => {
                    return Err(FilterError(format!(
                        "invalid --traffic-direction value: {value} (expected ingress or egress)"
                    )));
                }
            };
            t.both(|f| f.traffic_direction.push(direction as i32));
        }
        other => return Err(FilterError(format!("unknown filter flag --{other}"))),
    }
    Ok(())
}

/// A reserved identity name (`world`, `host`, ...) or a decimal number.
pub fn parse_identity(value: &str) -> Result<u32, FilterError> {
    if let Some(&(_, id)) = RESERVED_IDENTITIES.iter().find(|(name, _)| *name == value) {
        return Ok(id);
    }
    value.parse().map_err(|_| {
        let names: Vec<&str> = RESERVED_IDENTITIES.iter().map(|(n, _)| *n).collect();
        FilterError(format!(
            "invalid security identity {value:?}, expected one of [{}] or a numeric value",
            names.join(" ")
        ))
    })
}

/// `Kind/name` → {kind, name}; `name` → {name}; `Kind/` → {kind}.
pub fn parse_workload(value: &str) -> Workload {
    match value.split_once('/') {
        Some((kind, name)) => Workload {
            kind: kind.to_owned(),
            name: name.to_owned(),
        },
        None => Workload {
            name: value.to_owned(),
            kind: String::new(),
        },
    }
}

/// `syn,ack` (case-insensitive) → one `TCPFlags` with those bits set.
pub fn parse_tcp_flags(value: &str) -> Result<TcpFlags, FilterError> {
    let mut flags = TcpFlags::default();
    for name in value.split(',') {
        let bit = periscope_proto::util::tcp_flag_mut(&mut flags, &name.to_ascii_uppercase())
            .ok_or_else(|| FilterError(format!("unknown tcp flag: {name}")))?;
        *bit = true;
    }
    Ok(flags)
}

/// `4`, `v4`, `ipv4`, `ip4` → IPv4; the same with 6 → IPv6; anything else →
/// IP_NOT_USED (non-IP flows such as ARP).
pub fn parse_ip_version(value: &str) -> IpVersion {
    match value.to_ascii_lowercase().as_str() {
        "4" | "v4" | "ipv4" | "ip4" => IpVersion::IPv4,
        "6" | "v6" | "ipv6" | "ip6" => IpVersion::IPv6,
        _ => IpVersion::IpNotUsed,
    }
}

/// `TYPE[:SUBTYPE]` of `-t/--type`: names from [`EVENT_TYPE_NAMES`] or numbers;
/// subtypes by name for `trace` and `agent`, else numeric.
pub fn parse_event_type(value: &str) -> Result<EventTypeFilter, FilterError> {
    let (type_part, sub_part) = match value.split_once(':') {
        Some((t, s)) => (t, Some(s)),
        None => (value, None),
    };
    let named = EVENT_TYPE_NAMES
        .iter()
        .find(|(name, _)| *name == type_part)
        .map(|&(_, number)| number);
    let r#type = match named {
        Some(number) => number,
        None => parse_u32(type_part).map_err(|e| {
            FilterError(format!(
                "unable to parse type '{type_part}', not a known type name and unable to parse as numeric value: {e}"
            ))
        })? as i32,
    };
    let mut filter = EventTypeFilter {
        r#type,
        ..EventTypeFilter::default()
    };
    if let Some(sub) = sub_part {
        let names = match named {
            Some(message_type::TRACE) => TRACE_SUBTYPES,
            Some(message_type::AGENT) => AGENT_SUBTYPES,
            _ => &[],
        };
        let sub_type = match names.iter().find(|(name, _)| *name == sub) {
            Some(&(_, number)) => number,
            None => parse_u32(sub).map_err(|e| {
                FilterError(format!(
                    "unable to parse event sub-type '{sub}', not a known sub-type name and unable to parse as numeric value: {e}"
                ))
            })? as i32,
        };
        filter.match_sub_type = true;
        filter.sub_type = sub_type;
    }
    Ok(filter)
}

/// Like Go's `strconv.ParseUint(s, 10, 32)`, with its error wording.
fn parse_u32(text: &str) -> Result<u32, String> {
    text.parse::<u32>().map_err(|e| {
        let reason = match e.kind() {
            std::num::IntErrorKind::PosOverflow => "value out of range",
            _ => "invalid syntax",
        };
        format!("strconv.ParseUint: parsing {text:?}: {reason}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_flag_is_handled() {
        for flag in FILTER_FLAGS {
            let mut b = FilterBuilder::default();
            let value = match *flag {
                "verdict" => "DROPPED",
                "type" => "trace",
                "tcp-flags" => "syn",
                "traffic-direction" => "ingress",
                "identity" | "from-identity" | "to-identity" => "world",
                _ => "x",
            };
            b.set(flag, value)
                .unwrap_or_else(|e| panic!("--{flag}: {e}"));
        }
        let mut b = FilterBuilder::default();
        assert_eq!(
            b.set("bogus", "x"),
            Err(FilterError("unknown filter flag --bogus".into()))
        );
    }

    #[test]
    fn event_types() {
        let t = |v: &str| parse_event_type(v).unwrap();
        assert_eq!(
            t("trace:to-endpoint"),
            EventTypeFilter {
                r#type: 4,
                match_sub_type: true,
                sub_type: 0
            }
        );
        assert_eq!(
            t("drop"),
            EventTypeFilter {
                r#type: 1,
                ..Default::default()
            }
        );
        assert_eq!(t("l7").r#type, 129);
        assert_eq!(t("policy-verdict").r#type, 5);
        assert_eq!(t("trace-sock").r#type, 7);
        assert_eq!(t("42").r#type, 42);
        assert_eq!(
            t("drop:133"),
            EventTypeFilter {
                r#type: 1,
                match_sub_type: true,
                sub_type: 133
            }
        );
        assert_eq!(t("agent:policy-updated").sub_type, 5);
        assert_eq!(t("trace:11").sub_type, 11);
        // Named subtypes only for named types; numbers always.
        assert!(parse_event_type("4:to-endpoint").is_err());
        assert!(parse_event_type("drop:to-endpoint").is_err());
        assert_eq!(
            parse_event_type("bogus").unwrap_err().0,
            "unable to parse type 'bogus', not a known type name and unable to parse as numeric value: strconv.ParseUint: parsing \"bogus\": invalid syntax"
        );
    }

    #[test]
    fn small_parsers() {
        assert_eq!(parse_identity("world"), Ok(2));
        assert_eq!(parse_identity("kube-apiserver"), Ok(7));
        assert_eq!(parse_identity("12345"), Ok(12345));
        assert!(parse_identity("unknown").is_err());
        assert!(parse_identity("-1").is_err());
        assert_eq!(parse_ip_version("IPv6"), IpVersion::IPv6);
        assert_eq!(parse_ip_version("ip4"), IpVersion::IPv4);
        assert_eq!(parse_ip_version("none"), IpVersion::IpNotUsed);
        assert_eq!(
            parse_tcp_flags("SYN,ack").unwrap(),
            TcpFlags {
                syn: true,
                ack: true,
                ..Default::default()
            }
        );
        assert_eq!(
            parse_tcp_flags("syn,bogus"),
            Err(FilterError("unknown tcp flag: bogus".into()))
        );
    }
}
