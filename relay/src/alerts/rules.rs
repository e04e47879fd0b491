//! Alert rule files: YAML schema, validation and compilation into [`Rule`]s.
//!
//! A file holds `rules:` (or is a bare list of rules; several `---` documents are allowed); a
//! directory holds such files (`*.yaml` / `*.yml`, hidden entries skipped, read in name order).
//! A rule that is wrong in any way rejects the whole load with a [`RuleError`] naming the file, the
//! rule and the field; [`RuleSet::reload`] then keeps the rules in force.
//!
//! ```yaml
//! rules:
//!   - name: DbDenied
//!     selector:
//!       allow:
//!         - verdict: [DROPPED, AUDIT]
//!           destination_label: ["k8s:app=db"]
//!           drop_reason_desc: [POLICY_DENIED]
//!     window: 1m
//!     threshold: 5            # fires when the window holds >= 5 matching flows
//!     group_by: [source_namespace, source_workload, destination_workload]
//!     severity: critical
//!     labels: {team: data}
//!     annotations:
//!       summary: "{{ source_workload }} denied {{ count }} times in {{ window }}"
//!     for: 30s
//!     repeat_interval: 1h
//!     resolve_after: 2m
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use periscope_filter::FlowFilterSet;
use periscope_proto::flow::{DropReason, Flow, FlowFilter, Verdict, layer4};
use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

/// Shortest accepted `window`.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
/// Longest accepted `window`.
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// `repeat_interval` when a rule does not set one (Alertmanager's default).
pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(4 * 3600);
/// `severity` when a rule does not set one.
pub const DEFAULT_SEVERITY: &str = "warning";

/// A rule file or directory that cannot be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// The file or directory could not be read.
    #[error("alert rules {path}: cannot read: {source}")]
    Read {
        /// File or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// YAML syntax error, or a file whose top level is neither `rules:` nor a list.
    #[error("alert rules {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// The parser's message (with line and column when it knows them).
        message: String,
    },
    /// A rule is wrong: unknown field, bad value, bad filter, ...
    #[error("alert rules {path}: rule {rule:?}: {field}: {reason}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// The rule's `name`, or `rules[i]` when it has none.
        rule: String,
        /// Field path inside the rule, e.g. `window` or `selector.allow[0].destination_port`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Two rules share a name (the name is the `alertname` of their alerts).
    #[error("alert rules {path}: rule {rule:?}: name: already defined in {first}")]
    Duplicate {
        /// File of the second definition.
        path: PathBuf,
        /// The name.
        rule: String,
        /// File of the first definition.
        first: PathBuf,
    },
}

