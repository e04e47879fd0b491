//! Logging of the Periscope binaries (agent and relay), set up once by [`init`]:
//!
//! - the format on stderr: [`LogFormat::Text`] (tracing's usual lines) or [`LogFormat::Json`],
//!   one object per line: `{"timestamp":"2026-12-07T23:35:16.123456Z","level":"WARN",
//!   "target":"periscope_relay::peers","message":"...","fields":{"peer":"10.0.0.1:4244"}}`
//!   (plus `"spans":[...]`, the names of the enclosing spans, when there are any);
//! - the filter (tracing's env-filter syntax: `info`, `warn,periscope_relay=debug`), changeable
//!   while the process runs through the [`LogHandle`] (the binaries expose it over HTTP:
//!   `GET`/`PUT /log-level`). A bad directive is refused and the filter in force stays;
//! - optionally, shipping: events at or above a minimum level ([`ShipOptions`]) are copied
//!   into a bounded queue ([`ShipQueue`]) that never makes the logging call wait: a full queue
//!   drops the event and counts it ([`ShipStats::dropped`]). With the `clickhouse` feature,
//!   [`clickhouse::Shipper`] inserts them, batched, into the `logs` table.
//!
//! The shipping path never ships its own events: while the shipper runs, a thread-local guard
//! keeps the events it causes (the ClickHouse client's, its own warnings) out of the queue; they
//! still reach stderr.

#![forbid(unsafe_code)]

use std::cell::Cell;
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

#[cfg(feature = "clickhouse")]
pub mod clickhouse;

/// Target of the shipper's own events: they go to stderr, never into the shipping queue.
pub const SHIP_TARGET: &str = "periscope_logging::ship";

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A log filter does not parse.
    #[error("log filter {directive:?}: {reason}")]
    BadFilter {
        /// The filter given.
        directive: String,
        /// What is wrong with it (tracing's message, naming the bad directive).
        reason: String,
    },
    /// A log format is neither `text` nor `json`.
    #[error("log format {0:?}: expected text or json")]
    BadFormat(String),
    /// A minimum level is not a level.
    #[error("log level {0:?}: expected error, warn, info, debug or trace")]
    BadLevel(String),
    /// A global subscriber was already installed, or the filter could not be swapped.
    #[error("logging: {0}")]
    Init(String),
}

/// How events are written on stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// tracing's human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (see the crate documentation).
    Json,
}

impl FromStr for LogFormat {
    type Err = LogError;
    fn from_str(s: &str) -> Result<Self, LogError> {
        match s.trim() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(LogError::BadFormat(other.to_owned())),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// Parses a level name (`error`, `warn`, `info`, `debug`, `trace`; any case).
pub fn parse_level(s: &str) -> Result<Level, LogError> {
    Level::from_str(s.trim()).map_err(|_| LogError::BadLevel(s.to_owned()))
}

/// Parses a filter in tracing's env-filter syntax; an empty one is refused (it would say
/// nothing about what to log).
pub fn parse_filter(directive: &str) -> Result<EnvFilter, LogError> {
    let bad = |reason: String| LogError::BadFilter {
        directive: directive.to_owned(),
        reason,
    };
    if directive.trim().is_empty() {
        return Err(bad(
            "is empty (e.g. info, or warn,periscope_relay=debug)".into()
        ));
    }
    EnvFilter::builder().parse(directive.trim()).map_err(|e| {
        // Name the directive at fault when the filter has several.
        let culprit = directive
            .split(',')
            .map(str::trim)
            .find(|d| !d.is_empty() && EnvFilter::builder().parse(d).is_err());
        match culprit {
            Some(d) if d != directive.trim() => bad(format!("directive {d:?}: {e}")),
            _ => bad(e.to_string()),
        }
    })
}

/// Changes the log filter of a running process. Cheap to clone.
#[derive(Clone)]
pub struct LogHandle {
    reload: reload::Handle<EnvFilter, Registry>,
}

impl LogHandle {
    /// The filter in force, in env-filter syntax.
    pub fn current(&self) -> String {
        self.reload
            .with_current(|f| f.to_string())
            .unwrap_or_default()
    }

    /// Replaces the filter; a directive that does not parse is refused and the filter in force
    /// stays. Returns the new filter.
    pub fn set(&self, directive: &str) -> Result<String, LogError> {
        let filter = parse_filter(directive)?;
        self.reload
            .reload(filter)
            .map_err(|e| LogError::Init(e.to_string()))?;
        Ok(self.current())
    }
}

/// The `/log-level` HTTP endpoint of the binaries, whatever their HTTP server: `GET` answers
/// the filter in force; `PUT` or `POST` with the new filter as the body (env-filter syntax,
/// e.g. `info,periscope_relay=debug`) sets it, answering the new filter, or `400` naming what
/// is wrong (the filter in force then stays). Returns the status code and the body.
pub fn http_log_level(handle: &LogHandle, method: &str, body: &str) -> (u16, String) {
    match method {
        "GET" | "HEAD" => (200, format!("{}\n", handle.current())),
        "PUT" | "POST" => match handle.set(body) {
            Ok(now) => {
                tracing::info!(filter = %now, "log filter changed");
                (200, format!("{now}\n"))
            }
            Err(e) => (400, format!("{e}; the filter in force stays: {}\n", handle.current())),
        },
        _ => (
            405,
            "GET /log-level answers the log filter; PUT /log-level with a filter as the body sets it\n"
                .to_owned(),
        ),
    }
}

/// Which events to ship, and how many may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShipOptions {
    /// Least severe level shipped (`WARN`: warnings and errors). Events must also pass the log
    /// filter.
    pub min_level: Level,
    /// Events that may wait for the shipper; beyond, events are dropped and counted.
    pub capacity: usize,
}

impl Default for ShipOptions {
    fn default() -> Self {
        Self {
            min_level: Level::WARN,
            capacity: 10_000,
        }
    }
}

/// What [`init`] sets up.
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    /// The log filter (env-filter syntax).
    pub filter: String,
    /// The format on stderr.
    pub format: LogFormat,
    /// Shipping of events (None: off).
    pub ship: Option<ShipOptions>,
}

