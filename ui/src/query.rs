//! Query strings, the time range and the hash routes (`#/flows?namespace=prod`).
//!
//! Pure functions: no browser needed, unit-tested on the host.
use periscope_ui_api::FlowQuery;

/// Percent-encodes `s` for a query string component (RFC 3986 unreserved characters stay).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Decodes a query string component (`+` is a space; bad escapes stay as they are).
pub fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `a=1&b=x%20y` into pairs (empty keys are skipped).
pub fn parse(query: &str) -> Vec<(String, String)> {
    query
        .trim_start_matches('?')
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

/// Builds `a=1&b=x%20y` from pairs, leaving out empty values.
pub fn build<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    pairs
        .iter()
        .filter(|(_, v)| !v.as_ref().trim().is_empty())
        .map(|(k, v)| format!("{}={}", encode(k.as_ref()), encode(v.as_ref().trim())))
        .collect::<Vec<_>>()
        .join("&")
}

/// Two query strings as one (`a=1` and `b=2` → `a=1&b=2`; either may be empty).
pub fn join(a: &str, b: &str) -> String {
    let (a, b) = (a.trim_start_matches('?'), b.trim_start_matches('?'));
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}&{b}"),
    }
}

/// `path?query`, or just `path` when the query is empty.
pub fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_string()
    } else if path.contains('?') {
        format!("{path}&{query}")
    } else {
        format!("{path}?{query}")
    }
}

/// The presets of the time range selector: label and the duration the API understands.
pub const PRESETS: &[&str] = &["5m", "15m", "1h", "6h", "24h"];

/// The time range shared by the map and the flows views.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TimeRange {
    /// The last 5 minutes, updating (the map streams deltas).
    #[default]
    Live,
    /// The last `5m`, `15m`, `1h`, `6h` or `24h` (one of [`PRESETS`]), fetched once.
    Last(String),
    /// From one RFC 3339 time to another.
    Custom {
        /// Start, RFC 3339.
        from: String,
        /// End, RFC 3339.
        to: String,
    },
}

impl TimeRange {
    /// `(since, until)` query values.
    pub fn since_until(&self) -> (Option<String>, Option<String>) {
        match self {
            TimeRange::Live => (Some("5m".into()), None),
            TimeRange::Last(d) => (Some(d.clone()), None),
            TimeRange::Custom { from, to } => {
                (Some(from.clone()), (!to.is_empty()).then(|| to.clone()))
            }
        }
    }

    /// Whether the map follows the live stream.
    pub fn is_live(&self) -> bool {
        matches!(self, TimeRange::Live)
    }

    /// Short words for a status line.
    pub fn words(&self) -> String {
        match self {
            TimeRange::Live => "live, last 5 minutes".into(),
            TimeRange::Last(d) => format!("last {d}"),
            TimeRange::Custom { from, to } if to.is_empty() => format!("from {from}"),
            TimeRange::Custom { from, to } => format!("{from} to {to}"),
        }
    }

    /// The range a link names with `since` (a duration like `2h`, or a time) and `until`.
    pub fn from_params(since: Option<&str>, until: Option<&str>) -> Option<TimeRange> {
        let since = since.filter(|s| !s.trim().is_empty())?.trim().to_string();
        let until = until.map(str::trim).unwrap_or_default().to_string();
        if until.is_empty() && is_duration(&since) {
            Some(TimeRange::Last(since))
        } else {
            Some(TimeRange::Custom {
                from: since,
                to: until,
            })
        }
    }
}

/// Whether `s` is a duration the API understands (`90s`, `5m`, `2h`, `7d`).
pub fn is_duration(s: &str) -> bool {
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    !num.is_empty()
        && num.bytes().all(|b| b.is_ascii_digit())
        && matches!(unit, "s" | "m" | "h" | "d")
}

/// The query string of the map routes.
pub fn map_query(range: &TimeRange, namespaces: &[String]) -> String {
    let (since, until) = range.since_until();
    build(&[
        ("since", since.unwrap_or_default()),
        ("until", until.unwrap_or_default()),
        ("namespaces", namespaces.join(",")),
    ])
}

/// The query string of the node detail route.
pub fn node_query(id: &str, range: &TimeRange) -> String {
    let (since, until) = range.since_until();
    build(&[
        ("id", id.to_string()),
        ("since", since.unwrap_or_default()),
        ("until", until.unwrap_or_default()),
    ])
}

