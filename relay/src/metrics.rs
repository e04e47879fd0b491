//! `GET /metrics` of the HTTP API: the relay's counters in the Prometheus text format (0.0.4),
//! written from the same sources as `/api/v1/status`, so the two never disagree.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `periscope_relay_peers` | gauge | `state` (connected, unavailable, error, gone) |
//! | `periscope_relay_peer_flows_forwarded_total` | counter | `peer` |
//! | `periscope_relay_ingest_lagged_flows_total` | counter | |
//! | `periscope_relay_store_*` (ClickHouse writer) | counters, gauges | |
//! | `periscope_relay_store_flows_lost_total` | counter | |
//! | `periscope_relay_window_*` (in-memory window) | gauges, counters | |
//! | `periscope_relay_alert_rules`, `periscope_relay_alert_rule_reload_failures_total` | | |
//! | `periscope_relay_alerts` | gauge | `rule`, `state` (pending, firing) |
//! | `periscope_relay_alert_flows_matched_total` | counter | `rule` |
//! | `periscope_relay_alert_notifications_total` | counter | `receiver`, `result` |
use std::fmt::Write;

use periscope_proto::relay::NodeState;

use crate::api::{ApiState, StorageStatus};

/// A Prometheus text exposition being written.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Exposition {
    /// Starts a metric family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    /// One sample.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

fn state_label(s: NodeState) -> &'static str {
    match s {
        NodeState::NodeConnected => "connected",
        NodeState::NodeUnavailable => "unavailable",
        NodeState::NodeGone => "gone",
        NodeState::NodeError => "error",
        NodeState::UnknownNodeState => "unknown",
    }
}

