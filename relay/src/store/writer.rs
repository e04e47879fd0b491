//! [`Writer`]: the live stream into ClickHouse, with the spool in between when needed.
//!
//! Three stages, each bounded:
//!
//! ```text
//! live merge --try_send--> queue (queue_flows) --> intake --> worker queue (queue_flows) --> worker --> ClickHouse
//!                 full: dropped, counted             |  worker down or behind                  |  commit failed
//!                                                    +------------> spool <--------------------+
//!                                                                     |  replayed by the worker when healthy
//! ```
//!
//! - [`WriterHandle::try_send`] never waits: when the queue is full the flows are dropped and
//!   counted ([`WriterStats::dropped_queue_full`]). The queue only fills when the intake cannot
//!   even write to local disk fast enough.
//! - The intake coalesces what is queued into batches and hands them to the worker, unless the
//!   worker is in an outage or its own queue is full: then the batch goes to the spool (its
//!   overflow is counted as [`WriterStats::dropped_spool`]).
//! - The worker writes rows into the clickhouse crate's [`Inserter`] (bounded by `max_rows`,
//!   `max_bytes` and `period`; a timer commits a quiet batch) and keeps the batch's flows until
//!   the commit succeeds. A failed write or commit sends that batch to the spool and starts an
//!   outage: everything goes to the spool until a probe (the migrations the first time, then
//!   `SELECT 1`) succeeds, retried with exponential backoff and jitter. When healthy, the worker
//!   replays spooled segments oldest first, one INSERT per segment, between live batches, and
//!   deletes each after its INSERT succeeded.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clickhouse::inserter::Inserter;
use periscope_proto::flow::Flow;
use periscope_storage::FlowRow;
use prost::Message;
use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};

use super::spool::{self, Spool};
use super::{Result, StoreConfig, StoreError};

/// First retry delay after a failure.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest retry delay while ClickHouse stays unreachable.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A spool segment whose INSERT the server refuses (it answers, with an error) this many times
/// in a row is set aside as `*.rejected`, so it cannot block the spool forever.
const MAX_REFUSALS: u32 = 5;
/// Legacy retention runs this often (partitions are days).
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// A repeated warning (spool full, still down) is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What [`WriterHandle::try_send`] did with a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Queued for storage.
    Queued,
    /// Dropped and counted: the queue was full, or the writer has stopped.
    Dropped,
}

/// A snapshot of the writer's counters (cumulative since start) and state, for metrics and
/// status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WriterStats {
    /// Flows accepted by [`WriterHandle::try_send`] / [`WriterHandle::send`].
    pub received: u64,
    /// Rows committed to ClickHouse (live and replayed).
    pub rows_written: u64,
    /// Successful INSERTs (live batches and replayed segments).
    pub batches: u64,
    /// Flows written to the spool.
    pub spooled_rows: u64,
    /// Bytes written to the spool.
    pub spooled_bytes: u64,
    /// Rows committed from the spool (part of `rows_written`).
    pub replayed_rows: u64,
    /// Spool segments replayed and deleted.
    pub replayed_segments: u64,
    /// Flows dropped because the queue was full (or the writer had stopped).
    pub dropped_queue_full: u64,
    /// Flows dropped because the spool was full or could not be written.
    pub dropped_spool: u64,
    /// Flows of spool segments set aside because the server kept refusing them.
    pub dropped_rejected: u64,
    /// Spool records that could not be read back (torn or corrupt); each held one flow.
    pub spool_corrupt_records: u64,
    /// Minutes of the service map settled ([`super::settle`]).
    pub settled_minutes: u64,
    /// Failed writes, commits and replays.
    pub insert_errors: u64,
    /// Flows waiting in the queues now.
    pub queued: u64,
    /// Bytes in the spool now.
    pub spool_bytes: u64,
    /// Spool segments now.
    pub spool_segments: u64,
    /// Whether ClickHouse takes writes now (false before the first successful contact and
    /// during outages).
    pub healthy: bool,
    /// Whether the migrations have been applied (once true, stays true).
    pub schema_ready: bool,
    /// The last error, if any (without credentials).
    pub last_error: Option<String>,
}