/// The filter fields of [`FlowQuery`] the flows view has inputs for, in display order
/// (`since`, `until` come from the time range, `limit` from its own selector).
pub const FLOW_FILTERS: &[&str] = &[
    "namespace",
    "pod",
    "label",
    "ip",
    "port",
    "protocol",
    "verdict",
    "drop_reason",
    "text",
    "node",
    "from",
    "to",
    "uuid",
];

/// Reads a field of a [`FlowQuery`] by its query-string name.
pub fn flow_field(q: &FlowQuery, name: &str) -> Option<String> {
    match name {
        "since" => q.since.clone(),
        "until" => q.until.clone(),
        "limit" => q.limit.map(|l| l.to_string()),
        "namespace" => q.namespace.clone(),
        "pod" => q.pod.clone(),
        "label" => q.label.clone(),
        "ip" => q.ip.clone(),
        "port" => q.port.clone(),
        "protocol" => q.protocol.clone(),
        "verdict" => q.verdict.clone(),
        "drop_reason" => q.drop_reason.clone(),
        "node" => q.node.clone(),
        "uuid" => q.uuid.clone(),
        "from" => q.from.clone(),
        "to" => q.to.clone(),
        "text" => q.text.clone(),
        _ => None,
    }
}

/// Sets a field of a [`FlowQuery`] by its query-string name (blank clears it; a `limit` that is
/// not a number clears it too, unknown names are ignored).
pub fn set_flow_field(q: &mut FlowQuery, name: &str, value: &str) {
    let v = value.trim();
    let v = (!v.is_empty()).then(|| v.to_string());
    match name {
        "since" => q.since = v,
        "until" => q.until = v,
        "limit" => q.limit = v.and_then(|v| v.parse().ok()),
        "namespace" => q.namespace = v,
        "pod" => q.pod = v,
        "label" => q.label = v,
        "ip" => q.ip = v,
        "port" => q.port = v,
        "protocol" => q.protocol = v,
        "verdict" => q.verdict = v,
        "drop_reason" => q.drop_reason = v,
        "node" => q.node = v,
        "uuid" => q.uuid = v,
        "from" => q.from = v,
        "to" => q.to = v,
        "text" => q.text = v,
        _ => {}
    }
}

/// All fields of a [`FlowQuery`] as query pairs (set ones only).
pub fn flow_pairs(q: &FlowQuery) -> Vec<(&'static str, String)> {
    ["since", "until", "limit"]
        .iter()
        .chain(FLOW_FILTERS)
        .filter_map(|&n| flow_field(q, n).map(|v| (n, v)))
        .collect()
}

/// A [`FlowQuery`] from query pairs (unknown names are ignored).
pub fn flow_query_from(pairs: &[(String, String)]) -> FlowQuery {
    let mut q = FlowQuery::default();
    for (k, v) in pairs {
        set_flow_field(&mut q, k, v);
    }
    q
}

/// The query string for `/api/v1/flows` from the view's filters and the time range.
/// A `uuid` filter looks for the flows wherever they are: it ignores the time range.
pub fn flows_api_query(filters: &FlowQuery, range: &TimeRange, limit: u32) -> String {
    let mut q = filters.clone();
    if q.uuid.is_none() {
        let (since, until) = range.since_until();
        q.since = since;
        q.until = until;
    }
    q.limit = Some(limit);
    build(&flow_pairs(&q))
}

/// The query string for `/api/v1/flows/stream` (filters only: a tail starts now).
pub fn flows_stream_query(filters: &FlowQuery) -> String {
    let mut q = filters.clone();
    q.since = None;
    q.until = None;
    q.limit = None;
    build(&flow_pairs(&q))
}

/// A view of the UI, as the location hash names it.
// One route exists at a time: boxing the filters would save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `#/map` (and the empty hash).
    Map,
    /// `#/flows?filters`.
    Flows(FlowQuery),
    /// `#/policies`.
    Policies,
    /// `#/alerts`.
    Alerts,
}

impl Route {
    /// The route of a location hash (`#/flows?port=53`); anything unknown is the map.
    pub fn parse(hash: &str) -> Route {
        let h = hash.trim_start_matches('#').trim_start_matches('/');
        let (path, query) = h.split_once('?').unwrap_or((h, ""));
        match path.trim_end_matches('/') {
            "flows" => Route::Flows(flow_query_from(&parse(query))),
            "policies" => Route::Policies,
            "alerts" => Route::Alerts,
            _ => Route::Map,
        }
    }

