//! The UI API's query parameters: parsed and checked by hand, so that every problem is answered
//! with the parameter's name and what was expected, unknown parameters are refused, and no value
//! is used before it is checked. Values reach storage only as typed, bound parameters (the
//! history and map queries of `periscope_storage`), never as SQL text.
use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use periscope_filter::FlowFilterSet;
use periscope_proto::flow::{DropReason, Flow, FlowFilter, Verdict};
use periscope_proto::observer::GetFlowsRequest;
use periscope_ui_api::{edge_of, endpoint_name, node_id};

/// A parameter that cannot be used: answered with `400` and this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {problem}")]
pub struct BadParam {
    /// The parameter.
    pub name: String,
    /// What is wrong with it.
    pub problem: String,
}

fn bad(name: &str, problem: impl Into<String>) -> BadParam {
    BadParam {
        name: name.to_string(),
        problem: problem.into(),
    }
}

/// Query parameters, each name at most once, only from `allowed` (plus `access_token`).
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Checks names: known and not repeated.
    pub fn new(pairs: Vec<(String, String)>, allowed: &[&str]) -> Result<Self, BadParam> {
        let mut seen = HashSet::new();
        for (k, _) in &pairs {
            if k != "access_token" && !allowed.contains(&k.as_str()) {
                return Err(bad(
                    k,
                    format!("unknown parameter; expected one of {}", allowed.join(", ")),
                ));
            }
            if !seen.insert(k.as_str()) {
                return Err(bad(k, "given more than once (use a comma-separated list)"));
            }
        }
        Ok(Params(pairs))
    }

    /// The value of `name`, trimmed; empty counts as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// A comma-separated list (empty items dropped).
    pub fn list(&self, name: &str) -> Vec<&str> {
        self.get(name)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A number in `range`, or `default`.
    pub fn number(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<u64>,
        default: u64,
    ) -> Result<u64, BadParam> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    bad(
                        name,
                        format!(
                            "expected a whole number from {} to {}, got {v:?}",
                            range.start(),
                            range.end()
                        ),
                    )
                }),
        }
    }
}

/// Unix nanoseconds now.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The protobuf timestamp of Unix nanoseconds.
pub fn timestamp(ns: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ns.div_euclid(1_000_000_000),
        nanos: ns.rem_euclid(1_000_000_000) as i32,
    }
}

/// A time parameter: RFC 3339 (`2026-11-22T10:00:00Z`) or a duration before `now_ns` (`5m`).
pub fn time_param(name: &str, v: &str, now_ns: i64) -> Result<i64, BadParam> {
    if let Ok(d) = humantime::parse_duration(v) {
        if d > Duration::from_secs(400 * 86_400) {
            return Err(bad(name, format!("{v:?} reaches back more than 400 days")));
        }
        return Ok(now_ns - d.as_nanos() as i64);
    }
    match humantime::parse_rfc3339_weak(v) {
        Ok(t) => Ok(t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0)),
        Err(_) => Err(bad(
            name,
            format!(
                "expected an RFC 3339 time (2026-11-22T10:00:00Z) or a duration before now (5m, 1h, 24h), got {v:?}"
            ),
        )),
    }
}

/// `since`/`until` of a request: `(since_ns, until_ns)`, `since` defaulting to `default_since`
/// before now and `until` to now.
pub fn range(
    p: &Params,
    default_since: Option<Duration>,
) -> Result<(Option<i64>, Option<i64>), BadParam> {
    let now = now_ns();
    let since = match p.get("since") {
        Some(v) => Some(time_param("since", v, now)?),
        None => default_since.map(|d| now - d.as_nanos() as i64),
    };
    let until = p
        .get("until")
        .map(|v| time_param("until", v, now))
        .transpose()?;
    if let (Some(s), Some(u)) = (since, until)
        && s > u
    {
        return Err(bad("until", "is before since"));
    }
    Ok((since, until))
}