impl RuleError {
    fn invalid(
        path: &Path,
        rule: &str,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        RuleError::Invalid {
            path: path.to_owned(),
            rule: rule.to_owned(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The file schema.

/// A rule file with a top-level `rules:` key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFileSpec {
    /// The rules; each is validated on its own so that errors can name it.
    rules: Vec<Value>,
}

/// One alert rule as written in a rule file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique name (across all loaded files); the `alertname` label of the rule's alerts.
    pub name: String,
    /// Which flows count: Hubble `FlowFilter`s in protobuf JSON field names. A flow counts when it
    /// matches any `allow` filter (or `allow` is empty) and no `deny` filter.
    #[serde(default)]
    pub selector: SelectorSpec,
    /// Length of the sliding window flows are counted in (`30s`, `1m`, `1h`; 1s to 24h).
    pub window: DurationSpec,
    /// The alert of a group is active while the group's window holds **at least** this many
    /// matching flows (`count >= threshold`); at least 1.
    pub threshold: u64,
    /// Flow properties that split the matching flows into groups, each with its own window and
    /// alert (one alert per rule and group values). Empty: one group for the whole rule.
    #[serde(default)]
    pub group_by: Vec<GroupKey>,
    /// The `severity` label of the alerts (default `warning`).
    #[serde(default = "default_severity")]
    pub severity: String,
    /// Extra static labels of the alerts (Prometheus label names; not `alertname`, `severity` or
    /// a `group_by` key).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations of the alerts; `{{ var }}` is replaced by a `group_by` value of the alert's
    /// group, or by `count`, `peak_count`, `threshold`, `window`, `alertname` or `severity`.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// How long the threshold must stay reached before the alert fires (pending meanwhile);
    /// default 0: fires at the first evaluation that sees the threshold reached.
    #[serde(default, rename = "for")]
    pub pending_for: Option<DurationSpec>,
    /// While an alert fires, its notification is repeated this often (default `4h`).
    #[serde(default)]
    pub repeat_interval: Option<DurationSpec>,
    /// How long the count must stay below the threshold before a firing alert resolves
    /// (default: the window).
    #[serde(default)]
    pub resolve_after: Option<DurationSpec>,
}

fn default_severity() -> String {
    DEFAULT_SEVERITY.to_owned()
}

/// The flow selector of a rule: allow and deny lists of Hubble `FlowFilter`s.
///
/// Each filter is a mapping of `FlowFilter` fields by their protobuf JSON names (`verdict`,
/// `destination_label`, `destination_port`, `source_pod`, ...; enums by name). Conveniences: a
/// single value may stand for a one-element list (`verdict: DROPPED`), and numbers are accepted
/// for string fields (`destination_port: [5432]`). `drop_reason_desc` (a list of `DropReason`
/// names such as `POLICY_DENIED`, a field of newer Hubble `FlowFilter`s) is also accepted.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectorSpec {
    /// A flow counts only if it matches one of these filters (none: every flow).
    #[serde(default)]
    pub allow: Vec<Mapping>,
    /// A flow matching one of these filters does not count.
    #[serde(default)]
    pub deny: Vec<Mapping>,
}

/// A duration written as a number with a unit, or several (`500ms`, `30s`, `1m`, `1h30m`, `2d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationSpec(pub Duration);

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = DurationSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 30s, 1m or 1h30m")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<DurationSpec, E> {
                parse_duration(s)
                    .map(DurationSpec)
                    .map_err(|why| E::custom(format!("invalid duration {s:?}: {why}")))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<DurationSpec, E> {
                Err(E::custom(format!(
                    "invalid duration {n}: a unit is required (e.g. {n}s)"
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<DurationSpec, E> {
                Err(E::custom(format!(
                    "invalid duration {n}: a unit is required (e.g. {n}s)"
                )))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<DurationSpec, E> {
                Err(E::custom(format!(
                    "invalid duration {n}: a unit is required (e.g. {n}s)"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses `500ms`, `30s`, `1m`, `1h30m`, `2d` (units ms, s, m, h, d; integers only).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("number {:?} is too large", &rest[..digits]))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => n
                .checked_mul(60)
                .map(Duration::from_secs)
                .ok_or("too long")?,
            "h" => n
                .checked_mul(3600)
                .map(Duration::from_secs)
                .ok_or("too long")?,
            "d" => n
                .checked_mul(86_400)
                .map(Duration::from_secs)
                .ok_or("too long")?,
            "" => return Err("a unit is required (ms, s, m, h or d)".into()),
            other => return Err(format!("unknown unit {other:?} (ms, s, m, h or d)")),
        };
        total = total.checked_add(part).ok_or("too long")?;
    }
    Ok(total)
}

/// Writes a duration the way rule files do (`1h30m`, `90s` → `1m30s`, `500ms`, `0s`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, len) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= len {
            out.push_str(&format!("{}{unit}", ms / len));
            ms %= len;
        }
    }
    if ms > 0 {
        out.push_str(&format!("{ms}ms"));
    }
    out
}

/// A flow property to group by. Its name is also the label name of the alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupKey {
    /// `source.namespace`.
    SourceNamespace,
    /// The source's first workload name; else its pod name; else its first `reserved:` label
    /// (e.g. `reserved:world`), like the service-map edges of the storage.
    SourceWorkload,
    /// `source.pod_name`.
    SourcePod,
    /// `IP.source`.
    SourceIp,
    /// `destination.namespace`.
    DestinationNamespace,
    /// Like `source_workload`, for the destination.
    DestinationWorkload,
    /// `destination.pod_name`.
    DestinationPod,
    /// `IP.destination`.
    DestinationIp,
    /// The L4 destination port (empty for ICMP).
    DestinationPort,
    /// `TCP`, `UDP`, `SCTP`, `ICMPv4` or `ICMPv6`.
    Protocol,
    /// `drop_reason_desc` by name (`POLICY_DENIED`, ...; empty when unknown).
    DropReason,
    /// `verdict` by name (`DROPPED`, `AUDIT`, ...).
    Verdict,
    /// `traffic_direction` by name (`INGRESS`, `EGRESS`).
    TrafficDirection,
    /// `node_name`.
    Node,
    /// The deny policies of the flow (`ingress_denied_by` then `egress_denied_by`) as
    /// `namespace/name` (`name` for cluster-wide ones), comma-separated; empty: default deny.
    Policy,
}

impl GroupKey {
    /// Every key, for error messages.
    pub const ALL: [GroupKey; 15] = [
        GroupKey::SourceNamespace,
        GroupKey::SourceWorkload,
        GroupKey::SourcePod,
        GroupKey::SourceIp,
        GroupKey::DestinationNamespace,
        GroupKey::DestinationWorkload,
        GroupKey::DestinationPod,
        GroupKey::DestinationIp,
        GroupKey::DestinationPort,
        GroupKey::Protocol,
        GroupKey::DropReason,
        GroupKey::Verdict,
        GroupKey::TrafficDirection,
        GroupKey::Node,
        GroupKey::Policy,
    ];

    /// The key's name in rule files, templates and alert labels.
    pub fn name(self) -> &'static str {
        match self {
            GroupKey::SourceNamespace => "source_namespace",
            GroupKey::SourceWorkload => "source_workload",
            GroupKey::SourcePod => "source_pod",
            GroupKey::SourceIp => "source_ip",
            GroupKey::DestinationNamespace => "destination_namespace",
            GroupKey::DestinationWorkload => "destination_workload",
            GroupKey::DestinationPod => "destination_pod",
            GroupKey::DestinationIp => "destination_ip",
            GroupKey::DestinationPort => "destination_port",
            GroupKey::Protocol => "protocol",
            GroupKey::DropReason => "drop_reason",
            GroupKey::Verdict => "verdict",
            GroupKey::TrafficDirection => "traffic_direction",
            GroupKey::Node => "node",
            GroupKey::Policy => "policy",
        }
    }

    /// The flow's value for this key.
    pub fn value(self, flow: &Flow) -> String {
        let ip = flow.ip.as_ref();
        match self {
            GroupKey::SourceNamespace => flow
                .source
                .as_ref()
                .map_or_else(String::new, |e| e.namespace.clone()),
            GroupKey::SourceWorkload => endpoint_name(flow.source.as_ref()),
            GroupKey::SourcePod => flow
                .source
                .as_ref()
                .map_or_else(String::new, |e| e.pod_name.clone()),
            GroupKey::SourceIp => ip.map_or_else(String::new, |ip| ip.source.clone()),
            GroupKey::DestinationNamespace => flow
                .destination
                .as_ref()
                .map_or_else(String::new, |e| e.namespace.clone()),
            GroupKey::DestinationWorkload => endpoint_name(flow.destination.as_ref()),
            GroupKey::DestinationPod => flow
                .destination
                .as_ref()
                .map_or_else(String::new, |e| e.pod_name.clone()),
            GroupKey::DestinationIp => ip.map_or_else(String::new, |ip| ip.destination.clone()),
            GroupKey::DestinationPort => {
                match flow.l4.as_ref().and_then(|l4| l4.protocol.as_ref()) {
                    Some(layer4::Protocol::Tcp(t)) => t.destination_port.to_string(),
                    Some(layer4::Protocol::Udp(u)) => u.destination_port.to_string(),
                    Some(layer4::Protocol::Sctp(s)) => s.destination_port.to_string(),
                    _ => String::new(),
                }
            }
            GroupKey::Protocol => match flow.l4.as_ref().and_then(|l4| l4.protocol.as_ref()) {
                Some(layer4::Protocol::Tcp(_)) => "TCP",
                Some(layer4::Protocol::Udp(_)) => "UDP",
                Some(layer4::Protocol::Sctp(_)) => "SCTP",
                Some(layer4::Protocol::IcmPv4(_)) => "ICMPv4",
                Some(layer4::Protocol::IcmPv6(_)) => "ICMPv6",
                None => "",
            }
            .to_owned(),
            GroupKey::DropReason => match DropReason::try_from(flow.drop_reason_desc) {
                Ok(DropReason::Unknown) => String::new(),
                Ok(r) => r.as_str_name().to_owned(),
                Err(_) => flow.drop_reason_desc.to_string(),
            },
            GroupKey::Verdict => Verdict::try_from(flow.verdict)
                .map_or_else(|_| flow.verdict.to_string(), |v| v.as_str_name().to_owned()),
            GroupKey::TrafficDirection => {
                periscope_proto::flow::TrafficDirection::try_from(flow.traffic_direction)
                    .map_or_else(
                        |_| flow.traffic_direction.to_string(),
                        |v| v.as_str_name().to_owned(),
                    )
            }
            GroupKey::Node => flow.node_name.clone(),
            GroupKey::Policy => {
                let mut out = String::new();
                for p in flow.ingress_denied_by.iter().chain(&flow.egress_denied_by) {
                    if !out.is_empty() {
                        out.push(',');
                    }
                    if !p.namespace.is_empty() {
                        out.push_str(&p.namespace);
                        out.push('/');
                    }
                    out.push_str(&p.name);
                }
                out
            }
        }
    }
}

/// Workload name, else pod name, else the first `reserved:` label.
fn endpoint_name(ep: Option<&periscope_proto::flow::Endpoint>) -> String {
    let Some(ep) = ep else {
        return String::new();
    };
    if let Some(w) = ep.workloads.iter().find(|w| !w.name.is_empty()) {
        return w.name.clone();
    }
    if !ep.pod_name.is_empty() {
        return ep.pod_name.clone();
    }
    ep.labels
        .iter()
        .find(|l| l.starts_with("reserved:"))
        .cloned()
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Compiled rules.

/// A validated, compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// The rule's name (`alertname`).
    pub name: String,
    /// The file it came from.
    pub source: PathBuf,
    /// Sliding window length.
    pub window: Duration,
    /// Active while `count >= threshold`.
    pub threshold: u64,
    /// Grouping keys, in the rule's order.
    pub group_by: Vec<GroupKey>,
    /// `severity` label.
    pub severity: String,
    /// Static extra labels.
    pub labels: BTreeMap<String, String>,
    /// Pending duration before firing (`for`).
    pub pending_for: Duration,
    /// Notification repeat interval while firing.
    pub repeat_interval: Duration,
    /// Time below the threshold before resolving.
    pub resolve_after: Duration,
    pub(crate) selector: Selector,
    pub(crate) annotations: Vec<(String, Template)>,
    /// The rule as written: a reload keeps the state of a rule whose spec did not change.
    pub(crate) spec: RuleSpec,
}

impl Rule {
    /// Whether the flow counts for this rule.
    #[inline]
    pub fn matches(&self, flow: &Flow) -> bool {
        self.selector.matches(flow)
    }

