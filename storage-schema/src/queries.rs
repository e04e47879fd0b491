//! The shipped queries (`queries/*.sql`) and their typed wrappers.
//!
//! Every query takes its inputs as `{name:Type}` parameters, never as spliced text:
//!
//! - on modern servers (>= 23.8) they are sent as server-side query parameters
//!   (`param_<name>` settings, [`modern_param_text`]); the server parses each value as its
//!   declared type, so a value can never become SQL (the chdb test sends the same texts);
//! - on 18.16, which has no server-side parameters, [`bind_legacy`] turns each `{name:Type}` into
//!   a `?` and binds the value with the clickhouse crate's [`bind`](clickhouse::query::Query::bind),
//!   which renders strings as quoted literals with `\`, `'`, `` ` ``, tab and newline escaped,
//!   and numbers as plain numbers. Values are typed ([`ParamValue`]) and checked against the
//!   declared type first, so a string can only ever land inside quotes. A bound number takes
//!   its literal's type (`5` is a UInt8), not the declared one, so queries use numeric parameters
//!   in comparisons, arithmetic and `LIMIT` only, never as an output column as they are.
//!
//! The time window of every query filters on `time` (which prunes partitions and uses the
//! sorting key) and on `time_ns` (which makes it exact to the nanosecond); see the files.

use clickhouse::Client;
use serde::{Deserialize, Serialize};

use crate::{Dialect, Error, FlowRow, Result, ch_err, sqltext};

/// One shipped query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuerySpec {
    /// File stem under `queries/`.
    pub name: &'static str,
    /// The file's text, comments included (they document the query).
    pub sql: &'static str,
}

impl QuerySpec {
    /// The text without comments, as it is sent.
    pub fn text(&self) -> String {
        sqltext::strip_comments(self.sql).trim().to_owned()
    }

    /// `(name, type)` of each parameter, first appearance order, each name once.
    pub fn parameters(&self) -> Result<Vec<(String, String)>> {
        let mut out: Vec<(String, String)> = Vec::new();
        for p in sqltext::placeholders(&self.text()).map_err(|problem| Error::Param {
            query: self.name,
            problem,
        })? {
            match out.iter().find(|(n, _)| *n == p.name) {
                Some((_, ty)) if *ty != p.ty => {
                    return Err(Error::Param {
                        query: self.name,
                        problem: format!("parameter {} declared as {ty} and {}", p.name, p.ty),
                    });
                }
                Some(_) => {}
                None => out.push((p.name, p.ty)),
            }
        }
        Ok(out)
    }
}

macro_rules! queries {
    ($($konst:ident => $file:literal),* $(,)?) => {
        $(
            #[doc = concat!("`queries/", $file, ".sql`.")]
            pub const $konst: QuerySpec = QuerySpec {
                name: $file,
                sql: include_str!(concat!("../queries/", $file, ".sql")),
            };
        )*
        /// Every shipped query.
        pub const ALL: &[QuerySpec] = &[$($konst),*];
    };
}

queries! {
    DENIED_BY_POLICY => "denied_by_policy",
    TOP_TALKERS => "top_talkers",
    NEW_WORLD_DESTINATIONS => "new_world_destinations",
    DNS_FAILURES => "dns_failures",
    TCP_RESETS => "tcp_resets",
    POD_FLOWS => "pod_flows",
    SERVICE_MAP_EDGES => "service_map_edges",
    HISTORY => "history",
}

/// `queries/settle_candidates.sql`: not an analysis query (not in [`ALL`]); see
/// [`Queries::settle`].
pub const SETTLE_CANDIDATES: QuerySpec = QuerySpec {
    name: "settle_candidates",
    sql: include_str!("../queries/settle_candidates.sql"),
};

/// `queries/settle_minute.sql`; see [`Queries::settle`].
pub const SETTLE_MINUTE: QuerySpec = QuerySpec {
    name: "settle_minute",
    sql: include_str!("../queries/settle_minute.sql"),
};

/// `queries/settle_mark.sql`; see [`Queries::settle`].
pub const SETTLE_MARK: QuerySpec = QuerySpec {
    name: "settle_mark",
    sql: include_str!("../queries/settle_mark.sql"),
};

