//! The alert engine: counts matching flows per rule and group in sliding windows
//! ([`Engine::observe`]) and turns counts into alerts and notifications ([`Engine::tick`]).
//!
//! # Windows
//!
//! Each group's window is kept as [`BUCKETS`] buckets of `window / BUCKETS` (one per second for a
//! 1m window): the count is the number of flows in the buckets that overlap the last `window`, so
//! it may include flows up to one bucket older than the window. Flows are counted at their
//! arrival time (the engine's clock), not at their `time`: on the live merged stream the two
//! differ by seconds, and arrival time is immune to node clock skew. A flow whose `time` is older
//! than [`EngineConfig::max_flow_age`] is not counted at all (a backlog replayed after a peer
//! reconnects is not an attack happening now).
//!
//! # States
//!
//! For every group: *inactive* → (count ≥ threshold) → *pending* → (still ≥ threshold after
//! `for`) → *firing* (notification) → (below the threshold for `resolve_after`) → *resolved*
//! (notification with `ends_at`). With `for: 0` an alert fires at the first tick that sees the
//! threshold reached. A pending alert whose count drops below the threshold is dropped silently;
//! a firing one that goes back above before `resolve_after` simply keeps firing. While firing,
//! the notification is repeated every `repeat_interval`. One alert exists per fingerprint (rule
//! and group labels); once resolved, the same group can fire again as a new alert (new
//! `starts_at`, same fingerprint), as with Prometheus and Alertmanager.
//!
//! # Memory
//!
//! Per rule at most [`EngineConfig::max_groups_per_rule`] groups; a flow that would open one more
//! is not counted but counted as overflow ([`RuleStats::overflow_flows`], logged once per tick).
//! Groups with an empty window and no alert are dropped at each tick. Per group: at most
//! `BUCKETS + 1` buckets and [`EngineConfig::max_samples`] sample uuids. Resolved alerts are kept
//! for [`EngineConfig::resolved_retention`], at most [`EngineConfig::max_resolved`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use periscope_proto::flow::Flow;
use serde::{Deserialize, Serialize};

use super::rules::{Rule, RuleSet, TemplateContext};

/// Buckets per window.
pub const BUCKETS: u64 = 60;

/// Where the engine gets the time from; tests inject a [`ManualClock`].
pub trait Clock: Send + Sync + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<SystemTime>>);

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: SystemTime) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t += by;
    }

    /// Sets the clock.
    pub fn set(&self, to: SystemTime) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Engine limits.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Groups per rule; flows of further groups are counted as overflow.
    pub max_groups_per_rule: usize,
    /// Sample flow uuids kept per group and reported with an alert.
    pub max_samples: usize,
    /// How long resolved alerts stay in [`Engine::alerts`].
    pub resolved_retention: Duration,
    /// At most this many resolved alerts are kept (newest first).
    pub max_resolved: usize,
    /// Flows whose `time` is older than this (by the engine's clock) are not counted; `None`
    /// counts every flow.
    pub max_flow_age: Option<Duration>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_groups_per_rule: 10_000,
            max_samples: 10,
            resolved_retention: Duration::from_secs(3600),
            max_resolved: 1000,
            max_flow_age: Some(Duration::from_secs(300)),
        }
    }
}

/// State of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// The threshold is reached but not yet for the rule's `for`.
    Pending,
    /// Firing.
    Firing,
    /// Was firing; `ends_at` says when it resolved.
    Resolved,
}

/// An alert: what the API lists, the generic webhook posts and the storage keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Hex FNV-1a hash of the labels: identifies the alert across notifications.
    pub fingerprint: String,
    /// Rule name (also the `alertname` label).
    pub rule: String,
    /// Current state.
    pub state: AlertState,
    /// Rule severity (also the `severity` label).
    pub severity: String,
    /// `alertname`, `severity`, the non-empty group values and the rule's labels.
    pub labels: BTreeMap<String, String>,
    /// The group values by `group_by` key (empty values included).
    pub group: BTreeMap<String, String>,
    /// Rendered annotations (as of the last evaluation at or above the threshold).
    pub annotations: BTreeMap<String, String>,
    /// When the threshold was first reached (start of pending).
    #[serde(with = "rfc3339")]
    pub active_at: SystemTime,
    /// When the alert fired (absent while pending).
    #[serde(default, with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<SystemTime>,
    /// When it resolved (absent unless resolved).
    #[serde(default, with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<SystemTime>,
    /// Matching flows in the window at the last evaluation.
    pub count: u64,
    /// Highest window count seen while active.
    pub peak_count: u64,
    /// The rule's threshold (`count >= threshold` is active).
    pub threshold: u64,
    /// The rule's window.
    #[serde(with = "duration_text")]
    pub window: Duration,
    /// Uuids of up to `max_samples` matching flows in the window when the alert became active.
    pub sample_flow_uuids: Vec<String>,
}

