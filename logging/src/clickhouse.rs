//! [`Shipper`]: shipped log events, batched, into ClickHouse's `logs` table (storage migration
//! 0008; the relay's migrations create it, the agent only inserts).
//!
//! One INSERT per batch: when `max_rows` events wait, and every `period` otherwise. A failed
//! INSERT keeps its rows for the next attempt (at the next period), up to the queue's capacity;
//! older rows beyond are dropped and counted ([`ShipStats::failed`]). A batch whose INSERT
//! failed after reaching the server may be stored twice: log rows are not deduplicated.
//! Failures are reported on stderr (target [`SHIP_TARGET`], at most every 30 s), never shipped.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{SHIP_TARGET, ShipQueue, ShipStats, ShippedEvent, Unshipped};

/// Name of the logs table.
pub const LOGS_TABLE: &str = "logs";

/// A failure is reported at most this often.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// One row of `logs` (the insertable columns; `time` is derived from `time_ns` by the table).
#[derive(Clone, Debug, PartialEq, Eq, clickhouse::Row, Serialize)]
pub struct LogRow {
    /// When the event happened, ns since the Unix epoch.
    pub time_ns: i64,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: String,
    /// The event's target (module path).
    pub target: String,
    /// The message.
    pub message: String,
    /// The other fields, a JSON object.
    pub fields: String,
    /// The node (agent) or host (relay) that logged it.
    pub node: String,
    /// `agent` or `relay`.
    pub component: String,
    /// The cluster name.
    pub cluster: String,
}

/// Where and how to ship.
#[derive(Clone)]
pub struct ShipperConfig {
    /// The server (no database selected; validation is turned off, as 18.16 needs).
    pub client: clickhouse::Client,
    /// Database of the `logs` table.
    pub database: String,
    /// `agent` or `relay`.
    pub component: String,
    /// Node or host name stored in every row.
    pub node: String,
    /// Cluster name stored in every row.
    pub cluster: String,
    /// Events per INSERT at most.
    pub max_rows: usize,
    /// Longest an event waits for its INSERT.
    pub period: Duration,
    /// Longest one INSERT may take.
    pub timeout: Duration,
}

impl ShipperConfig {
    /// Defaults: batches of 1000 events at most, every 2 s, 10 s per INSERT.
    pub fn new(
        client: clickhouse::Client,
        database: impl Into<String>,
        component: impl Into<String>,
        node: impl Into<String>,
        cluster: impl Into<String>,
    ) -> Self {
        Self {
            client,
            database: database.into(),
            component: component.into(),
            node: node.into(),
            cluster: cluster.into(),
            max_rows: 1000,
            period: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
        }
    }
}

/// The running shipper.
pub struct Shipper {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    stats: Arc<ShipStats>,
}

impl Shipper {
    /// Starts shipping the events of `queue` on the current tokio runtime.
    pub fn start(queue: ShipQueue, cfg: ShipperConfig) -> Self {
        let (stop, stopped) = oneshot::channel();
        let stats = queue.stats.clone();
        let task = tokio::spawn(Unshipped(Box::pin(run(queue, cfg, stopped))));
        Self {
            stop: Some(stop),
            task,
            stats,
        }
    }

    /// The counters.
    pub fn stats(&self) -> &ShipStats {
        &self.stats
    }

    /// Ships what is queued (one last INSERT, `grace` at most) and stops.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

fn row(cfg: &ShipperConfig, e: ShippedEvent) -> LogRow {
    LogRow {
        time_ns: e.time_ns,
        level: e.level.as_str().to_owned(),
        target: e.target,
        message: e.message,
        fields: e.fields,
        node: cfg.node.clone(),
        component: cfg.component.clone(),
        cluster: cfg.cluster.clone(),
    }
}

async fn insert(client: &clickhouse::Client, rows: &[LogRow]) -> clickhouse::error::Result<()> {
    let mut insert = client.insert::<LogRow>(LOGS_TABLE).await?;
    for r in rows {
        insert.write(r).await?;
    }
    insert.end().await
}

struct Batch {
    client: clickhouse::Client,
    rows: Vec<LogRow>,
    /// Rows kept for a retry at most.
    keep: usize,
    timeout: Duration,
    stats: Arc<ShipStats>,
    warned: Option<Instant>,
    database: String,
}

impl Batch {
    async fn flush(&mut self) {
        if self.rows.is_empty() {
            return;
        }
        let error = match tokio::time::timeout(self.timeout, insert(&self.client, &self.rows)).await
        {
            Ok(Ok(())) => {
                self.stats
                    .shipped
                    .fetch_add(self.rows.len() as u64, Relaxed);
                self.rows.clear();
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        self.stats.insert_errors.fetch_add(1, Relaxed);
        if self.rows.len() > self.keep {
            let excess = self.rows.len() - self.keep;
            self.rows.drain(..excess);
            self.stats.failed.fetch_add(excess as u64, Relaxed);
        }
        let now = Instant::now();
        if self
            .warned
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
        {
            self.warned = Some(now);
            tracing::warn!(target: SHIP_TARGET, database = %self.database, table = LOGS_TABLE,
                error = %error, waiting = self.rows.len(),
                lost = self.stats.failed.load(Relaxed) + self.stats.dropped.load(Relaxed),
                "cannot store log events in ClickHouse; retrying");
        }
    }
}

async fn run(queue: ShipQueue, cfg: ShipperConfig, mut stop: oneshot::Receiver<()>) {
    let ShipQueue { mut rx, stats } = queue;
    let mut batch = Batch {
        client: cfg
            .client
            .clone()
            .with_database(&cfg.database)
            .with_validation(false),
        rows: Vec::new(),
        keep: rx.max_capacity().max(cfg.max_rows),
        timeout: cfg.timeout,
        stats,
        warned: None,
        database: cfg.database.clone(),
    };
    let mut tick = tokio::time::interval(cfg.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => {
                while let Ok(e) = rx.try_recv() {
                    batch.rows.push(row(&cfg, e));
                }
                batch.flush().await;
                return;
            }
            e = rx.recv() => match e {
                Some(e) => {
                    batch.rows.push(row(&cfg, e));
                    if batch.rows.len() >= cfg.max_rows {
                        batch.flush().await;
                    }
                }
                None => {
                    batch.flush().await;
                    return;
                }
            },
            _ = tick.tick() => batch.flush().await,
        }
    }
}
