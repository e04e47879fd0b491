//! Flow-filter engine: compiles the `whitelist` / `blacklist` of a `GetFlowsRequest` into
//! predicates and evaluates them against [`Flow`]s.
//!
//! Semantics follow the Hubble wire spec (`FlowFilter`, §2.4) and the upstream Cilium agent
//! filters:
//!
//! - a request keeps a flow if it matches **any** allow filter (or there are none) and **no**
//!   deny filter;
//! - within one [`FlowFilter`] every populated field must match (AND); within one repeated
//!   field any listed value may match (OR); a filter with no populated field matches every flow.
//!
//! Everything that can be parsed (IPs/CIDRs, pod/service names, label selectors, FQDN and node
//! globs, regexes, ports, status codes, protocols) is parsed once in [`FlowFilterSet::compile`];
//! [`FlowFilterSet::matches`] does not allocate except when an HTTP URL contains
//! percent-escapes that have to be decoded for `http_path`.

use std::borrow::Cow;
use std::io::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use periscope_proto::flow::{
    Endpoint, EventTypeFilter, Flow, FlowFilter, Service, TcpFlags, Verdict, Workload, layer4,
    layer7,
};
use regex::{Regex, RegexBuilder};

/// Monitor message type of L7 (proxy access-log) events; HTTP filters require it.
const MESSAGE_TYPE_ACCESS_LOG: i32 = 129;

/// Cluster name assumed for flow node names that carry no `cluster/` part.
const DEFAULT_CLUSTER: &str = "default";

/// Namespace assumed for a bare pod/service name (no `/`).
const DEFAULT_NAMESPACE: &str = "default";

/// Regex matching any FQDN-like name (used for an empty cluster or node part of a node pattern).
const ANY_NAME_RE: &str = r"(?:[-0-9_a-z]+(?:\.[-0-9_a-z]+)*)";

/// A compiled request filter: keep a flow if it matches any allow filter (or there are none)
/// and no deny filter.
#[derive(Debug, Clone, Default)]
pub struct FlowFilterSet {
    allow: Vec<CompiledFilter>,
    deny: Vec<CompiledFilter>,
}

impl FlowFilterSet {
    /// Compiles a request's whitelist (`allow`) and blacklist (`deny`).
    ///
    /// Fails on the first malformed value, naming the list, the filter index and the field.
    pub fn compile(allow: &[FlowFilter], deny: &[FlowFilter]) -> Result<Self, FilterError> {
        let compile_list = |list: &'static str, filters: &[FlowFilter]| {
            filters
                .iter()
                .enumerate()
                .map(|(index, f)| CompiledFilter::compile(Ctx { list, index }, f))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            allow: compile_list("whitelist", allow)?,
            deny: compile_list("blacklist", deny)?,
        })
    }

    /// Whether the flow belongs to the result set:
    /// `(allow is empty OR any allow filter matches) AND NOT (any deny filter matches)`.
    pub fn matches(&self, flow: &Flow) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|f| f.matches(flow)))
            && !self.deny.iter().any(|f| f.matches(flow))
    }

    /// No filters at all: every flow matches.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// A bad filter: names the list (whitelist/blacklist), the index, the field, the value and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {list}[{index}].{field} {value:?}: {reason}")]
pub struct FilterError {
    /// `"whitelist"` or `"blacklist"`.
    pub list: &'static str,
    /// Position of the offending filter in its list.
    pub index: usize,
    /// Proto field name of the offending `FlowFilter` field (e.g. `source_ip`).
    pub field: &'static str,
    /// The offending value as sent.
    pub value: String,
    /// Why it was rejected.
    pub reason: String,
}

/// Where a filter being compiled sits in the request.
#[derive(Clone, Copy)]
struct Ctx {
    list: &'static str,
    index: usize,
}

