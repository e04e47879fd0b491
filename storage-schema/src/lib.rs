//! ClickHouse storage for the Periscope relay.
//!
//! - [`migrate`]: versioned SQL migrations (`migrations/{legacy,modern}/NNNN_name.sql`), applied in
//!   order, idempotently, recorded in `schema_migrations`; the DDL dialect follows the server
//!   version ([`Dialect`]).
//! - [`FlowRow`]: the one projection of a Hubble [`Flow`](periscope_proto::flow::Flow) into a row
//!   of the `flows` table, and back ([`FlowRow::to_flow`]).
//! - [`queries`]: the shipped SQL (`queries/*.sql`), with `{name:Type}` parameters bound
//!   server-side on modern servers and by a client-side escaping layer on 18.16, and a typed
//!   wrapper per query.
//! - [`AlertRow`]: one notification of the relay's alert engine, a row of the `alerts` table.
//! - [`apply_retention`]: drops expired day partitions (legacy) or sets the TTL (modern).
//!
//! # Delivery guarantees
//!
//! The relay writes at least once and replays its spool after failures, so the same flow can be
//! inserted twice. Every table is keyed so that copies of one flow (same `uuid`) collapse on merge
//! (`ReplacingMergeTree`, or idempotent aggregate states for the service-map edges), and every
//! shipped query is exact before any merge: it counts `uniqExact(uuid)` or reads through
//! `LIMIT 1 BY uuid`. Insert deduplication by block hash is not relied upon: 18.16 has it only for
//! replicated tables, and a replay does not always resend identical blocks.
//!
//! # Client settings
//!
//! 18.16 needs [`clickhouse::Client::with_validation`]`(false)` (the validation asks for a setting
//! that server lacks); [`prepare_client`] does that. Row types here are RowBinary-compatible with
//! both dialects' tables, which the tests check.

#![forbid(unsafe_code)]

mod alert_row;
#[cfg(feature = "arrow")]
pub mod arrow;
pub mod cluster;
mod dialect;
mod migrate;
pub mod queries;
mod row;
mod sqltext;
#[cfg(any(test, feature = "test-server"))]
pub mod testing;

pub use alert_row::{ALERTS_TABLE, AlertRow};
pub use dialect::{Dialect, ServerVersion, server_version};
pub use migrate::{
    MIGRATIONS, MigrateConfig, MigrateReport, Migration, RetentionReport, apply_retention,
    bootstrap_statements, migrate, modern_ttl_statements, render_migration, retention_cutoff_day,
};
pub use queries::{ParamValue, Queries, QuerySpec};
pub use row::{FLOWS_TABLE, FlowRow, RowError, time_ns_of};

/// Errors of this crate; each says what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the server failed.
    #[error("{operation}: {source}")]
    ClickHouse {
        /// What was being done, e.g. `reading schema_migrations of periscope`.
        operation: String,
        #[source]
        source: clickhouse::error::Error,
    },
    /// `SELECT version()` answered something that is not a version.
    #[error("ClickHouse answered version {version:?}, which is not a version number")]
    UnparsableVersion {
        /// What the server answered.
        version: String,
    },
    /// The server is older than anything this crate has DDL for.
    #[error(
        "ClickHouse {version} is too old: Periscope's storage needs ClickHouse 18.16 or newer (23.8 or newer for the modern schema)"
    )]
    ServerTooOld {
        /// The server's version.
        version: ServerVersion,
    },
    /// A configuration value is unusable.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidConfig {
        /// Which setting.
        what: &'static str,
        /// Its value.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A statement of a migration failed.
    #[error("migration {version:04}_{name} ({dialect}), statement {statement}: {source}")]
    Migration {
        /// Migration version.
        version: u32,
        /// Migration name.
        name: &'static str,
        /// Dialect of the DDL that was sent.
        dialect: Dialect,
        /// 1-based index of the failing statement in the file.
        statement: usize,
        #[source]
        source: clickhouse::error::Error,
    },
    /// The database was migrated with modern DDL but the server is a legacy one.
    #[error(
        "database {database} holds the {schema} schema, which ClickHouse {server} cannot run (it needs >= 23.8)"
    )]
    SchemaNeedsNewerServer {
        /// Database name.
        database: String,
        /// Dialect recorded in `schema_migrations`.
        schema: Dialect,
        /// The server's version.
        server: ServerVersion,
    },
    /// `schema_migrations` records a dialect this crate does not know.
    #[error("database {database}: schema_migrations records unknown dialect {dialect:?}")]
    UnknownRecordedDialect {
        /// Database name.
        database: String,
        /// The recorded value.
        dialect: String,
    },
    /// Query parameters do not fit the query.
    #[error("query {query}: {problem}")]
    Param {
        /// Query name (file stem under `queries/`).
        query: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A stored row does not convert back into a Flow.
    #[error(transparent)]
    Row(#[from] RowError),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Returns `client` set up for this crate's row types: RowBinary without schema validation, which
/// 18.16 requires and modern servers accept (the tests check the row layouts against both
/// dialects' tables instead).
pub fn prepare_client(client: clickhouse::Client) -> clickhouse::Client {
    client.with_validation(false)
}

pub(crate) fn ch_err(
    operation: impl Into<String>,
) -> impl FnOnce(clickhouse::error::Error) -> Error {
    let operation = operation.into();
    move |source| Error::ClickHouse { operation, source }
}
