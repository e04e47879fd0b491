//! The relay's HTTP API (JSON, axum): what `periscope alerts` and `periscope status` read beside
//! the gRPC Observer API, and what the web UI will build on.
//!
//! - `GET /api/v1/alerts`: firing, pending and recently resolved alerts (`alerts::Alert` JSON);
//!   `?state=firing|pending|resolved` selects one state.
//! - `GET /api/v1/status`: the storage's and the alerting's counters.
//! - `GET /metrics`: the same counters, and the peers', for Prometheus ([`crate::metrics`]).
//! - `GET /log-level`: the log filter in force; `PUT /log-level` (or POST) with a filter as the
//!   body changes it ([`periscope_logging::http_log_level`]; 400 and no change when it does not
//!   parse).
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::alerts::{AlertState, Alerting};

/// What the status endpoint reports about storage.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StorageStatus {
    /// ClickHouse, with the writer's counters.
    Clickhouse(crate::store::WriterStats),
    /// The in-memory window.
    Window(crate::window::WindowStats),
}

/// Where the API's answers come from.
pub struct ApiState {
    /// The alert engine.
    pub alerting: Arc<Alerting>,
    /// The storage's counters, read on demand.
    pub storage: Box<dyn Fn() -> StorageStatus + Send + Sync>,
    /// Flows the relay's consumers missed because they fell behind the ingest stream.
    pub ingest_lagged: Arc<std::sync::atomic::AtomicU64>,
    /// The peers.
    pub pool: Arc<crate::peers::Pool>,
}

#[derive(Deserialize)]
struct AlertsQuery {
    state: Option<String>,
}

async fn alerts(State(s): State<Arc<ApiState>>, Query(q): Query<AlertsQuery>) -> impl IntoResponse {
    let want = match q.state.as_deref() {
        None | Some("") | Some("all") => None,
        Some("firing") => Some(AlertState::Firing),
        Some("pending") => Some(AlertState::Pending),
        Some("resolved") => Some(AlertState::Resolved),
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("state {other:?}: expected firing, pending, resolved or all\n"),
            )
                .into_response();
        }
    };
    let list: Vec<_> = s
        .alerting
        .alerts()
        .into_iter()
        .filter(|a| want.is_none_or(|w| a.state == w))
        .collect();
    Json(list).into_response()
}

async fn status(State(s): State<Arc<ApiState>>) -> impl IntoResponse {
    Json(serde_json::json!({
        "storage": (s.storage)(),
        "alerting": s.alerting.stats(),
        "ingest_lagged_flows": s.ingest_lagged.load(std::sync::atomic::Ordering::Relaxed),
    }))
}

async fn metrics(State(s): State<Arc<ApiState>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&s),
    )
}

/// The API's routes.
pub fn router(state: Arc<ApiState>) -> axum::Router {
    axum::Router::new()
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// `GET`/`PUT`/`POST /log-level` (behind the bearer token when one is configured).
pub fn log_level_router(handle: periscope_logging::LogHandle) -> axum::Router {
    async fn answer(
        State(handle): State<periscope_logging::LogHandle>,
        method: axum::http::Method,
        body: String,
    ) -> axum::response::Response {
        let (code, text) = periscope_logging::http_log_level(&handle, method.as_str(), &body);
        (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            text,
        )
            .into_response()
    }
    axum::Router::new()
        .route("/log-level", axum::routing::any(answer))
        .with_state(handle)
}