impl Ctx {
    fn err(self, field: &'static str, value: &str, reason: impl Into<String>) -> FilterError {
        FilterError {
            list: self.list,
            index: self.index,
            field,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

/// One compiled `FlowFilter`: all predicates must hold.
#[derive(Debug, Clone)]
struct CompiledFilter {
    preds: Vec<Pred>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Destination,
}

/// One populated `FlowFilter` field, compiled.
#[derive(Debug, Clone)]
enum Pred {
    Verdict(Vec<i32>),
    TrafficDirection(Vec<i32>),
    IpVersion(Vec<i32>),
    Reply {
        want_true: bool,
        want_false: bool,
    },
    /// Sorted, deduplicated.
    Identity(Side, Vec<u32>),
    /// Sorted, deduplicated.
    Port(Side, Vec<u16>),
    /// Bit set of `PROTO_*`.
    Protocol(u8),
    /// Each entry is a bit set of required TCP flags.
    TcpFlags(Vec<u16>),
    EventType(Vec<EventTypeFilter>),
    Uuid(Vec<String>),
    TraceId(Vec<String>),
    Ip(Side, IpMatcher),
    Pod(Side, Vec<NamePrefix>),
    Service(Side, Vec<NamePrefix>),
    Workload(Side, Vec<Workload>),
    Label(Side, Vec<LabelSelector>),
    HttpStatus(HttpStatusMatcher),
    HttpMethod(Vec<String>),
    Fqdn(Side, Regex),
    NodeName(NodeNameMatcher),
    DnsQuery(Vec<Regex>),
    HttpPath(Vec<Regex>),
}

impl Pred {
    /// Rough evaluation cost; cheap predicates run first so that most flows are rejected early.
    fn cost(&self) -> u8 {
        match self {
            Pred::Verdict(_)
            | Pred::TrafficDirection(_)
            | Pred::IpVersion(_)
            | Pred::Reply { .. }
            | Pred::Identity(..)
            | Pred::Port(..)
            | Pred::Protocol(_)
            | Pred::TcpFlags(_)
            | Pred::EventType(_) => 0,
            Pred::Uuid(_)
            | Pred::TraceId(_)
            | Pred::Pod(..)
            | Pred::Service(..)
            | Pred::Workload(..)
            | Pred::HttpStatus(_)
            | Pred::HttpMethod(_) => 1,
            Pred::Ip(..) | Pred::Label(..) => 2,
            Pred::Fqdn(..) | Pred::NodeName(_) | Pred::DnsQuery(_) | Pred::HttpPath(_) => 3,
        }
    }

    fn matches(&self, flow: &Flow) -> bool {
        match self {
            Pred::Verdict(v) => v.contains(&flow.verdict),
            Pred::TrafficDirection(v) => v.contains(&flow.traffic_direction),
            Pred::IpVersion(v) => v.contains(&flow.ip.as_ref().map_or(0, |ip| ip.ip_version)),
            Pred::Reply {
                want_true,
                want_false,
            } => match flow.is_reply {
                Some(true) => *want_true,
                Some(false) => *want_false,
                // Unknown direction: only drops count, as "not a reply" (compatibility with
                // clients filtering on the deprecated `reply` field).
                None => flow.verdict == Verdict::Dropped as i32 && *want_false,
            },
            Pred::Identity(side, ids) => {
                let id = endpoint(flow, *side).map_or(0, |ep| ep.identity);
                ids.binary_search(&id).is_ok()
            }
            Pred::Port(side, ports) => match l4_port(flow, *side) {
                Some(port) => u16::try_from(port).is_ok_and(|p| ports.binary_search(&p).is_ok()),
                None => false,
            },
            Pred::Protocol(mask) => protocol_bits(flow) & mask != 0,
            Pred::TcpFlags(wanted) => match tcp_flags(flow) {
                Some(have) => wanted.iter().any(|w| have & w == *w),
                None => false,
            },
            Pred::EventType(filters) => match &flow.event_type {
                Some(et) => filters.iter().any(|f| {
                    (f.r#type == 0 || f.r#type == et.r#type)
                        && (!f.match_sub_type || f.sub_type == et.sub_type)
                }),
                None => false,
            },
            Pred::Uuid(ids) => ids.contains(&flow.uuid),
            Pred::TraceId(ids) => {
                let id = flow
                    .trace_context
                    .as_ref()
                    .and_then(|tc| tc.parent.as_ref())
                    .map_or("", |p| p.trace_id.as_str());
                ids.iter().any(|t| t == id)
            }
            Pred::Ip(side, m) => m.matches(ip_str(flow, *side)),
            Pred::Pod(side, names) => {
                let (ns, pod) = endpoint(flow, *side)
                    .map_or(("", ""), |ep| (ep.namespace.as_str(), ep.pod_name.as_str()));
                NamePrefix::any_matches(names, ns, pod)
            }
            Pred::Service(side, names) => {
                let (ns, name) = service(flow, *side)
                    .map_or(("", ""), |s| (s.namespace.as_str(), s.name.as_str()));
                NamePrefix::any_matches(names, ns, name)
            }
            Pred::Workload(side, wanted) => endpoint(flow, *side).is_some_and(|ep| {
                ep.workloads.iter().any(|w| {
                    wanted.iter().any(|f| {
                        (f.name.is_empty() || f.name == w.name)
                            && (f.kind.is_empty() || f.kind == w.kind)
                    })
                })
            }),
            Pred::Label(side, selectors) => {
                let labels: &[String] = endpoint(flow, *side).map_or(&[], |ep| &ep.labels);
                selectors.iter().any(|s| s.matches(labels))
            }
            Pred::HttpStatus(m) => match http(flow) {
                Some(h) if h.code != 0 => m.matches(h.code),
                _ => false,
            },
            Pred::HttpMethod(methods) => match http(flow) {
                Some(h) if !h.method.is_empty() => {
                    methods.iter().any(|m| m.eq_ignore_ascii_case(&h.method))
                }
                _ => false,
            },
            Pred::Fqdn(side, re) => {
                let names = match side {
                    Side::Source => &flow.source_names,
                    Side::Destination => &flow.destination_names,
                };
                names.iter().any(|n| re.is_match(trim_one_dot(n)))
            }
            Pred::NodeName(m) => m.matches(&flow.node_name),
            Pred::DnsQuery(res) => match flow.l7.as_ref().and_then(|l7| l7.record.as_ref()) {
                Some(layer7::Record::Dns(dns)) => res.iter().any(|re| re.is_match(&dns.query)),
                _ => false,
            },
            Pred::HttpPath(res) => match http(flow) {
                Some(h) if !h.url.is_empty() => match request_uri_path(&h.url) {
                    Some(path) => res.iter().any(|re| re.is_match(&path)),
                    None => false,
                },
                _ => false,
            },
        }
    }
}

impl CompiledFilter {
    fn matches(&self, flow: &Flow) -> bool {
        self.preds.iter().all(|p| p.matches(flow))
    }

    /// Compiles one `FlowFilter`. Fields are validated in proto field-number order, so the
    /// reported error is the one of the lowest-numbered bad field.
    fn compile(ctx: Ctx, f: &FlowFilter) -> Result<Self, FilterError> {
        let mut preds = Vec::new();

        // 1, 3: IPs.
        if !f.source_ip.is_empty() {
            preds.push(Pred::Ip(
                Side::Source,
                IpMatcher::compile(ctx, "source_ip", &f.source_ip)?,
            ));
        }
        // 2, 4: pods.
        if !f.source_pod.is_empty() {
            preds.push(Pred::Pod(
                Side::Source,
                NamePrefix::compile_all(ctx, "source_pod", &f.source_pod)?,
            ));
        }
        if !f.destination_ip.is_empty() {
            preds.push(Pred::Ip(
                Side::Destination,
                IpMatcher::compile(ctx, "destination_ip", &f.destination_ip)?,
            ));
        }
        if !f.destination_pod.is_empty() {
            preds.push(Pred::Pod(
                Side::Destination,
                NamePrefix::compile_all(ctx, "destination_pod", &f.destination_pod)?,
            ));
        }
        // 5
        if !f.verdict.is_empty() {
            preds.push(Pred::Verdict(f.verdict.clone()));
        }
        // 6
        if !f.event_type.is_empty() {
            preds.push(Pred::EventType(f.event_type.clone()));
        }
        // 7, 8
        if !f.source_fqdn.is_empty() {
            preds.push(Pred::Fqdn(
                Side::Source,
                compile_fqdn_patterns(ctx, "source_fqdn", &f.source_fqdn)?,
            ));
        }
        if !f.destination_fqdn.is_empty() {
            preds.push(Pred::Fqdn(
                Side::Destination,
                compile_fqdn_patterns(ctx, "destination_fqdn", &f.destination_fqdn)?,
            ));
        }
        // 9
        if !f.http_status_code.is_empty() {
            check_http_event_type(ctx, "http_status_code", &f.http_status_code, f)?;
            preds.push(Pred::HttpStatus(HttpStatusMatcher::compile(
                ctx,
                &f.http_status_code,
            )?));
        }
        // 10, 11
        if !f.source_label.is_empty() {
            preds.push(Pred::Label(
                Side::Source,
                LabelSelector::compile_all(ctx, "source_label", &f.source_label)?,
            ));
        }
        if !f.destination_label.is_empty() {
            preds.push(Pred::Label(
                Side::Destination,
                LabelSelector::compile_all(ctx, "destination_label", &f.destination_label)?,
            ));
        }
        // 12
        if !f.protocol.is_empty() {
            preds.push(Pred::Protocol(compile_protocols(ctx, &f.protocol)?));
        }
        // 13, 14
        if !f.source_port.is_empty() {
            preds.push(Pred::Port(
                Side::Source,
                compile_ports(ctx, "source_port", &f.source_port)?,
            ));
        }
        if !f.destination_port.is_empty() {
            preds.push(Pred::Port(
                Side::Destination,
                compile_ports(ctx, "destination_port", &f.destination_port)?,
            ));
        }
        // 15
        if !f.reply.is_empty() {
            preds.push(Pred::Reply {
                want_true: f.reply.contains(&true),
                want_false: f.reply.contains(&false),
            });
        }
        // 16, 17
        if !f.source_service.is_empty() {
            preds.push(Pred::Service(
                Side::Source,
                NamePrefix::compile_all(ctx, "source_service", &f.source_service)?,
            ));
        }
        if !f.destination_service.is_empty() {
            preds.push(Pred::Service(
                Side::Destination,
                NamePrefix::compile_all(ctx, "destination_service", &f.destination_service)?,
            ));
        }
        // 18
        if !f.dns_query.is_empty() {
            preds.push(Pred::DnsQuery(compile_regexes(
                ctx,
                "dns_query",
                &f.dns_query,
            )?));
        }
        // 19, 20
        if !f.source_identity.is_empty() {
            preds.push(Pred::Identity(
                Side::Source,
                sorted_dedup(f.source_identity.clone()),
            ));
        }
        if !f.destination_identity.is_empty() {
            preds.push(Pred::Identity(
                Side::Destination,
                sorted_dedup(f.destination_identity.clone()),
            ));
        }
        // 21
        if !f.http_method.is_empty() {
            check_http_event_type(ctx, "http_method", &f.http_method, f)?;
            preds.push(Pred::HttpMethod(f.http_method.clone()));
        }
        // 22
        if !f.http_path.is_empty() {
            check_http_event_type(ctx, "http_path", &f.http_path, f)?;
            preds.push(Pred::HttpPath(compile_regexes(
                ctx,
                "http_path",
                &f.http_path,
            )?));
        }
        // 23
        if !f.tcp_flags.is_empty() {
            preds.push(Pred::TcpFlags(
                f.tcp_flags.iter().map(tcp_flag_bits).collect(),
            ));
        }
        // 24
        if !f.node_name.is_empty() {
            preds.push(Pred::NodeName(NodeNameMatcher::compile(ctx, &f.node_name)?));
        }
        // 25
        if !f.ip_version.is_empty() {
            preds.push(Pred::IpVersion(f.ip_version.clone()));
        }
        // 26, 27
        if !f.source_workload.is_empty() {
            preds.push(Pred::Workload(Side::Source, f.source_workload.clone()));
        }
        if !f.destination_workload.is_empty() {
            preds.push(Pred::Workload(
                Side::Destination,
                f.destination_workload.clone(),
            ));
        }
        // 28, 29, 30
        if !f.trace_id.is_empty() {
            preds.push(Pred::TraceId(f.trace_id.clone()));
        }
        if !f.uuid.is_empty() {
            preds.push(Pred::Uuid(f.uuid.clone()));
        }
        if !f.traffic_direction.is_empty() {
            preds.push(Pred::TrafficDirection(f.traffic_direction.clone()));
        }

        preds.sort_by_key(Pred::cost);
        Ok(Self { preds })
    }
}

// ---------------------------------------------------------------------------------------------
// Flow accessors (getter semantics: a missing message reads as its default).

fn endpoint(flow: &Flow, side: Side) -> Option<&Endpoint> {
    match side {
        Side::Source => flow.source.as_ref(),
        Side::Destination => flow.destination.as_ref(),
    }
}

fn service(flow: &Flow, side: Side) -> Option<&Service> {
    match side {
        Side::Source => flow.source_service.as_ref(),
        Side::Destination => flow.destination_service.as_ref(),
    }
}

fn ip_str(flow: &Flow, side: Side) -> &str {
    flow.ip.as_ref().map_or("", |ip| match side {
        Side::Source => ip.source.as_str(),
        Side::Destination => ip.destination.as_str(),
    })
}

fn l4_port(flow: &Flow, side: Side) -> Option<u32> {
    let (src, dst) = match flow.l4.as_ref()?.protocol.as_ref()? {
        layer4::Protocol::Tcp(t) => (t.source_port, t.destination_port),
        layer4::Protocol::Udp(u) => (u.source_port, u.destination_port),
        layer4::Protocol::Sctp(s) => (s.source_port, s.destination_port),
        layer4::Protocol::IcmPv4(_) | layer4::Protocol::IcmPv6(_) => return None,
    };
    Some(match side {
        Side::Source => src,
        Side::Destination => dst,
    })
}

fn http(flow: &Flow) -> Option<&periscope_proto::flow::Http> {
    match flow.l7.as_ref()?.record.as_ref()? {
        layer7::Record::Http(h) => Some(h),
        _ => None,
    }
}

fn tcp_flags(flow: &Flow) -> Option<u16> {
    match flow.l4.as_ref()?.protocol.as_ref()? {
        layer4::Protocol::Tcp(t) => t.flags.as_ref().map(tcp_flag_bits),
        _ => None,
    }
}

fn tcp_flag_bits(f: &TcpFlags) -> u16 {
    [f.fin, f.syn, f.rst, f.psh, f.ack, f.urg, f.ece, f.cwr, f.ns]
        .iter()
        .enumerate()
        .fold(0, |acc, (i, set)| acc | (u16::from(*set) << i))
}

fn trim_one_dot(s: &str) -> &str {
    s.strip_suffix('.').unwrap_or(s)
}

fn sorted_dedup<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort_unstable();
    v.dedup();
    v
}

// ---------------------------------------------------------------------------------------------
// IP / CIDR (source_ip, destination_ip)

#[derive(Debug, Clone, Default)]
struct IpMatcher {
    addrs: Vec<IpAddr>,
    nets: Vec<IpNet>,
}

impl IpMatcher {
    fn compile(ctx: Ctx, field: &'static str, values: &[String]) -> Result<Self, FilterError> {
        let mut m = Self::default();
        for v in values {
            if v.contains('/') {
                let net: IpNet = v.parse().map_err(|_| {
                    ctx.err(
                        field,
                        v,
                        "not a valid CIDR (expected address/prefix-length)",
                    )
                })?;
                m.nets.push(net.trunc());
            } else {
                let addr: IpAddr = v
                    .parse()
                    .map_err(|_| ctx.err(field, v, "not an IP address or CIDR"))?;
                m.addrs.push(addr.to_canonical());
            }
        }
        Ok(m)
    }

    fn matches(&self, ip: &str) -> bool {
        if ip.is_empty() {
            return false;
        }
        let Ok(addr) = ip.parse::<IpAddr>() else {
            return false;
        };
        let addr = addr.to_canonical();
        self.addrs.contains(&addr) || self.nets.iter().any(|n| n.contains(&addr))
    }
}

// ---------------------------------------------------------------------------------------------
// Pods and services: `[namespace/][prefix]`

#[derive(Debug, Clone)]
struct NamePrefix {
    namespace: String,
    prefix: String,
}

impl NamePrefix {
    fn compile_all(
        ctx: Ctx,
        field: &'static str,
        values: &[String],
    ) -> Result<Vec<Self>, FilterError> {
        values
            .iter()
            .map(|v| {
                if v.is_empty() {
                    return Err(ctx.err(field, v, "must be [namespace/][name-prefix]"));
                }
                let (namespace, prefix) = match v.split_once('/') {
                    Some((_, rest)) if rest.contains('/') => {
                        return Err(ctx.err(
                            field,
                            v,
                            "must be [namespace/][name-prefix] (too many '/')",
                        ));
                    }
                    Some((ns, prefix)) => (ns, prefix),
                    None => (DEFAULT_NAMESPACE, v.as_str()),
                };
                if namespace.is_empty() && prefix.is_empty() {
                    return Err(ctx.err(field, v, "must be [namespace/][name-prefix]"));
                }
                Ok(Self {
                    namespace: namespace.to_owned(),
                    prefix: prefix.to_owned(),
                })
            })
            .collect()
    }

    fn any_matches(filters: &[Self], ns: &str, name: &str) -> bool {
        if ns.is_empty() && name.is_empty() {
            return false;
        }
        filters
            .iter()
            .any(|f| f.namespace == ns && name.starts_with(f.prefix.as_str()))
    }
}

// ---------------------------------------------------------------------------------------------
// FQDN globs (source_fqdn, destination_fqdn) and node names

/// Canonicalizes an FQDN glob (trim spaces, one trailing dot, lower-case) and appends its
/// regex form to `out`. `*` matches any run of `[-.0-9a-z]`.
fn append_fqdn_glob(out: &mut String, pattern: &str) -> Result<(), String> {
    let p = pattern.trim();
    let p = p.strip_suffix('.').unwrap_or(p).to_ascii_lowercase();
    if p.is_empty() {
        return Err("empty pattern".into());
    }
    if p.ends_with('.') {
        return Err("multiple trailing dots in pattern".into());
    }
    for c in p.chars() {
        match c {
            '.' => out.push_str(r"\."),
            '*' => out.push_str("[-.0-9a-z]*"),
            '-' | '_' | '0'..='9' | 'a'..='z' => out.push(c),
            _ => return Err(format!("invalid character {c:?} in pattern")),
        }
    }
    Ok(())
}

/// Builds an anchored, ASCII case-insensitive regex from alternatives.
fn build_anchored(alternatives: &[String]) -> Result<Regex, regex::Error> {
    RegexBuilder::new(&format!(r"\A(?:{})\z", alternatives.join("|")))
        .unicode(false)
        .case_insensitive(true)
        .build()
}

fn compile_fqdn_patterns(
    ctx: Ctx,
    field: &'static str,
    values: &[String],
) -> Result<Regex, FilterError> {
    let mut alternatives = Vec::with_capacity(values.len());
    for v in values {
        let mut re = String::new();
        append_fqdn_glob(&mut re, v).map_err(|e| ctx.err(field, v, e))?;
        alternatives.push(re);
    }
    build_anchored(&alternatives).map_err(|e| {
        let v = values.join(",");
        ctx.err(field, &v, regex_reason(&e))
    })
}

/// `node_name`: `[cluster-glob/]node-glob`; flow node names without `/` are `default/<name>`.
#[derive(Debug, Clone)]
struct NodeNameMatcher {
    /// Matches `cluster/node` names.
    qualified: Regex,
    /// Matches bare node names (cluster `default`): the node parts of the patterns whose
    /// cluster part accepts `default`. `None` if there are none.
    bare: Option<Regex>,
}

impl NodeNameMatcher {
    fn compile(ctx: Ctx, values: &[String]) -> Result<Self, FilterError> {
        const FIELD: &str = "node_name";
        let mut qualified = Vec::with_capacity(values.len());
        let mut bare = Vec::new();
        for v in values {
            if v.is_empty() {
                return Err(ctx.err(FIELD, v, "empty pattern"));
            }
            let (cluster, node) = match v.split_once('/') {
                Some((_, n)) if n.contains('/') => {
                    return Err(ctx.err(FIELD, v, "too many '/' in pattern"));
                }
                Some((c, n)) => (c, n),
                None => ("", v.as_str()),
            };
            let part = |p: &str| -> Result<String, FilterError> {
                if p.is_empty() {
                    return Ok(ANY_NAME_RE.to_owned());
                }
                let mut s = String::new();
                append_fqdn_glob(&mut s, p).map_err(|e| ctx.err(FIELD, v, e))?;
                Ok(s)
            };
            let (cluster_re, node_re) = (part(cluster)?, part(node)?);
            let cluster_accepts_default = build_anchored(std::slice::from_ref(&cluster_re))
                .map_err(|e| ctx.err(FIELD, v, regex_reason(&e)))?
                .is_match(DEFAULT_CLUSTER);
            if cluster_accepts_default {
                bare.push(node_re.clone());
            }
            qualified.push(format!("{cluster_re}/{node_re}"));
        }
        let err = |e: regex::Error| ctx.err(FIELD, &values.join(","), regex_reason(&e));
        Ok(Self {
            qualified: build_anchored(&qualified).map_err(err)?,
            bare: if bare.is_empty() {
                None
            } else {
                Some(build_anchored(&bare).map_err(err)?)
            },
        })
    }

    fn matches(&self, node_name: &str) -> bool {
        if node_name.is_empty() {
            false
        } else if node_name.contains('/') {
            self.qualified.is_match(node_name)
        } else {
            self.bare.as_ref().is_some_and(|re| re.is_match(node_name))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Regexes (dns_query, http_path)

fn regex_reason(e: &regex::Error) -> String {
    // Syntax errors are multi-line (pattern, caret, message); keep the message only.
    let msg = e.to_string();
    let last = msg
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let last = last.trim().strip_prefix("error: ").unwrap_or(last.trim());
    format!("invalid regular expression: {last}")
}

fn compile_regexes(
    ctx: Ctx,
    field: &'static str,
    values: &[String],
) -> Result<Vec<Regex>, FilterError> {
    values
        .iter()
        .map(|v| Regex::new(v).map_err(|e| ctx.err(field, v, regex_reason(&e))))
        .collect()
}

/// The (percent-decoded) path of a request URI, like Go's `url.ParseRequestURI(u).Path`;
/// `None` if the URI is not valid for a request.
fn request_uri_path(url: &str) -> Option<Cow<'_, str>> {
    if url.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return None;
    }
    if url == "*" {
        return Some(Cow::Borrowed("*"));
    }
    // Scheme: letter followed by letters, digits, '+', '-', '.', then ':'.
    let mut has_scheme = false;
    let mut rest = url;
    for (i, b) in url.bytes().enumerate() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' if i > 0 => {}
            b':' if i == 0 => return None, // missing protocol scheme
            b':' => {
                has_scheme = true;
                rest = &url[i + 1..];
                break;
            }
            _ => break,
        }
    }
    let rest = rest.split_once('?').map_or(rest, |(p, _)| p);
    if !rest.starts_with('/') {
        // Opaque URI (e.g. `mailto:x`) has an empty path; a relative reference is invalid.
        return has_scheme.then_some(Cow::Borrowed(""));
    }
    let path = match rest.strip_prefix("//") {
        Some(authority_and_path) if has_scheme => authority_and_path
            .find('/')
            .map_or("", |i| &authority_and_path[i..]),
        _ => rest,
    };
    percent_decode(path)
}

fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let h = bytes.get(i + 1..i + 3)?;
            out.push(hex(h[0])? << 4 | hex(h[1])?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(Cow::Owned(String::from_utf8_lossy(&out).into_owned()))
}

// ---------------------------------------------------------------------------------------------
// HTTP status codes and the event-type constraint

#[derive(Debug, Clone, Default)]
struct HttpStatusMatcher {
    /// Exact codes 100–599.
    full: Vec<u32>,
    /// Leading digits (`5+` → "5", `50+` → "50").
    prefixes: Vec<String>,
}

impl HttpStatusMatcher {
    fn compile(ctx: Ctx, values: &[String]) -> Result<Self, FilterError> {
        let mut m = Self::default();
        for v in values {
            let b = v.as_bytes();
            let first_ok = matches!(b.first(), Some(b'1'..=b'5'));
            match b {
                [_, d1, d2] if first_ok && d1.is_ascii_digit() && d2.is_ascii_digit() => {
                    m.full.push(v.parse().expect("three digits"));
                }
                [_, b'+'] if first_ok => m.prefixes.push(v[..1].to_owned()),
                [_, d1, b'+'] if first_ok && d1.is_ascii_digit() => {
                    m.prefixes.push(v[..2].to_owned());
                }
                _ => {
                    return Err(ctx.err(
                        "http_status_code",
                        v,
                        "must be a status code 100-599 (NNN) or a prefix N+ / NN+",
                    ));
                }
            }
        }
        Ok(m)
    }

    fn matches(&self, code: u32) -> bool {
        if self.full.contains(&code) {
            return true;
        }
        // Zero-padded to three digits, like Go's `%03d`, formatted on the stack.
        let mut buf = [0u8; 16];
        let len = {
            let mut w = &mut buf[..];
            let _ = write!(w, "{code:03}");
            16 - w.len()
        };
        let digits = &buf[..len];
        self.prefixes
            .iter()
            .any(|p| digits.starts_with(p.as_bytes()))
    }
}

/// HTTP filters only make sense on L7 events: with an `event_type` filter set, it must
/// include type 129.
fn check_http_event_type(
    ctx: Ctx,
    field: &'static str,
    values: &[String],
    f: &FlowFilter,
) -> Result<(), FilterError> {
    if f.event_type.is_empty()
        || f.event_type
            .iter()
            .any(|t| t.r#type == MESSAGE_TYPE_ACCESS_LOG)
    {
        return Ok(());
    }
    let types: Vec<String> = f.event_type.iter().map(|t| t.r#type.to_string()).collect();
    Err(ctx.err(
        field,
        &values[0],
        format!(
            "http filters require the event_type filter to include type {MESSAGE_TYPE_ACCESS_LOG} (l7), got types [{}]",
            types.join(", ")
        ),
    ))
}

// ---------------------------------------------------------------------------------------------
// Protocols and ports

const PROTO_TCP: u8 = 1 << 0;
const PROTO_UDP: u8 = 1 << 1;
const PROTO_ICMPV4: u8 = 1 << 2;
const PROTO_ICMPV6: u8 = 1 << 3;
const PROTO_SCTP: u8 = 1 << 4;
const PROTO_DNS: u8 = 1 << 5;
const PROTO_HTTP: u8 = 1 << 6;
const PROTO_KAFKA: u8 = 1 << 7;

fn compile_protocols(ctx: Ctx, values: &[String]) -> Result<u8, FilterError> {
    values.iter().try_fold(0u8, |acc, v| {
        let bit = match v.to_ascii_lowercase().as_str() {
            "tcp" => PROTO_TCP,
            "udp" => PROTO_UDP,
            "sctp" => PROTO_SCTP,
            "icmpv4" => PROTO_ICMPV4,
            "icmpv6" => PROTO_ICMPV6,
            "icmp" => PROTO_ICMPV4 | PROTO_ICMPV6,
            "dns" => PROTO_DNS,
            "http" => PROTO_HTTP,
            "kafka" => PROTO_KAFKA,
            _ => {
                return Err(ctx.err(
                    "protocol",
                    v,
                    "unknown protocol (expected tcp, udp, sctp, icmp, icmpv4, icmpv6, dns, http or kafka)",
                ));
            }
        };
        Ok(acc | bit)
    })
}

fn protocol_bits(flow: &Flow) -> u8 {
    let l4 = match flow.l4.as_ref().and_then(|l4| l4.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(_)) => PROTO_TCP,
        Some(layer4::Protocol::Udp(_)) => PROTO_UDP,
        Some(layer4::Protocol::IcmPv4(_)) => PROTO_ICMPV4,
        Some(layer4::Protocol::IcmPv6(_)) => PROTO_ICMPV6,
        Some(layer4::Protocol::Sctp(_)) => PROTO_SCTP,
        None => 0,
    };
    let l7 = match flow.l7.as_ref().and_then(|l7| l7.record.as_ref()) {
        Some(layer7::Record::Dns(_)) => PROTO_DNS,
        Some(layer7::Record::Http(_)) => PROTO_HTTP,
        Some(layer7::Record::Kafka(_)) => PROTO_KAFKA,
        None => 0,
    };
    l4 | l7
}

fn compile_ports(
    ctx: Ctx,
    field: &'static str,
    values: &[String],
) -> Result<Vec<u16>, FilterError> {
    let ports = values
        .iter()
        .map(|v| {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ctx.err(field, v, "not a decimal port number"));
            }
            v.parse::<u16>()
                .map_err(|_| ctx.err(field, v, "port out of range 0-65535"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(sorted_dedup(ports))
}

// ---------------------------------------------------------------------------------------------
// Label selectors (Kubernetes syntax with optional Cilium source prefixes)

/// A selector: all requirements must hold (comma = AND). No requirement matches everything.
#[derive(Debug, Clone)]
struct LabelSelector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone)]
struct Requirement {
    /// Label source (`k8s`, `reserved`, ...); `None` = any source.
    source: Option<String>,
    key: String,
    op: LabelOp,
}

#[derive(Debug, Clone)]
enum LabelOp {
    Exists,
    NotExists,
    /// `k=v`, `k==v`, `k in (..)`.
    In(Vec<String>),
    /// `k!=v`, `k notin (..)`: no label with the key has one of the values.
    NotIn(Vec<String>),
    Gt(i64),
    Lt(i64),
}

/// A flow label `source:key=value` (`$key` = `reserved:key`; no `:` before `=` = no source).
fn split_label(label: &str) -> (&str, &str, &str) {
    let (source, rest) = if let Some(rest) = label.strip_prefix('$') {
        ("reserved", rest)
    } else {
        match (label.find(':'), label.find('=')) {
            (Some(c), Some(e)) if c < e => (&label[..c], &label[c + 1..]),
            (Some(c), None) => (&label[..c], &label[c + 1..]),
            _ => ("", label),
        }
    };
    match rest.split_once('=') {
        Some((k, v)) => (source, k, v),
        None => (source, rest, ""),
    }
}

impl Requirement {
    /// Values of the labels this requirement's key selects.
    fn values<'a>(&'a self, labels: &'a [String]) -> impl Iterator<Item = &'a str> + 'a {
        labels.iter().filter_map(move |l| {
            let (source, key, value) = split_label(l);
            let source_ok = match &self.source {
                None => true,
                Some(s) => s == source || source == "any",
            };
            (source_ok && key == self.key).then_some(value)
        })
    }

    fn matches(&self, labels: &[String]) -> bool {
        let mut values = self.values(labels);
        match &self.op {
            LabelOp::Exists => values.next().is_some(),
            LabelOp::NotExists => values.next().is_none(),
            LabelOp::In(set) => values.any(|v| set.iter().any(|s| s == v)),
            LabelOp::NotIn(set) => !values.any(|v| set.iter().any(|s| s == v)),
            LabelOp::Gt(n) => values.any(|v| v.parse::<i64>().is_ok_and(|x| x > *n)),
            LabelOp::Lt(n) => values.any(|v| v.parse::<i64>().is_ok_and(|x| x < *n)),
        }
    }
}

impl LabelSelector {
    fn compile_all(
        ctx: Ctx,
        field: &'static str,
        values: &[String],
    ) -> Result<Vec<Self>, FilterError> {
        values
            .iter()
            .map(|v| {
                parse_selector(v)
                    .map(|requirements| Self { requirements })
                    .map_err(|e| ctx.err(field, v, format!("bad label selector: {e}")))
            })
            .collect()
    }

    fn matches(&self, labels: &[String]) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    Ident(&'a str),
    Comma,
    Open,
    Close,
    Eq,
    DoubleEq,
    NotEq,
    Not,
    Gt,
    Lt,
    In,
    NotIn,
}

impl std::fmt::Display for Tok<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "{s:?}"),
            Tok::Comma => f.write_str("','"),
            Tok::Open => f.write_str("'('"),
            Tok::Close => f.write_str("')'"),
            Tok::Eq => f.write_str("'='"),
            Tok::DoubleEq => f.write_str("'=='"),
            Tok::NotEq => f.write_str("'!='"),
            Tok::Not => f.write_str("'!'"),
            Tok::Gt => f.write_str("'>'"),
            Tok::Lt => f.write_str("'<'"),
            Tok::In => f.write_str("'in'"),
            Tok::NotIn => f.write_str("'notin'"),
        }
    }
}