    /// The group values of a (matching) flow, in `group_by` order.
    pub fn group_values(&self, flow: &Flow) -> Vec<String> {
        self.group_by.iter().map(|k| k.value(flow)).collect()
    }

    /// Compiles one rule; `path` and the rule's position are for error messages only.
    pub fn compile(path: &Path, spec: RuleSpec) -> Result<Self, RuleError> {
        let name = spec.name.trim();
        let err = |field: &str, reason: String| RuleError::invalid(path, name, field, reason);
        if name.is_empty() {
            return Err(err("name", "must not be empty".into()));
        }
        if spec.threshold == 0 {
            return Err(err("threshold", "must be at least 1".into()));
        }
        let window = spec.window.0;
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&window) {
            return Err(err(
                "window",
                format!(
                    "{} is out of range ({} to {})",
                    format_duration(window),
                    format_duration(MIN_WINDOW),
                    format_duration(MAX_WINDOW)
                ),
            ));
        }
        let repeat_interval = spec
            .repeat_interval
            .map_or(DEFAULT_REPEAT_INTERVAL, |d| d.0);
        if repeat_interval < Duration::from_secs(1) {
            return Err(err("repeat_interval", "must be at least 1s".into()));
        }
        let pending_for = spec.pending_for.map_or(Duration::ZERO, |d| d.0);
        let resolve_after = spec.resolve_after.map_or(window, |d| d.0);
        if spec.severity.trim().is_empty() {
            return Err(err("severity", "must not be empty".into()));
        }