/// A Kubernetes namespace name (RFC 1123 label).
fn check_namespace(name: &str, v: &str) -> Result<(), BadParam> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(bad(
            name,
            format!(
                "{v:?} is not a namespace name (lower-case letters, digits and '-', at most 63)"
            ),
        ))
    }
}

/// The namespaces of a map request (`namespaces=a,b`).
pub fn namespaces(p: &Params) -> Result<HashSet<String>, BadParam> {
    let mut out = HashSet::new();
    for n in p.list("namespaces") {
        check_namespace("namespaces", n)?;
        out.insert(n.to_string());
    }
    Ok(out)
}

/// A map node id (`ns/name` or a `reserved:`/`cidr:` name).
pub fn check_node_id(name: &str, v: &str) -> Result<(), BadParam> {
    let printable = v.len() <= 300 && !v.chars().any(char::is_control);
    let shaped = match v.split_once('/') {
        _ if v.starts_with("reserved:") || v.starts_with("cidr:") => true,
        Some((ns, n)) => check_namespace(name, ns).is_ok() && !n.is_empty(),
        None => false,
    };
    if printable && shaped {
        Ok(())
    } else {
        Err(bad(
            name,
            format!("{v:?} is not a map node id (namespace/name, or reserved:…)"),
        ))
    }
}

/// A flows request, checked: what to ask storage or the peers, and what to check on each flow.
#[derive(Debug)]
pub struct FlowRequest {
    /// The request for the relay's Observer (history or peers).
    pub get: GetFlowsRequest,
    /// At most this many flows in the answer.
    pub limit: usize,
    /// The exact check of every parameter, applied to each flow.
    pub check: FlowCheck,
}

/// Every flow parameter as a predicate.
#[derive(Debug, Default)]
pub struct FlowCheck {
    /// One set per either-end parameter: each must match.
    either_end: Vec<FlowFilterSet>,
    /// Single-sided parameters (verdict, protocol, node, uuid).
    base: Option<FlowFilterSet>,
    /// Pod name prefixes without a namespace (either end).
    bare_pods: Vec<String>,
    drop_reasons: Vec<i32>,
    from: Option<String>,
    to: Option<String>,
    text: Option<String>,
    /// Whether storage or peers may return flows this check refuses (the request asks for more).
    pub narrows: bool,
}

impl FlowCheck {
    /// Whether `f` passes.
    pub fn matches(&self, f: &Flow) -> bool {
        if let Some(b) = &self.base
            && !b.matches(f)
        {
            return false;
        }
        if !self.either_end.iter().all(|s| s.matches(f)) {
            return false;
        }
        if !self.bare_pods.is_empty() {
            let pod_ok = |e: Option<&periscope_proto::flow::Endpoint>| {
                e.is_some_and(|e| self.bare_pods.iter().any(|p| e.pod_name.starts_with(p)))
            };
            if !pod_ok(f.source.as_ref()) && !pod_ok(f.destination.as_ref()) {
                return false;
            }
        }
        if !self.drop_reasons.is_empty() && !self.drop_reasons.contains(&f.drop_reason_desc) {
            return false;
        }
        let id = |e: Option<&periscope_proto::flow::Endpoint>| {
            e.map(|e| {
                let (ns, n) = endpoint_name(e);
                node_id(&ns, &n)
            })
            .unwrap_or_default()
        };
        if let Some(from) = &self.from
            && id(f.source.as_ref()) != *from
        {
            return false;
        }
        if let Some(to) = &self.to
            && id(f.destination.as_ref()) != *to
        {
            return false;
        }
        if let Some(t) = &self.text
            && !flow_text(f).contains(t.as_str())
        {
            return false;
        }
        true
    }
}

