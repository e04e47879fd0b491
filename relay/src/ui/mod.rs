//! The web UI's side of the relay: its static bundle and the JSON API of
//! [`periscope_ui_api`] (service map, flows, policies; alerts are in [`crate::api`]), with live
//! updates as server-sent events, behind an optional bearer token.
//!
//! - The map of the last [`live::LIVE_RETENTION`] comes from the relay's own live aggregation
//!   ([`live::LiveMap`], fed by the merged stream); older ranges from ClickHouse's per-minute
//!   view `flow_edges_1m`, or, without ClickHouse, from the in-memory window's flows.
//! - Flows come through the relay's Observer ([`crate::server::RelayService`]): history from the
//!   store when the request has a range, else the peers' newest flows.
//! - Parameters are checked by [`params`]; values reach storage only as bound parameters.
pub mod live;
pub mod params;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use periscope_proto::flow::{Flow, Verdict};
use periscope_proto::observer::{GetFlowsRequest, GetFlowsResponse, get_flows_response};
use periscope_ui_api::{
    DataSource, EdgeKey, FlowsPage, Lost, MapDelta, MapEdge, MapNode, NodeDetail, PolicyGraph,
    PolicyRef, ServiceMap, UiConfig, node_id,
};
use tokio::sync::broadcast::error::RecvError;

use crate::history::HistorySource;
use crate::ingest::Ingest;
use crate::server::RelayService;
use crate::store::History;
use live::{LiveMap, assemble, in_namespaces, split_id};
use params::{BadParam, FLOW_PARAMS, Params, flow_request, namespaces, now_ns, range, timestamp};

/// The policies in force, asked of the agents on demand.
pub type PolicySource = Arc<dyn Fn() -> BoxFuture<'static, PolicyGraph> + Send + Sync>;

/// Where maps of ranges the live map does not cover come from.
pub enum MapStore {
    /// ClickHouse's `flow_edges_1m`.
    Clickhouse(Box<History>),
    /// The in-memory window's flows.
    Window(Arc<dyn HistorySource>),
}

/// What the UI routes read.
pub struct UiState {
    /// The live map (fed by the relay's consumer of the merged stream).
    pub live: Arc<LiveMap>,
    /// Older ranges.
    pub store: MapStore,
    /// Flows: history and the peers' buffers.
    pub observer: Arc<RelayService>,
    /// The merged live stream.
    pub ingest: Ingest,
    /// The policies in force.
    pub policies: PolicySource,
    /// The UI's bundle.
    pub ui_dir: Option<PathBuf>,
    /// The relay's cluster name.
    pub cluster: String,
}

/// Most flows a browser's live tail gets per second; the rest are reported as lost.
pub const TAIL_RATE: u32 = 500;
/// How often a live map stream sends its changes.
pub const MAP_TICK: Duration = Duration::from_secs(1);
/// Parameters of the map routes.
const MAP_PARAMS: &[&str] = &["since", "until", "namespaces", "limit"];
const NODE_PARAMS: &[&str] = &["id", "since", "until", "namespaces"];
const DEFAULT_MAP_RANGE: Duration = Duration::from_secs(300);

/// An answer that is not the one asked for.
#[derive(Debug)]
pub enum ApiError {
    /// A parameter cannot be used (400).
    Param(BadParam),
    /// Storage or the peers failed (503).
    Unavailable(String),
}