fn describe(t: Option<&Tok<'_>>) -> String {
    t.map_or_else(|| "end of selector".to_owned(), |t| t.to_string())
}

fn lex_selector(s: &str) -> Vec<Tok<'_>> {
    let b = s.as_bytes();
    let is_special = |c: u8| matches!(c, b'(' | b')' | b',' | b'!' | b'=' | b'<' | b'>');
    let is_space = |c: u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    let mut toks = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let next_is_eq = b.get(i + 1) == Some(&b'=');
        let (tok, len) = match b[i] {
            c if is_space(c) => {
                i += 1;
                continue;
            }
            b'(' => (Tok::Open, 1),
            b')' => (Tok::Close, 1),
            b',' => (Tok::Comma, 1),
            b'<' => (Tok::Lt, 1),
            b'>' => (Tok::Gt, 1),
            b'!' if next_is_eq => (Tok::NotEq, 2),
            b'!' => (Tok::Not, 1),
            b'=' if next_is_eq => (Tok::DoubleEq, 2),
            b'=' => (Tok::Eq, 1),
            _ => {
                let start = i;
                let mut end = i;
                while end < b.len() && !is_special(b[end]) && !is_space(b[end]) {
                    end += 1;
                }
                // Specials and spaces are ASCII, so `start..end` is on char boundaries.
                let word = &s[start..end];
                let tok = match word {
                    "in" => Tok::In,
                    "notin" => Tok::NotIn,
                    _ => Tok::Ident(word),
                };
                (tok, end - start)
            }
        };
        toks.push(tok);
        i += len;
    }
    toks
}

fn parse_selector(s: &str) -> Result<Vec<Requirement>, String> {
    let toks = lex_selector(s);
    let mut reqs = Vec::new();
    if toks.is_empty() {
        return Ok(reqs);
    }
    let mut p = 0;
    loop {
        reqs.push(parse_requirement(&toks, &mut p)?);
        match toks.get(p) {
            None => return Ok(reqs),
            Some(Tok::Comma) => {
                p += 1;
                if p == toks.len() {
                    return Err("expected a requirement after ','".into());
                }
            }
            Some(t) => return Err(format!("unexpected {t} after a requirement")),
        }
    }
}