impl WriterStats {
    /// Flows lost for good: dropped at the queue or the spool, set aside, or unreadable in the
    /// spool.
    pub fn lost(&self) -> u64 {
        self.dropped_queue_full
            + self.dropped_spool
            + self.dropped_rejected
            + self.spool_corrupt_records
    }
}

#[derive(Default)]
pub(crate) struct Stats {
    received: AtomicU64,
    rows_written: AtomicU64,
    batches: AtomicU64,
    spooled_rows: AtomicU64,
    spooled_bytes: AtomicU64,
    replayed_rows: AtomicU64,
    replayed_segments: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_spool: AtomicU64,
    dropped_rejected: AtomicU64,
    spool_corrupt_records: AtomicU64,
    insert_errors: AtomicU64,
    pub(crate) settled_minutes: AtomicU64,
    spool_bytes: AtomicU64,
    spool_segments: AtomicU64,
    pub(crate) healthy: AtomicBool,
    pub(crate) schema_ready: AtomicBool,
    last_error: Mutex<Option<String>>,
}

fn add(counter: &AtomicU64, n: impl TryInto<u64>) {
    counter.fetch_add(n.try_into().unwrap_or(u64::MAX), Relaxed);
}

/// State shared by the handles and the tasks.
pub(crate) struct Shared {
    pub(crate) stats: Stats,
    /// Flows in the public queue.
    queued: AtomicUsize,
    /// Flows in the worker's queue.
    worker_queued: AtomicUsize,
    capacity: usize,
    /// Signalled when the intake has taken flows off the public queue.
    space: Notify,
    spool: Mutex<Spool>,
    /// Set once the worker's first probe of ClickHouse has finished, either way. Until then
    /// flows wait in the (bounded) worker queue rather than going to the spool: a relay that
    /// has just started is not in an outage.
    probed: AtomicBool,
}

impl Shared {
    fn healthy(&self) -> bool {
        self.stats.healthy.load(Relaxed)
    }

    /// Whether the worker should be handed live flows: it is healthy, or it has not tried
    /// ClickHouse yet.
    fn accepting(&self) -> bool {
        self.healthy() || !self.probed.load(Relaxed)
    }

    fn set_error(&self, e: &dyn std::fmt::Display) {
        *self
            .stats
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }

    fn lock_spool(&self) -> std::sync::MutexGuard<'_, Spool> {
        // A panic while holding the lock leaves a consistent enough spool (files are the truth).
        self.spool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_spool(&self, spool: &Spool) {
        self.stats.spool_bytes.store(spool.bytes(), Relaxed);
        self.stats
            .spool_segments
            .store(spool.segments() as u64, Relaxed);
    }

    /// Spools `flows`; what does not fit is counted as dropped.
    fn spool(&self, flows: &[Flow], warn: &mut Warn) {
        if flows.is_empty() {
            return;
        }
        let mut spool = self.lock_spool();
        match spool.append(flows) {
            Ok(a) => {
                add(&self.stats.spooled_rows, a.flows);
                add(&self.stats.spooled_bytes, a.bytes);
                if a.dropped > 0 {
                    add(&self.stats.dropped_spool, a.dropped);
                    warn.warn(|| {
                        tracing::warn!(
                            dir = %spool.dir().display(),
                            bytes = spool.bytes(),
                            dropped = self.stats.dropped_spool.load(Relaxed),
                            "spool full: dropping flows (counted in dropped_spool)"
                        )
                    });
                }
            }
            Err(e) => {
                add(&self.stats.dropped_spool, flows.len());
                self.set_error(&e);
                warn.warn(|| {
                    tracing::warn!(error = %e, "spool write failed: dropping flows (counted in dropped_spool)")
                });
            }
        }
        self.publish_spool(&spool);
    }
}

/// Rate limit for one repeated warning.
#[derive(Default)]
struct Warn(Option<Instant>);

impl Warn {
    fn warn(&mut self, log: impl FnOnce()) {
        let now = Instant::now();
        if self.0.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
            self.0 = Some(now);
            log();
        }
    }
}

