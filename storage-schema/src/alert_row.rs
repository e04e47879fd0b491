//! [`AlertRow`]: one alert notification of the relay's alert engine, as stored in `alerts`.

use serde::{Deserialize, Serialize};

/// Name of the alerts table.
pub const ALERTS_TABLE: &str = "alerts";

/// One row of the `alerts` table: one notification (fired, repeated, resolved) of one alert.
/// Field order is the table's column order; both dialects share names and RowBinary encoding
/// (`starts_at`, derived from `starts_at_ns` by the table, is not part of the row).
///
/// An alert instance is `(fingerprint, starts_at_ns)`; its newest row (`updated_at_ns`) is its
/// last known state. The table is a `ReplacingMergeTree(updated_at_ns)` on that key, so replays
/// and older states collapse on merge; read exactly with
/// `ORDER BY updated_at_ns DESC LIMIT 1 BY fingerprint, starts_at_ns`.
#[derive(Clone, Debug, Default, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct AlertRow {
    /// Hex hash of the alert's labels (one alert per rule and group).
    pub fingerprint: String,
    /// When the alert fired, ns since the Unix epoch.
    pub starts_at_ns: i64,
    /// When this notification was made, ns since the Unix epoch (the row's version).
    pub updated_at_ns: u64,
    /// `firing`, `repeat` or `resolved`.
    pub notification: String,
    /// `firing` or `resolved`.
    pub state: String,
    /// Rule name (`alertname`).
    pub rule: String,
    /// Rule severity.
    pub severity: String,
    /// Label names (sorted), parallel to `label_values`.
    pub label_keys: Vec<String>,
    /// Label values.
    pub label_values: Vec<String>,
    /// Annotation names (sorted), parallel to `annotation_values`.
    pub annotation_keys: Vec<String>,
    /// Rendered annotations.
    pub annotation_values: Vec<String>,
    /// When the threshold was first reached (start of pending), ns.
    pub active_at_ns: i64,
    /// When the alert resolved, ns; 0 while firing.
    pub ends_at_ns: i64,
    /// Matching flows in the window at the notification.
    pub count: u64,
    /// Highest window count while active.
    pub peak_count: u64,
    /// The rule's threshold (active while `count >= threshold`).
    pub threshold: u64,
    /// The rule's window in milliseconds.
    pub window_ms: u64,
    /// Uuids of sample flows that triggered the alert (rows of `flows`).
    pub sample_flow_uuids: Vec<String>,
}