    /// The location hash of the route.
    pub fn hash(&self) -> String {
        match self {
            Route::Map => "#/map".into(),
            Route::Flows(q) => with_query("#/flows", &build(&flow_pairs(q))),
            Route::Policies => "#/policies".into(),
            Route::Alerts => "#/alerts".into(),
        }
    }
}

/// What a location hash says: the view, and what its link sets of the time range (`since`,
/// `until`) and of the map's namespaces (`namespaces=a,b`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The view (the flows' filters without `since`/`until`).
    pub route: Route,
    /// The time range the link names, if it names one.
    pub range: Option<TimeRange>,
    /// The map's namespaces the link names, if it names some.
    pub namespaces: Option<Vec<String>>,
}

impl Location {
    /// Reads a location hash: `#/map?since=2h&namespaces=a,b`, `#/flows?verdict=DROPPED`, ...
    pub fn parse(hash: &str) -> Location {
        let h = hash.trim_start_matches('#');
        let pairs = parse(h.split_once('?').map(|(_, q)| q).unwrap_or(""));
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let range = TimeRange::from_params(get("since"), get("until"));
        let namespaces = get("namespaces").map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        });
        let mut route = Route::parse(hash);
        if let Route::Flows(q) = &mut route {
            q.since = None;
            q.until = None;
        }
        Location {
            route,
            range,
            namespaces,
        }
    }
}

/// The flows view filtered to an edge of the map.
pub fn edge_flows_hash(source: &str, destination: &str, port: u32, protocol: &str) -> String {
    let q = FlowQuery {
        from: Some(source.to_string()),
        to: Some(destination.to_string()),
        port: (port != 0).then(|| port.to_string()),
        protocol: (!protocol.is_empty()).then(|| protocol.to_ascii_lowercase()),
        ..Default::default()
    };
    Route::Flows(q).hash()
}