/// A row of [`SETTLE_CANDIDATES`]: a minute to settle.
#[derive(Clone, Debug, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct SettleCandidate {
    /// The minute's cluster.
    pub cluster: String,
    /// The minute, Unix seconds.
    pub minute_s: u32,
    /// Its latest write, Unix seconds (the server's clock).
    pub written_s: u32,
}

/// A random run id for [`SETTLE_MINUTE`] (below 2^63, so that it reads the same everywhere).
fn settle_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() >> 1
}

/// A typed parameter value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// For `String` parameters.
    String(String),
    /// For `Int8` .. `Int64` parameters.
    Int(i64),
    /// For `UInt8` .. `UInt64` parameters.
    UInt(u64),
}

impl From<&str> for ParamValue {
    fn from(v: &str) -> Self {
        Self::String(v.to_owned())
    }
}

impl From<String> for ParamValue {
    fn from(v: String) -> Self {
        Self::String(v)
    }
}

impl From<i64> for ParamValue {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<u32> for ParamValue {
    fn from(v: u32) -> Self {
        Self::UInt(v.into())
    }
}

impl From<u8> for ParamValue {
    fn from(v: u8) -> Self {
        Self::UInt(v.into())
    }
}

impl From<bool> for ParamValue {
    fn from(v: bool) -> Self {
        Self::UInt(v.into())
    }
}

/// Checks a value against a declared type; the error says why not.
fn check_type(ty: &str, value: &ParamValue) -> Result<(), String> {
    let (lo, hi): (i128, i128) = match ty {
        "String" => {
            return match value {
                ParamValue::String(_) => Ok(()),
                other => Err(format!("expects a String, got {other:?}")),
            };
        }
        "Int8" => (i8::MIN.into(), i8::MAX.into()),
        "Int16" => (i16::MIN.into(), i16::MAX.into()),
        "Int32" => (i32::MIN.into(), i32::MAX.into()),
        "Int64" => (i64::MIN.into(), i64::MAX.into()),
        "UInt8" => (0, u8::MAX.into()),
        "UInt16" => (0, u16::MAX.into()),
        "UInt32" => (0, u32::MAX.into()),
        "UInt64" => (0, u64::MAX.into()),
        other => return Err(format!("has type {other}, which this crate cannot bind")),
    };
    let n: i128 = match value {
        ParamValue::Int(v) => (*v).into(),
        ParamValue::UInt(v) => (*v).into(),
        ParamValue::String(s) => return Err(format!("expects a {ty}, got the string {s:?}")),
    };
    if (lo..=hi).contains(&n) {
        Ok(())
    } else {
        Err(format!("value {n} does not fit {ty}"))
    }
}

/// Checks that `params` gives each parameter of `spec` exactly once, with a fitting value.
fn check_params(spec: &QuerySpec, params: &[(&str, ParamValue)]) -> Result<()> {
    let err = |problem: String| Error::Param {
        query: spec.name,
        problem,
    };
    let declared = spec.parameters()?;
    for (name, ty) in &declared {
        let mut given = params.iter().filter(|(n, _)| n == name);
        let (_, value) = given
            .next()
            .ok_or_else(|| err(format!("parameter {name} ({ty}) is missing")))?;
        if given.next().is_some() {
            return Err(err(format!("parameter {name} is given twice")));
        }
        check_type(ty, value).map_err(|p| err(format!("parameter {name} {p}")))?;
    }
    if let Some((name, _)) = params
        .iter()
        .find(|(n, _)| !declared.iter().any(|(d, _)| d == n))
    {
        return Err(err(format!("the query has no parameter {name}")));
    }
    Ok(())
}

/// The query text with each `{name:Type}` replaced by `?`, and the values in `?` order, for
/// client-side binding (18.16).
fn legacy_template<'a>(
    spec: &QuerySpec,
    params: &'a [(&str, ParamValue)],
) -> Result<(String, Vec<&'a ParamValue>)> {
    check_params(spec, params)?;
    let text = spec.text();
    if text.contains('?') {
        // The crate would take it for a placeholder.
        return Err(Error::Param {
            query: spec.name,
            problem: "the query text contains '?'".into(),
        });
    }
    let placeholders = sqltext::placeholders(&text).map_err(|problem| Error::Param {
        query: spec.name,
        problem,
    })?;
    let mut out = String::with_capacity(text.len());
    let mut values = Vec::with_capacity(placeholders.len());
    let mut at = 0;
    for p in placeholders {
        out.push_str(&text[at..p.range.start]);
        out.push('?');
        at = p.range.end;
        let (_, value) = params
            .iter()
            .find(|(n, _)| *n == p.name)
            .expect("check_params saw every parameter");
        values.push(value);
    }
    out.push_str(&text[at..]);
    Ok((out, values))
}