        for (i, k) in spec.group_by.iter().enumerate() {
            if spec.group_by[..i].contains(k) {
                return Err(err(
                    &format!("group_by[{i}]"),
                    format!("{} is listed twice", k.name()),
                ));
            }
        }
        let reserved = |label: &str| {
            label == "alertname"
                || label == "severity"
                || spec.group_by.iter().any(|k| k.name() == label)
        };
        for label in spec.labels.keys() {
            if !is_label_name(label) {
                return Err(err(
                    &format!("labels.{label}"),
                    "not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)".into(),
                ));
            }
            if reserved(label) {
                return Err(err(
                    &format!("labels.{label}"),
                    "is set by the rule itself (alertname, severity, group_by keys)".into(),
                ));
            }
        }

        let mut annotations = Vec::with_capacity(spec.annotations.len());
        for (key, text) in &spec.annotations {
            let field = format!("annotations.{key}");
            if !is_label_name(key) {
                return Err(err(
                    &field,
                    "not a valid annotation name ([a-zA-Z_][a-zA-Z0-9_]*)".into(),
                ));
            }
            let template =
                Template::parse(text, &spec.group_by).map_err(|reason| err(&field, reason))?;
            annotations.push((key.clone(), template));
        }

        let selector = Selector::compile(&spec.selector)
            .map_err(|(field, reason)| err(&format!("selector.{field}"), reason))?;

        Ok(Rule {
            name: name.to_owned(),
            source: path.to_owned(),
            window,
            threshold: spec.threshold,
            group_by: spec.group_by.clone(),
            severity: spec.severity.trim().to_owned(),
            labels: spec.labels.clone(),
            pending_for,
            repeat_interval,
            resolve_after,
            selector,
            annotations,
            spec,
        })
    }
}

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn is_label_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The compiled selector: any allow filter (or none) and no deny filter.
#[derive(Debug, Default)]
pub(crate) struct Selector {
    allow: Vec<SelectorFilter>,
    deny: Vec<SelectorFilter>,
}

/// One selector filter: a `FlowFilter` plus the `drop_reason_desc` values this proto version's
/// `FlowFilter` lacks.
#[derive(Debug)]
struct SelectorFilter {
    filter: FlowFilterSet,
    /// Accepted `drop_reason_desc` values; empty: any.
    drop_reasons: Vec<i32>,
}

impl SelectorFilter {
    #[inline]
    fn matches(&self, flow: &Flow) -> bool {
        (self.drop_reasons.is_empty() || self.drop_reasons.contains(&flow.drop_reason_desc))
            && self.filter.matches(flow)
    }
}

/// `FlowFilter` fields whose values are not strings (numbers there are left alone).
const NON_STRING_FIELDS: &[&str] = &[
    "verdict",
    "event_type",
    "eventType",
    "reply",
    "source_identity",
    "sourceIdentity",
    "destination_identity",
    "destinationIdentity",
    "tcp_flags",
    "tcpFlags",
    "ip_version",
    "ipVersion",
    "source_workload",
    "sourceWorkload",
    "destination_workload",
    "destinationWorkload",
    "traffic_direction",
    "trafficDirection",
];

impl Selector {
    #[inline]
    pub(crate) fn matches(&self, flow: &Flow) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|f| f.matches(flow)))
            && !self.deny.iter().any(|f| f.matches(flow))
    }

    /// Compiles the selector; an error is `(field path below "selector", reason)`.
    fn compile(spec: &SelectorSpec) -> Result<Self, (String, String)> {
        let list = |name: &str, filters: &[Mapping]| {
            filters
                .iter()
                .enumerate()
                .map(|(i, m)| compile_filter(&format!("{name}[{i}]"), m))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Selector {
            allow: list("allow", &spec.allow)?,
            deny: list("deny", &spec.deny)?,
        })
    }
}

fn compile_filter(at: &str, mapping: &Mapping) -> Result<SelectorFilter, (String, String)> {
    let mut drop_reasons = Vec::new();
    let mut rest = Mapping::new();
    for (key, value) in mapping {
        let Some(key) = key.as_str() else {
            return Err((at.to_owned(), format!("filter key {key:?} is not a string")));
        };
        let field = format!("{at}.{key}");
        if key == "drop_reason_desc" || key == "dropReasonDesc" {
            for v in one_or_many(value) {
                let reason = match &v {
                    Value::String(s) => DropReason::from_str_name(s).map(|r| r as i32),
                    Value::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
                    _ => None,
                };
                match reason {
                    Some(r) => drop_reasons.push(r),
                    None => {
                        return Err((
                            field,
                            format!(
                                "unknown drop reason {v:?} (a DropReason name such as POLICY_DENIED or POLICY_DENY)"
                            ),
                        ));
                    }
                }
            }
            continue;
        }
        let mut values: Vec<Value> = one_or_many(value);
        if !NON_STRING_FIELDS.contains(&key) {
            for v in &mut values {
                if let Value::Number(n) = v {
                    *v = Value::String(n.to_string());
                }
            }
        }
        let value = Value::Sequence(values);
        // Each field on its own first, so that a bad one is named.
        let mut single = Mapping::new();
        single.insert(Value::String(key.to_owned()), value.clone());
        serde_yaml::from_value::<FlowFilter>(Value::Mapping(single))
            .map_err(|e| (field.clone(), filter_field_error(key, &e.to_string())))?;
        rest.insert(Value::String(key.to_owned()), value);
    }
    let filter: FlowFilter =
        serde_yaml::from_value(Value::Mapping(rest)).map_err(|e| (at.to_owned(), e.to_string()))?;
    let filter = FlowFilterSet::compile(std::slice::from_ref(&filter), &[]).map_err(|e| {
        (
            format!("{at}.{}", e.field),
            format!("{:?}: {}", e.value, e.reason),
        )
    })?;
    Ok(SelectorFilter {
        filter,
        drop_reasons,
    })
}