/// Why a notification is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotificationKind {
    /// The alert just fired.
    Firing,
    /// The alert still fires; `repeat_interval` has passed since the last notification.
    Repeat,
    /// The alert resolved.
    Resolved,
}

/// One notification: the alert as of now and why it is sent. Serialized flat: the alert's
/// fields plus `"notification": "firing" | "repeat" | "resolved"` and `"notified_at"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Why.
    #[serde(rename = "notification")]
    pub kind: NotificationKind,
    /// When the engine decided it (the tick's time).
    #[serde(rename = "notified_at", with = "rfc3339")]
    pub at: SystemTime,
    /// The alert.
    #[serde(flatten)]
    pub alert: Alert,
}

/// Counters of the engine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    /// Flows passed to `observe`.
    pub flows_observed: u64,
    /// Matching flows not counted because their `time` was older than `max_flow_age`.
    pub flows_stale: u64,
    /// Per rule, in rule order.
    pub rules: Vec<RuleStats>,
}

/// Counters of one rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RuleStats {
    /// Rule name.
    pub name: String,
    /// Flows that matched the selector.
    pub flows_matched: u64,
    /// Matching flows not counted because the rule had `max_groups_per_rule` groups.
    pub overflow_flows: u64,
    /// Groups currently tracked.
    pub groups: usize,
    /// Pending alerts.
    pub pending: usize,
    /// Firing alerts.
    pub firing: usize,
}

/// The alert engine. Not thread-safe by itself: [`super::Alerting`] wraps it in a mutex.
pub struct Engine {
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    rules: Vec<RuleState>,
    /// Resolved alerts, newest first.
    resolved: VecDeque<Alert>,
    /// Notifications produced outside `tick` (rules removed by `set_rules`), sent by the next one.
    outbox: Vec<Notification>,
    flows_observed: u64,
    flows_stale: u64,
}

struct RuleState {
    rule: Arc<Rule>,
    bucket_ns: u64,
    groups: HashMap<Box<[String]>, Group>,
    flows_matched: u64,
    overflow_flows: u64,
    overflow_logged: u64,
}

#[derive(Default)]
struct Group {
    /// `(bucket index, flows)`, ascending, never more than `BUCKETS + 1`.
    buckets: VecDeque<(u64, u64)>,
    /// `(bucket index, uuid)` of the latest matching flows; strings are reused.
    samples: VecDeque<(u64, String)>,
    alert: Option<Active>,
}