impl From<BadParam> for ApiError {
    fn from(e: BadParam) -> Self {
        ApiError::Param(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Param(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
            ApiError::Unavailable(e) => {
                (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
            }
        }
    }
}

type Pairs = Query<Vec<(String, String)>>;

/// The map of `[since_ns, until_ns]` from the best source that covers it.
pub async fn map_of(
    s: &UiState,
    since_ns: i64,
    until_ns: i64,
    namespaces: &HashSet<String>,
    limit: usize,
) -> Result<ServiceMap, ApiError> {
    // Without ClickHouse the live map knows as much as the window of any range it reaches.
    let window_store = matches!(s.store, MapStore::Window(_));
    if s.live.covers(since_ns) || (window_store && s.live.within_retention(since_ns)) {
        return Ok(s.live.map(since_ns, until_ns, namespaces, limit));
    }
    let mut edges: HashMap<EdgeKey, MapEdge> = HashMap::new();
    let source = match &s.store {
        MapStore::Clickhouse(h) => {
            let rows = h
                .service_map_edges(since_ns, until_ns, 500_000)
                .await
                .map_err(|e| ApiError::Unavailable(format!("service map from ClickHouse: {e}")))?;
            for r in rows {
                let key = EdgeKey {
                    source: node_id(&r.source_namespace, &r.source),
                    destination: node_id(&r.destination_namespace, &r.destination),
                    port: r.destination_port,
                    protocol: r.protocol,
                };
                if !in_namespaces(&key, namespaces) {
                    continue;
                }
                let v = Verdict::from_str_name(&r.verdict).unwrap_or(Verdict::Unknown);
                edges
                    .entry(key)
                    .or_insert_with_key(|k| MapEdge::new(k.clone()))
                    .add(v, r.flows, r.bytes, r.first_seen_ns, r.last_seen_ns);
            }
            DataSource::Clickhouse
        }
        MapStore::Window(w) => {
            let req = GetFlowsRequest {
                since: Some(timestamp(since_ns)),
                until: Some(timestamp(until_ns)),
                number: 2_000_000,
                ..Default::default()
            };
            let flows = w.flows(&req).await.map_err(|e| {
                ApiError::Unavailable(format!("service map from the window: {}", e.message()))
            })?;
            for f in &flows {
                let Some(key) = periscope_ui_api::edge_of(f) else {
                    continue;
                };
                if !in_namespaces(&key, namespaces) {
                    continue;
                }
                let t = periscope_storage::time_ns_of(f.time.as_ref());
                edges
                    .entry(key)
                    .or_insert_with_key(|k| MapEdge::new(k.clone()))
                    .count(periscope_ui_api::verdict(f), f.periscope_bytes, t);
            }
            DataSource::Window
        }
    };
    Ok(assemble(
        since_ns,
        until_ns,
        source,
        edges.into_values(),
        limit,
    ))
}

struct MapArgs {
    since: i64,
    until: i64,
    namespaces: HashSet<String>,
    limit: usize,
}

fn map_args(p: &Params) -> Result<MapArgs, BadParam> {
    let (since, until) = range(p, Some(DEFAULT_MAP_RANGE))?;
    Ok(MapArgs {
        since: since.expect("a default"),
        until: until.unwrap_or_else(now_ns),
        namespaces: namespaces(p)?,
        limit: p.number("limit", 1..=20_000, 5_000)? as usize,
    })
}

async fn map(State(s): State<Arc<UiState>>, Query(q): Pairs) -> Result<Json<ServiceMap>, ApiError> {
    let a = map_args(&Params::new(q, MAP_PARAMS)?)?;
    Ok(Json(
        map_of(&s, a.since, a.until, &a.namespaces, a.limit).await?,
    ))
}

/// The changes from `old` to `new`.
fn delta(old: &ServiceMap, new: &ServiceMap) -> MapDelta {
    let old_nodes: HashSet<&str> = old.nodes.iter().map(|n| n.id.as_str()).collect();
    let new_nodes: HashSet<&str> = new.nodes.iter().map(|n| n.id.as_str()).collect();
    let old_edges: HashMap<&EdgeKey, &MapEdge> = old.edges.iter().map(|e| (&e.key, e)).collect();
    let new_keys: HashSet<&EdgeKey> = new.edges.iter().map(|e| &e.key).collect();
    MapDelta {
        since_ns: new.since_ns,
        until_ns: new.until_ns,
        nodes: new
            .nodes
            .iter()
            .filter(|n| !old_nodes.contains(n.id.as_str()))
            .cloned()
            .collect(),
        removed_nodes: old
            .nodes
            .iter()
            .filter(|n| !new_nodes.contains(n.id.as_str()))
            .map(|n| n.id.clone())
            .collect(),
        edges: new
            .edges
            .iter()
            .filter(|e| old_edges.get(&e.key).is_none_or(|o| *o != *e))
            .cloned()
            .collect(),
        removed_edges: old
            .edges
            .iter()
            .filter(|e| !new_keys.contains(&e.key))
            .map(|e| e.key.clone())
            .collect(),
    }
}

fn json_event(kind: &str, value: &impl serde::Serialize) -> Event {
    Event::default()
        .event(kind)
        .data(serde_json::to_string(value).unwrap_or_else(|_| "null".into()))
}

/// Live map stream: `map` first, then a `delta` each tick something changed. The range is the
/// last `since` (a duration, default 5m) up to now, sliding.
async fn map_stream(
    State(s): State<Arc<UiState>>,
    Query(q): Pairs,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let p = Params::new(q, MAP_PARAMS)?;
    if p.get("until").is_some() {
        return Err(BadParam {
            name: "until".into(),
            problem: "a live map ends now; ask /api/v1/map for a fixed range".into(),
        }
        .into());
    }
    let a = map_args(&p)?;
    let span = (now_ns() - a.since).max(1_000_000_000);
    if span > live::LIVE_RETENTION.as_nanos() as i64 {
        return Err(BadParam {
            name: "since".into(),
            problem: format!(
                "a live map reaches back at most {}",
                humantime::format_duration(live::LIVE_RETENTION)
            ),
        }
        .into());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(4);
    tokio::spawn(async move {
        let mut last: Option<ServiceMap> = None;
        let mut tick = tokio::time::interval(MAP_TICK);
        loop {
            tick.tick().await;
            let now = now_ns();
            let m = s.live.map(now - span, now, &a.namespaces, a.limit);
            let ev = match &last {
                None => json_event("map", &m),
                Some(old) => {
                    let d = delta(old, &m);
                    if d.nodes.is_empty()
                        && d.removed_nodes.is_empty()
                        && d.edges.is_empty()
                        && d.removed_edges.is_empty()
                    {
                        continue;
                    }
                    json_event("delta", &d)
                }
            };
            if tx.send(ev).await.is_err() {
                break;
            }
            last = Some(m);
        }
    });
    Ok(
        Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok))
            .keep_alive(KeepAlive::default()),
    )
}

async fn node_detail(
    State(s): State<Arc<UiState>>,
    Query(q): Pairs,
) -> Result<Json<NodeDetail>, ApiError> {
    let p = Params::new(q, NODE_PARAMS)?;
    let id = p
        .get("id")
        .ok_or_else(|| BadParam {
            name: "id".into(),
            problem: "missing: the map node id (namespace/name, or reserved:…)".into(),
        })?
        .to_string();
    params::check_node_id("id", &id)?;
    let a = map_args(&p)?;
    let m = map_of(&s, a.since, a.until, &a.namespaces, 20_000).await?;
    let (ns, name) = split_id(&id);
    let mut detail = NodeDetail {
        node: MapNode::new(ns, name),
        identities: vec![],
        labels: vec![],
        pods: vec![],
        inbound: m
            .edges
            .iter()
            .filter(|e| e.key.destination == id)
            .cloned()
            .collect(),
        outbound: m
            .edges
            .iter()
            .filter(|e| e.key.source == id)
            .cloned()
            .collect(),
        policies: vec![],
    };
    match s.live.facts(&id) {
        Some(f) => {
            detail.identities = f.identities.into_iter().collect();
            detail.labels = f.labels.into_iter().collect();
            detail.pods = f.pods.into_iter().collect();
        }
        None => {
            // Not seen live: from the range's stored flows that name it.
            let req = GetFlowsRequest {
                since: Some(timestamp(a.since)),
                until: Some(timestamp(a.until)),
                number: 2_000,
                whitelist: node_filters(&id),
                ..Default::default()
            };
            let flows = collect_flows(&s, req, 2_000, &|_| true).await?.flows;
            let mut ids = std::collections::BTreeSet::new();
            let mut labels = std::collections::BTreeSet::new();
            let mut pods = std::collections::BTreeSet::new();
            for f in &flows {
                for e in [f.source.as_ref(), f.destination.as_ref()]
                    .into_iter()
                    .flatten()
                {
                    let (ens, en) = periscope_ui_api::endpoint_name(e);
                    if node_id(&ens, &en) != id {
                        continue;
                    }
                    if e.identity != 0 {
                        ids.insert(e.identity);
                    }
                    labels.extend(e.labels.iter().cloned());
                    if !e.pod_name.is_empty() {
                        pods.insert(e.pod_name.clone());
                    }
                }
            }
            detail.identities = ids.into_iter().collect();
            detail.labels = labels.into_iter().take(64).collect();
            detail.pods = pods.into_iter().take(64).collect();
        }
    }
    let graph = (s.policies)().await;
    detail.policies = graph
        .policies
        .iter()
        .filter(|p| p.selects.contains(&id))
        .map(|p| p.policy.clone())
        .collect::<std::collections::BTreeSet<PolicyRef>>()
        .into_iter()
        .collect();
    Ok(Json(detail))
}

/// Filters that find flows naming node `id` at either end (coarse; checked exactly after).
fn node_filters(id: &str) -> Vec<periscope_proto::flow::FlowFilter> {
    use periscope_proto::flow::FlowFilter;
    match split_id(id) {
        ("", label) => vec![
            FlowFilter {
                source_label: vec![label.to_string()],
                ..Default::default()
            },
            FlowFilter {
                destination_label: vec![label.to_string()],
                ..Default::default()
            },
        ],
        (ns, _) => vec![
            FlowFilter {
                source_pod: vec![format!("{ns}/")],
                ..Default::default()
            },
            FlowFilter {
                destination_pod: vec![format!("{ns}/")],
                ..Default::default()
            },
        ],
    }
}

/// Asks the relay's Observer and keeps the newest `limit` flows passing `keep`.
async fn collect_flows(
    s: &UiState,
    req: GetFlowsRequest,
    limit: usize,
    keep: &(dyn Fn(&Flow) -> bool + Sync),
) -> Result<FlowsPage, ApiError> {
    let stored = req.since.is_some() || req.until.is_some();
    let asked = req.number;
    let mut stream = s.observer.flows(req).map_err(|e| {
        if e.code() == tonic::Code::InvalidArgument {
            ApiError::Param(BadParam {
                name: "filter".into(),
                problem: e.message().to_string(),
            })
        } else {
            ApiError::Unavailable(e.message().to_string())
        }
    })?;
    let mut out: std::collections::VecDeque<Flow> = Default::default();
    let mut seen = 0u64;
    let mut passed = 0usize;
    let deadline = tokio::time::sleep(Duration::from_secs(20));
    tokio::pin!(deadline);
    loop {
        let item = tokio::select! {
            i = stream.next() => i,
            _ = &mut deadline => break,
        };
        let Some(item) = item else { break };
        let r = item.map_err(|e| ApiError::Unavailable(e.message().to_string()))?;
        let Ok(GetFlowsResponse {
            response_types: Some(get_flows_response::ResponseTypes::Flow(f)),
            ..
        }) = r.decode()
        else {
            continue;
        };
        seen += 1;
        if !keep(&f) {
            continue;
        }
        passed += 1;
        out.push_back(f);
        if out.len() > limit {
            out.pop_front();
        }
    }
    let mut flows: Vec<Flow> = out.into();
    flows.sort_by_key(|f| f.time.as_ref().map(|t| (t.seconds, t.nanos)));
    Ok(FlowsPage {
        flows,
        source: if stored {
            match s.store {
                MapStore::Clickhouse(_) => DataSource::Clickhouse,
                MapStore::Window(_) => DataSource::Window,
            }
        } else {
            DataSource::Live
        },
        truncated: passed > limit || (asked > 0 && seen >= asked),
    })
}

async fn flows(
    State(s): State<Arc<UiState>>,
    Query(q): Pairs,
) -> Result<Json<FlowsPage>, ApiError> {
    let r = flow_request(&Params::new(q, FLOW_PARAMS)?, false)?;
    let check = r.check;
    Ok(Json(
        collect_flows(&s, r.get, r.limit, &|f| check.matches(f)).await?,
    ))
}

/// Live tail: `flow` events (the proto's JSON), `lost` when the browser fell behind or the rate
/// cap ([`TAIL_RATE`]) held flows back.
async fn flow_stream(
    State(s): State<Arc<UiState>>,
    Query(q): Pairs,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let r = flow_request(&Params::new(q, FLOW_PARAMS)?, true)?;
    let check = r.check;
    let mut rx = s.ingest.subscribe();
    let (tx, out) = tokio::sync::mpsc::channel::<Event>(256);
    tokio::spawn(async move {
        let mut lost = 0u64;
        let mut sent_this_second = 0u32;
        let mut second = tokio::time::Instant::now();
        let mut report = tokio::time::interval(Duration::from_secs(1));
        loop {
            let f = tokio::select! {
                r = rx.recv() => match r {
                    Ok(f) => Some(f),
                    Err(RecvError::Lagged(n)) => { lost += n; None }
                    Err(RecvError::Closed) => break,
                },
                _ = report.tick() => None,
                _ = tx.closed() => break,
            };
            if let Some(f) = f {
                if !check.matches(&f) {
                    continue;
                }
                if second.elapsed() >= Duration::from_secs(1) {
                    second = tokio::time::Instant::now();
                    sent_this_second = 0;
                }
                if sent_this_second >= TAIL_RATE {
                    lost += 1;
                    continue;
                }
                sent_this_second += 1;
                match tx.try_send(json_event("flow", &*f)) {
                    Ok(()) => {}
                    Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => lost += 1,
                    Err(_) => break,
                }
            }
            if lost > 0
                && tx
                    .try_send(json_event("lost", &Lost { flows: lost }))
                    .is_ok()
            {
                lost = 0;
            }
        }
    });
    Ok(
        Sse::new(tokio_stream::wrappers::ReceiverStream::new(out).map(Ok))
            .keep_alive(KeepAlive::default()),
    )
}

async fn policies(
    State(s): State<Arc<UiState>>,
    Query(q): Pairs,
) -> Result<Json<PolicyGraph>, ApiError> {
    let p = Params::new(q, &["since"])?;
    let (since, _) = range(&p, Some(DEFAULT_MAP_RANGE))?;
    let since = since.expect("a default");
    let mut g = (s.policies)().await;
    let denied = map_of(&s, since, now_ns(), &HashSet::new(), 20_000).await?;
    g.denied = denied.edges.into_iter().filter(|e| e.dropped > 0).collect();
    Ok(Json(g))
}

async fn ui_config(State(s): State<Arc<UiAccess>>) -> Json<UiConfig> {
    Json(UiConfig {
        auth_required: s.token.is_some(),
        cluster: s.cluster.clone(),
        history: s.history,
    })
}

/// Who may ask, and what the unauthenticated config route tells.
pub struct UiAccess {
    /// The bearer token (None: open).
    pub token: Option<String>,
    /// The relay's cluster.
    pub cluster: String,
    /// Where history comes from.
    pub history: DataSource,
}

/// Compares without an early exit on the first differing byte.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Wants the token on `/api/…` (but `ui-config`) and `/metrics`; static files are open.
pub async fn require_token(
    State(access): State<Arc<UiAccess>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(token) = &access.token else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    let protected = (path.starts_with("/api/") && path != "/api/v1/ui-config")
        || path == "/metrics"
        || path == "/log-level";
    if !protected {
        return next.run(req).await;
    }
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // Event streams: the browser's EventSource cannot set headers.
    let from_query = path.ends_with("/stream").then(|| {
        req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("access_token="))
                .map(|v| v.to_string())
        })
    });
    let given = from_header.map(str::to_string).or(from_query.flatten());
    match given {
        Some(g) if same_secret(g.as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => (StatusCode::UNAUTHORIZED, "the bearer token is wrong\n").into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "this relay wants a bearer token: Authorization: Bearer TOKEN\n",
        )
            .into_response(),
    }
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    }
}