/// A query for a server without server-side parameters: each `{name:Type}` bound client-side by
/// the clickhouse crate's escaping. `client` must have validation off ([`crate::prepare_client`]).
pub fn bind_legacy(
    client: &Client,
    spec: &QuerySpec,
    params: &[(&str, ParamValue)],
) -> Result<clickhouse::query::Query> {
    let (template, values) = legacy_template(spec, params)?;
    let mut query = client.query(&template);
    for value in values {
        query = match value {
            ParamValue::String(s) => query.bind(s.as_str()),
            ParamValue::Int(v) => query.bind(*v),
            ParamValue::UInt(v) => query.bind(*v),
        };
    }
    Ok(query)
}

/// The text of a server-side parameter value (`param_<name>=<text>`): ClickHouse parses it in
/// its "escaped" text format as the declared type, so a backslash starts an escape sequence and
/// must itself be escaped, as must the characters that end a field (tab, newline).
pub fn modern_param_text(value: &ParamValue) -> String {
    match value {
        ParamValue::Int(v) => v.to_string(),
        ParamValue::UInt(v) => v.to_string(),
        ParamValue::String(s) => {
            let mut out = String::with_capacity(s.len() + 2);
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\0' => out.push_str("\\0"),
                    c => out.push(c),
                }
            }
            out
        }
    }
}

/// A query for a modern server: the text as is, the values as server-side parameters
/// ([`modern_param_text`]), which the server parses as their declared types.
pub fn bind_modern(
    client: &Client,
    spec: &QuerySpec,
    params: &[(&str, ParamValue)],
) -> Result<clickhouse::query::Query> {
    check_params(spec, params)?;
    let mut query = client.query_raw(&spec.text());
    for (name, value) in params {
        query = query.with_setting(format!("param_{name}"), modern_param_text(value));
    }
    Ok(query)
}

/// A time window in Unix nanoseconds, both ends inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First nanosecond.
    pub since_ns: i64,
    /// Last nanosecond.
    pub until_ns: i64,
}

/// Filters of [`Queries::history`]; empty strings match anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryFilter {
    /// The window.
    pub window: Window,
    /// Only this cluster.
    pub cluster: String,
    /// Only flows observed on this node.
    pub node_name: String,
    /// Only flows with an end in this namespace.
    pub namespace: String,
    /// Only flows with an end that is this pod (in `namespace` when that is set).
    pub pod: String,
    /// Only this verdict (`FORWARDED`, `DROPPED`, ...).
    pub verdict: String,
    /// Newest first (Hubble's `--last N`) instead of oldest first.
    pub descending: bool,
    /// Keyset paging: only flows after this one in the query's order (`(time_ns, uuid)`, time
    /// descending when `descending`); `None` from the start of the window.
    pub after: Option<HistoryCursor>,
    /// At most this many flows.
    pub limit: u32,
}

/// A position in [`HISTORY`]'s order: the `time_ns` and `uuid` of the last row of a page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryCursor {
    /// The row's `time_ns`.
    pub time_ns: i64,
    /// The row's `uuid`.
    pub uuid: String,
}

impl HistoryCursor {
    /// The cursor just after `row`.
    pub fn after(row: &FlowRow) -> Self {
        Self {
            time_ns: row.time_ns,
            uuid: row.uuid.clone(),
        }
    }
}