/// Renders every metric.
pub fn render(state: &ApiState) -> String {
    let mut e = Exposition::default();
    let peers = state.pool.peers();
    e.family(
        "periscope_relay_peers",
        "gauge",
        "Peers (agents and relays) by connection state.",
    );
    for s in [
        NodeState::NodeConnected,
        NodeState::NodeUnavailable,
        NodeState::NodeError,
        NodeState::NodeGone,
    ] {
        let n = peers.iter().filter(|p| p.snapshot().state == s).count();
        e.sample(
            "periscope_relay_peers",
            &[("state", state_label(s))],
            n as f64,
        );
    }
    e.family(
        "periscope_relay_peer_flows_forwarded_total",
        "counter",
        "Events forwarded from each peer to clients.",
    );
    for p in &peers {
        let name = p.display_name();
        let n = p.forwarded.load(std::sync::atomic::Ordering::Relaxed);
        e.sample(
            "periscope_relay_peer_flows_forwarded_total",
            &[("peer", &name)],
            n as f64,
        );
    }
    e.single(
        "periscope_relay_ingest_lagged_flows_total",
        "counter",
        "Flows the store and alerting missed because they fell behind the live stream.",
        state
            .ingest_lagged
            .load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    match (state.storage)() {
        StorageStatus::Clickhouse(s) => {
            let counters: [(&str, &str, u64); 11] = [
                ("received", "Flows given to the writer.", s.received),
                (
                    "rows_written",
                    "Rows committed to ClickHouse.",
                    s.rows_written,
                ),
                ("batches", "INSERTs committed.", s.batches),
                (
                    "spooled_rows",
                    "Flows written to the spool.",
                    s.spooled_rows,
                ),
                (
                    "replayed_rows",
                    "Rows committed from the spool.",
                    s.replayed_rows,
                ),
                (
                    "dropped_queue_full",
                    "Flows dropped: the writer's queue was full.",
                    s.dropped_queue_full,
                ),
                (
                    "dropped_spool",
                    "Flows dropped: the spool was full or unwritable.",
                    s.dropped_spool,
                ),
                (
                    "dropped_rejected",
                    "Flows of spool segments ClickHouse kept refusing.",
                    s.dropped_rejected,
                ),
                (
                    "spool_corrupt_records",
                    "Unreadable spool records.",
                    s.spool_corrupt_records,
                ),
                (
                    "insert_errors",
                    "Failed INSERTs or commits.",
                    s.insert_errors,
                ),
                (
                    "settled_minutes",
                    "Service-map minutes settled into plain counts.",
                    s.settled_minutes,
                ),
            ];
            for (name, help, v) in counters {
                e.single(
                    &format!("periscope_relay_store_{name}_total"),
                    "counter",
                    help,
                    v as f64,
                );
            }
            e.single(
                "periscope_relay_store_flows_lost_total",
                "counter",
                "Flows lost for good (dropped at the queue or the spool, set aside, unreadable).",
                s.lost() as f64,
            );
            e.single(
                "periscope_relay_store_spool_bytes",
                "gauge",
                "Bytes in the spool now.",
                s.spool_bytes as f64,
            );
            e.single(
                "periscope_relay_store_queued_flows",
                "gauge",
                "Flows queued for the writer now.",
                s.queued as f64,
            );
            e.single(
                "periscope_relay_store_healthy",
                "gauge",
                "1 while ClickHouse takes writes.",
                if s.healthy { 1.0 } else { 0.0 },
            );
        }
        StorageStatus::Window(w) => {
            e.single(
                "periscope_relay_window_flows",
                "gauge",
                "Flows held by the in-memory window.",
                w.flows as f64,
            );
            e.single(
                "periscope_relay_window_bytes",
                "gauge",
                "Bytes of the window's sealed batches.",
                w.bytes as f64,
            );
            e.single(
                "periscope_relay_window_evicted_flows_total",
                "counter",
                "Flows evicted to stay within the memory budget.",
                w.evicted as f64,
            );
        }
    }
    let a = state.alerting.stats();
    e.single(
        "periscope_relay_alert_rules",
        "gauge",
        "Alert rules in force.",
        a.rules as f64,
    );
    e.single(
        "periscope_relay_alert_rule_reload_failures_total",
        "counter",
        "Rejected alert rule reloads (the rules in force stayed).",
        a.reload_failures as f64,
    );
    e.family(
        "periscope_relay_alerts",
        "gauge",
        "Alerts by rule and state.",
    );
    for r in &a.engine.rules {
        e.sample(
            "periscope_relay_alerts",
            &[("rule", &r.name), ("state", "pending")],
            r.pending as f64,
        );
        e.sample(
            "periscope_relay_alerts",
            &[("rule", &r.name), ("state", "firing")],
            r.firing as f64,
        );
    }
    e.family(
        "periscope_relay_alert_flows_matched_total",
        "counter",
        "Flows that matched each rule's selector.",
    );
    for r in &a.engine.rules {
        e.sample(
            "periscope_relay_alert_flows_matched_total",
            &[("rule", &r.name)],
            r.flows_matched as f64,
        );
    }
    e.family(
        "periscope_relay_alert_notifications_total",
        "counter",
        "Notifications by receiver and result.",
    );
    for r in &a.receivers {
        for (result, v) in [
            ("delivered", r.delivered),
            ("retried", r.retries),
            ("failed", r.failed),
            ("dropped", r.dropped),
        ] {
            e.sample(
                "periscope_relay_alert_notifications_total",
                &[("receiver", &r.receiver), ("result", result)],
                v as f64,
            );
        }
    }
    // Log events shipped to ClickHouse (--log-to-clickhouse), when on.
    e.finish() + &periscope_logging::prometheus()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_escaping() {
        let mut e = Exposition::default();
        e.family("m", "counter", "Help.")
            .sample("m", &[("a", "x\"y\\z\nw"), ("b", "2")], 3.0);
        e.single("g", "gauge", "G.", 0.5);
        assert_eq!(
            e.finish(),
            "# HELP m Help.\n# TYPE m counter\nm{a=\"x\\\"y\\\\z\\nw\",b=\"2\"} 3\n\
             # HELP g G.\n# TYPE g gauge\ng 0.5\n"
        );
    }
}