enum Msg {
    Flows(Vec<Flow>),
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// A cheap, cloneable way into the writer, for the live merge.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::UnboundedSender<Msg>,
    shared: Arc<Shared>,
}

impl WriterHandle {
    /// Reserves room for `n` flows in the queue; an empty queue takes any batch.
    fn reserve(&self, n: usize) -> bool {
        let before = self.shared.queued.fetch_add(n, Relaxed);
        if before == 0 || before + n <= self.shared.capacity {
            true
        } else {
            self.shared.queued.fetch_sub(n, Relaxed);
            false
        }
    }

    fn enqueue(&self, flows: Vec<Flow>) -> SendOutcome {
        let n = flows.len();
        match self.tx.send(Msg::Flows(flows)) {
            Ok(()) => {
                add(&self.shared.stats.received, n);
                SendOutcome::Queued
            }
            Err(_) => {
                self.shared.queued.fetch_sub(n, Relaxed);
                add(&self.shared.stats.dropped_queue_full, n);
                SendOutcome::Dropped
            }
        }
    }

    /// Queues flows for storage without ever waiting: when the queue is full (or the writer
    /// has stopped) they are dropped and counted in [`WriterStats::dropped_queue_full`].
    pub fn try_send(&self, flows: Vec<Flow>) -> SendOutcome {
        if flows.is_empty() {
            return SendOutcome::Queued;
        }
        if !self.reserve(flows.len()) {
            add(&self.shared.stats.dropped_queue_full, flows.len());
            tracing::trace!(flows = flows.len(), "store queue full, dropping");
            return SendOutcome::Dropped;
        }
        self.enqueue(flows)
    }