/// The deserializer's message, with the field list of an unknown field shortened to the proto
/// names (the JSON mapping also accepts lowerCamelCase) plus `drop_reason_desc`.
fn filter_field_error(key: &str, message: &str) -> String {
    let Some(expected) = message
        .strip_prefix("unknown field")
        .and_then(|rest| rest.split_once("expected one of "))
        .map(|(_, list)| list)
    else {
        return message.to_owned();
    };
    let mut names: Vec<&str> = expected
        .split(", ")
        .map(|n| n.trim_matches('`'))
        .filter(|n| !n.bytes().any(|b| b.is_ascii_uppercase()))
        .collect();
    names.push("drop_reason_desc");
    format!(
        "unknown FlowFilter field `{key}`, expected one of {}",
        names.join(", ")
    )
}

/// A list as is, or a single value as a one-element list.
fn one_or_many(value: &Value) -> Vec<Value> {
    match value {
        Value::Sequence(s) => s.clone(),
        Value::Null => Vec::new(),
        other => vec![other.clone()],
    }
}

// ---------------------------------------------------------------------------------------------
// Annotation templates.

/// A parsed `{{ var }}` template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Var(Var),
}

/// What a template variable refers to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Var {
    /// Index into the rule's `group_by`.
    Group(usize),
    Count,
    PeakCount,
    Threshold,
    Window,
    AlertName,
    Severity,
}

/// Values available to a template when rendering.
pub(crate) struct TemplateContext<'a> {
    pub group: &'a [String],
    pub count: u64,
    pub peak_count: u64,
    pub rule: &'a Rule,
}

impl Template {
    fn parse(text: &str, group_by: &[GroupKey]) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                return Err(format!("unclosed {{{{ in {text:?}"));
            };
            let name = after[..end].trim();
            let var = match name {
                "count" => Var::Count,
                "peak_count" => Var::PeakCount,
                "threshold" => Var::Threshold,
                "window" => Var::Window,
                "alertname" => Var::AlertName,
                "severity" => Var::Severity,
                _ => match group_by.iter().position(|k| k.name() == name) {
                    Some(i) => Var::Group(i),
                    None => {
                        let mut known: Vec<&str> = group_by.iter().map(|k| k.name()).collect();
                        known.extend([
                            "count",
                            "peak_count",
                            "threshold",
                            "window",
                            "alertname",
                            "severity",
                        ]);
                        let hint = if GroupKey::ALL.iter().any(|k| k.name() == name) {
                            " (a group key can only be used when the rule groups by it)"
                        } else {
                            ""
                        };
                        return Err(format!(
                            "unknown variable {name:?}{hint}; known: {}",
                            known.join(", ")
                        ));
                    }
                },
            };
            parts.push(Part::Var(var));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    pub(crate) fn render(&self, ctx: &TemplateContext<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(Var::Group(i)) => {
                    out.push_str(ctx.group.get(*i).map_or("", String::as_str))
                }
                Part::Var(Var::Count) => out.push_str(&ctx.count.to_string()),
                Part::Var(Var::PeakCount) => out.push_str(&ctx.peak_count.to_string()),
                Part::Var(Var::Threshold) => out.push_str(&ctx.rule.threshold.to_string()),
                Part::Var(Var::Window) => out.push_str(&format_duration(ctx.rule.window)),
                Part::Var(Var::AlertName) => out.push_str(&ctx.rule.name),
                Part::Var(Var::Severity) => out.push_str(&ctx.rule.severity),
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Rule sets and loading.

/// The rules in force. Cheap to clone (rules are shared).
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Arc<Rule>>,
}

impl RuleSet {
    /// No rules.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Loads a rule file, or every `*.yaml` / `*.yml` file of a directory (hidden entries such
    /// as Kubernetes' `..data` skipped, files in name order).
    pub fn load(path: &Path) -> Result<Self, RuleError> {
        let mut rules: Vec<Arc<Rule>> = Vec::new();
        for file in rule_files(path)? {
            let text = std::fs::read_to_string(&file).map_err(|source| RuleError::Read {
                path: file.clone(),
                source,
            })?;
            parse_file(&file, &text, &mut rules)?;
        }
        Ok(Self { rules })
    }