/// One shipped event.
#[derive(Clone, Debug, PartialEq)]
pub struct ShippedEvent {
    /// When it happened, ns since the Unix epoch.
    pub time_ns: i64,
    /// Its level.
    pub level: Level,
    /// Its target (normally the module path).
    pub target: String,
    /// Its message.
    pub message: String,
    /// Its other fields, as a JSON object.
    pub fields: String,
}

/// Counters of the shipping path, cumulative since start.
#[derive(Debug, Default)]
pub struct ShipStats {
    /// Events dropped because the queue was full (or the shipper had stopped).
    pub dropped: AtomicU64,
    /// Events inserted into the destination.
    pub shipped: AtomicU64,
    /// Events lost after their insert failed (the shipper's buffer was full).
    pub failed: AtomicU64,
    /// Failed inserts.
    pub insert_errors: AtomicU64,
}

/// The receiving end of the shipping queue, for a shipper.
pub struct ShipQueue {
    /// Shipped events, oldest first.
    pub rx: tokio::sync::mpsc::Receiver<ShippedEvent>,
    /// The counters (shared with the layer).
    pub stats: Arc<ShipStats>,
}

thread_local! {
    /// Set while the shipper runs on this thread: its own events are not shipped.
    static SHIPPING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with shipping suppressed on this thread.
pub fn without_shipping<T>(f: impl FnOnce() -> T) -> T {
    let before = SHIPPING.with(|s| s.replace(true));
    let out = f();
    SHIPPING.with(|s| s.set(before));
    out
}

/// A future polled with shipping suppressed (see [`without_shipping`]).
pub struct Unshipped<F>(pub std::pin::Pin<Box<F>>);

impl<F: std::future::Future> std::future::Future for Unshipped<F> {
    type Output = F::Output;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        without_shipping(|| self.0.as_mut().poll(cx))
    }
}

/// The layer that copies events into the shipping queue.
pub struct ShipLayer {
    tx: tokio::sync::mpsc::Sender<ShippedEvent>,
    min_level: Level,
    stats: Arc<ShipStats>,
}

impl ShipLayer {
    /// A layer and its queue.
    pub fn new(options: ShipOptions) -> (Self, ShipQueue) {
        let (tx, rx) = tokio::sync::mpsc::channel(options.capacity.max(1));
        let stats = Arc::new(ShipStats::default());
        (
            Self {
                tx,
                min_level: options.min_level,
                stats: stats.clone(),
            },
            ShipQueue { rx, stats },
        )
    }
}

impl<S: Subscriber> Layer<S> for ShipLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        // Levels compare by verbosity: ERROR < WARN < INFO.
        if *meta.level() > self.min_level
            || meta.target() == SHIP_TARGET
            || SHIPPING.with(|s| s.get())
        {
            return;
        }
        let fields = EventFields::of(event);
        let shipped = ShippedEvent {
            time_ns: now_ns(),
            level: *meta.level(),
            target: meta.target().to_owned(),
            message: fields.message,
            fields: Value::Object(fields.fields).to_string(),
        };
        if self.tx.try_send(shipped).is_err() {
            self.stats.dropped.fetch_add(1, Relaxed);
        }
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// An event's message and other fields.
#[derive(Debug, Default)]
pub struct EventFields {
    /// The `message` field.
    pub message: String,
    /// The other fields, JSON-typed where tracing knows the type, else their text.
    pub fields: Map<String, Value>,
}