    /// Queues flows for storage, waiting for room in the queue. For producers that may wait
    /// (benchmarks, imports), never for the live stream.
    pub async fn send(&self, flows: Vec<Flow>) -> SendOutcome {
        if flows.is_empty() {
            return SendOutcome::Queued;
        }
        loop {
            let notified = self.shared.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.reserve(flows.len()) {
                return self.enqueue(flows);
            }
            if self.tx.is_closed() {
                add(&self.shared.stats.dropped_queue_full, flows.len());
                return SendOutcome::Dropped;
            }
            notified.await;
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> WriterStats {
        let s = &self.shared.stats;
        let l = |c: &AtomicU64| c.load(Relaxed);
        WriterStats {
            received: l(&s.received),
            rows_written: l(&s.rows_written),
            batches: l(&s.batches),
            spooled_rows: l(&s.spooled_rows),
            spooled_bytes: l(&s.spooled_bytes),
            replayed_rows: l(&s.replayed_rows),
            replayed_segments: l(&s.replayed_segments),
            dropped_queue_full: l(&s.dropped_queue_full),
            dropped_spool: l(&s.dropped_spool),
            dropped_rejected: l(&s.dropped_rejected),
            spool_corrupt_records: l(&s.spool_corrupt_records),
            insert_errors: l(&s.insert_errors),
            settled_minutes: l(&s.settled_minutes),
            queued: (self.shared.queued.load(Relaxed) + self.shared.worker_queued.load(Relaxed))
                as u64,
            spool_bytes: l(&s.spool_bytes),
            spool_segments: l(&s.spool_segments),
            healthy: s.healthy.load(Relaxed),
            schema_ready: s.schema_ready.load(Relaxed),
            last_error: s
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// The relay's ClickHouse writer. See the module documentation.
pub struct Writer {
    handle: WriterHandle,
    intake: JoinHandle<()>,
    worker: JoinHandle<()>,
    settler: JoinHandle<()>,
}

impl Writer {
    /// Validates the configuration, opens the spool (queuing what a previous run left there for
    /// replay) and starts the writer's tasks on the current tokio runtime. It does not wait for
    /// ClickHouse: the migrations are applied when the server is first reached. Flows that
    /// arrive before that first probe wait in the worker's queue; once a probe has failed, they
    /// go to the spool until the server answers.
    pub fn start(cfg: StoreConfig) -> Result<Self> {
        cfg.validate()?;
        let base = cfg.client()?;
        let spool = Spool::open(&cfg.spool_dir, cfg.spool_max_bytes, &cfg.cluster_name)?;
        let shared = Arc::new(Shared {
            stats: Stats::default(),
            queued: AtomicUsize::new(0),
            worker_queued: AtomicUsize::new(0),
            capacity: cfg.queue_flows,
            space: Notify::new(),
            spool: Mutex::new(spool),
            probed: AtomicBool::new(false),
        });
        shared.publish_spool(&shared.lock_spool());
        let (tx, rx) = mpsc::unbounded_channel();
        let (worker_tx, worker_rx) = mpsc::unbounded_channel();
        let intake = tokio::spawn(
            Intake {
                rx,
                worker_tx,
                shared: shared.clone(),
                max_batch: usize::try_from(cfg.max_rows)
                    .unwrap_or(usize::MAX)
                    .min(cfg.queue_flows),
                warn: Warn::default(),
            }
            .run(),
        );
        let settler = tokio::spawn(super::settle::run(
            base.clone(),
            cfg.clone(),
            shared.clone(),
        ));
        let worker = tokio::spawn(
            Worker {
                client: base.clone().with_database(&cfg.database),
                base,
                inserter: None,
                shadow: Vec::new(),
                rx: worker_rx,
                shared: shared.clone(),
                backoff: Backoff::default(),
                retry_at: Instant::now(),
                retention_at: None,
                schema: None,
                refusals: (u64::MAX, 0),
                warn: Warn::default(),
                cfg,
            }
            .run(),
        );
        tracing::info!("store writer started");
        Ok(Self {
            handle: WriterHandle { tx, shared },
            intake,
            worker,
            settler,
        })
    }

    /// A handle for the live stream.
    pub fn handle(&self) -> WriterHandle {
        self.handle.clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> WriterStats {
        self.handle.stats()
    }

    /// Waits until everything queued before this call is committed to ClickHouse or in the
    /// spool (it does not wait for spool replays).
    pub async fn flush(&self) -> Result<()> {
        let (ack, done) = oneshot::channel();
        self.handle
            .tx
            .send(Msg::Flush(ack))
            .map_err(|_| StoreError::Stopped)?;
        done.await.map_err(|_| StoreError::Stopped)
    }

    /// Stops the writer: what is queued is committed, or spooled when ClickHouse does not take
    /// it (it will be replayed at the next start), and the spool is synced. Handles still held
    /// elsewhere then drop (and count) what they are given.
    pub async fn shutdown(self) -> WriterStats {
        let (ack, done) = oneshot::channel();
        if self.handle.tx.send(Msg::Shutdown(ack)).is_ok() {
            let _ = done.await;
        }
        let _ = self.intake.await;
        let _ = self.worker.await;
        // A round cut short leaves rows that are never read (see settle).
        self.settler.abort();
        let _ = self.settler.await;
        tracing::info!("store writer stopped");
        self.handle.stats()
    }
}

/// Gives a flow without a uuid one derived from its content (a version-8 UUID of two SipHash
/// values of its encoding), so that its copies collapse like any other flow's. Flows from
/// Hubble-compatible agents always carry one.
pub fn ensure_uuid(flow: &mut Flow) {
    if !flow.uuid.is_empty() {
        return;
    }
    let bytes = flow.encode_to_vec();
    let half = |salt: u8| {
        let mut h = std::hash::DefaultHasher::new();
        salt.hash(&mut h);
        bytes.hash(&mut h);
        h.finish()
    };
    let (a, b) = (half(1), half(2));
    let a = (a & !0xf000) | 0x8000; // version 8
    let b = (b & !(0xc000 << 48)) | (0x8000 << 48); // variant 10
    flow.uuid = format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    );
}

struct Intake {
    rx: mpsc::UnboundedReceiver<Msg>,
    worker_tx: mpsc::UnboundedSender<Msg>,
    shared: Arc<Shared>,
    max_batch: usize,
    warn: Warn,
}

impl Intake {
    async fn run(mut self) {
        let mut batch: Vec<Flow> = Vec::new();
        while let Some(msg) = self.rx.recv().await {
            let mut next = Some(msg);
            // Coalesce what is already queued, up to a batch.
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Flows(flows) => {
                        self.shared.queued.fetch_sub(flows.len(), Relaxed);
                        self.shared.space.notify_waiters();
                        batch.extend(flows.into_iter().map(|mut f| {
                            ensure_uuid(&mut f);
                            f
                        }));
                        if batch.len() >= self.max_batch {
                            self.forward(std::mem::take(&mut batch));
                        }
                        next = self.rx.try_recv().ok();
                    }
                    control @ (Msg::Flush(_) | Msg::Shutdown(_)) => {
                        self.forward(std::mem::take(&mut batch));
                        let stop = matches!(control, Msg::Shutdown(_));
                        let _ = self.worker_tx.send(control);
                        if stop {
                            return;
                        }
                    }
                }
            }
            self.forward(std::mem::take(&mut batch));
        }
    }

    /// Hands a batch to the worker, or to the spool when the worker is down or behind.
    fn forward(&mut self, batch: Vec<Flow>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        if self.shared.accepting() {
            let before = self.shared.worker_queued.fetch_add(n, Relaxed);
            if before == 0 || before + n <= self.shared.capacity {
                match self.worker_tx.send(Msg::Flows(batch)) {
                    Ok(()) => return,
                    Err(mpsc::error::SendError(Msg::Flows(batch))) => {
                        self.shared.worker_queued.fetch_sub(n, Relaxed);
                        self.shared.spool(&batch, &mut self.warn);
                        return;
                    }
                    Err(_) => unreachable!("a Flows message was sent"),
                }
            }
            self.shared.worker_queued.fetch_sub(n, Relaxed);
            tracing::trace!(flows = n, "store worker behind, spooling");
        }
        self.shared.spool(&batch, &mut self.warn);
    }
}

#[derive(Default)]
struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    /// The next delay: doubling from [`BACKOFF_MIN`] to [`BACKOFF_MAX`], each with ±25% jitter
    /// so that relays restarted together do not probe in step.
    fn next(&mut self) -> Duration {
        let base = self.next.unwrap_or(BACKOFF_MIN);
        self.next = Some((base * 2).min(BACKOFF_MAX));
        base.mul_f64(0.75 + fastrand::f64() * 0.5)
    }

    fn reset(&mut self) {
        self.next = None;
    }
}

struct Worker {
    cfg: StoreConfig,
    /// No database selected (the migrations create it).
    base: clickhouse::Client,
    /// `cfg.database` selected.
    client: clickhouse::Client,
    inserter: Option<Inserter<FlowRow>>,
    /// The flows written into the inserter since its last successful commit: spooled if the
    /// commit fails.
    shadow: Vec<Flow>,
    rx: mpsc::UnboundedReceiver<Msg>,
    shared: Arc<Shared>,
    backoff: Backoff,
    retry_at: Instant,
    retention_at: Option<Instant>,
    schema: Option<periscope_storage::Dialect>,
    /// `(segment seq, refusals in a row)` of the segment being replayed.
    refusals: (u64, u32),
    warn: Warn,
}

impl Worker {
    async fn run(mut self) {
        loop {
            let healthy = self.shared.healthy();
            let commit_at = match &mut self.inserter {
                Some(ins) if healthy && !self.shadow.is_empty() => {
                    Some(Instant::now() + ins.time_left().unwrap_or(self.cfg.period))
                }
                _ => None,
            };
            let replay = healthy && !self.shared.lock_spool().is_empty();
            let far = Instant::now() + Duration::from_secs(86_400);
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(Msg::Flows(flows)) => {
                        self.shared.worker_queued.fetch_sub(flows.len(), Relaxed);
                        self.take(flows).await;
                    }
                    Some(Msg::Flush(ack)) => {
                        self.commit().await;
                        let _ = ack.send(());
                    }
                    Some(Msg::Shutdown(ack)) => {
                        self.finish().await;
                        let _ = ack.send(());
                        return;
                    }
                    None => {
                        self.finish().await;
                        return;
                    }
                },
                _ = sleep_until(self.retry_at), if !healthy => self.recover().await,
                _ = sleep_until(commit_at.unwrap_or(far)), if commit_at.is_some() => {
                    self.commit().await;
                }
                _ = std::future::ready(()), if replay => self.replay_one().await,
                _ = sleep_until(self.retention_at.unwrap_or(far)),
                    if healthy && self.retention_at.is_some() => self.retention().await,
            }
        }
    }