    /// Parses the text of one rule file; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, RuleError> {
        let mut rules = Vec::new();
        parse_file(path, text, &mut rules)?;
        Ok(Self { rules })
    }

    /// Loads `path` again. On success the new rules replace these; on error these stay in force
    /// and the error is returned.
    pub fn reload(&mut self, path: &Path) -> Result<(), RuleError> {
        *self = Self::load(path)?;
        Ok(())
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// No rules at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// The files `load` reads for `path`, sorted.
fn rule_files(path: &Path) -> Result<Vec<PathBuf>, RuleError> {
    let read_err = |source| RuleError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let p = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if name.starts_with('.') || !is_yaml {
            continue;
        }
        // Follows symlinks (ConfigMap mounts); a dangling one is an error naming it.
        let meta = std::fs::metadata(&p).map_err(|source| RuleError::Read {
            path: p.clone(),
            source,
        })?;
        if meta.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

fn parse_file(path: &Path, text: &str, rules: &mut Vec<Arc<Rule>>) -> Result<(), RuleError> {
    use serde::Deserialize as _;
    for (doc_index, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = Value::deserialize(de).map_err(|e| RuleError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let items = match doc {
            Value::Null => continue,
            Value::Sequence(items) => items,
            Value::Mapping(_) => {
                let file: RuleFileSpec =
                    serde_path_to_error::deserialize(doc).map_err(|e| RuleError::Parse {
                        path: path.to_owned(),
                        message: format!("document {}: {e}", doc_index + 1),
                    })?;
                file.rules
            }
            _ => {
                return Err(RuleError::Parse {
                    path: path.to_owned(),
                    message: format!(
                        "document {}: expected `rules:` or a list of rules",
                        doc_index + 1
                    ),
                });
            }
        };
        for (i, item) in items.into_iter().enumerate() {
            let rule_label = item
                .get("name")
                .and_then(Value::as_str)
                .map_or_else(|| format!("rules[{i}]"), |n| n.trim().to_owned());
            let spec: RuleSpec = serde_path_to_error::deserialize(item).map_err(|e| {
                let field = e.path().to_string();
                let field = if field == "." { "(rule)".into() } else { field };
                RuleError::invalid(path, &rule_label, field, e.inner().to_string())
            })?;
            let rule = Rule::compile(path, spec)?;
            if let Some(first) = rules.iter().find(|r| r.name == rule.name) {
                return Err(RuleError::Duplicate {
                    path: path.to_owned(),
                    rule: rule.name.clone(),
                    first: first.source.clone(),
                });
            }
            rules.push(Arc::new(rule));
        }
    }
    Ok(())
}

/// Detects changes of a rule file or directory by polling modification times and sizes.
#[derive(Debug)]
pub struct RuleWatcher {
    path: PathBuf,
    stamp: Vec<(PathBuf, Option<SystemTime>, u64)>,
}

impl RuleWatcher {
    /// Watches `path`, taking its current state as seen (call after loading it).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let stamp = stamp(&path);
        Self { path, stamp }
    }

    /// The watched path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether anything changed (a file added, removed, modified) since the last call that
    /// returned `true` (or since `new`). Unreadable entries count as a state too, so a file that
    /// keeps failing is reported once per change, not once per poll.
    pub fn changed(&mut self) -> bool {
        let now = stamp(&self.path);
        if now != self.stamp {
            self.stamp = now;
            true
        } else {
            false
        }
    }
}

fn stamp(path: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let one = |p: PathBuf| {
        let meta = std::fs::metadata(&p).ok();
        let mtime = meta.as_ref().and_then(|m| m.modified().ok());
        let len = meta.map_or(u64::MAX, |m| m.len());
        (p, mtime, len)
    };
    match rule_files(path) {
        Ok(files) if files.len() == 1 && files[0] == path => vec![one(path.to_owned())],
        Ok(files) => {
            let mut v: Vec<_> = files.into_iter().map(one).collect();
            // The directory itself: catches renames that keep names, sizes and times.
            v.push(one(path.to_owned()));
            v
        }
        Err(_) => vec![(path.to_owned(), None, u64::MAX)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RuleSet, RuleError> {
        RuleSet::parse(Path::new("/etc/periscope/rules.yaml"), text)
    }

    /// Asserts an `Invalid` error for `rule` and `field` whose reason contains `reason`.
    fn assert_invalid(text: &str, rule: &str, field: &str, reason: &str) {
        match parse(text) {
            Err(e @ RuleError::Invalid { .. }) => {
                let msg = e.to_string();
                let RuleError::Invalid {
                    path,
                    rule: r,
                    field: f,
                    reason: why,
                } = e
                else {
                    unreachable!()
                };
                assert_eq!(path, Path::new("/etc/periscope/rules.yaml"), "{msg}");
                assert_eq!(r, rule, "{msg}");
                assert_eq!(f, field, "{msg}");
                assert!(why.contains(reason), "{msg} lacks {reason:?}");
                assert!(msg.contains("/etc/periscope/rules.yaml"), "{msg}");
            }
            other => panic!("expected Invalid {rule}/{field}, got {other:?}"),
        }
    }

    const GOOD: &str = r#"
rules:
  - name: DbDenied
    selector:
      allow:
        - verdict: [DROPPED, AUDIT]
          destination_label: ["k8s:app=db"]
          drop_reason_desc: [POLICY_DENIED]
          destination_port: [5432]
      deny:
        - source_pod: ["kube-system/"]
    window: 1m
    threshold: 5
    group_by: [source_namespace, source_workload]
    severity: critical
    labels: {team: data}
    annotations:
      summary: "{{ source_workload }} denied {{count}} times in {{ window }}"
    for: 30s
    repeat_interval: 1h
    resolve_after: 2m
  - name: AnyDrop
    window: 10s
    threshold: 1
"#;

    #[test]
    fn parses_a_full_rule_and_defaults() {
        let set = parse(GOOD).expect("good rules");
        assert_eq!(set.len(), 2);
        let r = &set.rules()[0];
        assert_eq!(r.name, "DbDenied");
        assert_eq!(r.window, Duration::from_secs(60));
        assert_eq!(r.threshold, 5);
        assert_eq!(
            r.group_by,
            vec![GroupKey::SourceNamespace, GroupKey::SourceWorkload]
        );
        assert_eq!(r.severity, "critical");
        assert_eq!(r.labels["team"], "data");
        assert_eq!(r.pending_for, Duration::from_secs(30));
        assert_eq!(r.repeat_interval, Duration::from_secs(3600));
        assert_eq!(r.resolve_after, Duration::from_secs(120));
        let d = &set.rules()[1];
        assert_eq!(d.severity, "warning");
        assert_eq!(d.pending_for, Duration::ZERO);
        assert_eq!(d.repeat_interval, DEFAULT_REPEAT_INTERVAL);
        assert_eq!(
            d.resolve_after,
            Duration::from_secs(10),
            "defaults to the window"
        );
    }

    #[test]
    fn a_bare_list_and_several_documents_are_accepted() {
        let set = parse(
            "- {name: A, window: 1m, threshold: 1}\n---\nrules:\n  - {name: B, window: 1m, threshold: 1}\n",
        )
        .expect("two documents");
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn selector_matches_like_hubble_filters_plus_drop_reason() {
        use periscope_proto::flow::{Endpoint, Layer4, Tcp};
        let set = parse(GOOD).unwrap();
        let rule = &set.rules()[0];
        let mut flow = Flow {
            verdict: Verdict::Dropped as i32,
            drop_reason_desc: DropReason::PolicyDenied as i32,
            source: Some(Endpoint {
                namespace: "shop".into(),
                pod_name: "frontend-1".into(),
                ..Default::default()
            }),
            destination: Some(Endpoint {
                labels: vec!["k8s:app=db".into()],
                ..Default::default()
            }),
            l4: Some(Layer4 {
                protocol: Some(layer4::Protocol::Tcp(Tcp {
                    destination_port: 5432,
                    ..Default::default()
                })),
            }),
            ..Default::default()
        };
        assert!(rule.matches(&flow));
        flow.drop_reason_desc = DropReason::CtMapInsertionFailed as i32;
        assert!(!rule.matches(&flow), "drop reason filtered");
        flow.drop_reason_desc = DropReason::PolicyDenied as i32;
        flow.verdict = Verdict::Forwarded as i32;
        assert!(!rule.matches(&flow), "verdict filtered");
        flow.verdict = Verdict::Audit as i32;
        assert!(rule.matches(&flow));
        flow.source.as_mut().unwrap().namespace = "kube-system".into();
        assert!(!rule.matches(&flow), "deny list");
        assert!(set.rules()[1].matches(&flow), "no selector: every flow");
    }

    #[test]
    fn unknown_rule_field_names_file_rule_and_field() {
        assert_invalid(
            "rules:\n  - {name: A, window: 1m, threshold: 1, treshold: 2}\n",
            "A",
            "treshold",
            "unknown field `treshold`",
        );
    }

    #[test]
    fn bad_duration_names_the_field() {
        assert_invalid(
            "rules:\n  - {name: A, window: 1x, threshold: 1}\n",
            "A",
            "window",
            "invalid duration \"1x\"",
        );
        assert_invalid(
            "rules:\n  - {name: A, window: 60, threshold: 1}\n",
            "A",
            "window",
            "unit is required",
        );
        assert_invalid(
            "rules:\n  - {name: A, window: 1m, threshold: 1, for: soon}\n",
            "A",
            "for",
            "invalid duration",
        );
        assert_invalid(
            "rules:\n  - {name: A, window: 2d, threshold: 1}\n",
            "A",
            "window",
            "out of range",
        );
    }

    #[test]
    fn bad_filter_values_name_the_filter_field() {
        // Rejected by FlowFilterSet (a bad port).
        assert_invalid(
            "rules:\n  - name: A\n    window: 1m\n    threshold: 1\n    selector:\n      allow:\n        - {verdict: [DROPPED]}\n        - {destination_port: [\"99999\"]}\n",
            "A",
            "selector.allow[1].destination_port",
            "99999",
        );
        // Rejected by the protobuf JSON mapping (unknown enum name).
        assert_invalid(
            "rules:\n  - name: A\n    window: 1m\n    threshold: 1\n    selector:\n      deny:\n        - {verdict: [DENIED]}\n",
            "A",
            "selector.deny[0].verdict",
            "DENIED",
        );
        // Unknown FlowFilter field.
        assert_invalid(
            "rules:\n  - name: A\n    window: 1m\n    threshold: 1\n    selector:\n      allow:\n        - {destination_lable: [x]}\n",
            "A",
            "selector.allow[0].destination_lable",
            "unknown FlowFilter field `destination_lable`, expected one of source_ip, source_pod,",
        );
        assert_invalid(
            "rules:\n  - name: A\n    window: 1m\n    threshold: 1\n    selector:\n      allow:\n        - {drop_reason_desc: [NOT_A_REASON]}\n",
            "A",
            "selector.allow[0].drop_reason_desc",
            "unknown drop reason",
        );
        assert_invalid(
            "rules:\n  - name: A\n    window: 1m\n    threshold: 1\n    selector:\n      allow:\n        - {source_label: [\"k8s:app in (\"]}\n",
            "A",
            "selector.allow[0].source_label",
            "",
        );
    }

    #[test]
    fn bad_group_by_labels_and_templates_are_named() {
        assert_invalid(
            "rules:\n  - {name: A, window: 1m, threshold: 1, group_by: [source_team]}\n",
            "A",
            "group_by[0]",
            "unknown variant `source_team`",
        );
        assert_invalid(
            "rules:\n  - {name: A, window: 1m, threshold: 1, group_by: [node, node]}\n",
            "A",
            "group_by[1]",
            "twice",
        );
        assert_invalid(
            "rules:\n  - {name: A, window: 1m, threshold: 1, group_by: [node], labels: {node: x}}\n",
            "A",
            "labels.node",
            "set by the rule",
        );
        assert_invalid(
            "rules:\n  - {name: A, window: 1m, threshold: 1, labels: {bad-name: x}}\n",
            "A",
            "labels.bad-name",
            "label name",
        );
        assert_invalid(
            "rules:\n  - {name: A, window: 1m, threshold: 1, annotations: {summary: \"{{ source_pod }} x\"}}\n",
            "A",
            "annotations.summary",
            "only be used when the rule groups by it",
        );
        assert_invalid(
            "rules:\n  - {name: A, window: 1m, threshold: 1, annotations: {summary: \"{{ count \"}}\n",
            "A",
            "annotations.summary",
            "unclosed",
        );
    }

    #[test]
    fn bad_scalars_are_named() {
        assert_invalid(
            "rules:\n  - {name: A, window: 1m, threshold: 0}\n",
            "A",
            "threshold",
            "at least 1",
        );
        assert_invalid(
            "rules:\n  - {name: A, window: 1m, threshold: -3}\n",
            "A",
            "threshold",
            "-3",
        );
        assert_invalid(
            "rules:\n  - {window: 1m, threshold: 1}\n",
            "rules[0]",
            "(rule)",
            "missing field `name`",
        );
        assert_invalid(
            "rules:\n  - {name: A, window: 1m, threshold: 1, repeat_interval: 0s}\n",
            "A",
            "repeat_interval",
            "at least 1s",
        );
    }

    #[test]
    fn duplicate_names_and_syntax_errors_name_the_file() {
        let e = parse("rules:\n  - {name: A, window: 1m, threshold: 1}\n  - {name: A, window: 2m, threshold: 1}\n")
            .unwrap_err();
        assert!(
            matches!(e, RuleError::Duplicate { ref rule, .. } if rule == "A"),
            "{e}"
        );
        let e = parse("rules: [\n").unwrap_err();
        assert!(matches!(e, RuleError::Parse { .. }), "{e}");
        assert!(e.to_string().contains("/etc/periscope/rules.yaml"), "{e}");
        let e = parse("rulez: []\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `rulez`"), "{e}");
    }

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("m5").is_err());
        assert!(parse_duration("5w").is_err());
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn templates_render_group_values_and_counts() {
        let set = parse(GOOD).unwrap();
        let rule = &set.rules()[0];
        let (_, t) = &rule.annotations[0];
        let text = t.render(&TemplateContext {
            group: &["shop".into(), "frontend".into()],
            count: 7,
            peak_count: 9,
            rule,
        });
        assert_eq!(text, "frontend denied 7 times in 1m");
    }

    #[test]
    fn group_values_follow_the_documented_fallbacks() {
        use periscope_proto::flow::{Endpoint, Policy, Workload};
        let flow = Flow {
            verdict: Verdict::Dropped as i32,
            drop_reason_desc: DropReason::PolicyDenied as i32,
            node_name: "node-1".into(),
            source: Some(Endpoint {
                labels: vec!["reserved:world".into()],
                ..Default::default()
            }),
            destination: Some(Endpoint {
                namespace: "data".into(),
                pod_name: "db-1".into(),
                workloads: vec![Workload {
                    name: "db".into(),
                    kind: "Deployment".into(),
                }],
                ..Default::default()
            }),
            ingress_denied_by: vec![Policy {
                name: "deny-world".into(),
                namespace: "data".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = |k: GroupKey| k.value(&flow);
        assert_eq!(v(GroupKey::SourceWorkload), "reserved:world");
        assert_eq!(v(GroupKey::DestinationWorkload), "db");
        assert_eq!(v(GroupKey::DestinationPod), "db-1");
        assert_eq!(v(GroupKey::DestinationPort), "");
        assert_eq!(v(GroupKey::Verdict), "DROPPED");
        assert_eq!(v(GroupKey::DropReason), "POLICY_DENIED");
        assert_eq!(v(GroupKey::Policy), "data/deny-world");
        assert_eq!(v(GroupKey::Node), "node-1");
    }

    #[test]
    fn directory_load_reload_keeps_old_rules_on_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            "rules:\n  - {name: A, window: 1m, threshold: 1}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not yaml: [").unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), "not yaml: [").unwrap();
        let mut set = RuleSet::load(dir.path()).expect("dir loads");
        assert_eq!(set.len(), 1);
        let mut watcher = RuleWatcher::new(dir.path());
        assert!(!watcher.changed());

        let bad = dir.path().join("b.yaml");
        std::fs::write(
            &bad,
            "rules:\n  - {name: B, window: 1m, threshold: 1, severity: \"\"}\n",
        )
        .unwrap();
        assert!(watcher.changed(), "a new file is a change");
        let e = set.reload(dir.path()).unwrap_err();
        match &e {
            RuleError::Invalid {
                path, rule, field, ..
            } => {
                assert_eq!(path, &bad);
                assert_eq!(rule, "B");
                assert_eq!(field, "severity");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(set.len(), 1, "old rules stay in force");
        assert_eq!(set.rules()[0].name, "A");
        assert!(
            !watcher.changed(),
            "a failing file is reported once per change"
        );

        std::fs::write(
            &bad,
            "rules:\n  - {name: B, window: 1m, threshold: 1, severity: info}\n",
        )
        .unwrap();
        assert!(watcher.changed());
        set.reload(dir.path()).expect("fixed");
        assert_eq!(set.len(), 2);

        std::fs::write(
            &bad,
            "rules:\n  - {name: A, window: 1m, threshold: 1, severity: info}\n",
        )
        .unwrap();
        let e = set.reload(dir.path()).unwrap_err();
        assert!(
            matches!(&e, RuleError::Duplicate { path, first, .. } if path == &bad && first.ends_with("a.yaml")),
            "{e}"
        );
        assert_eq!(set.len(), 2);
        let e = RuleSet::load(&dir.path().join("missing.yaml")).unwrap_err();
        assert!(matches!(e, RuleError::Read { .. }), "{e}");
    }

    #[test]
    fn example_rule_files_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/alert-rules");
        let set = RuleSet::load(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(set.len() >= 3, "examples: {}", set.len());
    }
}
