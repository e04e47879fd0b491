//! Notification delivery: Alertmanager (`POST {url}/api/v2/alerts`), a generic JSON webhook and
//! the ClickHouse `alerts` table.
//!
//! Each receiver has its own task fed through a bounded queue: [`Dispatcher::dispatch`] never
//! waits (a full queue drops the batch and counts it), so a slow or dead receiver never holds up
//! the engine or the other receivers. A delivery is retried with exponential backoff and jitter
//! on transport errors, timeouts, 5xx, 408 and 429; other answers, and the last failed attempt,
//! count as failures and are logged.
//!
//! Alertmanager forgets a firing alert whose `endsAt` is unset after its `resolve_timeout`
//! (5m by default) unless the alert is posted again, as Prometheus does every minute; the
//! Alertmanager receiver therefore re-posts the alerts it knows to be firing every
//! [`AlertmanagerConfig::resend_interval`]. Alertmanager deduplicates them: its receivers are
//! notified according to its own `group_interval` / `repeat_interval`.
//!
//! HTTP only (no TLS): receivers are expected on the cluster network, or behind a local proxy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, StatusCode, Uri, header};
use hyper_util::client::legacy::{Client as HttpClient, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::engine::{Alert, NotificationKind, rfc3339};
use super::{Notification, rules::DurationSpec};

/// A receiver that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The URL does not parse or is not `http://`.
    #[error("alert receiver {receiver}: invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// Receiver name.
        receiver: String,
        /// The URL as configured.
        url: String,
        /// Why.
        reason: String,
    },
}

/// One failed delivery attempt.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The receiver answered with a non-2xx status.
    #[error("POST {url}: HTTP {status}: {body}")]
    Status {
        /// Target.
        url: String,
        /// Status.
        status: StatusCode,
        /// Start of the answer's body.
        body: String,
    },
    /// Connecting, sending or reading failed.
    #[error("POST {url}: {source}")]
    Transport {
        /// Target.
        url: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No complete answer within the timeout.
    #[error("POST {url}: no answer within {timeout:?}")]
    Timeout {
        /// Target.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
    /// Storing into ClickHouse failed.
    #[error("storing alerts: {0}")]
    Storage(#[from] periscope_storage::Error),
    /// The payload could not be encoded.
    #[error("encoding the payload: {0}")]
    Encode(#[from] serde_json::Error),
}

impl DeliveryError {
    /// Whether another attempt may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            DeliveryError::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
            }
            DeliveryError::Transport { .. }
            | DeliveryError::Timeout { .. }
            | DeliveryError::Storage(_) => true,
            DeliveryError::Encode(_) => false,
        }
    }
}

/// An Alertmanager receiver.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// Alertmanager's base URL, e.g. `http://alertmanager:9093` (`/api/v2/alerts` is appended
    /// unless the URL already ends with it).
    pub url: String,
    /// External base URL of the Periscope UI; alerts link to `{generator_url}/alerts/{fingerprint}`
    /// (`generatorURL`). Unset: no link.
    #[serde(default)]
    pub generator_url: Option<String>,
    /// How often firing alerts are posted again so that Alertmanager keeps them (default 1m; keep
    /// it below Alertmanager's `resolve_timeout`).
    #[serde(default = "default_resend")]
    pub resend_interval: DurationSpec,
}

fn default_resend() -> DurationSpec {
    DurationSpec(Duration::from_secs(60))
}

impl AlertmanagerConfig {
    /// A receiver for Alertmanager at `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            generator_url: None,
            resend_interval: default_resend(),
        }
    }
}

/// A generic webhook: each notification is `POST`ed as one JSON object (a [`Notification`]: the
/// alert's fields plus `"notification": "firing" | "repeat" | "resolved"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The URL to post to, e.g. `http://hooks.internal:8080/periscope`.
    pub url: String,
}