impl EventFields {
    /// Collects the fields of `event`.
    pub fn of(event: &Event<'_>) -> Self {
        let mut f = Self::default();
        event.record(&mut f);
        f
    }

    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
        } else if !field.name().starts_with("log.") {
            self.fields.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for EventFields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
}

/// The JSON line format (see the crate documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonFormat;

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut timestamp = String::new();
        tracing_subscriber::fmt::time::SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let meta = event.metadata();
        let fields = EventFields::of(event);
        let s = |v: &str| Value::String(v.to_owned()).to_string();
        let mut line = format!(
            "{{\"timestamp\":{},\"level\":{},\"target\":{},\"message\":{},\"fields\":{}",
            s(&timestamp),
            s(meta.level().as_str()),
            s(meta.target()),
            s(&fields.message),
            Value::Object(fields.fields),
        );
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| Value::String(span.name().to_owned()))
                .collect();
            write!(line, ",\"spans\":{}", Value::Array(spans))?;
        }
        writeln!(writer, "{line}}}")
    }
}

type Filtered = tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;

/// Builds the subscriber without installing it: events pass `options.filter` (changeable
/// through the returned handle) and go to `writer` in `options.format`, and to the shipping
/// queue when `options.ship` is set.
pub fn subscriber<W>(
    options: &LogOptions,
    writer: W,
) -> Result<
    (
        impl Subscriber + Send + Sync + 'static,
        LogHandle,
        Option<ShipQueue>,
    ),
    LogError,
>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let (filter, reload) = reload::Layer::new(parse_filter(&options.filter)?);
    let out: Box<dyn Layer<Filtered> + Send + Sync> = match options.format {
        LogFormat::Text => Box::new(tracing_subscriber::fmt::layer().with_writer(writer)),
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .event_format(JsonFormat)
                .with_writer(writer),
        ),
    };
    let (ship, queue) = match options.ship {
        Some(o) => {
            let (layer, queue) = ShipLayer::new(o);
            (Some(layer), Some(queue))
        }
        None => (None, None),
    };
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(out)
        .with(ship);
    Ok((subscriber, LogHandle { reload }, queue))
}

/// The shipping counters of the process, once [`init`] has turned shipping on.
static SHIPPING_STATS: std::sync::OnceLock<Arc<ShipStats>> = std::sync::OnceLock::new();

/// The shipping counters as Prometheus text (empty when shipping is off), for the binaries'
/// `/metrics`: `periscope_log_events_shipped_total`, `periscope_log_events_dropped_total`
/// (by reason: `queue_full`, `insert_failed`) and `periscope_log_insert_errors_total`.
pub fn prometheus() -> String {
    let Some(s) = SHIPPING_STATS.get() else {
        return String::new();
    };
    let l = |c: &AtomicU64| c.load(Relaxed);
    format!(
        "# HELP periscope_log_events_shipped_total Log events stored in ClickHouse's logs table.\n\
         # TYPE periscope_log_events_shipped_total counter\n\
         periscope_log_events_shipped_total {}\n\
         # HELP periscope_log_events_dropped_total Log events not stored: the queue was full, or their insert kept failing.\n\
         # TYPE periscope_log_events_dropped_total counter\n\
         periscope_log_events_dropped_total{{reason=\"queue_full\"}} {}\n\
         periscope_log_events_dropped_total{{reason=\"insert_failed\"}} {}\n\
         # HELP periscope_log_insert_errors_total Failed inserts into ClickHouse's logs table.\n\
         # TYPE periscope_log_insert_errors_total counter\n\
         periscope_log_insert_errors_total {}\n",
        l(&s.shipped),
        l(&s.dropped),
        l(&s.failed),
        l(&s.insert_errors)
    )
}