    fn new_inserter(&self) -> Inserter<FlowRow> {
        self.client
            .inserter::<FlowRow>(periscope_storage::FLOWS_TABLE)
            .with_max_rows(self.cfg.max_rows)
            .with_max_bytes(self.cfg.max_bytes)
            .with_period(Some(self.cfg.period))
            .with_timeouts(Some(self.cfg.timeout), Some(self.cfg.timeout))
    }

    /// Writes a batch into the inserter (or the spool during an outage), committing whenever a
    /// bound is reached.
    async fn take(&mut self, flows: Vec<Flow>) {
        if !self.shared.probed.load(Relaxed) {
            // Flows before the first probe: probe now rather than spool them.
            self.recover().await;
        }
        if !self.shared.healthy() {
            self.shared.spool(&flows, &mut self.warn);
            return;
        }
        if self.inserter.is_none() {
            self.inserter = Some(self.new_inserter());
        }
        let ins = self.inserter.as_mut().expect("set above");
        if self.shadow.is_empty() {
            // Nothing pending: restart the period so that it counts from this batch's first
            // row (no request is made).
            if let Err(e) = ins.force_commit().await {
                return self.fail_with("starting a batch", &e, flows);
            }
        }
        let cluster = self.cfg.cluster_name.as_str();
        let mut flows = flows.into_iter();
        while let Some(flow) = flows.next() {
            let written = ins.write(&FlowRow::from_flow(&flow, cluster)).await;
            self.shadow.push(flow);
            // Checks the row, byte and period bounds; commits when one is reached.
            let result = match written {
                Ok(()) => ins.commit().await,
                Err(e) => Err(e),
            };
            match result {
                Ok(q) if q.rows > 0 => {
                    let stats = &self.shared.stats;
                    add(&stats.rows_written, self.shadow.len());
                    add(&stats.batches, 1u64);
                    tracing::debug!(rows = self.shadow.len(), "committed a batch");
                    self.shadow.clear();
                }
                Ok(_) => {}
                Err(e) => return self.fail_with("writing a batch", &e, flows.collect()),
            }
        }
    }