/// The bundle's files; any other path without an extension is the app (`index.html`).
async fn static_file(State(s): State<Arc<UiState>>, uri: axum::http::Uri) -> Response {
    let Some(dir) = &s.ui_dir else {
        return (
            StatusCode::NOT_FOUND,
            "this relay serves no web UI: start it with --ui-dir (cargo xtask ui builds the bundle)\n",
        )
            .into_response();
    };
    let rel = uri.path().trim_start_matches('/');
    let rel = Path::new(if rel.is_empty() { "index.html" } else { rel });
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return (StatusCode::BAD_REQUEST, "bad path\n").into_response();
    }
    let mut path = dir.join(rel);
    if !path.is_file() {
        if rel.extension().is_some() {
            return (StatusCode::NOT_FOUND, "no such file\n").into_response();
        }
        path = dir.join("index.html");
    }
    let read = path.clone();
    match tokio::task::spawn_blocking(move || std::fs::read(read))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    {
        Ok(bytes) => {
            let mut r = bytes.into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type(&path)),
            );
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// The UI's routes; [`require_token`] is applied by the caller over these and the other API
/// routes.
pub fn router(state: Arc<UiState>, access: Arc<UiAccess>) -> Router {
    let config = Router::new()
        .route("/api/v1/ui-config", get(ui_config))
        .with_state(access);
    Router::new()
        .route("/api/v1/map", get(map))
        .route("/api/v1/map/stream", get(map_stream))
        .route("/api/v1/map/node", get(node_detail))
        .route("/api/v1/flows", get(flows))
        .route("/api/v1/flows/stream", get(flow_stream))
        .route("/api/v1/policies", get(policies))
        .fallback(get(static_file))
        .with_state(state)
        .merge(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_carry_changes_only() {
        let e = |s: &str, n: u64| {
            let mut m = MapEdge::new(EdgeKey {
                source: s.into(),
                destination: "a/db".into(),
                port: 5432,
                protocol: "TCP".into(),
            });
            m.add(Verdict::Forwarded, n, 0, 1, 2);
            m
        };
        let old = assemble(0, 1, DataSource::Live, [e("a/x", 1), e("a/y", 1)], 10);
        let new = assemble(0, 2, DataSource::Live, [e("a/x", 2), e("b/z", 1)], 10);
        let d = delta(&old, &new);
        assert_eq!(d.edges.len(), 2, "x changed, z new: {d:?}");
        assert_eq!(d.removed_edges.len(), 1);
        assert_eq!(d.removed_edges[0].source, "a/y");
        assert_eq!(
            d.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
            ["b/z"]
        );
        assert_eq!(d.removed_nodes, ["a/y"]);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