fn parse_requirement(toks: &[Tok<'_>], p: &mut usize) -> Result<Requirement, String> {
    let negated = toks.get(*p) == Some(&Tok::Not);
    if negated {
        *p += 1;
    }
    let raw_key = match toks.get(*p) {
        Some(Tok::Ident(k)) => *k,
        other => return Err(format!("expected a label key, found {}", describe(other))),
    };
    *p += 1;
    let (source, key) = parse_label_key(raw_key)?;
    let req = |op| Requirement {
        source: source.clone(),
        key: key.clone(),
        op,
    };
    if negated {
        return Ok(req(LabelOp::NotExists));
    }
    let op = match toks.get(*p) {
        None | Some(Tok::Comma) => return Ok(req(LabelOp::Exists)),
        Some(t) => *t,
    };
    *p += 1;
    let op = match op {
        Tok::Eq | Tok::DoubleEq | Tok::NotEq => {
            let value = match toks.get(*p) {
                Some(Tok::Ident(v)) => {
                    *p += 1;
                    *v
                }
                None | Some(Tok::Comma) => "",
                Some(t) => return Err(format!("expected a label value, found {t}")),
            };
            validate_label_value(value)?;
            let set = vec![value.to_owned()];
            if op == Tok::NotEq {
                LabelOp::NotIn(set)
            } else {
                LabelOp::In(set)
            }
        }
        Tok::Gt | Tok::Lt => {
            let n = match toks.get(*p) {
                Some(Tok::Ident(v)) => v
                    .parse::<i64>()
                    .map_err(|_| format!("'>' and '<' need an integer value, found {v:?}"))?,
                other => {
                    return Err(format!(
                        "'>' and '<' need an integer value, found {}",
                        describe(other)
                    ));
                }
            };
            *p += 1;
            if op == Tok::Gt {
                LabelOp::Gt(n)
            } else {
                LabelOp::Lt(n)
            }
        }
        Tok::In | Tok::NotIn => {
            let set = parse_value_set(toks, p)?;
            if op == Tok::In {
                LabelOp::In(set)
            } else {
                LabelOp::NotIn(set)
            }
        }
        t => {
            return Err(format!(
                "expected an operator after key {raw_key:?}, found {t}"
            ));
        }
    };
    Ok(req(op))
}

/// `( v1, v2, ... )`; empty entries (`(a,)`) are empty values; an empty set is an error.
fn parse_value_set(toks: &[Tok<'_>], p: &mut usize) -> Result<Vec<String>, String> {
    if toks.get(*p) != Some(&Tok::Open) {
        return Err(format!("expected '(', found {}", describe(toks.get(*p))));
    }
    *p += 1;
    let mut values = Vec::new();
    let mut expecting_value = true;
    loop {
        let tok = toks.get(*p);
        *p += 1;
        match tok {
            Some(Tok::Ident(v)) if expecting_value => {
                validate_label_value(v)?;
                values.push((*v).to_owned());
                expecting_value = false;
            }
            Some(Tok::Comma) => {
                if expecting_value {
                    values.push(String::new());
                }
                expecting_value = true;
            }
            Some(Tok::Close) => {
                if expecting_value && !values.is_empty() {
                    values.push(String::new());
                }
                break;
            }
            other => {
                return Err(format!(
                    "expected a value, ',' or ')', found {}",
                    describe(other)
                ));
            }
        }
    }
    if values.is_empty() {
        return Err("'in' and 'notin' need at least one value".into());
    }
    Ok(values)
}

/// Splits `[source:]key`, validating the key as a Kubernetes qualified name.
fn parse_label_key(raw: &str) -> Result<(Option<String>, String), String> {
    let (source, key) = match raw.split_once(':') {
        Some((source, key)) => {
            if source.is_empty()
                || !source
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!("invalid label source {source:?} in key {raw:?}"));
            }
            (Some(source), key)
        }
        None => (None, raw),
    };
    validate_qualified_name(key).map_err(|e| format!("invalid label key {raw:?}: {e}"))?;
    let source = source.filter(|s| *s != "any").map(str::to_owned);
    Ok((source, key.to_owned()))
}

fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn validate_qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if !is_name_part(name) {
        return Err(
            "name part must be 1-63 alphanumerics, '-', '_' or '.', starting and ending \
                    with an alphanumeric"
                .into(),
        );
    }
    if let Some(prefix) = prefix {
        let ok = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|l| {
                let b = l.as_bytes();
                !b.is_empty()
                    && b.len() <= 63
                    && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
                    && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
                    && b.iter()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            });
        if !ok {
            return Err("prefix must be a DNS subdomain".into());
        }
    }
    Ok(())
}