/// A pending or firing alert of a group.
struct Active {
    fingerprint: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    active_at: SystemTime,
    fired_at: Option<SystemTime>,
    below_since: Option<SystemTime>,
    last_notified: Option<SystemTime>,
    count: u64,
    peak_count: u64,
    samples: Vec<String>,
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn flow_time(flow: &Flow) -> Option<SystemTime> {
    let ts = flow.time.as_ref()?;
    let secs = u64::try_from(ts.seconds).ok()?;
    let nanos = u32::try_from(ts.nanos).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

impl Group {
    fn record(&mut self, idx: u64, uuid: &str, max_samples: usize) {
        match self.buckets.back_mut() {
            // `>=`: a clock that went backwards adds to the newest bucket.
            Some((last, n)) if *last >= idx => *n += 1,
            _ => self.buckets.push_back((idx, 1)),
        }
        while self
            .buckets
            .front()
            .is_some_and(|(i, _)| i + BUCKETS <= idx)
        {
            self.buckets.pop_front();
        }
        if max_samples > 0 && !uuid.is_empty() {
            if self.samples.len() >= max_samples {
                let (_, mut s) = self.samples.pop_front().unwrap_or_default();
                s.clear();
                s.push_str(uuid);
                self.samples.push_back((idx, s));
            } else {
                self.samples.push_back((idx, uuid.to_owned()));
            }
        }
    }

    /// Drops buckets that left the window and returns the window's count.
    fn prune_and_count(&mut self, idx_now: u64) -> u64 {
        while self
            .buckets
            .front()
            .is_some_and(|(i, _)| i + BUCKETS <= idx_now)
        {
            self.buckets.pop_front();
        }
        self.buckets.iter().map(|(_, n)| n).sum()
    }

    fn samples_in_window(&self, idx_now: u64) -> Vec<String> {
        self.samples
            .iter()
            .filter(|(i, _)| i + BUCKETS > idx_now)
            .map(|(_, s)| s.clone())
            .collect()
    }
}

/// FNV-1a 64 over the sorted labels: stable across builds and Rust versions (it is stored).
fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in labels {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

impl RuleState {
    fn new(rule: Arc<Rule>) -> Self {
        let window_ns = u64::try_from(rule.window.as_nanos()).unwrap_or(u64::MAX);
        Self {
            bucket_ns: (window_ns / BUCKETS).max(1),
            rule,
            groups: HashMap::new(),
            flows_matched: 0,
            overflow_flows: 0,
            overflow_logged: 0,
        }
    }

    fn labels_of(&self, key: &[String]) -> BTreeMap<String, String> {
        let rule = &self.rule;
        let mut labels = rule.labels.clone();
        labels.insert("alertname".into(), rule.name.clone());
        labels.insert("severity".into(), rule.severity.clone());
        for (k, v) in rule.group_by.iter().zip(key) {
            if !v.is_empty() {
                labels.insert(k.name().into(), v.clone());
            }
        }
        labels
    }

    fn render_annotations(
        &self,
        key: &[String],
        count: u64,
        peak: u64,
    ) -> BTreeMap<String, String> {
        let ctx = TemplateContext {
            group: key,
            count,
            peak_count: peak,
            rule: &self.rule,
        };
        self.rule
            .annotations
            .iter()
            .map(|(k, t)| (k.clone(), t.render(&ctx)))
            .collect()
    }

    fn snapshot(&self, key: &[String], active: &Active, state: AlertState) -> Alert {
        Alert {
            fingerprint: active.fingerprint.clone(),
            rule: self.rule.name.clone(),
            state,
            severity: self.rule.severity.clone(),
            labels: active.labels.clone(),
            group: self
                .rule
                .group_by
                .iter()
                .zip(key)
                .map(|(k, v)| (k.name().to_owned(), v.clone()))
                .collect(),
            annotations: active.annotations.clone(),
            active_at: active.active_at,
            starts_at: active.fired_at,
            ends_at: None,
            count: active.count,
            peak_count: active.peak_count,
            threshold: self.rule.threshold,
            window: self.rule.window,
            sample_flow_uuids: active.samples.clone(),
        }
    }
}

impl Engine {
    /// An engine with `rules`, reading time from `clock`.
    pub fn new(rules: &RuleSet, config: EngineConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            config,
            rules: rules.rules().iter().cloned().map(RuleState::new).collect(),
            resolved: VecDeque::new(),
            outbox: Vec::new(),
            flows_observed: 0,
            flows_stale: 0,
        }
    }

    /// The engine's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Replaces the rules. A rule whose definition did not change (same name and same text)
    /// keeps its windows and alerts; the firing alerts of removed or changed rules resolve (their
    /// notifications go out with the next [`tick`](Self::tick)), pending ones are dropped.
    pub fn set_rules(&mut self, rules: &RuleSet) {
        let now = self.clock.now();
        let mut old: Vec<Option<RuleState>> = self.rules.drain(..).map(Some).collect();
        let mut next = Vec::with_capacity(rules.len());
        for rule in rules.rules() {
            let kept = old.iter_mut().find_map(|slot| {
                slot.as_ref()
                    .is_some_and(|s| s.rule.name == rule.name && s.rule.spec == rule.spec)
                    .then(|| slot.take())
                    .flatten()
            });
            next.push(match kept {
                Some(mut state) => {
                    state.rule = rule.clone();
                    state
                }
                None => RuleState::new(rule.clone()),
            });
        }
        for state in old.into_iter().flatten() {
            for (key, group) in &state.groups {
                if let Some(active) = &group.alert
                    && active.fired_at.is_some()
                {
                    let mut alert = state.snapshot(key, active, AlertState::Resolved);
                    alert.ends_at = Some(now);
                    tracing::info!(
                        rule = %alert.rule,
                        fingerprint = %alert.fingerprint,
                        "alert resolved: its rule was removed or changed"
                    );
                    self.resolved.push_front(alert.clone());
                    self.outbox.push(Notification {
                        at: now,
                        kind: NotificationKind::Resolved,
                        alert,
                    });
                }
            }
        }
        self.rules = next;
    }

    /// Counts one flow of the live stream. Cheap for flows no rule selects (one predicate
    /// evaluation per rule); the group key is built only for matching flows.
    pub fn observe(&mut self, flow: &Flow) {
        self.flows_observed += 1;
        let mut now: Option<(SystemTime, bool)> = None;
        for state in &mut self.rules {
            if !state.rule.matches(flow) {
                continue;
            }
            state.flows_matched += 1;
            let (now, stale) = *now.get_or_insert_with(|| {
                let now = self.clock.now();
                let stale = self.config.max_flow_age.is_some_and(|max| {
                    flow_time(flow)
                        .and_then(|t| now.duration_since(t).ok())
                        .is_some_and(|age| age > max)
                });
                if stale {
                    self.flows_stale += 1;
                }
                (now, stale)
            });
            if stale {
                continue;
            }
            let idx = nanos(now) / state.bucket_ns;
            let key: Box<[String]> = state.rule.group_values(flow).into_boxed_slice();
            let max_groups = self.config.max_groups_per_rule;
            if state.groups.len() >= max_groups && !state.groups.contains_key(&key) {
                state.overflow_flows += 1;
                continue;
            }
            state
                .groups
                .entry(key)
                .or_default()
                .record(idx, &flow.uuid, self.config.max_samples);
        }
    }

    /// Evaluates every group at `now` and returns the notifications to send: fired, repeated
    /// and resolved alerts (also those of rules removed since the last tick). Call it every
    /// second or so; alerts fire and resolve at tick granularity.
    pub fn tick(&mut self, now: SystemTime) -> Vec<Notification> {
        let mut out = std::mem::take(&mut self.outbox);
        for state in &mut self.rules {
            let idx_now = nanos(now) / state.bucket_ns;
            let rule = state.rule.clone();
            let mut notes: Vec<Notification> = Vec::new();
            let mut resolved: Vec<Alert> = Vec::new();
            // Split borrows: evaluation needs the rule state's helpers while mutating groups.
            let mut groups = std::mem::take(&mut state.groups);
            for (key, group) in &mut groups {
                let count = group.prune_and_count(idx_now);
                let above = count >= rule.threshold;
                match &mut group.alert {
                    None if above => {
                        let labels = state.labels_of(key);
                        let active = Active {
                            fingerprint: fingerprint(&labels),
                            labels,
                            annotations: state.render_annotations(key, count, count),
                            active_at: now,
                            fired_at: None,
                            below_since: None,
                            last_notified: None,
                            count,
                            peak_count: count,
                            samples: group.samples_in_window(idx_now),
                        };
                        tracing::debug!(
                            rule = %rule.name,
                            fingerprint = %active.fingerprint,
                            count,
                            "alert pending"
                        );
                        group.alert = Some(active);
                    }
                    None => {}
                    Some(active) => {
                        active.count = count;
                        if above {
                            active.peak_count = active.peak_count.max(count);
                            active.below_since = None;
                            active.annotations =
                                state.render_annotations(key, count, active.peak_count);
                        }
                        if active.fired_at.is_none() && !above {
                            tracing::debug!(
                                rule = %rule.name,
                                fingerprint = %active.fingerprint,
                                count,
                                "pending alert dropped: below the threshold again"
                            );
                            group.alert = None;
                            continue;
                        }
                    }
                }
                let Some(active) = &mut group.alert else {
                    continue;
                };
                match active.fired_at {
                    None => {
                        // Pending and above the threshold.
                        if now.duration_since(active.active_at).unwrap_or_default()
                            >= rule.pending_for
                        {
                            active.fired_at = Some(now);
                            active.last_notified = Some(now);
                            tracing::info!(
                                rule = %rule.name,
                                fingerprint = %active.fingerprint,
                                count,
                                threshold = rule.threshold,
                                "alert firing"
                            );
                            notes.push(Notification {
                                at: now,
                                kind: NotificationKind::Firing,
                                alert: state.snapshot(key, active, AlertState::Firing),
                            });
                        }
                    }
                    Some(_) if above => {
                        let last = active.last_notified.unwrap_or(now);
                        if now.duration_since(last).unwrap_or_default() >= rule.repeat_interval {
                            active.last_notified = Some(now);
                            notes.push(Notification {
                                at: now,
                                kind: NotificationKind::Repeat,
                                alert: state.snapshot(key, active, AlertState::Firing),
                            });
                        }
                    }
                    Some(_) => {
                        let since = *active.below_since.get_or_insert(now);
                        if now.duration_since(since).unwrap_or_default() >= rule.resolve_after {
                            let mut alert = state.snapshot(key, active, AlertState::Resolved);
                            alert.ends_at = Some(now);
                            tracing::info!(
                                rule = %rule.name,
                                fingerprint = %alert.fingerprint,
                                "alert resolved"
                            );
                            resolved.push(alert.clone());
                            notes.push(Notification {
                                at: now,
                                kind: NotificationKind::Resolved,
                                alert,
                            });
                            group.alert = None;
                        }
                    }
                }
            }
            groups.retain(|_, g| !g.buckets.is_empty() || g.alert.is_some());
            state.groups = groups;

            if state.overflow_flows > state.overflow_logged {
                tracing::warn!(
                    rule = %rule.name,
                    dropped_flows = state.overflow_flows - state.overflow_logged,
                    max_groups = self.config.max_groups_per_rule,
                    "alert rule has too many groups: flows of new groups are not counted"
                );
                state.overflow_logged = state.overflow_flows;
            }
            notes.sort_by(|a, b| a.alert.fingerprint.cmp(&b.alert.fingerprint));
            out.extend(notes);
            resolved.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
            for alert in resolved {
                self.resolved.push_front(alert);
            }
        }
        let retention = self.config.resolved_retention;
        self.resolved.retain(|a| {
            a.ends_at
                .is_some_and(|end| now.duration_since(end).unwrap_or_default() <= retention)
        });
        self.resolved.truncate(self.config.max_resolved);
        out
    }

    /// Pending and firing alerts (by rule, then fingerprint), then the recently resolved ones
    /// (newest first).
    pub fn alerts(&self) -> Vec<Alert> {
        let mut out = Vec::new();
        for state in &self.rules {
            let mut active: Vec<Alert> = state
                .groups
                .iter()
                .filter_map(|(key, g)| {
                    let a = g.alert.as_ref()?;
                    let s = if a.fired_at.is_some() {
                        AlertState::Firing
                    } else {
                        AlertState::Pending
                    };
                    Some(state.snapshot(key, a, s))
                })
                .collect();
            active.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
            out.extend(active);
        }
        out.extend(self.resolved.iter().cloned());
        out
    }

    /// Counters.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            flows_observed: self.flows_observed,
            flows_stale: self.flows_stale,
            rules: self
                .rules
                .iter()
                .map(|s| {
                    let (mut pending, mut firing) = (0, 0);
                    for a in s.groups.values().filter_map(|g| g.alert.as_ref()) {
                        if a.fired_at.is_some() {
                            firing += 1;
                        } else {
                            pending += 1;
                        }
                    }
                    RuleStats {
                        name: s.rule.name.clone(),
                        flows_matched: s.flows_matched,
                        overflow_flows: s.overflow_flows,
                        groups: s.groups.len(),
                        pending,
                        firing,
                    }
                })
                .collect(),
        }
    }
}