    /// Commits what is pending, whatever the bounds.
    async fn commit(&mut self) {
        let Some(ins) = &mut self.inserter else {
            return;
        };
        if self.shadow.is_empty() {
            return;
        }
        match ins.force_commit().await {
            Ok(_) => self.committed(),
            Err(e) => self.fail("committing a batch", &e),
        }
    }

    fn committed(&mut self) {
        let stats = &self.shared.stats;
        add(&stats.rows_written, self.shadow.len());
        add(&stats.batches, 1u64);
        tracing::debug!(rows = self.shadow.len(), "committed a batch");
        self.shadow.clear();
    }

    /// [`Worker::fail`], with flows of the batch that were not written yet.
    fn fail_with(&mut self, operation: &'static str, e: &dyn std::fmt::Display, rest: Vec<Flow>) {
        self.shadow.extend(rest);
        self.fail(operation, e);
    }

    /// A write failed: the batch goes to the spool and an outage starts.
    fn fail(&mut self, operation: &'static str, e: &dyn std::fmt::Display) {
        add(&self.shared.stats.insert_errors, 1u64);
        self.shared.set_error(&format!("{operation}: {e}"));
        // The insert in progress is aborted with its inserter; a new one is made on recovery.
        self.inserter = None;
        let flows = std::mem::take(&mut self.shadow);
        let was_healthy = self.shared.stats.healthy.swap(false, Relaxed);
        if was_healthy {
            tracing::warn!(
                operation,
                error = %e,
                rows = flows.len(),
                "ClickHouse write failed; spooling flows until it answers again"
            );
        }
        self.shared.spool(&flows, &mut self.warn);
        self.retry_at = Instant::now() + self.backoff.next();
    }