/// Installs the process's logging on stderr; returns the handle that changes the filter, and
/// the shipping queue when shipping is on (hand it to a shipper, or events pile up and are
/// dropped once it is full).
pub fn init(options: &LogOptions) -> Result<(LogHandle, Option<ShipQueue>), LogError> {
    let (subscriber, handle, queue) = subscriber(options, std::io::stderr)?;
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|e| LogError::Init(e.to_string()))?;
    if let Some(q) = &queue {
        let _ = SHIPPING_STATS.set(q.stats.clone());
    }
    Ok((handle, queue))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    impl Buf {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    fn options(filter: &str, format: LogFormat) -> LogOptions {
        LogOptions {
            filter: filter.into(),
            format,
            ship: None,
        }
    }

    #[test]
    fn json_lines_carry_timestamp_level_target_message_and_fields() {
        let buf = Buf::default();
        let (sub, _, _) = subscriber(&options("info", LogFormat::Json), buf.clone()).unwrap();
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("peer_loop");
            let _g = span.enter();
            tracing::warn!(target: "periscope_relay::peers", peer = "10.0.0.1:4244", attempts = 3u64,
                healthy = false, error = %"connection \"refused\"", "peer down");
            tracing::debug!("not at info");
        });
        let lines = buf.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let v: Value = serde_json::from_str(&lines[0]).expect("one JSON object per line");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], "periscope_relay::peers");
        assert_eq!(v["message"], "peer down");
        assert_eq!(v["fields"]["peer"], "10.0.0.1:4244");
        assert_eq!(v["fields"]["attempts"], 3);
        assert_eq!(v["fields"]["healthy"], false);
        assert_eq!(v["fields"]["error"], "connection \"refused\"");
        assert_eq!(v["spans"], serde_json::json!(["peer_loop"]));
        let ts = v["timestamp"].as_str().unwrap();
        assert!(
            ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "{ts}"
        );
        assert!(lines[0].starts_with("{\"timestamp\":"), "{}", lines[0]);
    }

    #[test]
    fn text_stays_tracing_lines() {
        let buf = Buf::default();
        let (sub, _, _) = subscriber(&options("info", LogFormat::Text), buf.clone()).unwrap();
        tracing::subscriber::with_default(sub, || tracing::info!(n = 1, "hello"));
        let lines = buf.lines();
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].contains("INFO") && lines[0].contains("hello"),
            "{lines:?}"
        );
        assert!(!lines[0].starts_with('{'));
    }

    #[test]
    fn the_filter_changes_at_runtime_and_bad_directives_leave_it() {
        let buf = Buf::default();
        let (sub, handle, _) = subscriber(&options("info", LogFormat::Json), buf.clone()).unwrap();
        tracing::subscriber::with_default(sub, || {
            tracing::debug!("before");
            assert_eq!(handle.current(), "info");
            assert_eq!(
                handle.set("info,my_target=debug").unwrap(),
                "my_target=debug,info"
            );
            tracing::debug!(target: "my_target", "after");
            tracing::debug!(target: "other", "not this one");
            let e = handle.set("info,x=loud").unwrap_err().to_string();
            assert!(e.contains("directive \"x=loud\""), "{e}");
            let e = handle.set("  ").unwrap_err().to_string();
            assert!(e.contains("empty"), "{e}");
            assert_eq!(handle.current(), "my_target=debug,info");
            tracing::debug!(target: "my_target", "still");
        });
        let messages: Vec<String> = buf
            .lines()
            .iter()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["message"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(messages, ["after", "still"]);
    }

    #[test]
    fn shipping_takes_warn_and_above_drops_when_full_and_skips_the_shipper() {
        let buf = Buf::default();
        let mut o = options("debug", LogFormat::Text);
        o.ship = Some(ShipOptions {
            min_level: Level::WARN,
            capacity: 2,
        });
        let (sub, _, queue) = subscriber(&o, buf.clone()).unwrap();
        let mut queue = queue.unwrap();
        tracing::subscriber::with_default(sub, || {
            tracing::info!("not shipped");
            tracing::warn!(code = 7, "first");
            without_shipping(|| tracing::error!("from the shipper"));
            tracing::warn!(target: SHIP_TARGET, "shipper warning");
            tracing::error!("second");
            tracing::error!("third: queue full");
        });
        let a = queue.rx.try_recv().unwrap();
        assert_eq!((a.level, a.message.as_str()), (Level::WARN, "first"));
        assert_eq!(a.fields, r#"{"code":7}"#);
        assert!(a.time_ns > 1_600_000_000_000_000_000);
        let b = queue.rx.try_recv().unwrap();
        assert_eq!((b.level, b.message.as_str()), (Level::ERROR, "second"));
        assert!(queue.rx.try_recv().is_err());
        assert_eq!(queue.stats.dropped.load(Relaxed), 1);
        // Everything still reached the writer.
        assert_eq!(buf.lines().len(), 6);
    }

    #[test]
    fn formats_and_levels_parse() {
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!("text".parse::<LogFormat>().unwrap(), LogFormat::Text);
        assert!(
            "yaml"
                .parse::<LogFormat>()
                .unwrap_err()
                .to_string()
                .contains("yaml")
        );
        assert_eq!(parse_level("warn").unwrap(), Level::WARN);
        assert_eq!(parse_level("ERROR").unwrap(), Level::ERROR);
        assert!(parse_level("loud").is_err());
    }
}
