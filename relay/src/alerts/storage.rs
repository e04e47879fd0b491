//! Alerts in ClickHouse: one [`AlertRow`] per notification in the `alerts` table (migration
//! 0004). The newest row of a `(fingerprint, starts_at_ns)` is the alert's last known state
//! (`ReplacingMergeTree(updated_at_ns)`; read with `LIMIT 1 BY fingerprint, starts_at_ns` after
//! `ORDER BY updated_at_ns DESC`). A retried insert writes identical rows, which merges collapse.

use periscope_storage::{ALERTS_TABLE, AlertRow};

use super::engine::{AlertState, NotificationKind};
use super::{Alert, Notification};

fn ns(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The row of one notification.
pub fn alert_row(n: &Notification) -> AlertRow {
    let a: &Alert = &n.alert;
    let (label_keys, label_values) = a.labels.clone().into_iter().unzip();
    let (annotation_keys, annotation_values) = a.annotations.clone().into_iter().unzip();
    AlertRow {
        fingerprint: a.fingerprint.clone(),
        starts_at_ns: ns(a.starts_at.unwrap_or(a.active_at)),
        updated_at_ns: u64::try_from(ns(n.at)).unwrap_or(0),
        notification: match n.kind {
            NotificationKind::Firing => "firing",
            NotificationKind::Repeat => "repeat",
            NotificationKind::Resolved => "resolved",
        }
        .into(),
        state: match a.state {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
        .into(),
        rule: a.rule.clone(),
        severity: a.severity.clone(),
        label_keys,
        label_values,
        annotation_keys,
        annotation_values,
        active_at_ns: ns(a.active_at),
        ends_at_ns: a.ends_at.map_or(0, ns),
        count: a.count,
        peak_count: a.peak_count,
        threshold: a.threshold,
        window_ms: u64::try_from(a.window.as_millis()).unwrap_or(u64::MAX),
        sample_flow_uuids: a.sample_flow_uuids.clone(),
    }
}

/// Inserts one row per notification into `database.alerts`. `client` should have gone through
/// [`periscope_storage::prepare_client`] (the ClickHouse receiver does that).
pub async fn insert_notifications(
    client: &clickhouse::Client,
    database: &str,
    batch: &[Notification],
) -> Result<(), periscope_storage::Error> {
    if batch.is_empty() {
        return Ok(());
    }
    let err = |what: &str| {
        let operation = format!("{what} {database}.{ALERTS_TABLE}");
        move |source| periscope_storage::Error::ClickHouse { operation, source }
    };
    let client = client.clone().with_database(database);
    let mut insert = client
        .insert::<AlertRow>(ALERTS_TABLE)
        .await
        .map_err(err("starting an insert into"))?;
    for n in batch {
        insert
            .write(&alert_row(n))
            .await
            .map_err(err("writing an alert into"))?;
    }
    insert.end().await.map_err(err("inserting alerts into"))?;
    Ok(())
}