fn validate_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() || is_name_part(v) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value {v:?}: must be empty or 1-63 alphanumerics, '-', '_' or '.', \
             starting and ending with an alphanumeric"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use periscope_proto::flow::{
        CiliumEventType, Dns, Http, IcmPv4, IcmPv6, Ip, IpVersion, Kafka, Layer4, Layer7, Sctp,
        Tcp, TraceContext, TraceParent, TrafficDirection, Udp,
    };
    use proptest::prelude::*;

    // -----------------------------------------------------------------------------------------
    // Fixtures

    fn ep(ns: &str, pod: &str, identity: u32, labels: &[&str]) -> Option<Endpoint> {
        Some(Endpoint {
            id: 0,
            identity,
            namespace: ns.into(),
            labels: labels.iter().map(|s| (*s).into()).collect(),
            pod_name: pod.into(),
            workloads: vec![],
        })
    }

    fn with_workload(mut e: Option<Endpoint>, kind: &str, name: &str) -> Option<Endpoint> {
        if let Some(e) = e.as_mut() {
            e.workloads.push(Workload {
                name: name.into(),
                kind: kind.into(),
            });
        }
        e
    }

    fn ip(src: &str, dst: &str) -> Option<Ip> {
        let v6 = src.contains(':') || dst.contains(':');
        Some(Ip {
            source: src.into(),
            destination: dst.into(),
            ip_version: if v6 {
                IpVersion::IPv6 as i32
            } else {
                IpVersion::IPv4 as i32
            },
            encrypted: false,
            source_xlated: String::new(),
        })
    }

    fn tcp(sport: u32, dport: u32, flags: TcpFlags) -> Option<Layer4> {
        Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: sport,
                destination_port: dport,
                flags: Some(flags),
            })),
        })
    }

    fn udp(sport: u32, dport: u32) -> Option<Layer4> {
        Some(Layer4 {
            protocol: Some(layer4::Protocol::Udp(Udp {
                source_port: sport,
                destination_port: dport,
            })),
        })
    }

    fn l7(record: layer7::Record) -> Option<Layer7> {
        Some(Layer7 {
            r#type: 1,
            latency_ns: 0,
            record: Some(record),
        })
    }

    fn et(t: i32, sub: i32) -> Option<CiliumEventType> {
        Some(CiliumEventType {
            r#type: t,
            sub_type: sub,
        })
    }

    fn svc(ns: &str, name: &str) -> Option<Service> {
        Some(Service {
            name: name.into(),
            namespace: ns.into(),
        })
    }

    const SYN: TcpFlags = TcpFlags {
        fin: false,
        syn: true,
        rst: false,
        psh: false,
        ack: false,
        urg: false,
        ece: false,
        cwr: false,
        ns: false,
    };

    /// The fixed flow set; tests assert which names a filter selects.
    fn fixtures() -> Vec<(&'static str, Flow)> {
        vec![
            (
                // TCP SYN frontend → backend, trace to-endpoint.
                "tcp",
                Flow {
                    verdict: Verdict::Forwarded as i32,
                    ip: ip("10.0.0.1", "10.0.1.5"),
                    l4: tcp(40000, 80, SYN),
                    source: with_workload(
                        ep(
                            "default",
                            "frontend-7d9f",
                            1001,
                            &[
                                "k8s:app=frontend",
                                "k8s:io.kubernetes.pod.namespace=default",
                            ],
                        ),
                        "Deployment",
                        "frontend",
                    ),
                    destination: with_workload(
                        ep(
                            "default",
                            "backend-5c6b",
                            1002,
                            &["k8s:app=backend", "k8s:tier=api", "container:team=core"],
                        ),
                        "Deployment",
                        "backend",
                    ),
                    node_name: "node-1".into(),
                    event_type: et(4, 0),
                    is_reply: Some(false),
                    traffic_direction: TrafficDirection::Egress as i32,
                    uuid: "uuid-tcp".into(),
                    trace_context: Some(TraceContext {
                        parent: Some(TraceParent {
                            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                        }),
                    }),
                    destination_service: svc("default", "backend"),
                    ..Default::default()
                },
            ),
            (
                // TCP SYN-ACK reply backend → frontend.
                "tcp-reply",
                Flow {
                    verdict: Verdict::Forwarded as i32,
                    ip: ip("10.0.1.5", "10.0.0.1"),
                    l4: tcp(80, 40000, TcpFlags { ack: true, ..SYN }),
                    source: ep("default", "backend-5c6b", 1002, &["k8s:app=backend"]),
                    destination: ep("default", "frontend-7d9f", 1001, &["k8s:app=frontend"]),
                    node_name: "node-1".into(),
                    event_type: et(4, 5),
                    is_reply: Some(true),
                    traffic_direction: TrafficDirection::Ingress as i32,
                    uuid: "uuid-tcp-reply".into(),
                    ..Default::default()
                },
            ),
            (
                // Policy drop coredns → world, is_reply unknown.
                "drop",
                Flow {
                    verdict: Verdict::Dropped as i32,
                    ip: ip("10.0.0.2", "1.1.1.1"),
                    l4: udp(33000, 53),
                    source: ep(
                        "kube-system",
                        "coredns-abc",
                        102,
                        &[
                            "k8s:k8s-app=kube-dns",
                            "k8s:io.kubernetes.pod.namespace=kube-system",
                        ],
                    ),
                    destination: ep("", "", 2, &["reserved:world"]),
                    destination_names: vec!["one.one.one.one".into()],
                    node_name: "cluster-a/node-2".into(),
                    event_type: et(1, 133),
                    is_reply: None,
                    uuid: "uuid-drop".into(),
                    ..Default::default()
                },
            ),
            (
                // DNS request frontend → coredns via proxy.
                "dns",
                Flow {
                    verdict: Verdict::Forwarded as i32,
                    ip: ip("10.0.0.1", "10.0.0.2"),
                    l4: udp(45000, 53),
                    source: ep("default", "frontend-7d9f", 1001, &["k8s:app=frontend"]),
                    destination: ep("kube-system", "coredns-abc", 102, &["k8s:k8s-app=kube-dns"]),
                    source_names: vec![],
                    destination_names: vec!["API.GitHub.com.".into()],
                    l7: l7(layer7::Record::Dns(Dns {
                        query: "api.github.com.".into(),
                        ..Default::default()
                    })),
                    node_name: "node-1".into(),
                    event_type: et(129, 0),
                    is_reply: Some(false),
                    traffic_direction: TrafficDirection::Egress as i32,
                    uuid: "uuid-dns".into(),
                    ..Default::default()
                },
            ),
            (
                // HTTP response over IPv6 with services.
                "http",
                Flow {
                    verdict: Verdict::Forwarded as i32,
                    ip: ip("fd00::1", "fd00::2"),
                    l4: tcp(41000, 8080, TcpFlags::default()),
                    source: ep("default", "frontend-7d9f", 1001, &["k8s:app=frontend"]),
                    destination: ep("shop", "cart-1", 3003, &["k8s:app=cart", "k8s:tier=api"]),
                    source_service: svc("default", "frontend"),
                    destination_service: svc("shop", "cart"),
                    l7: l7(layer7::Record::Http(Http {
                        code: 503,
                        method: "GET".into(),
                        url: "http://cart.shop:8080/api/v1/items%2Fall?id=1".into(),
                        protocol: "HTTP/1.1".into(),
                        headers: vec![],
                    })),
                    node_name: "cluster-b/node-3".into(),
                    event_type: et(129, 0),
                    is_reply: Some(true),
                    uuid: "uuid-http".into(),
                    ..Default::default()
                },
            ),
            (
                // HTTP request (code 0) with a relative URL.
                "http-req",
                Flow {
                    verdict: Verdict::Forwarded as i32,
                    ip: ip("fd00::1", "fd00::2"),
                    source: ep("default", "frontend-7d9f", 1001, &["k8s:app=frontend"]),
                    destination: ep("shop", "cart-1", 3003, &["k8s:app=cart"]),
                    l7: l7(layer7::Record::Http(Http {
                        code: 0,
                        method: "post".into(),
                        url: "/checkout".into(),
                        ..Default::default()
                    })),
                    node_name: "node-1".into(),
                    event_type: et(129, 0),
                    is_reply: Some(false),
                    uuid: "uuid-http-req".into(),
                    ..Default::default()
                },
            ),
            (
                "kafka",
                Flow {
                    verdict: Verdict::Forwarded as i32,
                    ip: ip("10.0.0.3", "10.0.0.4"),
                    l4: Some(Layer4 {
                        protocol: Some(layer4::Protocol::Sctp(Sctp {
                            source_port: 5000,
                            destination_port: 9092,
                        })),
                    }),
                    l7: l7(layer7::Record::Kafka(Kafka {
                        topic: "orders".into(),
                        ..Default::default()
                    })),
                    node_name: "default/node-4".into(),
                    event_type: et(129, 0),
                    uuid: "uuid-kafka".into(),
                    ..Default::default()
                },
            ),
            (
                "icmp4",
                Flow {
                    verdict: Verdict::Forwarded as i32,
                    ip: ip("192.168.1.10", "10.0.0.1"),
                    l4: Some(Layer4 {
                        protocol: Some(layer4::Protocol::IcmPv4(IcmPv4 { r#type: 8, code: 0 })),
                    }),
                    source: ep("", "", 2, &["reserved:world"]),
                    source_names: vec!["Example.COM".into()],
                    event_type: et(4, 10),
                    node_name: "node-1".into(),
                    uuid: "uuid-icmp4".into(),
                    ..Default::default()
                },
            ),
            (
                "icmp6",
                Flow {
                    verdict: Verdict::Traced as i32,
                    ip: ip("fe80::1", "ff02::1"),
                    l4: Some(Layer4 {
                        protocol: Some(layer4::Protocol::IcmPv6(IcmPv6 {
                            r#type: 135,
                            code: 0,
                        })),
                    }),
                    is_reply: Some(false),
                    uuid: "uuid-icmp6".into(),
                    ..Default::default()
                },
            ),
            // No IP, no endpoints, no event type, no node: only "default" values.
            ("empty", Flow::default()),
        ]
    }

    fn select_with(allow: Vec<FlowFilter>, deny: Vec<FlowFilter>) -> Vec<&'static str> {
        let set = FlowFilterSet::compile(&allow, &deny).expect("filter compiles");
        fixtures()
            .into_iter()
            .filter(|(_, f)| set.matches(f))
            .map(|(n, _)| n)
            .collect()
    }

    fn select(filter: FlowFilter) -> Vec<&'static str> {
        select_with(vec![filter], vec![])
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    fn compile_err(filter: FlowFilter) -> FilterError {
        FlowFilterSet::compile(&[filter], &[]).expect_err("filter must be rejected")
    }

    // -----------------------------------------------------------------------------------------
    // Per-field selection

    #[test]
    fn source_ip_exact_cidr_and_v6() {
        let f = |v: &[&str]| {
            select(FlowFilter {
                source_ip: s(v),
                ..Default::default()
            })
        };
        assert_eq!(f(&["10.0.0.1"]), ["tcp", "dns"]);
        assert_eq!(f(&["10.0.0.0/24"]), ["tcp", "drop", "dns", "kafka"]);
        // Host bits in the CIDR are ignored.
        assert_eq!(f(&["10.0.1.77/24"]), ["tcp-reply"]);
        assert_eq!(f(&["fd00::1"]), ["http", "http-req"]);
        assert_eq!(
            f(&["fd00::/8", "192.168.0.0/16"]),
            ["http", "http-req", "icmp4"]
        );
        // Non-canonical IPv6 text still matches.
        assert_eq!(f(&["fd00:0:0::0001"]), ["http", "http-req"]);
        // A flow without IP never matches, even 0.0.0.0/0.
        assert!(!f(&["0.0.0.0/0", "::/0"]).contains(&"empty"));
        assert_eq!(f(&["0.0.0.0/0"]).len(), 6);
        assert!(f(&["10.9.9.9"]).is_empty());
    }

    #[test]
    fn destination_ip() {
        let f = |v: &[&str]| {
            select(FlowFilter {
                destination_ip: s(v),
                ..Default::default()
            })
        };
        assert_eq!(f(&["10.0.0.1"]), ["tcp-reply", "icmp4"]);
        assert_eq!(f(&["1.1.1.0/24"]), ["drop"]);
        assert_eq!(f(&["ff02::1"]), ["icmp6"]);
    }

    #[test]
    fn ipv4_mapped_ipv6_is_canonicalized() {
        let set = FlowFilterSet::compile(
            &[FlowFilter {
                source_ip: s(&["10.0.0.0/8"]),
                ..Default::default()
            }],
            &[],
        )
        .unwrap();
        let flow = Flow {
            ip: ip("::ffff:10.1.2.3", "10.0.0.1"),
            ..Default::default()
        };
        assert!(set.matches(&flow));
    }

    #[test]
    fn source_and_destination_pod() {
        let src = |v: &[&str]| {
            select(FlowFilter {
                source_pod: s(v),
                ..Default::default()
            })
        };
        let dst = |v: &[&str]| {
            select(FlowFilter {
                destination_pod: s(v),
                ..Default::default()
            })
        };
        // Bare name ⇒ namespace `default`, prefix match.
        assert_eq!(src(&["frontend"]), ["tcp", "dns", "http", "http-req"]);
        assert_eq!(
            src(&["default/frontend-7d9f"]),
            ["tcp", "dns", "http", "http-req"]
        );
        // Bare name in another namespace does not match (default namespace implied).
        assert!(src(&["coredns"]).is_empty());
        assert_eq!(src(&["kube-system/coredns"]), ["drop"]);
        // `ns/` = any pod in ns.
        assert_eq!(src(&["kube-system/"]), ["drop"]);
        assert_eq!(dst(&["kube-system/"]), ["dns"]);
        assert_eq!(dst(&["shop/", "default/back"]), ["tcp", "http", "http-req"]);
        assert!(dst(&["default/cart"]).is_empty());
        // `/prefix` = endpoints with an empty namespace (never flows without endpoint info).
        assert!(dst(&["/x"]).is_empty());
    }

    #[test]
    fn verdict() {
        let f = |v: &[Verdict]| {
            select(FlowFilter {
                verdict: v.iter().map(|v| *v as i32).collect(),
                ..Default::default()
            })
        };
        assert_eq!(f(&[Verdict::Dropped]), ["drop"]);
        assert_eq!(f(&[Verdict::Traced, Verdict::Dropped]), ["drop", "icmp6"]);
        assert_eq!(f(&[Verdict::Unknown]), ["empty"]);
        assert!(f(&[Verdict::Audit]).is_empty());
    }

    #[test]
    fn event_type() {
        let f = |v: &[(i32, bool, i32)]| {
            select(FlowFilter {
                event_type: v
                    .iter()
                    .map(|&(t, m, st)| EventTypeFilter {
                        r#type: t,
                        match_sub_type: m,
                        sub_type: st,
                    })
                    .collect(),
                ..Default::default()
            })
        };
        assert_eq!(f(&[(4, false, 0)]), ["tcp", "tcp-reply", "icmp4"]);
        // match_sub_type with sub_type 0 (to-endpoint) is a real constraint.
        assert_eq!(f(&[(4, true, 0)]), ["tcp"]);
        assert_eq!(f(&[(4, true, 5)]), ["tcp-reply"]);
        // sub_type is ignored without match_sub_type.
        assert_eq!(f(&[(1, false, 999)]), ["drop"]);
        assert_eq!(f(&[(1, true, 133)]), ["drop"]);
        // type 0 = any type; flows without event_type never match.
        let any = f(&[(0, false, 0)]);
        assert_eq!(any.len(), 8);
        assert!(!any.contains(&"icmp6") && !any.contains(&"empty"));
        // type 0 + sub_type 0 matches every type with subtype 0.
        assert_eq!(
            f(&[(0, true, 0)]),
            ["tcp", "dns", "http", "http-req", "kafka"]
        );
        // OR across entries.
        assert_eq!(f(&[(1, false, 0), (4, true, 10)]), ["drop", "icmp4"]);
    }

    #[test]
    fn fqdn_globs() {
        let src = |v: &[&str]| {
            select(FlowFilter {
                source_fqdn: s(v),
                ..Default::default()
            })
        };
        let dst = |v: &[&str]| {
            select(FlowFilter {
                destination_fqdn: s(v),
                ..Default::default()
            })
        };
        assert_eq!(dst(&["one.one.one.one"]), ["drop"]);
        // Trailing dot in the pattern and in the flow name, case-insensitive both ways.
        assert_eq!(dst(&["api.github.com."]), ["dns"]);
        assert_eq!(dst(&["API.GITHUB.COM"]), ["dns"]);
        assert_eq!(dst(&["*.github.com"]), ["dns"]);
        assert_eq!(dst(&["*"]), ["drop", "dns"]);
        assert_eq!(dst(&["*.one"]), ["drop"]);
        // Full match only.
        assert!(dst(&["github.com"]).is_empty());
        assert!(dst(&["api.github"]).is_empty());
        assert_eq!(src(&["example.com"]), ["icmp4"]);
        assert!(src(&["*.example.com"]).is_empty());
    }

    #[test]
    fn http_status_code() {
        let f = |v: &[&str]| {
            select(FlowFilter {
                http_status_code: s(v),
                ..Default::default()
            })
        };
        assert_eq!(f(&["503"]), ["http"]);
        assert_eq!(f(&["5+"]), ["http"]);
        assert_eq!(f(&["50+"]), ["http"]);
        assert!(f(&["51+"]).is_empty());
        assert!(f(&["4+", "200"]).is_empty());
        // With an event_type filter that includes 129 it is accepted.
        assert_eq!(
            select(FlowFilter {
                http_status_code: s(&["5+"]),
                event_type: vec![
                    EventTypeFilter {
                        r#type: 4,
                        ..Default::default()
                    },
                    EventTypeFilter {
                        r#type: 129,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            ["http"]
        );
    }

    #[test]
    fn http_status_matcher_padding() {
        let m = HttpStatusMatcher::compile(
            Ctx {
                list: "whitelist",
                index: 0,
            },
            &s(&["1+", "404"]),
        )
        .unwrap();
        assert!(m.matches(100) && m.matches(199) && m.matches(404));
        // 42 is "042": neither prefix 1 nor 404.
        assert!(!m.matches(42) && !m.matches(403) && !m.matches(200));
    }

    #[test]
    fn label_selectors() {
        let src = |v: &[&str]| {
            select(FlowFilter {
                source_label: s(v),
                ..Default::default()
            })
        };
        let dst = |v: &[&str]| {
            select(FlowFilter {
                destination_label: s(v),
                ..Default::default()
            })
        };
        assert_eq!(src(&["app=frontend"]), ["tcp", "dns", "http", "http-req"]);
        assert_eq!(
            src(&["k8s:app==frontend"]),
            ["tcp", "dns", "http", "http-req"]
        );
        // Wrong source prefix.
        assert!(src(&["container:app=frontend"]).is_empty());
        assert_eq!(src(&["any:app=backend"]), ["tcp-reply"]);
        // Reserved labels have no value.
        assert_eq!(src(&["reserved:world"]), ["icmp4"]);
        assert_eq!(dst(&["reserved:world"]), ["drop"]);
        // Keys with dots, no source.
        assert_eq!(src(&["io.kubernetes.pod.namespace=kube-system"]), ["drop"]);
        // Set operators.
        assert_eq!(
            dst(&["app in (backend, cart)"]),
            ["tcp", "http", "http-req"]
        );
        assert_eq!(dst(&["k8s:app in (cart),tier"]), ["http"]);
        // notin / != also match endpoints without the key (and flows without endpoints).
        assert_eq!(
            dst(&["app notin (backend,cart,frontend)"]),
            ["drop", "dns", "kafka", "icmp4", "icmp6", "empty"]
        );
        assert_eq!(
            src(&["app!=frontend"]),
            ["tcp-reply", "drop", "kafka", "icmp4", "icmp6", "empty"]
        );
        // Comma = AND, existence and non-existence.
        assert_eq!(dst(&["tier,!container:team"]), ["http"]);
        assert_eq!(dst(&["container:team=core"]), ["tcp"]);
        assert_eq!(dst(&["k8s:team"]), Vec::<&str>::new());
        // OR across selectors.
        assert_eq!(
            src(&["k8s-app=kube-dns", "reserved:world"]),
            ["drop", "icmp4"]
        );
        // Empty selector matches everything.
        assert_eq!(src(&[""]).len(), fixtures().len());
    }

    #[test]
    fn label_gt_lt_and_parsing_details() {
        let sel = parse_selector(" k8s:app in ( a , ) , !x , n>3 ").unwrap();
        assert_eq!(sel.len(), 3);
        match &sel[0].op {
            LabelOp::In(v) => assert_eq!(v, &["a".to_owned(), String::new()]),
            op => panic!("unexpected {op:?}"),
        }
        assert_eq!(sel[0].source.as_deref(), Some("k8s"));
        let labels = s(&["k8s:n=5", "k8s:app="]);
        assert!(sel.iter().all(|r| r.matches(&labels)));
        let labels = s(&["k8s:n=2", "k8s:app="]);
        assert!(!sel.iter().all(|r| r.matches(&labels)));
        // `k=` selects an empty value.
        let r = parse_selector("app=").unwrap();
        assert!(r[0].matches(&s(&["k8s:app"])));
        assert!(!r[0].matches(&s(&["k8s:app=x"])));
        // `$host` shorthand is reserved:host.
        let r = parse_selector("reserved:host").unwrap();
        assert!(r[0].matches(&s(&["$host"])));
        // Value containing ':' after '=' belongs to the value.
        assert_eq!(split_label("a=b:c"), ("", "a", "b:c"));
        assert_eq!(split_label("k8s:a=b:c"), ("k8s", "a", "b:c"));
        assert_eq!(split_label("reserved:world"), ("reserved", "world", ""));
    }

    #[test]
    fn protocol() {
        let f = |v: &[&str]| {
            select(FlowFilter {
                protocol: s(v),
                ..Default::default()
            })
        };
        assert_eq!(f(&["tcp"]), ["tcp", "tcp-reply", "http"]);
        assert_eq!(f(&["UDP"]), ["drop", "dns"]);
        assert_eq!(f(&["sctp"]), ["kafka"]);
        assert_eq!(f(&["icmp"]), ["icmp4", "icmp6"]);
        assert_eq!(f(&["ICMPv4"]), ["icmp4"]);
        assert_eq!(f(&["icmpv6"]), ["icmp6"]);
        assert_eq!(f(&["dns"]), ["dns"]);
        assert_eq!(f(&["http"]), ["http", "http-req"]);
        assert_eq!(f(&["kafka", "icmpv6"]), ["kafka", "icmp6"]);
    }

    #[test]
    fn ports() {
        let src = |v: &[&str]| {
            select(FlowFilter {
                source_port: s(v),
                ..Default::default()
            })
        };
        let dst = |v: &[&str]| {
            select(FlowFilter {
                destination_port: s(v),
                ..Default::default()
            })
        };
        assert_eq!(dst(&["53"]), ["drop", "dns"]);
        assert_eq!(dst(&["053"]), ["drop", "dns"]);
        assert_eq!(src(&["80"]), ["tcp-reply"]);
        assert_eq!(dst(&["80", "9092"]), ["tcp", "kafka"]);
        // ICMP and port-less flows never match, even port 0.
        assert!(dst(&["0"]).is_empty());
    }

    #[test]
    fn reply() {
        let f = |v: &[bool]| {
            select(FlowFilter {
                reply: v.to_vec(),
                ..Default::default()
            })
        };
        assert_eq!(f(&[true]), ["tcp-reply", "http"]);
        // Unset is_reply counts as false only for DROPPED flows.
        assert_eq!(f(&[false]), ["tcp", "drop", "dns", "http-req", "icmp6"]);
        assert_eq!(
            f(&[true, false]),
            [
                "tcp",
                "tcp-reply",
                "drop",
                "dns",
                "http",
                "http-req",
                "icmp6"
            ]
        );
    }

    #[test]
    fn services() {
        let src = |v: &[&str]| {
            select(FlowFilter {
                source_service: s(v),
                ..Default::default()
            })
        };
        let dst = |v: &[&str]| {
            select(FlowFilter {
                destination_service: s(v),
                ..Default::default()
            })
        };
        assert_eq!(src(&["frontend"]), ["http"]);
        assert_eq!(dst(&["back"]), ["tcp"]);
        assert_eq!(dst(&["shop/"]), ["http"]);
        assert_eq!(dst(&["shop/ca", "default/backend"]), ["tcp", "http"]);
        assert!(dst(&["cart"]).is_empty());
    }

    #[test]
    fn dns_query_regex() {
        let f = |v: &[&str]| {
            select(FlowFilter {
                dns_query: s(v),
                ..Default::default()
            })
        };
        assert_eq!(f(&["github"]), ["dns"]);
        assert_eq!(f(&[r"^api\.github\.com\.$"]), ["dns"]);
        assert_eq!(f(&[r"\w+\.github"]), ["dns"]);
        assert!(f(&["^github"]).is_empty());
        // Empty regex matches every DNS record, never non-DNS flows.
        assert_eq!(f(&[""]), ["dns"]);
    }

    #[test]
    fn identities() {
        let src = |v: &[u32]| {
            select(FlowFilter {
                source_identity: v.to_vec(),
                ..Default::default()
            })
        };
        let dst = |v: &[u32]| {
            select(FlowFilter {
                destination_identity: v.to_vec(),
                ..Default::default()
            })
        };
        assert_eq!(src(&[1002, 102]), ["tcp-reply", "drop"]);
        assert_eq!(dst(&[2]), ["drop"]);
        assert_eq!(src(&[2]), ["icmp4"]);
        // Missing endpoint reads as identity 0.
        assert_eq!(src(&[0]), ["kafka", "icmp6", "empty"]);
    }

    #[test]
    fn http_method() {
        let f = |v: &[&str]| {
            select(FlowFilter {
                http_method: s(v),
                ..Default::default()
            })
        };
        assert_eq!(f(&["get"]), ["http"]);
        assert_eq!(f(&["POST"]), ["http-req"]);
        assert_eq!(f(&["GET", "Post"]), ["http", "http-req"]);
        assert!(f(&["DELETE"]).is_empty());
    }

    #[test]
    fn http_path() {
        let f = |v: &[&str]| {
            select(FlowFilter {
                http_path: s(v),
                ..Default::default()
            })
        };
        // The path is decoded and the query is not part of it.
        assert_eq!(f(&["^/api/v1/items/all$"]), ["http"]);
        assert_eq!(f(&["/api/v[0-9]+/"]), ["http"]);
        assert!(f(&["id=1"]).is_empty());
        assert_eq!(f(&["^/checkout$"]), ["http-req"]);
        assert_eq!(f(&[""]), ["http", "http-req"]);
        assert!(f(&["cart.shop"]).is_empty());
    }

    #[test]
    fn request_uri_paths() {
        assert_eq!(request_uri_path("/a/b?x=1").as_deref(), Some("/a/b"));
        assert_eq!(
            request_uri_path("http://h:1/a%20b").as_deref(),
            Some("/a b")
        );
        assert_eq!(request_uri_path("https://h").as_deref(), Some(""));
        assert_eq!(request_uri_path("mailto:x@y").as_deref(), Some(""));
        assert_eq!(request_uri_path("//h/p").as_deref(), Some("//h/p"));
        assert_eq!(request_uri_path("*").as_deref(), Some("*"));
        assert_eq!(request_uri_path("relative/p"), None);
        assert_eq!(request_uri_path(":x"), None);
        assert_eq!(request_uri_path("/bad%zz"), None);
        assert_eq!(request_uri_path("/ctl\n"), None);
    }

    #[test]
    fn tcp_flags_field() {
        let f = |v: &[TcpFlags]| {
            select(FlowFilter {
                tcp_flags: v.to_vec(),
                ..Default::default()
            })
        };
        assert_eq!(f(&[SYN]), ["tcp", "tcp-reply"]);
        let syn_ack = TcpFlags { ack: true, ..SYN };
        assert_eq!(f(&[syn_ack]), ["tcp-reply"]);
        let fin = TcpFlags {
            fin: true,
            syn: false,
            ..SYN
        };
        assert!(f(&[fin]).is_empty());
        assert_eq!(f(&[fin, syn_ack]), ["tcp-reply"]);
        // An all-false entry matches every TCP flow that carries flags.
        assert_eq!(f(&[TcpFlags::default()]), ["tcp", "tcp-reply", "http"]);
    }

    #[test]
    fn node_name() {
        let f = |v: &[&str]| {
            select(FlowFilter {
                node_name: s(v),
                ..Default::default()
            })
        };
        // Bare flow node names are `default/<name>`; a pattern without `/` = any cluster.
        assert_eq!(
            f(&["node-1"]),
            ["tcp", "tcp-reply", "dns", "http-req", "icmp4"]
        );
        assert_eq!(
            f(&["default/node-1"]),
            ["tcp", "tcp-reply", "dns", "http-req", "icmp4"]
        );
        assert!(f(&["cluster-a/node-1"]).is_empty());
        assert_eq!(f(&["node-2"]), ["drop"]);
        assert_eq!(f(&["cluster-a/"]), ["drop"]);
        assert_eq!(f(&["cluster-*/node-*"]), ["drop", "http"]);
        assert_eq!(
            f(&["default/"]),
            ["tcp", "tcp-reply", "dns", "http-req", "kafka", "icmp4"]
        );
        assert_eq!(f(&["node-4"]), ["kafka"]);
        assert_eq!(f(&["*/node-3", "NODE-4"]), ["http", "kafka"]);
        assert_eq!(f(&["node-*"]).len(), 8);
    }

    #[test]
    fn ip_version() {
        let f = |v: &[IpVersion]| {
            select(FlowFilter {
                ip_version: v.iter().map(|v| *v as i32).collect(),
                ..Default::default()
            })
        };
        assert_eq!(f(&[IpVersion::IPv6]), ["http", "http-req", "icmp6"]);
        assert_eq!(f(&[IpVersion::IpNotUsed]), ["empty"]);
        assert_eq!(f(&[IpVersion::IPv4]).len(), 6);
    }

    #[test]
    fn workloads() {
        let w = |kind: &str, name: &str| Workload {
            name: name.into(),
            kind: kind.into(),
        };
        let src = |v: Vec<Workload>| {
            select(FlowFilter {
                source_workload: v,
                ..Default::default()
            })
        };
        let dst = |v: Vec<Workload>| {
            select(FlowFilter {
                destination_workload: v,
                ..Default::default()
            })
        };
        assert_eq!(src(vec![w("Deployment", "frontend")]), ["tcp"]);
        assert_eq!(src(vec![w("", "frontend")]), ["tcp"]);
        assert_eq!(dst(vec![w("Deployment", "")]), ["tcp"]);
        assert!(dst(vec![w("DaemonSet", "backend")]).is_empty());
        assert_eq!(dst(vec![w("StatefulSet", ""), w("", "backend")]), ["tcp"]);
    }

    #[test]
    fn trace_id_uuid_traffic_direction() {
        assert_eq!(
            select(FlowFilter {
                trace_id: s(&["4bf92f3577b34da6a3ce929d0e0e4736"]),
                ..Default::default()
            }),
            ["tcp"]
        );
        assert!(
            select(FlowFilter {
                trace_id: s(&["ffff"]),
                ..Default::default()
            })
            .is_empty()
        );
        assert_eq!(
            select(FlowFilter {
                uuid: s(&["uuid-drop", "uuid-kafka", "nope"]),
                ..Default::default()
            }),
            ["drop", "kafka"]
        );
        let dir = |v: &[TrafficDirection]| {
            select(FlowFilter {
                traffic_direction: v.iter().map(|v| *v as i32).collect(),
                ..Default::default()
            })
        };
        assert_eq!(dir(&[TrafficDirection::Ingress]), ["tcp-reply"]);
        assert_eq!(dir(&[TrafficDirection::Egress]), ["tcp", "dns"]);
        assert_eq!(dir(&[TrafficDirection::Unknown]).len(), 7);
    }

    // -----------------------------------------------------------------------------------------
    // Composition

    #[test]
    fn fields_within_a_filter_and_together() {
        assert_eq!(
            select(FlowFilter {
                source_pod: s(&["frontend"]),
                protocol: s(&["udp"]),
                ..Default::default()
            }),
            ["dns"]
        );
        assert!(
            select(FlowFilter {
                source_pod: s(&["frontend"]),
                verdict: vec![Verdict::Dropped as i32],
                ..Default::default()
            })
            .is_empty()
        );
        // The hubble CLI `--port 53 --verdict FORWARDED` shape: two filters, OR.
        let a = FlowFilter {
            verdict: vec![Verdict::Forwarded as i32],
            source_port: s(&["53"]),
            ..Default::default()
        };
        let b = FlowFilter {
            verdict: vec![Verdict::Forwarded as i32],
            destination_port: s(&["53"]),
            ..Default::default()
        };
        assert_eq!(select_with(vec![a, b], vec![]), ["dns"]);
    }

    #[test]
    fn whitelist_or_blacklist_wins_empty_keeps_all() {
        let all: Vec<&str> = fixtures().iter().map(|(n, _)| *n).collect();
        assert_eq!(select_with(vec![], vec![]), all);
        assert!(FlowFilterSet::compile(&[], &[]).unwrap().is_empty());
        assert!(FlowFilterSet::default().matches(&Flow::default()));

        let drops = FlowFilter {
            verdict: vec![Verdict::Dropped as i32],
            ..Default::default()
        };
        let icmp = FlowFilter {
            protocol: s(&["icmp"]),
            ..Default::default()
        };
        // Whitelist: OR.
        assert_eq!(
            select_with(vec![drops.clone(), icmp.clone()], vec![]),
            ["drop", "icmp4", "icmp6"]
        );
        // Blacklist only: everything but.
        let not_icmp = select_with(vec![], vec![icmp.clone()]);
        assert_eq!(not_icmp.len(), all.len() - 2);
        assert!(!not_icmp.contains(&"icmp4"));
        // Blacklist wins over whitelist.
        assert_eq!(
            select_with(vec![drops.clone(), icmp.clone()], vec![icmp.clone()]),
            ["drop"]
        );
        assert!(select_with(vec![drops.clone()], vec![drops.clone()]).is_empty());
        // An empty FlowFilter matches everything (in either list).
        assert_eq!(select_with(vec![FlowFilter::default()], vec![]), all);
        assert!(select_with(vec![], vec![FlowFilter::default()]).is_empty());
        let set = FlowFilterSet::compile(&[], &[drops]).unwrap();
        assert!(!set.is_empty());
    }

    // -----------------------------------------------------------------------------------------
    // Errors

    fn assert_err(filter: FlowFilter, field: &str, value: &str) -> FilterError {
        let e = compile_err(filter);
        assert_eq!(
            (e.list, e.index, e.field, e.value.as_str()),
            ("whitelist", 0, field, value),
            "{e}"
        );
        e
    }

    #[test]
    fn error_display_format() {
        let e = assert_err(
            FlowFilter {
                source_ip: s(&["10.0.0.300"]),
                ..Default::default()
            },
            "source_ip",
            "10.0.0.300",
        );
        assert_eq!(
            e.to_string(),
            r#"invalid whitelist[0].source_ip "10.0.0.300": not an IP address or CIDR"#
        );
    }

    #[test]
    fn errors_name_list_index_field_value() {
        let ok = FlowFilter::default();
        let bad = FlowFilter {
            destination_ip: s(&["10.0.0.1", "10.0.0.0/33"]),
            ..Default::default()
        };
        let e = FlowFilterSet::compile(std::slice::from_ref(&ok), &[ok.clone(), bad]).unwrap_err();
        assert_eq!(
            (e.list, e.index, e.field, e.value.as_str()),
            ("blacklist", 1, "destination_ip", "10.0.0.0/33")
        );
        assert!(
            e.to_string()
                .starts_with("invalid blacklist[1].destination_ip \"10.0.0.0/33\": ")
        );

        for cidr in ["10.0.0/8", "fd00::/129", "/8", "10.0.0.0/x", "10.0.0.0/"] {
            assert_err(
                FlowFilter {
                    source_ip: s(&[cidr]),
                    ..Default::default()
                },
                "source_ip",
                cidr,
            );
        }
        assert_err(
            FlowFilter {
                source_ip: s(&[""]),
                ..Default::default()
            },
            "source_ip",
            "",
        );
    }

    #[test]
    fn error_bad_regexes() {
        let e = assert_err(
            FlowFilter {
                dns_query: s(&["ok", "(unclosed"]),
                ..Default::default()
            },
            "dns_query",
            "(unclosed",
        );
        assert!(e.reason.contains("invalid regular expression"), "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");
        assert_err(
            FlowFilter {
                http_path: s(&["[z-a]"]),
                ..Default::default()
            },
            "http_path",
            "[z-a]",
        );
    }

    #[test]
    fn error_bad_ports() {
        for p in ["70000", "x", "", "-1", "+80", " 80", "65536"] {
            assert_err(
                FlowFilter {
                    destination_port: s(&[p]),
                    ..Default::default()
                },
                "destination_port",
                p,
            );
        }
        assert_err(
            FlowFilter {
                source_port: s(&["80", "http"]),
                ..Default::default()
            },
            "source_port",
            "http",
        );
        assert!(
            FlowFilterSet::compile(
                &[FlowFilter {
                    source_port: s(&["0", "65535"]),
                    ..Default::default()
                }],
                &[]
            )
            .is_ok()
        );
    }

    #[test]
    fn error_unknown_protocol() {
        for p in ["tcp6", "", "ip", "https"] {
            assert_err(
                FlowFilter {
                    protocol: s(&["tcp", p]),
                    ..Default::default()
                },
                "protocol",
                p,
            );
        }
    }

    #[test]
    fn error_bad_label_selectors() {
        for sel in [
            "app=(",
            "app in a",
            "app in ()",
            "=x",
            "app=a b",
            "app,",
            ",app",
            "!",
            "!app=x",
            "app=-x",
            "Foo/app=x",
            "k8s:=x",
            ":app",
            "k8s:a:b",
            "app>x",
            "app in (a b)",
            "app notin (a",
            "in=x",
        ] {
            let e = assert_err(
                FlowFilter {
                    destination_label: s(&["app=ok", sel]),
                    ..Default::default()
                },
                "destination_label",
                sel,
            );
            assert!(e.reason.starts_with("bad label selector"), "{e}");
        }
        for sel in [
            "app.kubernetes.io/name=x",
            "k8s:app.kubernetes.io/name in (a,b)",
            "a,b,!c",
        ] {
            assert!(parse_selector(sel).is_ok(), "{sel}");
        }
    }

    #[test]
    fn error_bad_http_status() {
        for code in [
            "600", "99", "1234", "6+", "+", "5++", "abc", "", "50x", "099",
        ] {
            assert_err(
                FlowFilter {
                    http_status_code: s(&[code]),
                    ..Default::default()
                },
                "http_status_code",
                code,
            );
        }
    }

    #[test]
    fn error_http_filter_needs_l7_event_type() {
        let trace = vec![EventTypeFilter {
            r#type: 4,
            ..Default::default()
        }];
        let e = assert_err(
            FlowFilter {
                http_status_code: s(&["404"]),
                event_type: trace.clone(),
                ..Default::default()
            },
            "http_status_code",
            "404",
        );
        assert!(e.reason.contains("129"), "{e}");
        assert_err(
            FlowFilter {
                http_method: s(&["GET"]),
                event_type: trace.clone(),
                ..Default::default()
            },
            "http_method",
            "GET",
        );
        assert_err(
            FlowFilter {
                http_path: s(&["/x"]),
                // type 0 ("any") does not count as l7.
                event_type: vec![EventTypeFilter::default()],
                ..Default::default()
            },
            "http_path",
            "/x",
        );
    }

    #[test]
    fn error_bad_names_and_globs() {
        for v in ["", "/", "a/b/c"] {
            assert_err(
                FlowFilter {
                    source_pod: s(&[v]),
                    ..Default::default()
                },
                "source_pod",
                v,
            );
            assert_err(
                FlowFilter {
                    destination_service: s(&[v]),
                    ..Default::default()
                },
                "destination_service",
                v,
            );
        }
        for v in ["", ".", "a..", "exa mple.com", "ex?mple.com", "[a]"] {
            assert_err(
                FlowFilter {
                    source_fqdn: s(&[v]),
                    ..Default::default()
                },
                "source_fqdn",
                v,
            );
        }
        for v in ["", "a/b/c", "c/n$", "c!/n"] {
            assert_err(
                FlowFilter {
                    node_name: s(&[v]),
                    ..Default::default()
                },
                "node_name",
                v,
            );
        }
    }

    // -----------------------------------------------------------------------------------------
    // Property tests

    const IPS: &[&str] = &[
        "10.0.0.1",
        "10.0.0.2",
        "10.0.1.5",
        "192.168.1.1",
        "fd00::1",
        "fd00::2",
    ];
    const NAMESPACES: &[&str] = &["default", "kube-system", ""];
    const PODS: &[&str] = &["frontend-1", "backend-2", "coredns-x", ""];
    const IDENTITIES: &[u32] = &[0, 1, 2, 1001, 1002];
    const LABELS: &[&str] = &[
        "k8s:app=frontend",
        "k8s:app=backend",
        "k8s:tier=api",
        "reserved:world",
        "k8s:io.kubernetes.pod.namespace=default",
        "container:team=a",
    ];
    const PORTS: &[u32] = &[0, 53, 80, 443, 8080, 40000, 65535];
    const NAMES: &[&str] = &["one.one.one.one", "api.github.com", "Example.COM."];
    const NODES: &[&str] = &["node-1", "cluster-a/node-2", "", "default/node-3"];
    const DNS_QUERIES: &[&str] = &[
        "api.github.com.",
        "kubernetes.default.svc.cluster.local.",
        "",
    ];
    const URLS: &[&str] = &["/api/v1/users?id=1", "http://backend:8080/healthz", "", "x"];
    const METHODS: &[&str] = &["GET", "post", ""];
    const CODES: &[u32] = &[0, 200, 404, 503];
    const UUIDS: &[&str] = &["", "u-1", "u-2"];

    fn arb_endpoint() -> impl Strategy<Value = Option<Endpoint>> {
        proptest::option::of((
            prop::sample::select(NAMESPACES),
            prop::sample::select(PODS),
            prop::sample::select(IDENTITIES),
            prop::sample::subsequence(LABELS, 0..=3),
            prop::option::of(prop::sample::select(
                &[("Deployment", "frontend"), ("DaemonSet", "coredns")][..],
            )),
        ))
        .prop_map(|o| {
            o.map(|(ns, pod, identity, labels, wl)| Endpoint {
                id: 0,
                identity,
                namespace: ns.into(),
                labels: labels.iter().map(|l| (*l).into()).collect(),
                pod_name: pod.into(),
                workloads: wl
                    .into_iter()
                    .map(|(kind, name)| Workload {
                        name: name.into(),
                        kind: kind.into(),
                    })
                    .collect(),
            })
        })
    }

    fn arb_flags() -> impl Strategy<Value = TcpFlags> {
        (0u16..512).prop_map(|b| TcpFlags {
            fin: b & 1 != 0,
            syn: b & 2 != 0,
            rst: b & 4 != 0,
            psh: b & 8 != 0,
            ack: b & 16 != 0,
            urg: b & 32 != 0,
            ece: b & 64 != 0,
            cwr: b & 128 != 0,
            ns: b & 256 != 0,
        })
    }

    fn arb_l4() -> impl Strategy<Value = Option<Layer4>> {
        let port = || prop::sample::select(PORTS);
        prop_oneof![
            Just(None),
            (port(), port(), proptest::option::of(arb_flags())).prop_map(|(s, d, flags)| {
                Some(Layer4 {
                    protocol: Some(layer4::Protocol::Tcp(Tcp {
                        source_port: s,
                        destination_port: d,
                        flags,
                    })),
                })
            }),
            (port(), port()).prop_map(|(s, d)| udp(s, d)),
            (port(), port()).prop_map(|(s, d)| Some(Layer4 {
                protocol: Some(layer4::Protocol::Sctp(Sctp {
                    source_port: s,
                    destination_port: d,
                })),
            })),
            Just(Some(Layer4 {
                protocol: Some(layer4::Protocol::IcmPv4(IcmPv4::default())),
            })),
            Just(Some(Layer4 {
                protocol: Some(layer4::Protocol::IcmPv6(IcmPv6::default())),
            })),
        ]
    }

    fn arb_l7() -> impl Strategy<Value = Option<Layer7>> {
        prop_oneof![
            Just(None),
            prop::sample::select(DNS_QUERIES).prop_map(|q| l7(layer7::Record::Dns(Dns {
                query: q.into(),
                ..Default::default()
            }))),
            (
                prop::sample::select(CODES),
                prop::sample::select(METHODS),
                prop::sample::select(URLS)
            )
                .prop_map(|(code, method, url)| l7(layer7::Record::Http(Http {
                    code,
                    method: method.into(),
                    url: url.into(),
                    ..Default::default()
                }))),
            Just(l7(layer7::Record::Kafka(Kafka::default()))),
        ]
    }

    prop_compose! {
        fn arb_flow()(
            ips in proptest::option::of((prop::sample::select(IPS), prop::sample::select(IPS))),
            (source, destination) in (arb_endpoint(), arb_endpoint()),
            (l4, l7) in (arb_l4(), arb_l7()),
            verdict in 0i32..=7,
            is_reply in proptest::option::of(any::<bool>()),
            event_type in proptest::option::of((prop::sample::select(&[1, 4, 5, 129][..]), 0i32..3)),
            node in prop::sample::select(NODES),
            (source_names, destination_names) in (
                prop::sample::subsequence(NAMES, 0..=2),
                prop::sample::subsequence(NAMES, 0..=2),
            ),
            (source_service, destination_service) in (
                proptest::option::of(prop::sample::select(&[("default", "frontend"), ("shop", "cart"), ("", "")][..])),
                proptest::option::of(prop::sample::select(&[("default", "backend"), ("kube-system", "kube-dns")][..])),
            ),
            traffic_direction in 0i32..=2,
            uuid in prop::sample::select(UUIDS),
            trace in proptest::option::of(prop::sample::select(&["", "t-1"][..])),
        ) -> Flow {
            Flow {
                verdict,
                ip: ips.and_then(|(s, d)| ip(s, d)),
                l4,
                l7,
                source,
                destination,
                node_name: node.into(),
                source_names: source_names.iter().map(|n| (*n).into()).collect(),
                destination_names: destination_names.iter().map(|n| (*n).into()).collect(),
                event_type: event_type.and_then(|(t, st)| et(t, st)),
                source_service: source_service.and_then(|(ns, n)| svc(ns, n)),
                destination_service: destination_service.and_then(|(ns, n)| svc(ns, n)),
                traffic_direction,
                is_reply,
                uuid: uuid.into(),
                trace_context: trace.map(|t| TraceContext {
                    parent: Some(TraceParent { trace_id: t.into() }),
                }),
                ..Default::default()
            }
        }
    }

    /// A FlowFilter over the same small domain (always valid).
    fn arb_filter() -> impl Strategy<Value = FlowFilter> {
        fn some<T: Clone + std::fmt::Debug + 'static>(
            domain: &'static [T],
        ) -> impl Strategy<Value = Vec<T>> {
            prop_oneof![
                // ~1.5 populated fields per filter, so that random filters often match.
                19 => Just(Vec::new()),
                1 => prop::sample::subsequence(domain, 1..=2.min(domain.len())),
            ]
        }
        fn strings(domain: &'static [&'static str]) -> impl Strategy<Value = Vec<String>> {
            some(domain).prop_map(|v| v.into_iter().map(str::to_owned).collect())
        }
        (
            (
                strings(&["10.0.0.1", "10.0.0.0/24", "fd00::/16", "192.168.1.1"]),
                strings(&["10.0.0.2", "10.0.1.0/24", "fd00::2"]),
                strings(&["frontend", "kube-system/", "default/back", "/"]),
                strings(&["backend", "default/", "kube-system/coredns"]),
                some(&[0i32, 1, 2, 3, 4, 5, 6, 7]),
                some(&[(1, false, 0), (4, true, 0), (129, false, 0), (0, true, 1)]).prop_map(|v| {
                    v.into_iter()
                        .map(|(t, m, st)| EventTypeFilter {
                            r#type: t,
                            match_sub_type: m,
                            sub_type: st,
                        })
                        .collect::<Vec<_>>()
                }),
                strings(&["*.github.com", "one.one.one.one", "example.com.", "*"]),
                strings(&["one.one.one.one", "*"]),
            ),
            (
                strings(&["5+", "404", "2+"]),
                strings(&[
                    "app=frontend",
                    "k8s:app in (backend, x)",
                    "!reserved:world",
                    "tier,app!=x",
                ]),
                strings(&["reserved:world", "k8s:tier=api", "app notin (frontend)"]),
                strings(&["tcp", "UDP", "icmp", "dns", "http", "kafka", "sctp"]),
                strings(&["53", "80", "40000"]),
                strings(&["53", "443", "8080"]),
                some(&[true, false]),
                strings(&["frontend", "shop/"]),
            ),
            (
                strings(&["kube-system/", "default/backend"]),
                strings(&["github", "^kubernetes", ""]),
                some(IDENTITIES),
                some(&[1001u32, 2]),
                strings(&["get", "POST"]),
                strings(&["^/api", "health"]),
                prop_oneof![19 => Just(Vec::new()), 1 => arb_flags().prop_map(|f| vec![f])],
                strings(&["node-1", "cluster-a/*", "*/node-3", "default/"]),
            ),
            (
                some(&[0i32, 1, 2]),
                some(&[("Deployment", ""), ("", "coredns")]),
                some(&[("", "frontend")]),
                strings(&["t-1", ""]),
                strings(&["u-1", ""]),
                some(&[0i32, 1, 2]),
            ),
        )
            .prop_map(|(a, b, c, d)| {
                let wl = |v: Vec<(&str, &str)>| {
                    v.into_iter()
                        .map(|(kind, name)| Workload {
                            name: name.into(),
                            kind: kind.into(),
                        })
                        .collect::<Vec<_>>()
                };
                let mut f = FlowFilter {
                    source_ip: a.0,
                    destination_ip: a.1,
                    source_pod: a.2,
                    destination_pod: a.3,
                    verdict: a.4,
                    event_type: a.5,
                    source_fqdn: a.6,
                    destination_fqdn: a.7,
                    http_status_code: b.0,
                    source_label: b.1,
                    destination_label: b.2,
                    protocol: b.3,
                    source_port: b.4,
                    destination_port: b.5,
                    reply: b.6,
                    source_service: b.7,
                    destination_service: c.0,
                    dns_query: c.1,
                    source_identity: c.2,
                    destination_identity: c.3,
                    http_method: c.4,
                    http_path: c.5,
                    tcp_flags: c.6,
                    node_name: c.7,
                    ip_version: d.0,
                    source_workload: wl(d.1),
                    destination_workload: wl(d.2),
                    trace_id: d.3,
                    uuid: d.4,
                    traffic_direction: d.5,
                };
                // The pod domain includes "/" (invalid); replace it to keep filters valid.
                for p in &mut f.source_pod {
                    if p == "/" {
                        *p = "/x".into();
                    }
                }
                // Keep HTTP filters compatible with the event_type filter.
                let has_http = !(f.http_status_code.is_empty()
                    && f.http_method.is_empty()
                    && f.http_path.is_empty());
                if has_http && !f.event_type.is_empty() {
                    f.event_type.push(EventTypeFilter {
                        r#type: 129,
                        ..Default::default()
                    });
                }
                f
            })
    }

    /// A filter made only of the given flow's own values, for the fields selected by `mask`.
    fn self_filter(flow: &Flow, mask: u32, variant: bool) -> FlowFilter {
        let on = |bit: u32| mask & (1 << bit) != 0;
        let mut f = FlowFilter::default();
        let ip = flow.ip.clone().unwrap_or_default();
        let cidr = |a: &str| {
            if variant {
                a.to_owned()
            } else if a.contains(':') {
                format!("{a}/64")
            } else {
                format!("{a}/16")
            }
        };
        if on(0) && !ip.source.is_empty() {
            f.source_ip = vec![cidr(&ip.source)];
        }
        if on(1) && !ip.destination.is_empty() {
            f.destination_ip = vec![cidr(&ip.destination)];
        }
        let pod = |e: &Option<Endpoint>| {
            e.as_ref()
                .filter(|e| !(e.namespace.is_empty() && e.pod_name.is_empty()))
                .map(|e| {
                    let prefix = if variant {
                        &e.pod_name[..e.pod_name.len().min(3)]
                    } else {
                        &e.pod_name
                    };
                    format!("{}/{}", e.namespace, prefix)
                })
        };
        if on(2) {
            f.source_pod = pod(&flow.source).into_iter().collect();
        }
        if on(3) {
            f.destination_pod = pod(&flow.destination).into_iter().collect();
        }
        if on(4) {
            f.verdict = vec![flow.verdict, 7];
        }
        if let (true, Some(e)) = (on(5), &flow.event_type) {
            f.event_type = vec![EventTypeFilter {
                r#type: e.r#type,
                match_sub_type: variant,
                sub_type: e.sub_type,
            }];
        }
        if let (true, Some(n)) = (on(6), flow.source_names.first()) {
            f.source_fqdn = vec![if variant { "*".into() } else { n.clone() }];
        }
        if let (true, Some(n)) = (on(7), flow.destination_names.first()) {
            f.destination_fqdn = vec![n.to_uppercase()];
        }
        let http_rec = http(flow).cloned();
        if let (true, Some(h)) = (on(8), &http_rec)
            && h.code != 0
        {
            let c = h.code.to_string();
            f.http_status_code = vec![if variant { format!("{}+", &c[..1]) } else { c }];
        }
        let labels = |e: &Option<Endpoint>| match e.as_ref().and_then(|e| e.labels.first()) {
            Some(l) if variant => l.clone(),
            Some(l) => l.split_once(':').map_or(l.clone(), |(_, k)| k.to_owned()),
            None => "!k8s:nope".into(),
        };
        if on(9) {
            f.source_label = vec![labels(&flow.source)];
        }
        if on(10) {
            f.destination_label = vec![labels(&flow.destination)];
        }
        if on(11) {
            let bits = protocol_bits(flow);
            let names = [
                (PROTO_TCP, "tcp"),
                (PROTO_UDP, "udp"),
                (PROTO_ICMPV4, "icmp"),
                (PROTO_ICMPV6, "ICMPv6"),
                (PROTO_SCTP, "sctp"),
                (PROTO_DNS, "dns"),
                (PROTO_HTTP, "HTTP"),
                (PROTO_KAFKA, "kafka"),
            ];
            f.protocol = names
                .iter()
                .filter(|(b, _)| bits & b != 0)
                .map(|(_, n)| (*n).to_owned())
                .take(1)
                .collect();
        }
        if on(12) {
            f.source_port = l4_port(flow, Side::Source)
                .map(|p| p.to_string())
                .into_iter()
                .collect();
        }
        if on(13) {
            f.destination_port = l4_port(flow, Side::Destination)
                .map(|p| p.to_string())
                .into_iter()
                .collect();
        }
        if on(14) {
            match flow.is_reply {
                Some(r) => f.reply = vec![r],
                None if flow.verdict == Verdict::Dropped as i32 => f.reply = vec![false],
                None => {}
            }
        }
        let service = |s: &Option<Service>| {
            s.as_ref()
                .filter(|s| !(s.namespace.is_empty() && s.name.is_empty()))
                .map(|s| format!("{}/{}", s.namespace, s.name))
        };
        if on(15) {
            f.source_service = service(&flow.source_service).into_iter().collect();
        }
        if on(16) {
            f.destination_service = service(&flow.destination_service).into_iter().collect();
        }
        if let (true, Some(layer7::Record::Dns(d))) =
            (on(17), flow.l7.as_ref().and_then(|l| l.record.as_ref()))
        {
            f.dns_query = vec![format!("^{}$", regex::escape(&d.query))];
        }
        if on(18) {
            f.source_identity = vec![endpoint(flow, Side::Source).map_or(0, |e| e.identity)];
        }
        if on(19) {
            f.destination_identity =
                vec![endpoint(flow, Side::Destination).map_or(0, |e| e.identity)];
        }
        if let (true, Some(h)) = (on(20), &http_rec)
            && !h.method.is_empty()
        {
            f.http_method = vec![h.method.to_ascii_uppercase()];
        }
        if let (true, Some(h)) = (on(21), &http_rec)
            && let Some(p) = request_uri_path(&h.url).filter(|_| !h.url.is_empty())
        {
            f.http_path = vec![format!("^{}$", regex::escape(&p))];
        }
        if let (true, Some(flags)) = (on(22), tcp_flags(flow)) {
            f.tcp_flags = vec![TcpFlags {
                syn: flags & 2 != 0,
                ack: flags & 16 != 0,
                ..Default::default()
            }];
        }
        if on(23) && !flow.node_name.is_empty() {
            f.node_name = vec![flow.node_name.clone()];
        }
        if on(24) {
            f.ip_version = vec![flow.ip.as_ref().map_or(0, |i| i.ip_version)];
        }
        if let (true, Some(w)) = (
            on(25),
            flow.source.as_ref().and_then(|e| e.workloads.first()),
        ) {
            f.source_workload = vec![w.clone()];
        }
        if let (true, Some(w)) = (
            on(26),
            flow.destination.as_ref().and_then(|e| e.workloads.first()),
        ) {
            f.destination_workload = vec![Workload {
                name: String::new(),
                kind: w.kind.clone(),
            }];
        }
        if on(27) {
            f.trace_id = vec![
                flow.trace_context
                    .as_ref()
                    .and_then(|t| t.parent.as_ref())
                    .map_or(String::new(), |p| p.trace_id.clone()),
            ];
        }
        if on(28) {
            f.uuid = vec![flow.uuid.clone()];
        }
        if on(29) {
            f.traffic_direction = vec![flow.traffic_direction];
        }
        let has_http =
            !(f.http_status_code.is_empty() && f.http_method.is_empty() && f.http_path.is_empty());
        if has_http && !f.event_type.is_empty() {
            f.event_type.push(EventTypeFilter {
                r#type: 129,
                ..Default::default()
            });
        }
        f
    }

    /// One single-field FlowFilter per populated field of `f`.
    fn split_fields(f: &FlowFilter) -> Vec<FlowFilter> {
        let mut out = Vec::new();
        macro_rules! split {
            ($($name:ident),* $(,)?) => {
                $(
                    if !f.$name.is_empty() {
                        out.push(FlowFilter {
                            $name: f.$name.clone(),
                            ..Default::default()
                        });
                    }
                )*
            };
        }
        split!(
            source_ip,
            source_pod,
            destination_ip,
            destination_pod,
            verdict,
            event_type,
            source_fqdn,
            destination_fqdn,
            http_status_code,
            source_label,
            destination_label,
            protocol,
            source_port,
            destination_port,
            reply,
            source_service,
            destination_service,
            dns_query,
            source_identity,
            destination_identity,
            http_method,
            http_path,
            tcp_flags,
            node_name,
            ip_version,
            source_workload,
            destination_workload,
            trace_id,
            uuid,
            traffic_direction,
        );
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// (1) A filter built from a flow's own field values always matches that flow.
        #[test]
        fn prop_self_filter_matches(flow in arb_flow(), mask in any::<u32>(), variant in any::<bool>()) {
            let f = self_filter(&flow, mask, variant);
            let set = FlowFilterSet::compile(std::slice::from_ref(&f), &[])
                .map_err(|e| TestCaseError::fail(format!("{e} for {f:?}")))?;
            prop_assert!(set.matches(&flow), "filter {:?} should match flow {:?}", f, flow);
            // And the same filter as a deny list removes the flow.
            let set = FlowFilterSet::compile(&[], std::slice::from_ref(&f)).unwrap();
            prop_assert!(!set.matches(&flow));
        }

        /// (2) The same filter in both lists never matches; deny-only is the complement.
        #[test]
        fn prop_allow_and_deny_same_filter_never_matches(flow in arb_flow(), f in arb_filter()) {
            let both = FlowFilterSet::compile(std::slice::from_ref(&f), std::slice::from_ref(&f)).unwrap();
            prop_assert!(!both.matches(&flow));
            let allow = FlowFilterSet::compile(std::slice::from_ref(&f), &[]).unwrap();
            let deny = FlowFilterSet::compile(&[], std::slice::from_ref(&f)).unwrap();
            prop_assert_eq!(allow.matches(&flow), !deny.matches(&flow));
        }

        /// (3) No filters: everything matches.
        #[test]
        fn prop_empty_matches_everything(flow in arb_flow()) {
            let set = FlowFilterSet::compile(&[], &[]).unwrap();
            prop_assert!(set.is_empty());
            prop_assert!(set.matches(&flow));
        }

        /// (4) Whitelist is a monotonic OR: [A, B] ⊇ [A] and [A, B] = [A] ∪ [B].
        #[test]
        fn prop_allow_is_monotonic_or(flow in arb_flow(), a in arb_filter(), b in arb_filter()) {
            let only_a = FlowFilterSet::compile(std::slice::from_ref(&a), &[]).unwrap().matches(&flow);
            let only_b = FlowFilterSet::compile(std::slice::from_ref(&b), &[]).unwrap().matches(&flow);
            let ab = FlowFilterSet::compile(&[a.clone(), b.clone()], &[]).unwrap().matches(&flow);
            prop_assert!(!only_a || ab);
            prop_assert_eq!(ab, only_a || only_b);
            // Blacklist: [A] ∪ [B] denied.
            let deny_ab = FlowFilterSet::compile(&[], &[a, b]).unwrap().matches(&flow);
            prop_assert_eq!(deny_ab, !(only_a || only_b));
        }

        /// (5) Matching is deterministic (also across recompilation).
        #[test]
        fn prop_deterministic(flow in arb_flow(), a in arb_filter(), b in arb_filter()) {
            let set1 = FlowFilterSet::compile(std::slice::from_ref(&a), std::slice::from_ref(&b)).unwrap();
            let set2 = FlowFilterSet::compile(std::slice::from_ref(&a), std::slice::from_ref(&b)).unwrap();
            let first = set1.matches(&flow);
            prop_assert_eq!(first, set1.matches(&flow));
            prop_assert_eq!(first, set2.clone().matches(&flow));
        }

        /// Fields within one filter AND together: F matches iff every single-field filter
        /// split off F matches.
        #[test]
        fn prop_fields_and_together(flow in arb_flow(), f in arb_filter()) {
            let whole = FlowFilterSet::compile(std::slice::from_ref(&f), &[]).unwrap().matches(&flow);
            let each = split_fields(&f).iter().all(|part| {
                FlowFilterSet::compile(std::slice::from_ref(part), &[]).unwrap().matches(&flow)
            });
            prop_assert_eq!(whole, each);
        }

        /// Compilation never panics on arbitrary strings (errors are fine).
        #[test]
        fn prop_compile_never_panics(v in "\\PC{0,12}", flow in arb_flow()) {
            let f = FlowFilter {
                source_ip: vec![v.clone()],
                ..Default::default()
            };
            let _ = FlowFilterSet::compile(&[f], &[]).map(|s| s.matches(&flow));
            for field in 0..9 {
                let mut f = FlowFilter::default();
                let slot = match field {
                    0 => &mut f.source_pod,
                    1 => &mut f.source_fqdn,
                    2 => &mut f.http_status_code,
                    3 => &mut f.source_label,
                    4 => &mut f.protocol,
                    5 => &mut f.source_port,
                    6 => &mut f.dns_query,
                    7 => &mut f.node_name,
                    _ => &mut f.http_path,
                };
                slot.push(v.clone());
                let _ = FlowFilterSet::compile(&[f], &[]).map(|s| s.matches(&flow));
            }
        }
    }
}