/// What the `text` parameter searches: summary, names, labels, addresses, node, L7, lower-cased.
fn flow_text(f: &Flow) -> String {
    let mut s = String::with_capacity(256);
    s.push_str(&f.summary);
    s.push(' ');
    s.push_str(&f.node_name);
    for e in [f.source.as_ref(), f.destination.as_ref()]
        .into_iter()
        .flatten()
    {
        s.push(' ');
        s.push_str(&e.namespace);
        s.push('/');
        s.push_str(&e.pod_name);
        for l in &e.labels {
            s.push(' ');
            s.push_str(l);
        }
        for w in &e.workloads {
            s.push(' ');
            s.push_str(&w.name);
        }
    }
    if let Some(ip) = &f.ip {
        s.push(' ');
        s.push_str(&ip.source);
        s.push(' ');
        s.push_str(&ip.destination);
    }
    for n in f.source_names.iter().chain(&f.destination_names) {
        s.push(' ');
        s.push_str(n);
    }
    for p in f
        .ingress_allowed_by
        .iter()
        .chain(&f.egress_allowed_by)
        .chain(&f.ingress_denied_by)
        .chain(&f.egress_denied_by)
    {
        s.push(' ');
        s.push_str(&p.name);
    }
    if let Some(l7) = &f.l7 {
        use periscope_proto::flow::layer7::Record;
        match &l7.record {
            Some(Record::Dns(d)) => {
                s.push(' ');
                s.push_str(&d.query);
            }
            Some(Record::Http(h)) => {
                s.push(' ');
                s.push_str(&h.url);
            }
            _ => {}
        }
    }
    s.to_lowercase()
}

/// Parameters of the flow routes.
pub const FLOW_PARAMS: &[&str] = &[
    "since",
    "until",
    "limit",
    "namespace",
    "pod",
    "label",
    "ip",
    "port",
    "protocol",
    "verdict",
    "drop_reason",
    "node",
    "uuid",
    "from",
    "to",
    "text",
];

const PROTOCOLS: &[&str] = &["tcp", "udp", "sctp", "icmp", "icmpv4", "icmpv6"];

fn compile(name: &str, allow: &[FlowFilter]) -> Result<FlowFilterSet, BadParam> {
    FlowFilterSet::compile(allow, &[]).map_err(|e| bad(name, e.to_string()))
}

