//! Flow storage of the relay: the ClickHouse writer (batches, on-disk spool, idempotent replay)
//! and history reads.
//!
//! - [`Writer`]: takes the live merged stream through [`WriterHandle::try_send`], which never
//!   waits (a full queue drops and counts), converts each flow with
//!   [`FlowRow::from_flow`](periscope_storage::FlowRow::from_flow) and inserts them with the
//!   clickhouse crate's inserter, bounded by rows, bytes and period (committed on a timer even
//!   when traffic is quiet). Migrations are applied when the server is first reached.
//! - The spool ([`spool`]): while ClickHouse fails (or the insert path falls behind), flows go to
//!   append-only segment files under [`StoreConfig::spool_dir`], bounded by
//!   [`StoreConfig::spool_max_bytes`], replayed oldest first once the server answers and deleted
//!   after their insert succeeded. It survives a restart of the relay.
//! - [`History`]: GetFlows-style history (`since`, `until`, `number`, `first`, allow/deny
//!   filters) read back from ClickHouse, page by page.
//!
//! # Delivery: at least once, counted once
//!
//! A flow accepted by [`WriterHandle::try_send`] is either committed to ClickHouse, kept in the
//! spool until it is, or counted as lost ([`WriterStats::lost`]): dropped because the queue was
//! full, or because the spool was full. A batch whose commit failed may nevertheless have
//! reached the server, and is replayed from the spool: the same flow is then stored twice. The
//! schema makes that harmless (see the storage crate's README, "At least once, counted once"):
//! `flows` is a `ReplacingMergeTree` whose sorting key ends with `uuid`, and every query reads
//! through `LIMIT 1 BY uuid` or counts `uniqExact(uuid)`. The spool stores the Flow itself (its
//! protobuf encoding), so a replayed row is byte for byte the row of the first attempt, uuid
//! included. Flows that arrive without a uuid get one derived from their content
//! ([`writer::ensure_uuid`]) before anything else happens to them.
//!
//! # Wiring (main.rs)
//!
//! ```ignore
//! let cfg: StoreConfig = /* from the relay's configuration file */;
//! let writer = Writer::start(cfg.clone())?;            // spawns its tasks; never waits on ClickHouse
//! let to_store = writer.handle();                      // clone into the live merge
//! // in the merge, for every flow or batch of the live stream:
//! to_store.try_send(vec![flow.clone()]);               // never blocks; full queue = counted loss
//! let history = History::new(&cfg)?;                   // for GetFlows with since/until
//! let req = HistoryRequest::from_get_flows(&request);
//! let mut flows = history.stream(&req)?;               // oldest first, a page at a time
//! // (or history.flows(&req).await?.flows: all at once, with scanned/truncated counts)
//! // metrics / status: writer.stats() (a WriterStats snapshot)
//! // on shutdown:
//! writer.shutdown().await;                             // commits or spools what is pending
//! ```

pub mod bench;
pub mod config;
pub mod history;
pub mod settle;
pub mod spool;
pub mod writer;

use std::path::PathBuf;

pub use bench::{IngestTiming, ingest, synthetic_flows};
pub use config::{PasswordSource, StoreConfig};
pub use history::{History, HistoryPager, HistoryRequest, HistoryResult};
pub use writer::{SendOutcome, Writer, WriterHandle, WriterStats};

/// Errors of the store; each variant says what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A configuration value is unusable.
    #[error("store configuration: invalid {field}: {reason}")]
    Config {
        /// The offending setting.
        field: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// The ClickHouse password could not be read (the message names the source, never the
    /// password).
    #[error("reading the ClickHouse password from {source_name}: {reason}")]
    Password {
        /// `file /path` or `environment variable NAME`.
        source_name: String,
        /// What went wrong.
        reason: String,
    },
    /// A request to ClickHouse failed.
    #[error("{operation}: {source}")]
    ClickHouse {
        /// What was being done.
        operation: String,
        /// The client's error.
        #[source]
        source: clickhouse::error::Error,
    },
    /// The storage crate failed (migrations, queries, row conversion).
    #[error("{operation}: {source}")]
    Storage {
        /// What was being done.
        operation: String,
        /// The storage crate's error.
        #[source]
        source: periscope_storage::Error,
    },
    /// A spool file operation failed.
    #[error("spool: {operation} {}: {source}", path.display())]
    Spool {
        /// What was being done.
        operation: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A history request's filters do not compile.
    #[error("history request: {0}")]
    Filter(#[from] periscope_filter::FilterError),
    /// The writer's tasks have stopped.
    #[error("the store writer has stopped")]
    Stopped,
}

impl StoreError {
    pub(crate) fn spool(
        operation: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Spool {
            operation,
            path,
            source,
        }
    }
}

/// Result with the store's [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