impl HistoryFilter {
    /// Everything in a window, oldest first, at most `limit` flows.
    pub fn window(window: Window, limit: u32) -> Self {
        Self {
            window,
            cluster: String::new(),
            node_name: String::new(),
            namespace: String::new(),
            pod: String::new(),
            verdict: String::new(),
            descending: false,
            after: None,
            limit,
        }
    }
}

/// A row of [`DENIED_BY_POLICY`].
#[derive(Clone, Debug, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct DeniedByPolicy {
    /// `namespace/name` of the policy, `name` for cluster-wide ones, or `(default deny)`.
    pub policy: String,
    /// `INGRESS` or `EGRESS`.
    pub traffic_direction: String,
    /// Source namespace.
    pub source_namespace: String,
    /// Source workload, else pod, else IP.
    pub source: String,
    /// Source security identity.
    pub source_identity: u32,
    /// Destination namespace.
    pub destination_namespace: String,
    /// Destination workload, else pod, else IP.
    pub destination: String,
    /// Destination port.
    pub destination_port: u32,
    /// L4 protocol.
    pub protocol: String,
    /// Denied flows.
    pub flows: u64,
    /// Of which drop events.
    pub drops: u64,
    /// First one, Unix ns.
    pub first_seen_ns: i64,
    /// Last one, Unix ns.
    pub last_seen_ns: i64,
}

/// A row of [`TOP_TALKERS`].
#[derive(Clone, Debug, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct TopTalker {
    /// Source namespace.
    pub source_namespace: String,
    /// Source workload, else pod, else IP.
    pub source: String,
    /// Destination namespace.
    pub destination_namespace: String,
    /// Destination workload, else pod, else IP.
    pub destination: String,
    /// Destination port.
    pub destination_port: u32,
    /// L4 protocol.
    pub protocol: String,
    /// Flows.
    pub flows: u64,
    /// Of which dropped.
    pub dropped: u64,
    /// Sum of `packets`.
    pub packets: u64,
    /// Sum of `bytes` (0 while Flows carry no byte counts).
    pub bytes: u64,
}

/// A row of [`NEW_WORLD_DESTINATIONS`].
#[derive(Clone, Debug, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct NewWorldDestination {
    /// The address.
    pub destination_ip: String,
    /// Its DNS names seen in flows, sorted.
    pub destination_names: Vec<String>,
    /// Ports contacted, sorted.
    pub destination_ports: Vec<u32>,
    /// `namespace/name` of the sources, sorted.
    pub sources: Vec<String>,
    /// Flows to it.
    pub flows: u64,
    /// First contact, Unix ns.
    pub first_seen_ns: i64,
}

/// A row of [`DNS_FAILURES`].
#[derive(Clone, Debug, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct DnsFailure {
    /// Query name.
    pub dns_query: String,
    /// Response code.
    pub dns_rcode: u32,
    /// Its name (`NXDOMAIN`, `SERVFAIL`, ...).
    pub rcode_name: String,
    /// Namespace of the asking pod.
    pub client_namespace: String,
    /// The asking pod.
    pub client_pod: String,
    /// Failed responses.
    pub failures: u64,
    /// First one, Unix ns.
    pub first_seen_ns: i64,
    /// Last one, Unix ns.
    pub last_seen_ns: i64,
}

/// A row of [`TCP_RESETS`].
#[derive(Clone, Debug, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct TcpReset {
    /// Namespace of the end that sent the RST.
    pub source_namespace: String,
    /// The end that sent the RST (workload, else pod, else IP).
    pub source: String,
    /// Namespace of the other end.
    pub destination_namespace: String,
    /// The other end.
    pub destination: String,
    /// The service port of the connection.
    pub port: u32,
    /// Flows with RST.
    pub resets: u64,
    /// Of which dropped.
    pub dropped: u64,
    /// First one, Unix ns.
    pub first_seen_ns: i64,
    /// Last one, Unix ns.
    pub last_seen_ns: i64,
}