/// Checks the flow parameters. `live`: a live tail (no range, no limit).
pub fn flow_request(p: &Params, live: bool) -> Result<FlowRequest, BadParam> {
    let mut check = FlowCheck::default();
    let mut get = GetFlowsRequest::default();
    let limit = p.number("limit", 1..=10_000, 100)? as usize;
    if !live {
        let (since, until) = range(p, None)?;
        get.since = since.map(timestamp);
        get.until = until.map(timestamp);
    } else if p.get("since").is_some() || p.get("until").is_some() || p.get("limit").is_some() {
        return Err(bad(
            "since",
            "a live tail takes no since, until or limit (ask /api/v1/flows for history)",
        ));
    }

    // Single-sided parameters: one filter.
    let mut base = FlowFilter::default();
    for v in p.list("verdict") {
        let verdict = Verdict::from_str_name(&v.to_ascii_uppercase())
            .filter(|v| *v != Verdict::Unknown)
            .ok_or_else(|| {
                bad(
                    "verdict",
                    format!("{v:?}: expected FORWARDED, DROPPED, AUDIT, ERROR, REDIRECTED, TRACED or TRANSLATED"),
                )
            })?;
        base.verdict.push(verdict as i32);
    }
    if let Some(v) = p.get("protocol") {
        let lower = v.to_ascii_lowercase();
        if !PROTOCOLS.contains(&lower.as_str()) {
            return Err(bad(
                "protocol",
                format!("{v:?}: expected one of {}", PROTOCOLS.join(", ")),
            ));
        }
        base.protocol.push(lower);
    }
    if let Some(v) = p.get("node") {
        if v.len() > 253 || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad("node", format!("{v:?} is not a node name")));
        }
        base.node_name.push(v.to_string());
    }
    for u in p.list("uuid") {
        if u.len() > 64 || !u.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return Err(bad("uuid", format!("{u:?} is not a flow uuid")));
        }
        base.uuid.push(u.to_string());
    }
    for r in p.list("drop_reason") {
        let code = match r.parse::<i32>() {
            Ok(n) => DropReason::try_from(n).ok().map(|d| d as i32),
            Err(_) => DropReason::from_str_name(&r.to_ascii_uppercase()).map(|d| d as i32),
        };
        check
            .drop_reasons
            .push(code.filter(|c| *c != 0).ok_or_else(|| {
                bad(
                    "drop_reason",
                    format!("{r:?}: expected a drop reason name (POLICY_DENIED) or code (133)"),
                )
            })?);
        check.narrows = true;
    }
    if !check.drop_reasons.is_empty() && base.verdict.is_empty() {
        base.verdict.push(Verdict::Dropped as i32);
    }
    if base != FlowFilter::default() {
        check.base = Some(compile("verdict", std::slice::from_ref(&base))?);
    }

    // Either-end parameters: (source variant, destination variant).
    let mut ends: Vec<(&str, FlowFilter, FlowFilter)> = Vec::new();
    let namespaces = p.list("namespace");
    if !namespaces.is_empty() {
        let mut prefixes = Vec::new();
        for n in namespaces {
            check_namespace("namespace", n)?;
            prefixes.push(format!("{n}/"));
        }
        ends.push((
            "namespace",
            FlowFilter {
                source_pod: prefixes.clone(),
                ..Default::default()
            },
            FlowFilter {
                destination_pod: prefixes,
                ..Default::default()
            },
        ));
    }
    if let Some(v) = p.get("pod") {
        if v.len() > 300 || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad("pod", format!("{v:?} is not a pod name")));
        }
        match v.split_once('/') {
            Some((ns, _)) => {
                check_namespace("pod", ns)?;
                ends.push((
                    "pod",
                    FlowFilter {
                        source_pod: vec![v.into()],
                        ..Default::default()
                    },
                    FlowFilter {
                        destination_pod: vec![v.into()],
                        ..Default::default()
                    },
                ));
            }
            None => {
                check.bare_pods.push(v.to_string());
                check.narrows = true;
            }
        }
    }
    if let Some(v) = p.get("label") {
        ends.push((
            "label",
            FlowFilter {
                source_label: vec![v.into()],
                ..Default::default()
            },
            FlowFilter {
                destination_label: vec![v.into()],
                ..Default::default()
            },
        ));
    }
    if let Some(v) = p.get("ip") {
        let ok = v.parse::<IpAddr>().is_ok() || v.parse::<ipnet_check::Net>().is_ok();
        if !ok {
            return Err(bad(
                "ip",
                format!("{v:?}: expected an IP address or a CIDR (10.0.0.0/8)"),
            ));
        }
        ends.push((
            "ip",
            FlowFilter {
                source_ip: vec![v.into()],
                ..Default::default()
            },
            FlowFilter {
                destination_ip: vec![v.into()],
                ..Default::default()
            },
        ));
    }
    if p.get("port").is_some() {
        let port = p.number("port", 1..=65_535, 0)?.to_string();
        ends.push((
            "port",
            FlowFilter {
                source_port: vec![port.clone()],
                ..Default::default()
            },
            FlowFilter {
                destination_port: vec![port],
                ..Default::default()
            },
        ));
    }
    for (name, s, d) in &ends {
        check
            .either_end
            .push(compile(name, &[s.clone(), d.clone()])?);
    }
    for (name, slot) in [("from", &mut check.from), ("to", &mut check.to)] {
        if let Some(v) = p.get(name) {
            check_node_id(name, v)?;
            *slot = Some(v.to_string());
            check.narrows = true;
        }
    }
    if let Some(t) = p.get("text") {
        if t.chars().count() > 200 {
            return Err(bad("text", "longer than 200 characters"));
        }
        check.text = Some(t.to_lowercase());
        check.narrows = true;
    }
    // What storage and the peers are asked: every combination of the ends, with the base.
    let mut whitelist = vec![base];
    for (_, s, d) in &ends {
        let mut next = Vec::with_capacity(whitelist.len() * 2);
        for f in &whitelist {
            next.push(merge(f, s));
            next.push(merge(f, d));
        }
        whitelist = next;
    }
    if whitelist.len() > 1 || whitelist[0] != FlowFilter::default() {
        get.whitelist = whitelist;
    }
    if !live {
        // The newest `limit` flows; more when flows may still be refused here.
        get.number = if check.narrows {
            (limit as u64 * 20).min(100_000)
        } else {
            limit as u64
        };
    }
    get.follow = live;
    Ok(FlowRequest { get, limit, check })
}