    /// Probes the server: the migrations until they have been applied once, then `SELECT 1`.
    async fn recover(&mut self) {
        let probe = async {
            if self.schema.is_none() {
                let mcfg = self.cfg.migrate_config();
                let report = periscope_storage::migrate(&self.base, &mcfg)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(
                    database = %self.cfg.database,
                    server = %report.server_version,
                    schema = %report.schema_dialect,
                    applied = ?report.applied,
                    "ClickHouse schema ready"
                );
                self.schema = Some(report.schema_dialect);
                self.shared.stats.schema_ready.store(true, Relaxed);
                self.retention_at = Some(Instant::now());
            } else {
                self.base
                    .query("SELECT 1")
                    .execute()
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        };
        let result = match timeout(self.cfg.timeout, probe).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.cfg.timeout)),
        };
        self.shared.probed.store(true, Relaxed);
        match result {
            Ok(()) => {
                self.backoff.reset();
                self.shared.stats.healthy.store(true, Relaxed);
                let spool = self.shared.lock_spool().bytes();
                tracing::info!(
                    url = %self.cfg.url,
                    spool_bytes = spool,
                    "ClickHouse answers; writing flows (and replaying the spool)"
                );
            }
            Err(e) => {
                self.shared
                    .set_error(&format!("reaching ClickHouse at {}: {e}", self.cfg.url));
                let delay = self.backoff.next();
                self.retry_at = Instant::now() + delay;
                self.warn.warn(|| {
                    tracing::warn!(
                        url = %self.cfg.url,
                        error = %e,
                        retry_in = ?delay,
                        "ClickHouse unreachable; flows go to the spool"
                    )
                });
            }
        }
    }

    /// Replays the oldest spool segment as one INSERT; deletes it when that succeeded.
    async fn replay_one(&mut self) {
        let seg = match self.shared.lock_spool().next_replay() {
            Ok(Some(seg)) => seg,
            Ok(None) => return,
            Err(e) => {
                self.shared.set_error(&e);
                self.warn
                    .warn(|| tracing::warn!(error = %e, "spool: cannot seal the active segment"));
                return;
            }
        };
        let contents = match spool::read_segment(&seg.path) {
            Ok(c) => c,
            Err(e) => {
                // Unreadable (permissions, I/O): set it aside rather than retrying forever.
                tracing::warn!(error = %e, "spool: unreadable segment set aside");
                self.shared.set_error(&e);
                let mut spool = self.shared.lock_spool();
                if let Err(e) = spool.reject(&seg) {
                    tracing::warn!(error = %e, "spool: cannot set the segment aside");
                }
                self.shared.publish_spool(&spool);
                return;
            }
        };
        let n = contents.flows.len();
        let result = if n == 0 {
            Ok(())
        } else {
            let insert = async {
                let mut insert = self
                    .client
                    .insert::<FlowRow>(periscope_storage::FLOWS_TABLE)
                    .await?
                    .with_timeouts(Some(self.cfg.timeout), Some(self.cfg.timeout));
                for flow in &contents.flows {
                    insert
                        .write(&FlowRow::from_flow(flow, &contents.cluster))
                        .await?;
                }
                insert.end().await
            };
            insert.await
        };
        match result {
            Ok(()) => {
                let stats = &self.shared.stats;
                add(&stats.spool_corrupt_records, contents.corrupt_records);
                add(&stats.replayed_rows, n);
                add(&stats.rows_written, n);
                add(&stats.replayed_segments, 1u64);
                if n > 0 {
                    add(&stats.batches, 1u64);
                }
                if contents.corrupt_records > 0 {
                    tracing::warn!(
                        segment = %seg.path.display(),
                        records = contents.corrupt_records,
                        bytes = contents.corrupt_bytes,
                        "spool: skipped torn or corrupt records"
                    );
                }
                tracing::debug!(segment = %seg.path.display(), rows = n, "replayed a spool segment");
                let mut spool = self.shared.lock_spool();
                if let Err(e) = spool.remove(&seg) {
                    // It will be replayed again: harmless (same uuids), only wasteful.
                    tracing::warn!(error = %e, "spool: cannot delete a replayed segment");
                    self.shared.set_error(&e);
                }
                self.shared.publish_spool(&spool);
                self.refusals = (u64::MAX, 0);
            }
            Err(e) => {
                // The server answered with an error: maybe this segment is the problem.
                if matches!(e, clickhouse::error::Error::BadResponse(_)) {
                    let count = if self.refusals.0 == seg.seq {
                        self.refusals.1 + 1
                    } else {
                        1
                    };
                    self.refusals = (seg.seq, count);
                    if count >= MAX_REFUSALS {
                        tracing::warn!(
                            segment = %seg.path.display(),
                            rows = n,
                            error = %e,
                            "spool: ClickHouse keeps refusing a segment; set aside as .rejected"
                        );
                        add(&self.shared.stats.dropped_rejected, n);
                        let mut spool = self.shared.lock_spool();
                        if let Err(e) = spool.reject(&seg) {
                            tracing::warn!(error = %e, "spool: cannot set the segment aside");
                        }
                        self.shared.publish_spool(&spool);
                        self.refusals = (u64::MAX, 0);
                        return;
                    }
                }
                self.fail("replaying the spool", &e);
            }
        }
    }

    /// Drops expired partitions (legacy schema) or re-applies the TTL (modern), hourly.
    async fn retention(&mut self) {
        self.retention_at = Some(Instant::now() + RETENTION_EVERY);
        let Some(schema) = self.schema else {
            return;
        };
        let cfg = self.cfg.migrate_config();
        match timeout(
            self.cfg.timeout,
            periscope_storage::apply_retention(&self.base, &cfg, schema),
        )
        .await
        {
            Ok(Ok(report)) => tracing::debug!(
                dropped_partitions = report.dropped_partitions.len(),
                ttl_statements = report.ttl_statements.len(),
                "retention applied"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "applying retention failed"),
            Err(_) => tracing::warn!("applying retention timed out"),
        }
    }

    /// Shutdown: commit what is pending (spooled if that fails) and sync the spool.
    async fn finish(&mut self) {
        self.commit().await;
        // Whatever is still in the worker's queue (nothing after a clean shutdown).
        while let Ok(msg) = self.rx.try_recv() {
            if let Msg::Flows(flows) = msg {
                self.shared.worker_queued.fetch_sub(flows.len(), Relaxed);
                self.shared.spool(&flows, &mut self.warn);
            }
        }
        let mut spool = self.shared.lock_spool();
        if let Err(e) = spool.seal() {
            tracing::warn!(error = %e, "spool: cannot sync the active segment at shutdown");
        }
        self.shared.publish_spool(&spool);
        self.shared.stats.healthy.store(false, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_uuids_are_stable_and_well_formed() {
        let mut a = Flow {
            node_name: "n1".into(),
            ..Default::default()
        };
        let mut b = a.clone();
        ensure_uuid(&mut a);
        ensure_uuid(&mut b);
        assert_eq!(a.uuid, b.uuid);
        assert_eq!(a.uuid.len(), 36);
        assert_eq!(&a.uuid[14..15], "8");
        assert!(
            matches!(&a.uuid[19..20], "8" | "9" | "a" | "b"),
            "{}",
            a.uuid
        );
        let mut c = Flow {
            node_name: "n2".into(),
            ..Default::default()
        };
        ensure_uuid(&mut c);
        assert_ne!(a.uuid, c.uuid);
        let mut d = Flow {
            uuid: "kept".into(),
            ..Default::default()
        };
        ensure_uuid(&mut d);
        assert_eq!(d.uuid, "kept");
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff::default();
        let first = b.next();
        assert!(first >= BACKOFF_MIN.mul_f64(0.75) && first <= BACKOFF_MIN.mul_f64(1.25));
        for _ in 0..20 {
            assert!(b.next() <= BACKOFF_MAX.mul_f64(1.25));
        }
        b.reset();
        assert!(b.next() <= BACKOFF_MIN.mul_f64(1.25));
    }
}