/// A row of [`POD_FLOWS`].
#[derive(Clone, Debug, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct PodFlow {
    /// Flow time, Unix ns.
    pub time_ns: i64,
    /// Flow uuid.
    pub uuid: String,
    /// Node that observed it.
    pub node_name: String,
    /// Verdict.
    pub verdict: String,
    /// Drop reason.
    pub drop_reason_desc: String,
    /// `INGRESS` / `EGRESS`.
    pub traffic_direction: String,
    /// Reply flag (None: unknown).
    pub is_reply: Option<u8>,
    /// Source namespace.
    pub source_namespace: String,
    /// Source pod.
    pub source_pod_name: String,
    /// Source IP.
    pub source_ip: String,
    /// Source port.
    pub source_port: u32,
    /// Destination namespace.
    pub destination_namespace: String,
    /// Destination pod.
    pub destination_pod_name: String,
    /// Destination IP.
    pub destination_ip: String,
    /// Destination port.
    pub destination_port: u32,
    /// L4 protocol.
    pub protocol: String,
    /// TCP flags.
    pub tcp_flags: Vec<String>,
    /// Names of the policies that denied it.
    pub denied_by: Vec<String>,
    /// Hubble's summary.
    pub summary: String,
}

/// A row of [`SERVICE_MAP_EDGES`].
#[derive(Clone, Debug, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct ServiceMapEdge {
    /// Cluster.
    pub cluster: String,
    /// Source namespace.
    pub source_namespace: String,
    /// Source workload, else pod, else reserved: label.
    pub source: String,
    /// Destination namespace.
    pub destination_namespace: String,
    /// Destination workload, else pod, else reserved: label.
    pub destination: String,
    /// Destination port.
    pub destination_port: u32,
    /// L4 protocol.
    pub protocol: String,
    /// Verdict.
    pub verdict: String,
    /// Flows on the edge.
    pub flows: u64,
    /// Their bytes (each flow's `bytes` once; 0 for minutes aggregated before migration 0007).
    pub bytes: u64,
    /// First one, Unix ns.
    pub first_seen_ns: i64,
    /// Last one, Unix ns.
    pub last_seen_ns: i64,
}

/// The shipped queries against one database, with parameters bound the way the server wants.
#[derive(Clone)]
pub struct Queries {
    client: Client,
    server: Dialect,
    cluster: bool,
}

/// [`distributed_text`] of a spec, made once per query text (the texts are few: the shipped
/// queries and the relay's own).
fn distributed_spec(spec: &QuerySpec) -> Option<QuerySpec> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static TEXTS: OnceLock<Mutex<HashMap<&'static str, Option<&'static str>>>> = OnceLock::new();
    let mut texts = TEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let sql = *texts
        .entry(spec.sql)
        .or_insert_with(|| distributed_text(spec.sql).map(|t| &*Box::leak(t.into_boxed_str())));
    sql.map(|sql| QuerySpec {
        name: spec.name,
        sql,
    })
}

/// A query ending `ORDER BY <key>\nLIMIT 1 BY uuid\nLIMIT {limit:UInt32}` (`history`,
/// `pod_flows`) as it must run over Distributed tables (cluster mode): each shard runs it whole
/// (`distributed_group_by_no_merge = 1`: `LIMIT 1 BY uuid` and `LIMIT` on the shard, exact
/// there as every copy of a flow is on one shard), and the server queried sorts the shards'
/// rows again and keeps the first `limit`. Run as written, 18.16 cuts each shard's rows at
/// `limit` before dropping copies (its preliminary LIMIT ignores LIMIT BY) and returns pages
/// that skip flows while copies are not merged. `None` for any other query, which runs as
/// written.
pub fn distributed_text(sql: &str) -> Option<String> {
    const TAIL: &str = "\nLIMIT 1 BY uuid\nLIMIT {limit:UInt32}";
    let body = sql.trim_end().strip_suffix(TAIL)?;
    let order_at = body.rfind("\nORDER BY ")?;
    let order = &body[order_at + 1..];
    if order.contains('\n') {
        return None;
    }
    Some(format!(
        "SELECT * FROM\n(\n{}\n)\n{order}\nLIMIT {{limit:UInt32}}\nSETTINGS distributed_group_by_no_merge = 1",
        sql.trim_end()
    ))
}