/// `a` with the non-empty fields of `b` (which sets only fields `a` leaves empty).
fn merge(a: &FlowFilter, b: &FlowFilter) -> FlowFilter {
    let mut out = a.clone();
    macro_rules! take {
        ($($f:ident),*) => {$(
            if !b.$f.is_empty() {
                out.$f = b.$f.clone();
            }
        )*};
    }
    take!(
        source_pod,
        destination_pod,
        source_label,
        destination_label,
        source_ip,
        destination_ip,
        source_port,
        destination_port
    );
    out
}

/// Whether an edge key is one the flow counts on (the edge's flows).
pub fn on_edge(f: &Flow, from: &str, to: &str) -> bool {
    edge_of(f).is_some_and(|k| k.source == from && k.destination == to)
}

/// CIDR syntax check without another dependency: `ADDR/BITS`.
mod ipnet_check {
    use std::net::IpAddr;
    use std::str::FromStr;

    pub struct Net;

    impl FromStr for Net {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            let (a, b) = s.split_once('/').ok_or(())?;
            let ip: IpAddr = a.parse().map_err(|_| ())?;
            let bits: u8 = b.parse().map_err(|_| ())?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            if bits <= max { Ok(Net) } else { Err(()) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &[(&str, &str)], allowed: &[&str]) -> Result<Params, BadParam> {
        Params::new(
            q.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            allowed,
        )
    }

    fn flow_req(q: &[(&str, &str)]) -> Result<FlowRequest, BadParam> {
        flow_request(&params(q, FLOW_PARAMS)?, false)
    }

    #[test]
    fn bad_parameters_are_named() {
        let e = flow_req(&[("verdict", "MAYBE")]).unwrap_err();
        assert_eq!(e.name, "verdict");
        assert!(e.problem.contains("MAYBE"), "{e}");
        assert_eq!(flow_req(&[("port", "70000")]).unwrap_err().name, "port");
        assert_eq!(flow_req(&[("limit", "0")]).unwrap_err().name, "limit");
        assert_eq!(flow_req(&[("ip", "10.0.0.300")]).unwrap_err().name, "ip");
        assert_eq!(flow_req(&[("ip", "10.0.0.0/33")]).unwrap_err().name, "ip");
        assert_eq!(
            flow_req(&[("namespace", "Prod; DROP")]).unwrap_err().name,
            "namespace"
        );
        assert_eq!(
            flow_req(&[("since", "yesterday")]).unwrap_err().name,
            "since"
        );
        assert_eq!(
            flow_req(&[("since", "5m"), ("until", "10m")])
                .unwrap_err()
                .name,
            "until"
        );
        assert_eq!(
            flow_req(&[("protocol", "http")]).unwrap_err().name,
            "protocol"
        );
        assert_eq!(
            flow_req(&[("drop_reason", "SOMETIMES")]).unwrap_err().name,
            "drop_reason"
        );
        assert_eq!(flow_req(&[("uuid", "x' OR 1=1")]).unwrap_err().name, "uuid");
        assert_eq!(flow_req(&[("from", "nowhere")]).unwrap_err().name, "from");
        assert_eq!(flow_req(&[("label", "a=b=c=")]).unwrap_err().name, "label");
        let e = params(&[("verdcit", "DROPPED")], FLOW_PARAMS)
            .err()
            .unwrap();
        assert_eq!(e.name, "verdcit");
        assert!(e.problem.starts_with("unknown parameter"), "{e}");
        let e = params(&[("port", "1"), ("port", "2")], FLOW_PARAMS)
            .err()
            .unwrap();
        assert!(e.problem.contains("more than once"), "{e}");
    }

