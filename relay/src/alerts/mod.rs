//! Alert rules on denied flows: rule files, evaluation on the live stream, notifications.
//!
//! - [`rules`]: the YAML rule files ([`RuleSet::load`], [`RuleSet::reload`], [`RuleWatcher`]);
//!   a bad file is rejected with a [`RuleError`] naming the file, the rule and the field, and the
//!   rules in force stay.
//! - [`engine`]: sliding-window counts per rule and group ([`Engine::observe`]), alert states,
//!   deduplication by fingerprint and repeat intervals ([`Engine::tick`]).
//! - [`notify`]: delivery to Alertmanager (`POST /api/v2/alerts`), a generic JSON webhook and
//!   the ClickHouse `alerts` table, each through a bounded queue with retries.
//! - [`Alerting`]: all of it wired together with background evaluation and rule reloading —
//!   what the relay uses.
//!
//! ```no_run
//! # async fn run(flows: Vec<periscope_proto::flow::Flow>) -> anyhow::Result<()> {
//! use periscope_relay::alerts::{Alerting, AlertingConfig, AlertmanagerConfig, Receiver};
//!
//! let alerting = Alerting::start(AlertingConfig {
//!     rules_path: Some("/etc/periscope/alert-rules".into()),
//!     receivers: vec![Receiver::Alertmanager(AlertmanagerConfig::new("http://alertmanager:9093"))],
//!     ..AlertingConfig::default()
//! })?;
//! for flow in &flows {
//!     alerting.observe(flow); // every flow of the live merged stream
//! }
//! let firing = alerting.alerts(); // for the API / `periscope alerts`
//! alerting.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

pub mod engine;
pub mod notify;
pub mod rules;
pub mod storage;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use periscope_proto::flow::Flow;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use engine::{
    Alert, AlertState, Clock, Engine, EngineConfig, EngineStats, ManualClock, Notification,
    NotificationKind, RuleStats, SystemClock,
};
pub use notify::{
    AlertmanagerConfig, DeliveryConfig, DeliveryError, Dispatcher, NotifyError, PostableAlert,
    Receiver, ReceiverStats, WebhookConfig,
};
pub use rules::{GroupKey, Rule, RuleError, RuleSet, RuleSpec, RuleWatcher};

/// Alerting could not start.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The rule files are bad.
    #[error(transparent)]
    Rules(#[from] RuleError),
    /// A receiver is misconfigured.
    #[error(transparent)]
    Notify(#[from] NotifyError),
}

/// Everything [`Alerting::start`] needs.
#[derive(Debug, Clone)]
pub struct AlertingConfig {
    /// Rule file or directory; `None`: no rules (alerting idles).
    pub rules_path: Option<PathBuf>,
    /// How often alerts are evaluated (the latency from a crossed threshold to a notification).
    pub evaluation_interval: Duration,
    /// How often the rule files are checked for changes (modification time and size).
    pub reload_interval: Duration,
    /// Engine limits.
    pub engine: EngineConfig,
    /// Queues and retries of the receivers.
    pub delivery: DeliveryConfig,
    /// Where notifications go.
    pub receivers: Vec<Receiver>,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        Self {
            rules_path: None,
            evaluation_interval: Duration::from_secs(1),
            reload_interval: Duration::from_secs(5),
            engine: EngineConfig::default(),
            delivery: DeliveryConfig::default(),
            receivers: Vec::new(),
        }
    }
}

/// Counters and state of the alerting, for status output and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AlertingStats {
    /// Rules in force.
    pub rules: usize,
    /// Successful reloads since start.
    pub reloads: u64,
    /// Rejected reloads since start.
    pub reload_failures: u64,
    /// The error of the last rejected reload, until a reload succeeds.
    pub last_reload_error: Option<String>,
    /// Engine counters.
    pub engine: EngineStats,
    /// Receiver counters.
    pub receivers: Vec<ReceiverStats>,
}

struct RulesState {
    set: RuleSet,
    watcher: Option<RuleWatcher>,
    reloads: u64,
    reload_failures: u64,
    last_error: Option<String>,
}

struct Shared {
    engine: Mutex<Engine>,
    rules: Mutex<RulesState>,
    dispatcher: Mutex<Option<Dispatcher>>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Alert rules evaluated on the live stream, with notifications. Cheap to clone; all clones
/// share one engine. A background task evaluates every `evaluation_interval` and polls the rule
/// files every `reload_interval` until [`shutdown`](Self::shutdown).
#[derive(Clone)]
pub struct Alerting {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take alerting down with it: the data stays consistent
    // (every critical section leaves it valid).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Alerting {
    /// Loads the rules, starts the receivers and the background task (needs a Tokio runtime).
    /// Fails if the rule files are bad at start or a receiver is misconfigured.
    pub fn start(config: AlertingConfig) -> Result<Self, AlertError> {
        Self::start_with_clock(config, Arc::new(SystemClock))
    }