/// Where notifications go.
#[derive(Clone)]
pub enum Receiver {
    /// Alertmanager API v2.
    Alertmanager(AlertmanagerConfig),
    /// Generic JSON webhook.
    Webhook(WebhookConfig),
    /// The ClickHouse `alerts` table (one row per notification, see
    /// [`periscope_storage::AlertRow`]).
    ClickHouse {
        /// Client (with URL and credentials; [`periscope_storage::prepare_client`] is applied).
        /// Boxed: the client is much larger than the other variants.
        client: Box<clickhouse::Client>,
        /// Database holding the migrated schema.
        database: String,
    },
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Receiver::Alertmanager(c) => f.debug_tuple("Alertmanager").field(c).finish(),
            Receiver::Webhook(c) => f.debug_tuple("Webhook").field(c).finish(),
            Receiver::ClickHouse { database, .. } => f
                .debug_struct("ClickHouse")
                .field("database", database)
                .finish_non_exhaustive(),
        }
    }
}

/// Queueing and retry settings, shared by all receivers.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryConfig {
    /// Batches (one per engine tick with notifications) queued per receiver.
    pub queue_capacity: usize,
    /// Attempts per delivery, the first included.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles after each failure.
    pub initial_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// Timeout of one HTTP attempt (connect, send, read the answer).
    pub timeout: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 256,
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Counters of one receiver.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReceiverStats {
    /// `alertmanager <url>`, `webhook <url>` or `clickhouse <database>`.
    pub receiver: String,
    /// Deliveries that succeeded.
    pub delivered: u64,
    /// Attempts that failed and were retried.
    pub retries: u64,
    /// Deliveries given up (all attempts failed, or an answer that is not worth retrying).
    pub failed: u64,
    /// Batches dropped because the receiver's queue was full.
    pub dropped: u64,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    retries: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// The alert as Alertmanager's API v2 takes it (`postableAlert`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostableAlert {
    /// `alertname`, `severity`, group and rule labels.
    pub labels: BTreeMap<String, String>,
    /// Rendered annotations.
    pub annotations: BTreeMap<String, String>,
    /// When it fired (RFC 3339).
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    /// When it resolved (RFC 3339); absent while firing.
    #[serde(rename = "endsAt", default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    /// Link back to the alert in the UI.
    #[serde(
        rename = "generatorURL",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub generator_url: String,
}

impl PostableAlert {
    /// The Alertmanager form of `alert`; `generator_base` is the UI's external URL.
    pub fn from_alert(alert: &Alert, generator_base: Option<&str>) -> Self {
        let text = |t: SystemTime| rfc3339::to_text(t).unwrap_or_default();
        Self {
            labels: alert.labels.clone(),
            annotations: alert.annotations.clone(),
            starts_at: text(alert.starts_at.unwrap_or(alert.active_at)),
            ends_at: alert.ends_at.map(text),
            generator_url: generator_base.map_or_else(String::new, |base| {
                format!(
                    "{}/alerts/{}",
                    base.trim_end_matches('/'),
                    alert.fingerprint
                )
            }),
        }
    }
}

/// Hands notifications to the receivers' delivery tasks.
pub struct Dispatcher {
    sinks: Vec<SinkHandle>,
}

struct SinkHandle {
    name: String,
    tx: Option<mpsc::Sender<Arc<[Notification]>>>,
    counters: Arc<Counters>,
    task: Option<JoinHandle<()>>,
}

impl Dispatcher {
    /// Starts one delivery task per receiver. Must be called within a Tokio runtime.
    pub fn start(receivers: Vec<Receiver>, config: DeliveryConfig) -> Result<Self, NotifyError> {
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(HttpConnector::new());
        let mut sinks = Vec::new();
        for receiver in receivers {
            let sink = Sink::new(receiver, http.clone())?;
            let name = sink.name();
            let counters = Arc::new(Counters::default());
            let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
            let task = tokio::spawn(run_sink(sink, rx, config.clone(), counters.clone()));
            tracing::info!(receiver = %name, "alert receiver started");
            sinks.push(SinkHandle {
                name,
                tx: Some(tx),
                counters,
                task: Some(task),
            });
        }
        Ok(Self { sinks })
    }

    /// A dispatcher without receivers.
    pub fn none() -> Self {
        Self { sinks: Vec::new() }
    }