    #[test]
    fn either_end_parameters_expand_to_every_combination() {
        let r = flow_req(&[
            ("namespace", "shop,data"),
            ("port", "5432"),
            ("verdict", "dropped"),
            ("limit", "10"),
        ])
        .unwrap();
        assert_eq!(r.get.whitelist.len(), 4);
        assert!(
            r.get
                .whitelist
                .iter()
                .all(|f| f.verdict == [Verdict::Dropped as i32])
        );
        assert!(
            r.get
                .whitelist
                .iter()
                .any(|f| f.source_pod == ["shop/", "data/"] && f.destination_port == ["5432"])
        );
        assert_eq!(r.get.number, 10);
        assert!(!r.check.narrows);
        // Post-only checks ask for more.
        let r = flow_req(&[("text", "db"), ("limit", "10")]).unwrap();
        assert!(r.check.narrows);
        assert_eq!(r.get.number, 200);
    }

    #[test]
    fn checks_match_exactly() {
        use periscope_proto::flow::{Endpoint, Layer4, Tcp, layer4::Protocol};
        let f = Flow {
            verdict: Verdict::Dropped as i32,
            drop_reason_desc: DropReason::PolicyDenied as i32,
            source: Some(Endpoint {
                namespace: "shop".into(),
                pod_name: "web-1".into(),
                labels: vec!["k8s:app=web".into()],
                ..Default::default()
            }),
            destination: Some(Endpoint {
                namespace: "data".into(),
                pod_name: "db-1".into(),
                labels: vec!["k8s:app=db".into()],
                ..Default::default()
            }),
            l4: Some(Layer4 {
                protocol: Some(Protocol::Tcp(Tcp {
                    source_port: 40000,
                    destination_port: 5432,
                    flags: None,
                })),
            }),
            ..Default::default()
        };
        let yes = |q: &[(&str, &str)]| flow_req(q).unwrap().check.matches(&f);
        assert!(yes(&[("namespace", "data")]));
        assert!(!yes(&[("namespace", "kube-system")]));
        assert!(yes(&[("pod", "db")]));
        assert!(yes(&[("pod", "shop/web")]));
        assert!(yes(&[("label", "app=db")]));
        assert!(!yes(&[("label", "app=cache")]));
        assert!(yes(&[("port", "5432")]));
        assert!(yes(&[("drop_reason", "POLICY_DENIED")]));
        assert!(yes(&[("drop_reason", "133")]));
        assert!(!yes(&[("drop_reason", "CT_MISSING_TCP_ACK_FLAG")]));
        assert!(yes(&[("from", "shop/web-1"), ("to", "data/db-1")]));
        assert!(!yes(&[("from", "data/db-1")]));
        assert!(yes(&[("text", "APP=WEB")]));
        assert!(!yes(&[("verdict", "FORWARDED")]));
        assert!(yes(&[("protocol", "TCP")]));
    }

    #[test]
    fn times_are_durations_or_rfc3339() {
        let now = 1_800_000_000_000_000_000;
        assert_eq!(
            time_param("since", "5m", now).unwrap(),
            now - 300_000_000_000
        );
        assert_eq!(
            time_param("since", "2026-11-22T10:00:00Z", now).unwrap(),
            1_795_341_600_000_000_000
        );
        assert!(time_param("since", "1000d", now).is_err());
    }
}