impl Queries {
    /// Queries on `database` of a server of dialect `server` (the server's, from
    /// [`Dialect::detect`], not the schema's: it decides how parameters are sent).
    pub fn new(client: &Client, database: &str, server: Dialect) -> Result<Self> {
        crate::migrate::validate_database(database)?;
        Ok(Self {
            client: crate::prepare_client(client.clone()).with_database(database),
            server,
            cluster: false,
        })
    }

    /// The same queries against a cluster-mode schema ([`crate::MigrateConfig::cluster`]):
    /// `history` and `pod_flows` run as [`distributed_text`] gives them. `client` should come
    /// from [`crate::MigrateConfig::prepare_client`].
    pub fn for_cluster(mut self, cluster: bool) -> Self {
        self.cluster = cluster;
        self
    }

    /// A shipped (or any [`QuerySpec`]) query with its parameters bound, ready to fetch into a
    /// row type of the caller's.
    pub fn prepare(
        &self,
        spec: &QuerySpec,
        params: &[(&str, ParamValue)],
    ) -> Result<clickhouse::query::Query> {
        let distributed;
        let spec = match self.cluster.then(|| distributed_spec(spec)).flatten() {
            Some(d) => {
                distributed = d;
                &distributed
            }
            None => spec,
        };
        match self.server {
            Dialect::Legacy => bind_legacy(&self.client, spec, params),
            Dialect::Modern => bind_modern(&self.client, spec, params),
        }
    }

    async fn fetch<T>(&self, spec: &QuerySpec, params: &[(&str, ParamValue)]) -> Result<Vec<T>>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        self.prepare(spec, params)?
            .fetch_all()
            .await
            .map_err(ch_err(format!("running query {}", spec.name)))
    }

    fn window(w: Window, limit: u32) -> [(&'static str, ParamValue); 3] {
        [
            ("since_ns", w.since_ns.into()),
            ("until_ns", w.until_ns.into()),
            ("limit", limit.into()),
        ]
    }

    /// [`DENIED_BY_POLICY`].
    pub async fn denied_by_policy(&self, w: Window, limit: u32) -> Result<Vec<DeniedByPolicy>> {
        self.fetch(&DENIED_BY_POLICY, &Self::window(w, limit)).await
    }

    /// [`TOP_TALKERS`].
    pub async fn top_talkers(&self, w: Window, limit: u32) -> Result<Vec<TopTalker>> {
        self.fetch(&TOP_TALKERS, &Self::window(w, limit)).await
    }

    /// [`NEW_WORLD_DESTINATIONS`]: destinations first reached in `w` and not since
    /// `baseline_since_ns`.
    pub async fn new_world_destinations(
        &self,
        baseline_since_ns: i64,
        w: Window,
        limit: u32,
    ) -> Result<Vec<NewWorldDestination>> {
        let [a, b, c] = Self::window(w, limit);
        self.fetch(
            &NEW_WORLD_DESTINATIONS,
            &[("baseline_since_ns", baseline_since_ns.into()), a, b, c],
        )
        .await
    }

    /// [`DNS_FAILURES`].
    pub async fn dns_failures(&self, w: Window, limit: u32) -> Result<Vec<DnsFailure>> {
        self.fetch(&DNS_FAILURES, &Self::window(w, limit)).await
    }

    /// [`TCP_RESETS`].
    pub async fn tcp_resets(&self, w: Window, limit: u32) -> Result<Vec<TcpReset>> {
        self.fetch(&TCP_RESETS, &Self::window(w, limit)).await
    }

    /// [`POD_FLOWS`]: flows of `namespace/pod` within `around_ns` of `at_ns`.
    pub async fn pod_flows(
        &self,
        namespace: &str,
        pod: &str,
        at_ns: i64,
        around_ns: i64,
        limit: u32,
    ) -> Result<Vec<PodFlow>> {
        self.fetch(
            &POD_FLOWS,
            &[
                ("namespace", namespace.into()),
                ("pod", pod.into()),
                ("at_ns", at_ns.into()),
                ("around_ns", around_ns.into()),
                ("limit", limit.into()),
            ],
        )
        .await
    }

    /// [`SERVICE_MAP_EDGES`].
    pub async fn service_map_edges(&self, w: Window, limit: u32) -> Result<Vec<ServiceMapEdge>> {
        self.fetch(&SERVICE_MAP_EDGES, &Self::window(w, limit))
            .await
    }

    /// Settles up to `limit` minutes (migration 0006): for each minute of
    /// [`SETTLE_CANDIDATES`] (no write for `quiet_s` seconds, not settled at its latest write),
    /// writes its edges' exact counts ([`SETTLE_MINUTE`]) and then the run's marker
    /// ([`SETTLE_MARK`]), after which [`SERVICE_MAP_EDGES`] reads that minute as plain numbers.
    /// Returns the minutes settled. Idempotent and safe to run from several relays at once: a
    /// run cut short leaves rows that are never read, and of two runs that saw the same write
    /// one is read. The relay runs it periodically with `quiet_s` 60; tests and benchmarks use
    /// 0 once their writes are done.
    pub async fn settle(&self, quiet_s: u32, limit: u32) -> Result<Vec<SettleCandidate>> {
        let minutes: Vec<SettleCandidate> = self
            .fetch(
                &SETTLE_CANDIDATES,
                &[("quiet_s", quiet_s.into()), ("limit", limit.into())],
            )
            .await?;
        for m in &minutes {
            let id = settle_id();
            let cluster = || ParamValue::from(m.cluster.as_str());
            self.execute(
                &SETTLE_MINUTE,
                &[
                    ("settle_id", ParamValue::UInt(id)),
                    ("cluster", cluster()),
                    ("minute_s", m.minute_s.into()),
                ],
            )
            .await?;
            self.execute(
                &SETTLE_MARK,
                &[
                    ("cluster", cluster()),
                    ("minute_s", m.minute_s.into()),
                    ("written_s", m.written_s.into()),
                    ("settle_id", ParamValue::UInt(id)),
                ],
            )
            .await?;
        }
        Ok(minutes)
    }

    async fn execute(&self, spec: &QuerySpec, params: &[(&str, ParamValue)]) -> Result<()> {
        self.prepare(spec, params)?
            .execute()
            .await
            .map_err(ch_err(format!("running query {}", spec.name)))
    }

    /// [`HISTORY`]: stored flows as rows; [`FlowRow::to_flow`] turns them back into Flows.
    pub async fn history(&self, filter: &HistoryFilter) -> Result<Vec<FlowRow>> {
        self.fetch(&HISTORY, &history_params(filter)).await
    }
}