/// `SystemTime` as protobuf JSON's RFC 3339 text (`2023-11-14T22:13:20.005Z`).
pub(crate) mod rfc3339 {
    use std::time::{SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _, ser::Error as _};

    pub(crate) fn to_text(t: SystemTime) -> Result<String, String> {
        let d = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "time before 1970".to_owned())?;
        let ts = prost_types::Timestamp {
            seconds: i64::try_from(d.as_secs()).map_err(|_| "time out of range".to_owned())?,
            // Milliseconds, as Alertmanager and Prometheus write them.
            nanos: i32::try_from(d.subsec_millis() * 1_000_000).unwrap_or(0),
        };
        periscope_proto::json::timestamp_to_rfc3339(&ts).map_err(|e| e.to_string())
    }

    pub(crate) fn from_text(s: &str) -> Result<SystemTime, String> {
        let ts = periscope_proto::json::timestamp_from_rfc3339(s).map_err(|e| e.to_string())?;
        let secs = u64::try_from(ts.seconds).map_err(|_| format!("{s}: before 1970"))?;
        let nanos = u32::try_from(ts.nanos).map_err(|_| format!("{s}: bad nanoseconds"))?;
        Ok(UNIX_EPOCH + std::time::Duration::new(secs, nanos))
    }

    pub(crate) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&to_text(*t).map_err(S::Error::custom)?)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        from_text(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// `Option<SystemTime>` as RFC 3339 text.
pub(crate) mod rfc3339_opt {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _, ser::Error as _};

    pub(crate) fn serialize<S: Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::rfc3339::to_text(*t).map_err(S::Error::custom)?),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| super::rfc3339::from_text(&s).map_err(D::Error::custom))
            .transpose()
    }
}