    /// [`start`](Self::start) with another clock (tests).
    pub fn start_with_clock(
        config: AlertingConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AlertError> {
        let (set, watcher) = match &config.rules_path {
            Some(path) => {
                let watcher = RuleWatcher::new(path);
                let set = RuleSet::load(path)?;
                (set, Some(watcher))
            }
            None => (RuleSet::empty(), None),
        };
        tracing::info!(
            rules = set.len(),
            path = ?config.rules_path,
            receivers = config.receivers.len(),
            "alerting started"
        );
        let dispatcher = Dispatcher::start(config.receivers.clone(), config.delivery.clone())?;
        let engine = Engine::new(&set, config.engine.clone(), clock);
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            engine: Mutex::new(engine),
            rules: Mutex::new(RulesState {
                set,
                watcher,
                reloads: 0,
                reload_failures: 0,
                last_error: None,
            }),
            dispatcher: Mutex::new(Some(dispatcher)),
            stop,
            task: Mutex::new(None),
        });
        let this = Self { shared };
        let task = tokio::spawn(this.clone().run(
            config.evaluation_interval.max(Duration::from_millis(10)),
            config.reload_interval.max(Duration::from_millis(10)),
            stop_rx,
        ));
        *lock(&this.shared.task) = Some(task);
        Ok(this)
    }

    async fn run(self, eval: Duration, reload: Duration, mut stop: watch::Receiver<bool>) {
        let mut eval_timer = tokio::time::interval(eval);
        eval_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reload_timer =
            tokio::time::interval_at(tokio::time::Instant::now() + reload, reload);
        reload_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = eval_timer.tick() => {
                    self.evaluate();
                }
                _ = reload_timer.tick() => {
                    let this = self.clone();
                    // File system access off the runtime's worker threads.
                    let _ = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
                }
                _ = stop.changed() => break,
            }
        }
    }

    /// Counts a flow of the live merged stream. Cheap: one predicate evaluation per rule for
    /// flows no rule selects.
    pub fn observe(&self, flow: &Flow) {
        lock(&self.shared.engine).observe(flow);
    }

    /// Counts several flows under one lock.
    pub fn observe_all<'a>(&self, flows: impl IntoIterator<Item = &'a Flow>) {
        let mut engine = lock(&self.shared.engine);
        for flow in flows {
            engine.observe(flow);
        }
    }

    /// Evaluates now and hands the notifications to the receivers; returns how many there were.
    /// The background task calls this every `evaluation_interval`.
    pub fn evaluate(&self) -> usize {
        let notifications = {
            let mut engine = lock(&self.shared.engine);
            let now = engine.clock().now();
            engine.tick(now)
        };
        let n = notifications.len();
        if let Some(d) = lock(&self.shared.dispatcher).as_ref() {
            d.dispatch(notifications);
        }
        n
    }

    /// Pending and firing alerts, then the recently resolved ones (newest first).
    pub fn alerts(&self) -> Vec<Alert> {
        lock(&self.shared.engine).alerts()
    }

    /// The rules in force.
    pub fn rules(&self) -> RuleSet {
        lock(&self.shared.rules).set.clone()
    }

    /// Re-reads the rule files now (e.g. on SIGHUP). On error the rules in force stay and the
    /// error is returned (and logged). Without a rules path this does nothing.
    pub fn reload(&self) -> Result<(), RuleError> {
        let mut rules = lock(&self.shared.rules);
        let Some(path) = rules.watcher.as_ref().map(|w| w.path().to_owned()) else {
            return Ok(());
        };
        if let Some(w) = rules.watcher.as_mut() {
            // Take the current state as seen, so the poller does not reload it again.
            w.changed();
        }
        match rules.set.reload(&path) {
            Ok(()) => {
                rules.reloads += 1;
                rules.last_error = None;
                let set = rules.set.clone();
                drop(rules);
                lock(&self.shared.engine).set_rules(&set);
                tracing::info!(path = %path.display(), rules = set.len(), "alert rules reloaded");
                Ok(())
            }
            Err(e) => {
                rules.reload_failures += 1;
                rules.last_error = Some(e.to_string());
                tracing::error!(
                    path = %path.display(),
                    error = %e,
                    rules_in_force = rules.set.len(),
                    "alert rules rejected; the rules in force stay"
                );
                Err(e)
            }
        }
    }

    /// Reloads if the watched files changed since the last look.
    fn reload_if_changed(&self) {
        let changed = lock(&self.shared.rules)
            .watcher
            .as_mut()
            .is_some_and(RuleWatcher::changed);
        if changed {
            // Errors are logged and recorded by `reload`.
            let _ = self.reload();
        }
    }

    /// Counters.
    pub fn stats(&self) -> AlertingStats {
        let (rules, reloads, reload_failures, last_reload_error) = {
            let r = lock(&self.shared.rules);
            (
                r.set.len(),
                r.reloads,
                r.reload_failures,
                r.last_error.clone(),
            )
        };
        AlertingStats {
            rules,
            reloads,
            reload_failures,
            last_reload_error,
            engine: lock(&self.shared.engine).stats(),
            receivers: lock(&self.shared.dispatcher)
                .as_ref()
                .map(Dispatcher::stats)
                .unwrap_or_default(),
        }
    }

    /// Stops the background task, then lets the receivers deliver what is queued for up to
    /// `grace`. Observing afterwards still counts, but nothing is evaluated or sent.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.shared.stop.send(true);
        let task = lock(&self.shared.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let dispatcher = lock(&self.shared.dispatcher).take();
        if let Some(mut d) = dispatcher {
            d.shutdown(grace).await;
        }
    }
}
