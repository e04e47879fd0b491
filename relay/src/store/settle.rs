//! Settling the service map's minutes (storage migration 0006).
//!
//! `flow_edges_1m` counts each edge's flows per minute as a set of uuids, so that a flow stored
//! twice (a spool replay) counts once; reading a window means merging every uuid in it. Once a
//! minute has had no writes for a while, its counts can no longer change, and this task writes
//! them down as plain numbers ([`Queries::settle`]); `service_map_edges` then reads those. A flow
//! that arrives for a settled minute later (an agent or a spool catching up) makes the minute read
//! from the uuid sets again until the next round settles it anew. Rounds are idempotent and safe
//! from several relays at once; a round cut short (shutdown, ClickHouse gone) leaves rows that are
//! never read. A minute is settled once it has had no writes for
//! [`StoreConfig::settle_quiet`](super::StoreConfig::settle_quiet), far longer than a write takes
//! between the view stamping its time and its rows being committed; rounds run every
//! [`StoreConfig::settle_every`](super::StoreConfig::settle_every).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use clickhouse::Client;
use periscope_storage::{Dialect, Queries};
use tokio::time::{sleep, timeout};

use super::StoreConfig;
use super::writer::Shared;

/// Minutes settled per round at most (newest first); a backlog takes several rounds.
pub const PER_ROUND: u32 = 500;

/// Runs rounds until aborted. `client` is the writer's (no database: [`Queries`] sets it).
pub(crate) async fn run(client: Client, cfg: StoreConfig, shared: Arc<Shared>) {
    let (database, deadline) = (cfg.database.clone(), cfg.timeout);
    let quiet = u32::try_from(cfg.settle_quiet.as_secs()).unwrap_or(u32::MAX);
    let mut queries: Option<Queries> = None;
    loop {
        sleep(cfg.settle_every).await;
        // Not before the writer has applied the migrations, nor while ClickHouse is down.
        if !shared.stats.schema_ready.load(Relaxed) || !shared.stats.healthy.load(Relaxed) {
            continue;
        }
        if queries.is_none() {
            match Dialect::detect(&client).await {
                Ok((dialect, _)) => match Queries::new(&client, &database, dialect) {
                    Ok(q) => queries = Some(q),
                    Err(e) => {
                        tracing::warn!(error = %e, "settling the map: preparing the queries");
                        continue;
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "settling the map: detecting the server");
                    continue;
                }
            }
        }
        let q = queries.as_ref().expect("set above");
        // Each minute is one INSERT of at most a few thousand rows; a round of PER_ROUND minutes
        // gets as many request timeouts.
        let budget = deadline * PER_ROUND.max(1);
        match timeout(budget, q.settle(quiet, PER_ROUND)).await {
            Ok(Ok(minutes)) => {
                shared
                    .stats
                    .settled_minutes
                    .fetch_add(minutes.len() as u64, Relaxed);
                if !minutes.is_empty() {
                    tracing::debug!(minutes = minutes.len(), "settled map minutes");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "settling the map's minutes failed"),
            Err(_) => tracing::warn!("settling the map's minutes timed out"),
        }
    }
}