/// The flows view filtered to some flow uuids (an alert's sample flows).
pub fn uuid_flows_hash(uuids: &[String]) -> String {
    Route::Flows(FlowQuery {
        uuid: Some(uuids.join(",")),
        ..Default::default()
    })
    .hash()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips() {
        let s = "prod/db a=b&c?d%e+f,g:h é";
        let e = encode(s);
        assert!(!e.contains(['/', ' ', '&', '?', '=', '+', ',']), "{e}");
        assert_eq!(decode(&e), s);
        assert_eq!(decode("a+b"), "a b");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn queries_leave_out_empty_values() {
        assert_eq!(
            build(&[("a", "1"), ("b", " "), ("c", "x y")]),
            "a=1&c=x%20y"
        );
        assert_eq!(
            parse("?a=1&c=x%20y&&d"),
            vec![
                ("a".into(), "1".into()),
                ("c".into(), "x y".into()),
                ("d".into(), String::new())
            ]
        );
        assert_eq!(with_query("/api/v1/map", ""), "/api/v1/map");
        assert_eq!(with_query("/api/v1/map", "a=1"), "/api/v1/map?a=1");
        assert_eq!(with_query("/x?a=1", "b=2"), "/x?a=1&b=2");
        assert_eq!(
            join("since=5m", "access_token=t"),
            "since=5m&access_token=t"
        );
        assert_eq!(join("", "access_token=t"), "access_token=t");
        assert_eq!(join("?a=1", ""), "a=1");
    }

    #[test]
    fn map_queries_carry_range_and_namespaces() {
        assert_eq!(map_query(&TimeRange::Live, &[]), "since=5m");
        assert_eq!(
            map_query(
                &TimeRange::Last("1h".into()),
                &["prod".into(), "kube-system".into()]
            ),
            "since=1h&namespaces=prod%2Ckube-system"
        );
        let custom = TimeRange::Custom {
            from: "2024-05-01T10:00:00.000Z".into(),
            to: "2024-05-01T11:00:00.000Z".into(),
        };
        assert_eq!(
            map_query(&custom, &[]),
            "since=2024-05-01T10%3A00%3A00.000Z&until=2024-05-01T11%3A00%3A00.000Z"
        );
        assert_eq!(
            node_query("prod/db", &TimeRange::Live),
            "id=prod%2Fdb&since=5m"
        );
    }

    #[test]
    fn routes_round_trip_through_the_hash() {
        assert_eq!(Route::parse(""), Route::Map);
        assert_eq!(Route::parse("#/"), Route::Map);
        assert_eq!(Route::parse("#/map"), Route::Map);
        assert_eq!(Route::parse("#/policies"), Route::Policies);
        assert_eq!(Route::parse("#/alerts/"), Route::Alerts);
        assert_eq!(Route::parse("#/nonsense"), Route::Map);
        let q = FlowQuery {
            namespace: Some("prod".into()),
            verdict: Some("DROPPED".into()),
            from: Some("prod/frontend".into()),
            text: Some("a b".into()),
            ..Default::default()
        };
        let r = Route::Flows(q);
        assert_eq!(
            r.hash(),
            "#/flows?namespace=prod&verdict=DROPPED&text=a%20b&from=prod%2Ffrontend"
        );
        assert_eq!(Route::parse(&r.hash()), r);
        assert_eq!(Route::parse("#/flows"), Route::Flows(FlowQuery::default()));
    }

    #[test]
    fn links_may_set_the_range_and_namespaces() {
        let l = Location::parse("#/map?since=2h");
        assert_eq!(l.route, Route::Map);
        assert_eq!(l.range, Some(TimeRange::Last("2h".into())));
        assert_eq!(l.namespaces, None);
        let l = Location::parse(
            "#/map?namespaces=a,%20b,&since=2024-05-01T10:00:00Z&until=2024-05-01T11:00:00Z",
        );
        assert_eq!(l.namespaces, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(
            l.range,
            Some(TimeRange::Custom {
                from: "2024-05-01T10:00:00Z".into(),
                to: "2024-05-01T11:00:00Z".into()
            })
        );
        let l = Location::parse("#/flows?since=1h&verdict=DROPPED");
        assert_eq!(
            l.route,
            Route::Flows(FlowQuery {
                verdict: Some("DROPPED".into()),
                ..Default::default()
            })
        );
        assert_eq!(l.range, Some(TimeRange::Last("1h".into())));
        assert_eq!(Location::parse("#/alerts").range, None);
        let from_only = TimeRange::from_params(Some("2024-05-01T10:00:00Z"), None).unwrap();
        assert_eq!(
            from_only.since_until(),
            (Some("2024-05-01T10:00:00Z".into()), None)
        );
        assert_eq!(from_only.words(), "from 2024-05-01T10:00:00Z");
        assert!(
            is_duration("90s") && is_duration("24h") && !is_duration("h") && !is_duration("2x")
        );
    }

    #[test]
    fn edge_and_alert_links() {
        assert_eq!(
            edge_flows_hash("prod/frontend", "prod/db", 6379, "TCP"),
            "#/flows?port=6379&protocol=tcp&from=prod%2Ffrontend&to=prod%2Fdb"
        );
        assert_eq!(
            edge_flows_hash("reserved:world", "prod/web", 0, "ICMPv4"),
            "#/flows?protocol=icmpv4&from=reserved%3Aworld&to=prod%2Fweb"
        );
        assert_eq!(
            uuid_flows_hash(&["u1".into(), "u2".into()]),
            "#/flows?uuid=u1%2Cu2"
        );
    }

    #[test]
    fn flow_queries_take_the_range_unless_they_name_uuids() {
        let mut f = FlowQuery {
            port: Some("53".into()),
            ..Default::default()
        };
        assert_eq!(
            flows_api_query(&f, &TimeRange::Last("1h".into()), 100),
            "since=1h&limit=100&port=53"
        );
        assert_eq!(flows_stream_query(&f), "port=53");
        f.uuid = Some("u1".into());
        assert_eq!(
            flows_api_query(&f, &TimeRange::Live, 500),
            "limit=500&port=53&uuid=u1"
        );
    }

    #[test]
    fn every_filter_field_is_settable() {
        let mut q = FlowQuery::default();
        for (i, name) in FLOW_FILTERS.iter().enumerate() {
            set_flow_field(&mut q, name, &format!(" v{i} "));
        }
        for (i, name) in FLOW_FILTERS.iter().enumerate() {
            assert_eq!(flow_field(&q, name), Some(format!("v{i}")), "{name}");
        }
        set_flow_field(&mut q, "port", "  ");
        assert_eq!(q.port, None);
        set_flow_field(&mut q, "limit", "20");
        assert_eq!(q.limit, Some(20));
        set_flow_field(&mut q, "limit", "lots");
        assert_eq!(q.limit, None);
    }
}