    /// Queues a batch for every receiver; never waits. A receiver whose queue is full loses the
    /// batch (counted in [`ReceiverStats::dropped`], logged).
    pub fn dispatch(&self, notifications: Vec<Notification>) {
        if notifications.is_empty() {
            return;
        }
        let batch: Arc<[Notification]> = notifications.into();
        for sink in &self.sinks {
            let Some(tx) = &sink.tx else { continue };
            if let Err(e) = tx.try_send(batch.clone()) {
                sink.counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    receiver = %sink.name,
                    notifications = batch.len(),
                    reason = %e,
                    "alert notifications dropped: the receiver's queue is full"
                );
            }
        }
    }

    /// Counters per receiver.
    pub fn stats(&self) -> Vec<ReceiverStats> {
        self.sinks
            .iter()
            .map(|s| ReceiverStats {
                receiver: s.name.clone(),
                delivered: s.counters.delivered.load(Ordering::Relaxed),
                retries: s.counters.retries.load(Ordering::Relaxed),
                failed: s.counters.failed.load(Ordering::Relaxed),
                dropped: s.counters.dropped.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Stops accepting notifications, lets the tasks deliver what is queued for up to `grace`,
    /// then aborts them.
    pub async fn shutdown(&mut self, grace: Duration) {
        for sink in &mut self.sinks {
            sink.tx = None;
        }
        let deadline = tokio::time::Instant::now() + grace;
        for sink in &mut self.sinks {
            if let Some(mut task) = sink.task.take()
                && tokio::time::timeout_at(deadline, &mut task).await.is_err()
            {
                tracing::warn!(receiver = %sink.name, "alert receiver still busy at shutdown: aborted");
                task.abort();
            }
        }
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        for sink in &mut self.sinks {
            if let Some(task) = sink.task.take() {
                task.abort();
            }
        }
    }
}

/// One receiver's delivery logic.
enum Sink {
    Alertmanager {
        http: HttpClient<HttpConnector, Full<Bytes>>,
        uri: Uri,
        generator_url: Option<String>,
        resend: Duration,
        /// Firing alerts by fingerprint, re-posted every `resend`.
        firing: BTreeMap<String, PostableAlert>,
    },
    Webhook {
        http: HttpClient<HttpConnector, Full<Bytes>>,
        uri: Uri,
    },
    ClickHouse {
        client: clickhouse::Client,
        database: String,
    },
}

/// One unit of delivery, retried as a whole.
enum Payload {
    Http(Bytes),
    Rows(Arc<[Notification]>),
}

fn http_uri(receiver: &str, url: &str, suffix: Option<&str>) -> Result<Uri, NotifyError> {
    let bad = |reason: &str| NotifyError::InvalidUrl {
        receiver: receiver.to_owned(),
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let mut text = url.trim().to_owned();
    if let Some(suffix) = suffix {
        let base = text.trim_end_matches('/');
        text = if base.ends_with(suffix) {
            base.to_owned()
        } else {
            format!("{base}{suffix}")
        };
    }
    let uri: Uri = text
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(bad("https is not supported; use http or a local TLS proxy")),
        _ => return Err(bad("expected an http:// URL")),
    }
    if uri.host().is_none() {
        return Err(bad("no host"));
    }
    Ok(uri)
}

impl Sink {
    fn new(
        receiver: Receiver,
        http: HttpClient<HttpConnector, Full<Bytes>>,
    ) -> Result<Self, NotifyError> {
        Ok(match receiver {
            Receiver::Alertmanager(c) => Sink::Alertmanager {
                uri: http_uri("alertmanager", &c.url, Some("/api/v2/alerts"))?,
                http,
                generator_url: c.generator_url,
                resend: c.resend_interval.0.max(Duration::from_secs(1)),
                firing: BTreeMap::new(),
            },
            Receiver::Webhook(c) => Sink::Webhook {
                uri: http_uri("webhook", &c.url, None)?,
                http,
            },
            Receiver::ClickHouse { client, database } => Sink::ClickHouse {
                client: periscope_storage::prepare_client(*client),
                database,
            },
        })
    }

    fn name(&self) -> String {
        match self {
            Sink::Alertmanager { uri, .. } => format!("alertmanager {uri}"),
            Sink::Webhook { uri, .. } => format!("webhook {uri}"),
            Sink::ClickHouse { database, .. } => format!("clickhouse {database}"),
        }
    }

    fn resend_interval(&self) -> Option<Duration> {
        match self {
            Sink::Alertmanager { resend, .. } => Some(*resend),
            _ => None,
        }
    }

    /// Turns a batch into deliveries (and updates the firing set of Alertmanager).
    fn payloads(&mut self, batch: &Arc<[Notification]>) -> Result<Vec<Payload>, DeliveryError> {
        match self {
            Sink::Alertmanager {
                generator_url,
                firing,
                ..
            } => {
                let alerts: Vec<PostableAlert> = batch
                    .iter()
                    .map(|n| {
                        let p = PostableAlert::from_alert(&n.alert, generator_url.as_deref());
                        match n.kind {
                            NotificationKind::Firing | NotificationKind::Repeat => {
                                firing.insert(n.alert.fingerprint.clone(), p.clone());
                            }
                            NotificationKind::Resolved => {
                                firing.remove(&n.alert.fingerprint);
                            }
                        }
                        p
                    })
                    .collect();
                Ok(vec![Payload::Http(serde_json::to_vec(&alerts)?.into())])
            }
            Sink::Webhook { .. } => batch
                .iter()
                .map(|n| Ok(Payload::Http(serde_json::to_vec(n)?.into())))
                .collect(),
            Sink::ClickHouse { .. } => Ok(vec![Payload::Rows(batch.clone())]),
        }
    }

    /// The periodic re-post of firing alerts (Alertmanager only).
    fn resend_payload(&self) -> Result<Option<Payload>, DeliveryError> {
        match self {
            Sink::Alertmanager { firing, .. } if !firing.is_empty() => {
                let alerts: Vec<&PostableAlert> = firing.values().collect();
                Ok(Some(Payload::Http(serde_json::to_vec(&alerts)?.into())))
            }
            _ => Ok(None),
        }
    }

    async fn attempt(&self, payload: &Payload, timeout: Duration) -> Result<(), DeliveryError> {
        match (self, payload) {
            (
                Sink::Alertmanager { http, uri, .. } | Sink::Webhook { http, uri },
                Payload::Http(body),
            ) => post_json(http, uri, body.clone(), timeout).await,
            (Sink::ClickHouse { client, database }, Payload::Rows(batch)) => {
                super::storage::insert_notifications(client, database, batch).await?;
                Ok(())
            }
            // `payloads` never pairs them otherwise.
            _ => Ok(()),
        }
    }
}

async fn post_json(
    http: &HttpClient<HttpConnector, Full<Bytes>>,
    uri: &Uri,
    body: Bytes,
    timeout: Duration,
) -> Result<(), DeliveryError> {
    let url = uri.to_string();
    let request = Request::post(uri.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::USER_AGENT,
            concat!("periscope-relay/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))
        .map_err(|e| DeliveryError::Transport {
            url: url.clone(),
            source: e.into(),
        })?;
    let exchange = async {
        let response = http
            .request(request)
            .await
            .map_err(|e| DeliveryError::Transport {
                url: url.clone(),
                source: e.into(),
            })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| DeliveryError::Transport {
                url: url.clone(),
                source: e.into(),
            })?
            .to_bytes();
        Ok::<_, DeliveryError>((status, body))
    };
    let (status, body) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| DeliveryError::Timeout {
            url: url.clone(),
            timeout,
        })??;
    if status.is_success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    Err(DeliveryError::Status {
        url,
        status,
        body: text,
    })
}

/// Backoff before attempt `attempt + 1` (1-based `attempt` just failed), with up to 25% jitter.
fn backoff(config: &DeliveryConfig, attempt: u32) -> Duration {
    let exp = config
        .initial_backoff
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let base = exp.min(config.max_backoff);
    let jitter_ms = u64::try_from(base.as_millis() / 4).unwrap_or(0);
    base + Duration::from_millis(fastrand::u64(0..=jitter_ms))
}

async fn deliver(
    sink: &Sink,
    name: &str,
    payload: Payload,
    config: &DeliveryConfig,
    counters: &Counters,
) {
    let attempts = config.max_attempts.max(1);
    for attempt in 1..=attempts {
        match sink.attempt(&payload, config.timeout).await {
            Ok(()) => {
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(receiver = %name, attempt, "alert notification delivered");
                return;
            }
            Err(e) if e.retryable() && attempt < attempts => {
                counters.retries.fetch_add(1, Ordering::Relaxed);
                let wait = backoff(config, attempt);
                tracing::warn!(
                    receiver = %name,
                    attempt,
                    retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    error = %e,
                    "alert notification failed; retrying"
                );
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    receiver = %name,
                    attempt,
                    error = %e,
                    "alert notification failed; giving up"
                );
                return;
            }
        }
    }
}

async fn run_sink(
    mut sink: Sink,
    mut rx: mpsc::Receiver<Arc<[Notification]>>,
    config: DeliveryConfig,
    counters: Arc<Counters>,
) {
    let name = sink.name();
    let period = sink.resend_interval().unwrap_or(Duration::from_secs(3600));
    let mut resend = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let resends = sink.resend_interval().is_some();
    loop {
        let payloads = tokio::select! {
            batch = rx.recv() => match batch {
                Some(batch) => sink.payloads(&batch),
                None => break,
            },
            _ = resend.tick(), if resends => sink.resend_payload().map(|p| p.into_iter().collect()),
        };
        match payloads {
            Ok(payloads) => {
                for p in payloads {
                    deliver(&sink, &name, p, &config, &counters).await;
                }
            }
            Err(e) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(receiver = %name, error = %e, "alert notification not encodable");
            }
        }
    }
    tracing::debug!(receiver = %name, "alert receiver stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::AlertState;
    use std::time::UNIX_EPOCH;

    fn alert() -> Alert {
        Alert {
            fingerprint: "00aa".into(),
            rule: "DbDenied".into(),
            state: AlertState::Resolved,
            severity: "critical".into(),
            labels: [("alertname".to_owned(), "DbDenied".to_owned())].into(),
            group: BTreeMap::new(),
            annotations: [("summary".to_owned(), "x".to_owned())].into(),
            active_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            starts_at: Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_250)),
            ends_at: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_100)),
            count: 1,
            peak_count: 5,
            threshold: 3,
            window: Duration::from_secs(60),
            sample_flow_uuids: vec![],
        }
    }

    #[test]
    fn postable_alert_json_matches_the_alertmanager_api() {
        let p = PostableAlert::from_alert(&alert(), Some("http://ui:12000/"));
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "labels": {"alertname": "DbDenied"},
                "annotations": {"summary": "x"},
                "startsAt": "2023-11-14T22:13:20.250Z",
                "endsAt": "2023-11-14T22:15:00Z",
                "generatorURL": "http://ui:12000/alerts/00aa",
            })
        );
        let mut firing = alert();
        firing.ends_at = None;
        let json = serde_json::to_value(PostableAlert::from_alert(&firing, None)).unwrap();
        assert!(json.get("endsAt").is_none() && json.get("generatorURL").is_none());
    }

    #[test]
    fn urls_are_checked_and_completed() {
        assert_eq!(
            http_uri("am", "http://am:9093", Some("/api/v2/alerts")).unwrap(),
            "http://am:9093/api/v2/alerts"
        );
        assert_eq!(
            http_uri(
                "am",
                "http://am:9093/prefix/api/v2/alerts/",
                Some("/api/v2/alerts")
            )
            .unwrap(),
            "http://am:9093/prefix/api/v2/alerts"
        );
        let e = http_uri("am", "https://am:9093", None).unwrap_err();
        assert!(e.to_string().contains("https is not supported"), "{e}");
        assert!(http_uri("am", "am:9093", None).is_err());
        assert!(http_uri("am", "http://", None).is_err());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let c = DeliveryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..DeliveryConfig::default()
        };
        let b1 = backoff(&c, 1);
        let b3 = backoff(&c, 3);
        let b30 = backoff(&c, 30);
        assert!(
            b1 >= Duration::from_millis(100) && b1 < Duration::from_millis(126),
            "{b1:?}"
        );
        assert!(
            b3 >= Duration::from_millis(400) && b3 < Duration::from_millis(501),
            "{b3:?}"
        );
        assert!(
            b30 >= Duration::from_secs(1) && b30 <= Duration::from_millis(1250),
            "{b30:?}"
        );
    }

    #[test]
    fn only_transient_errors_are_retried() {
        let status = |s: u16| DeliveryError::Status {
            url: "u".into(),
            status: StatusCode::from_u16(s).unwrap(),
            body: String::new(),
        };
        assert!(status(500).retryable());
        assert!(status(503).retryable());
        assert!(status(429).retryable());
        assert!(!status(400).retryable());
        assert!(!status(404).retryable());
        assert!(
            DeliveryError::Timeout {
                url: "u".into(),
                timeout: Duration::from_secs(1)
            }
            .retryable()
        );
    }
}