/// The parameters of [`HISTORY`] for a filter.
pub fn history_params(f: &HistoryFilter) -> Vec<(&'static str, ParamValue)> {
    vec![
        ("since_ns", f.window.since_ns.into()),
        ("until_ns", f.window.until_ns.into()),
        ("cluster", f.cluster.as_str().into()),
        ("node_name", f.node_name.as_str().into()),
        ("namespace", f.namespace.as_str().into()),
        ("pod", f.pod.as_str().into()),
        ("verdict", f.verdict.as_str().into()),
        ("descending", f.descending.into()),
        ("paged", f.after.is_some().into()),
        (
            "after_time_ns",
            f.after.as_ref().map_or(0, |c| c.time_ns).into(),
        ),
        (
            "after_uuid",
            f.after
                .as_ref()
                .map_or(String::new(), |c| c.uuid.clone())
                .into(),
        ),
        ("limit", f.limit.into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_query_parses_and_declares_consistent_parameters() {
        for spec in ALL {
            let params = spec.parameters().unwrap();
            assert!(!params.is_empty(), "{} has no parameters", spec.name);
            assert!(
                params.iter().any(|(n, t)| n == "limit" && t == "UInt32"),
                "{} has no limit",
                spec.name
            );
            assert!(!spec.text().contains('?'), "{} contains '?'", spec.name);
            assert!(
                spec.sql.starts_with("-- "),
                "{} starts without its documentation",
                spec.name
            );
            for (name, _) in &params {
                assert!(
                    spec.sql.contains(&format!("--param_{name}=")),
                    "{}: the example does not show --param_{name}",
                    spec.name
                );
            }
        }
    }

    #[test]
    fn cluster_mode_rewrites_only_the_limit_by_queries() {
        for spec in ALL {
            let text = distributed_text(spec.sql);
            let expected = ["history", "pod_flows"].contains(&spec.name);
            assert_eq!(text.is_some(), expected, "{}", spec.name);
            if let Some(t) = text {
                assert!(t.starts_with("SELECT * FROM\n(\n"), "{t}");
                assert!(
                    t.ends_with("ORDER BY time_ns, uuid\nLIMIT {limit:UInt32}\nSETTINGS distributed_group_by_no_merge = 1")
                        || t.ends_with("ORDER BY if({descending:UInt8} = 1, -time_ns, time_ns), uuid\nLIMIT {limit:UInt32}\nSETTINGS distributed_group_by_no_merge = 1"),
                    "{t}"
                );
                // Same parameters.
                let spec2 = QuerySpec {
                    name: spec.name,
                    sql: Box::leak(t.into_boxed_str()),
                };
                assert_eq!(spec2.parameters().unwrap(), spec.parameters().unwrap());
            }
        }
    }

    #[test]
    fn history_selects_flow_row_columns_in_order() {
        use clickhouse::Row;
        let text = HISTORY.text();
        let list = &text[text.find("SELECT").unwrap() + 6..text.find("FROM flows").unwrap()];
        let columns: Vec<&str> = list.split(',').map(str::trim).collect();
        assert_eq!(columns, FlowRow::COLUMN_NAMES);
    }

    #[test]
    fn parameters_are_checked() {
        let ok = [
            ("since_ns", ParamValue::Int(1)),
            ("until_ns", ParamValue::Int(2)),
            ("limit", ParamValue::UInt(3)),
        ];
        check_params(&TOP_TALKERS, &ok).unwrap();
        let missing = &ok[..2];
        let e = check_params(&TOP_TALKERS, missing).unwrap_err().to_string();
        assert!(e.contains("limit") && e.contains("missing"), "{e}");
        let mut extra = ok.to_vec();
        extra.push(("bogus", ParamValue::UInt(1)));
        let e = check_params(&TOP_TALKERS, &extra).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let mut wrong = ok.to_vec();
        wrong[2] = ("limit", ParamValue::String("1; DROP TABLE flows".into()));
        let e = check_params(&TOP_TALKERS, &wrong).unwrap_err().to_string();
        assert!(e.contains("expects a UInt32"), "{e}");
        wrong[2] = ("limit", ParamValue::UInt(1 << 40));
        assert!(check_params(&TOP_TALKERS, &wrong).is_err());
        wrong[2] = ("limit", ParamValue::Int(-1));
        assert!(check_params(&TOP_TALKERS, &wrong).is_err());
    }

    #[test]
    fn modern_parameter_texts_escape_backslashes_and_field_ends() {
        assert_eq!(modern_param_text(&ParamValue::Int(-5)), "-5");
        assert_eq!(modern_param_text(&ParamValue::UInt(7)), "7");
        assert_eq!(modern_param_text(&"a\\'b\tc\nd\0".into()), r"a\\'b\tc\nd\0");
    }

    #[test]
    fn legacy_binding_escapes_hostile_strings() {
        let client = Client::default();
        let mut params = history_params(&HistoryFilter::window(
            Window {
                since_ns: -7,
                until_ns: 9,
            },
            10,
        ));
        let hostile = r"x' OR 1=1; DROP TABLE flows; --\'?{pod:String}`";
        params[5] = ("pod", hostile.into());
        let query = bind_legacy(&client, &HISTORY, &params).unwrap();
        let sql = query.sql_display().to_string();
        assert!(!sql.contains("{pod:String}'"), "placeholder left: {sql}");
        let escaped = r"'x\' OR 1=1; DROP TABLE flows; --\\\'?{pod:String}\`'";
        assert_eq!(sql.matches(escaped).count(), 3, "{sql}");
        assert!(sql.contains("time_ns >= -7"), "{sql}");
        assert!(sql.contains("LIMIT 10"), "{sql}");
    }
}