/// `Duration` as rule-file text (`1m`).
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    use crate::alerts::rules::{format_duration, parse_duration};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parse_duration(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use periscope_proto::flow::{Endpoint, Verdict, Workload};

    use super::*;

    const T0: u64 = 1_700_000_000;

    fn rules(yaml: &str) -> RuleSet {
        RuleSet::parse(Path::new("test.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    fn engine(yaml: &str, config: EngineConfig) -> (Engine, ManualClock) {
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(T0));
        let engine = Engine::new(&rules(yaml), config, Arc::new(clock.clone()));
        (engine, clock)
    }

    fn denied(src: &str, uuid: &str) -> Flow {
        Flow {
            uuid: uuid.into(),
            verdict: Verdict::Dropped as i32,
            source: Some(Endpoint {
                namespace: "shop".into(),
                pod_name: format!("{src}-1"),
                workloads: vec![Workload {
                    name: src.into(),
                    kind: "Deployment".into(),
                }],
                ..Default::default()
            }),
            destination: Some(Endpoint {
                namespace: "data".into(),
                pod_name: "db-1".into(),
                labels: vec!["k8s:app=db".into()],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn forwarded() -> Flow {
        Flow {
            verdict: Verdict::Forwarded as i32,
            ..denied("api", "fwd")
        }
    }

    /// Observes `n` flows from `src` at the current time.
    fn feed(e: &mut Engine, src: &str, n: usize) {
        for i in 0..n {
            e.observe(&denied(src, &format!("{src}-{i}")));
        }
    }

    fn tick(e: &mut Engine, c: &ManualClock) -> Vec<Notification> {
        e.tick(c.now())
    }

    fn kinds(n: &[Notification]) -> Vec<(NotificationKind, String)> {
        n.iter()
            .map(|n| {
                (
                    n.kind,
                    n.alert
                        .group
                        .values()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(","),
                )
            })
            .collect()
    }

    const BASIC: &str = r#"
- name: DbDenied
  selector: {allow: [{verdict: [DROPPED], destination_label: ["k8s:app=db"]}]}
  window: 1m
  threshold: 3
  group_by: [source_workload]
  severity: critical
  labels: {team: data}
  annotations: {summary: "{{ source_workload }} denied {{ count }} times in {{ window }}"}
  repeat_interval: 10m
  resolve_after: 30s
"#;

    #[test]
    fn threshold_is_inclusive_and_fires_once() {
        let (mut e, c) = engine(BASIC, EngineConfig::default());
        feed(&mut e, "frontend", 2);
        e.observe(&forwarded());
        assert!(tick(&mut e, &c).is_empty(), "2 < 3");
        feed(&mut e, "frontend", 1);
        c.advance(Duration::from_secs(1));
        let n = tick(&mut e, &c);
        assert_eq!(
            kinds(&n),
            vec![(NotificationKind::Firing, "frontend".into())]
        );
        let a = &n[0].alert;
        assert_eq!(a.state, AlertState::Firing);
        assert_eq!(a.count, 3);
        assert_eq!(a.labels["alertname"], "DbDenied");
        assert_eq!(a.labels["severity"], "critical");
        assert_eq!(a.labels["team"], "data");
        assert_eq!(a.labels["source_workload"], "frontend");
        assert_eq!(a.annotations["summary"], "frontend denied 3 times in 1m");
        assert_eq!(a.starts_at, Some(c.now()));
        assert_eq!(a.ends_at, None);
        assert_eq!(
            a.sample_flow_uuids,
            vec!["frontend-0", "frontend-1", "frontend-0"]
        );
        // More traffic: still one alert, no new notification.
        feed(&mut e, "frontend", 10);
        c.advance(Duration::from_secs(1));
        assert!(tick(&mut e, &c).is_empty());
        let list = e.alerts();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].count, 13);
        assert_eq!(
            list[0].annotations["summary"],
            "frontend denied 13 times in 1m"
        );
        assert_eq!(e.stats().rules[0].flows_matched, 13);
    }

    #[test]
    fn window_slides() {
        let (mut e, c) = engine(BASIC, EngineConfig::default());
        feed(&mut e, "frontend", 2);
        c.advance(Duration::from_secs(59));
        assert!(tick(&mut e, &c).is_empty());
        c.advance(Duration::from_secs(2));
        // The first two flows left the window: one more does not reach 3.
        feed(&mut e, "frontend", 1);
        assert!(tick(&mut e, &c).is_empty());
        assert_eq!(e.stats().rules[0].groups, 1);
        feed(&mut e, "frontend", 2);
        assert_eq!(tick(&mut e, &c).len(), 1);
    }

    #[test]
    fn groups_are_independent_and_fingerprints_dedup() {
        let (mut e, c) = engine(BASIC, EngineConfig::default());
        feed(&mut e, "frontend", 3);
        feed(&mut e, "intruder", 2);
        let n = tick(&mut e, &c);
        assert_eq!(
            kinds(&n),
            vec![(NotificationKind::Firing, "frontend".into())]
        );
        let fp = n[0].alert.fingerprint.clone();
        feed(&mut e, "intruder", 1);
        c.advance(Duration::from_secs(1));
        let n2 = tick(&mut e, &c);
        assert_eq!(
            kinds(&n2),
            vec![(NotificationKind::Firing, "intruder".into())]
        );
        assert_ne!(n2[0].alert.fingerprint, fp);
        // Same labels → same fingerprint, across engines.
        let (mut e2, c2) = engine(BASIC, EngineConfig::default());
        feed(&mut e2, "frontend", 5);
        assert_eq!(tick(&mut e2, &c2)[0].alert.fingerprint, fp);
        assert_eq!(e.alerts().len(), 2);
    }

    #[test]
    fn resolves_after_quiet_time_and_repeats_while_firing() {
        let (mut e, c) = engine(BASIC, EngineConfig::default());
        feed(&mut e, "frontend", 3);
        assert_eq!(tick(&mut e, &c).len(), 1);
        // Keep it above for 10 minutes: one repeat.
        let mut repeats = 0;
        for _ in 0..60 {
            c.advance(Duration::from_secs(10));
            feed(&mut e, "frontend", 1);
            for n in tick(&mut e, &c) {
                assert_eq!(n.kind, NotificationKind::Repeat);
                repeats += 1;
            }
        }
        assert_eq!(repeats, 1);
        // Stop: the window empties after 1m, then 30s below the threshold resolve it.
        let stop = c.now();
        let mut resolved = None;
        for _ in 0..200 {
            c.advance(Duration::from_secs(1));
            if let Some(n) = tick(&mut e, &c).into_iter().next() {
                resolved = Some(n);
                break;
            }
        }
        let n = resolved.expect("resolved");
        assert_eq!(n.kind, NotificationKind::Resolved);
        assert_eq!(n.alert.state, AlertState::Resolved);
        assert_eq!(n.alert.ends_at, Some(c.now()));
        let quiet = c.now().duration_since(stop).unwrap();
        // Below 3 once the count drops to 2 (about 40s after the last burst), plus 30s.
        assert!(
            quiet >= Duration::from_secs(30) && quiet <= Duration::from_secs(95),
            "{quiet:?}"
        );
        // Annotations as of the last evaluation at or above the threshold (3 of 3).
        assert_eq!(
            n.alert.annotations["summary"],
            "frontend denied 3 times in 1m"
        );
        let list = e.alerts();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].state, AlertState::Resolved);
        assert_eq!(e.stats().rules[0].groups, 0, "an idle group is dropped");
    }

    #[test]
    fn back_above_before_resolve_keeps_firing_without_notification() {
        let (mut e, c) = engine(BASIC, EngineConfig::default());
        feed(&mut e, "frontend", 3);
        assert_eq!(tick(&mut e, &c).len(), 1);
        c.advance(Duration::from_secs(70));
        assert!(tick(&mut e, &c).is_empty(), "below, not yet resolved");
        c.advance(Duration::from_secs(20));
        feed(&mut e, "frontend", 3);
        assert!(tick(&mut e, &c).is_empty(), "back above: same alert");
        c.advance(Duration::from_secs(20));
        assert!(tick(&mut e, &c).is_empty());
        assert_eq!(e.alerts()[0].state, AlertState::Firing);
    }

    #[test]
    fn pending_for_delays_firing_and_drops_if_not_sustained() {
        let yaml = BASIC.replace("repeat_interval: 10m", "repeat_interval: 10m\n  for: 20s");
        let (mut e, c) = engine(&yaml, EngineConfig::default());
        feed(&mut e, "frontend", 3);
        assert!(tick(&mut e, &c).is_empty());
        assert_eq!(e.alerts()[0].state, AlertState::Pending);
        assert_eq!(e.alerts()[0].starts_at, None);
        c.advance(Duration::from_secs(10));
        assert!(tick(&mut e, &c).is_empty());
        c.advance(Duration::from_secs(10));
        let n = tick(&mut e, &c);
        assert_eq!(
            kinds(&n),
            vec![(NotificationKind::Firing, "frontend".into())]
        );
        assert_eq!(
            n[0].alert.active_at,
            UNIX_EPOCH + Duration::from_secs(T0),
            "active since the threshold was reached"
        );
        assert_eq!(n[0].alert.starts_at, Some(c.now()));

        // A burst that does not last through `for` never fires.
        feed(&mut e, "intruder", 3);
        c.advance(Duration::from_secs(1));
        assert!(tick(&mut e, &c).is_empty());
        c.advance(Duration::from_secs(61));
        assert!(
            tick(&mut e, &c)
                .iter()
                .all(|n| n.alert.group["source_workload"] != "intruder")
        );
        assert!(
            e.alerts()
                .iter()
                .all(|a| a.group["source_workload"] != "intruder")
        );
    }

    #[test]
    fn memory_is_bounded_with_counted_overflow() {
        let config = EngineConfig {
            max_groups_per_rule: 4,
            max_samples: 2,
            ..EngineConfig::default()
        };
        let (mut e, c) = engine(BASIC, config);
        for g in 0..10 {
            feed(&mut e, &format!("w{g}"), 5);
        }
        let stats = e.stats();
        assert_eq!(stats.rules[0].groups, 4);
        assert_eq!(stats.rules[0].overflow_flows, 30);
        let n = tick(&mut e, &c);
        assert_eq!(n.len(), 4);
        assert!(n.iter().all(|n| n.alert.sample_flow_uuids.len() == 2));
        let w0 = n
            .iter()
            .find(|n| n.alert.group["source_workload"] == "w0")
            .expect("the first groups are tracked");
        assert_eq!(
            w0.alert.sample_flow_uuids,
            ["w0-3", "w0-4"],
            "the latest samples"
        );
        assert!(
            n.iter()
                .all(|n| n.alert.group["source_workload"].as_str() < "w4"),
            "later groups overflowed"
        );
        // Buckets stay bounded whatever the rate and duration.
        for _ in 0..500 {
            c.advance(Duration::from_millis(700));
            feed(&mut e, "w0", 3);
        }
        let rs = &e.rules[0];
        assert!(
            rs.groups
                .values()
                .all(|g| g.buckets.len() as u64 <= BUCKETS + 1)
        );
        assert!(rs.groups.values().all(|g| g.samples.len() <= 2));
    }

    #[test]
    fn stale_flows_are_not_counted() {
        let (mut e, c) = engine(BASIC, EngineConfig::default());
        for i in 0..5 {
            let mut f = denied("frontend", &format!("old-{i}"));
            f.time = Some(prost_types::Timestamp {
                seconds: i64::try_from(T0).unwrap() - 3600,
                nanos: 0,
            });
            e.observe(&f);
        }
        assert!(tick(&mut e, &c).is_empty());
        assert_eq!(e.stats().flows_stale, 5);
        let mut f = denied("frontend", "recent");
        f.time = Some(prost_types::Timestamp {
            seconds: i64::try_from(T0).unwrap() - 2,
            nanos: 0,
        });
        for _ in 0..3 {
            e.observe(&f);
        }
        assert_eq!(tick(&mut e, &c).len(), 1);
    }

    #[test]
    fn no_group_by_is_one_group() {
        let yaml = BASIC
            .replace("group_by: [source_workload]", "group_by: []")
            .replace("{{ source_workload }} denied", "denied");
        let (mut e, c) = engine(&yaml, EngineConfig::default());
        feed(&mut e, "a", 1);
        feed(&mut e, "b", 1);
        feed(&mut e, "c", 1);
        let n = tick(&mut e, &c);
        assert_eq!(n.len(), 1);
        assert!(n[0].alert.group.is_empty());
        assert_eq!(n[0].alert.labels.len(), 3, "alertname, severity, team");
    }

    #[test]
    fn reload_keeps_unchanged_rules_and_resolves_removed_ones() {
        let two = format!(
            "{BASIC}\n- {{name: Other, window: 1m, threshold: 1, selector: {{allow: [{{verdict: [DROPPED]}}]}}}}\n"
        );
        let (mut e, c) = engine(&two, EngineConfig::default());
        feed(&mut e, "frontend", 3);
        assert_eq!(tick(&mut e, &c).len(), 2);
        // Same DbDenied, Other removed.
        e.set_rules(&rules(BASIC));
        c.advance(Duration::from_secs(1));
        let n = tick(&mut e, &c);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].kind, NotificationKind::Resolved);
        assert_eq!(n[0].alert.rule, "Other");
        assert_eq!(e.alerts()[0].rule, "DbDenied");
        assert_eq!(e.alerts()[0].state, AlertState::Firing);
        // DbDenied changed (threshold): its alert resolves, the new rule starts over.
        e.set_rules(&rules(&BASIC.replace("threshold: 3", "threshold: 4")));
        let n = tick(&mut e, &c);
        assert_eq!(
            kinds(&n),
            vec![(NotificationKind::Resolved, "frontend".into())]
        );
        assert!(e.alerts().iter().all(|a| a.state == AlertState::Resolved));
    }

    #[test]
    fn resolved_alerts_expire_from_the_list() {
        let config = EngineConfig {
            resolved_retention: Duration::from_secs(60),
            ..EngineConfig::default()
        };
        let (mut e, c) = engine(BASIC, config);
        feed(&mut e, "frontend", 3);
        tick(&mut e, &c);
        for _ in 0..100 {
            c.advance(Duration::from_secs(1));
            tick(&mut e, &c);
        }
        assert_eq!(e.alerts().len(), 1);
        c.advance(Duration::from_secs(61));
        tick(&mut e, &c);
        assert!(e.alerts().is_empty());
    }

    #[test]
    fn notification_json_is_flat_with_rfc3339_times() {
        let (mut e, c) = engine(BASIC, EngineConfig::default());
        feed(&mut e, "frontend", 3);
        let n = tick(&mut e, &c).remove(0);
        let json = serde_json::to_value(&n).unwrap();
        assert_eq!(json["notification"], "firing");
        assert_eq!(json["state"], "firing");
        assert_eq!(json["starts_at"], "2023-11-14T22:13:20Z");
        assert_eq!(json["window"], "1m");
        assert!(json.get("ends_at").is_none());
        let back: Notification = serde_json::from_value(json).unwrap();
        assert_eq!(back, n);
    }
}
