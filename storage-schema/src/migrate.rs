//! Versioned migrations, `schema_migrations`, and retention.

use std::time::{SystemTime, UNIX_EPOCH};

use clickhouse::Client;
use periscope_proto::util::calendar;
use serde::{Deserialize, Serialize};

use crate::cluster::cluster_statements;
use crate::{Dialect, Error, Result, ServerVersion, ch_err, sqltext};

/// One migration: the same version and name in both dialects.
#[derive(Debug)]
pub struct Migration {
    /// Version; migrations apply in increasing order.
    pub version: u32,
    /// Name (the file is `NNNN_name.sql`).
    pub name: &'static str,
    /// `migrations/legacy/NNNN_name.sql`.
    pub legacy: &'static str,
    /// `migrations/modern/NNNN_name.sql`.
    pub modern: &'static str,
}

impl Migration {
    /// The file's text (a template, see [`render_migration`]) for a dialect.
    pub fn template(&self, dialect: Dialect) -> &'static str {
        match dialect {
            Dialect::Legacy => self.legacy,
            Dialect::Modern => self.modern,
        }
    }

    /// FNV-1a of the template's statements (comments dropped), recorded in `schema_migrations`
    /// to notice a shipped file whose SQL changed after it was applied. Editing a comment does
    /// not change it.
    pub fn checksum(&self, dialect: Dialect) -> u64 {
        fnv1a(
            sqltext::split_statements(self.template(dialect))
                .join(";\n")
                .as_bytes(),
        )
    }

    /// Whether `recorded` (a `schema_migrations` checksum) is this file's: its [`checksum`], or
    /// what was recorded before checksums left comments out (FNV-1a of the whole file, as
    /// shipped now or, for a file whose comments changed since, as shipped then).
    ///
    /// [`checksum`]: Migration::checksum
    pub fn matches_checksum(&self, dialect: Dialect, recorded: u64) -> bool {
        recorded == self.checksum(dialect)
            || recorded == fnv1a(self.template(dialect).as_bytes())
            || EARLIER_TEXT_CHECKSUMS.contains(&(self.version, dialect, recorded))
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whole-file checksums recorded for earlier texts of a migration that differ from today's in
/// comments only: 0002 before its comments pointed at 0005.
const EARLIER_TEXT_CHECKSUMS: &[(u32, Dialect, u64)] = &[
    (2, Dialect::Legacy, 0x378c_1d80_a755_20a7),
    (2, Dialect::Modern, 0x0a93_1d4a_3a0c_b822),
];

macro_rules! migration {
    ($version:literal, $digits:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            legacy: include_str!(concat!(
                "../migrations/legacy/",
                $digits,
                "_",
                $name,
                ".sql"
            )),
            modern: include_str!(concat!(
                "../migrations/modern/",
                $digits,
                "_",
                $name,
                ".sql"
            )),
        }
    };
}

/// Every migration, in order (a unit test checks the digits match the version).
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001", "flows"),
    migration!(2, "0002", "flow_edges_1m"),
    migration!(3, "0003", "flows_denied"),
    migration!(4, "0004", "alerts"),
    migration!(5, "0005", "flow_edges_1m_edge_rule"),
    migration!(6, "0006", "flow_edges_settled"),
    migration!(7, "0007", "flow_edges_bytes"),
    migration!(8, "0008", "logs"),
];

/// Tables that hold flows and are partitioned by day (`toYYYYMMDD`), with their TTL column
/// expression in the modern dialect.
const RETAINED_TABLES: [(&str, &str); 7] = [
    ("flows", "toDateTime(time)"),
    ("flows_denied", "toDateTime(time)"),
    ("flow_edges_1m", "minute"),
    ("flow_minutes", "minute"),
    ("flow_edges_1m_settled", "minute"),
    ("flow_minutes_settled", "minute"),
    ("logs", "toDateTime(time)"),
];

/// Records applied migrations; the same DDL in both dialects. ReplacingMergeTree on `version`:
/// two relays migrating at once may both record a version, and the copies collapse.
pub(crate) const SCHEMA_MIGRATIONS_DDL: &str =
    "CREATE TABLE IF NOT EXISTS ${database}.schema_migrations${on_cluster}
(
    version UInt32,
    name String,
    dialect String,
    checksum UInt64,
    applied_at DateTime DEFAULT now()
)
ENGINE = ReplacingMergeTree()
ORDER BY version";

fn default_database() -> String {
    "periscope".into()
}

fn default_retention_days() -> u32 {
    7
}

/// Where and how to create the schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateConfig {
    /// Database holding Periscope's tables; created if missing. A bare identifier
    /// (`[A-Za-z_][A-Za-z0-9_]*`). Default `periscope`.
    #[serde(default = "default_database")]
    pub database: String,
    /// Days of flows to keep (at least 1). Modern servers get it as the tables' TTL; on legacy
    /// servers [`apply_retention`] drops older day partitions. Default 7.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// ClickHouse cluster (a `remote_servers` name) to shard and replicate the tables over;
    /// `None` (the default) for a single server. With a cluster, every DDL statement runs
    /// `ON CLUSTER`, each table `T` becomes a local table `T_local` with a `Replicated*` engine
    /// (ZooKeeper path `/clickhouse/tables/{shard}/<database>/T_local`, replica `{replica}`:
    /// every server needs both macros) plus a `Distributed` table `T` over it, which the relay
    /// writes to and reads from; the materialized views sit on the local tables. See
    /// [`cluster_statements`] and the crate's README ("Clusters and sizing"). A database
    /// migrated without a cluster cannot be switched to one (a new database is needed).
    #[serde(default)]
    pub cluster: Option<String>,
}

impl Default for MigrateConfig {
    fn default() -> Self {
        Self {
            database: default_database(),
            retention_days: default_retention_days(),
            cluster: None,
        }
    }
}

impl MigrateConfig {
    /// Checks the names and numbers that end up in DDL.
    pub fn validate(&self) -> Result<()> {
        validate_database(&self.database)?;
        if self.retention_days == 0 {
            return Err(Error::InvalidConfig {
                what: "retention_days",
                value: "0".into(),
                reason: "must keep at least one day",
            });
        }
        if let Some(cluster) = &self.cluster {
            let ok = !cluster.is_empty()
                && cluster.len() <= 128
                && cluster
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !ok {
                return Err(Error::InvalidConfig {
                    what: "cluster",
                    value: cluster.clone(),
                    reason: "must be 1-128 characters of letters, digits, '_', '-' and '.'",
                });
            }
        }
        Ok(())
    }

    /// `client` set up for this configuration: [`crate::prepare_client`], and with a cluster
    /// the settings its Distributed tables need: `insert_distributed_sync = 1` (an insert
    /// returns once every shard has its rows, so a write that succeeded is readable and the
    /// relay's at-least-once retry covers a shard that is down),
    /// `distributed_product_mode = 'global'` (the shipped queries' `IN (SELECT ...)` over
    /// Distributed tables run once, on the server queried, and their result goes to every
    /// shard; 18.16 refuses such subqueries by default) and `load_balancing = 'in_order'`
    /// (writes and reads go to the same replica of a shard, the first one that is up, so a read
    /// does not miss what was just written while the other replicas catch up).
    pub fn prepare_client(&self, client: Client) -> Client {
        let client = crate::prepare_client(client);
        match &self.cluster {
            None => client,
            Some(_) => client
                .with_setting("insert_distributed_sync", "1")
                .with_setting("distributed_product_mode", "global")
                .with_setting("load_balancing", "in_order"),
        }
    }

    fn on_cluster(&self) -> String {
        self.cluster
            .as_ref()
            .map(|c| format!(" ON CLUSTER `{c}`"))
            .unwrap_or_default()
    }
}

pub(crate) fn validate_database(database: &str) -> Result<()> {
    let ok = database.len() <= 128
        && database
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidConfig {
            what: "database",
            value: database.to_owned(),
            reason: "must be a bare identifier: [A-Za-z_][A-Za-z0-9_]*, at most 128 characters",
        })
    }
}

/// Fills in a template's `${database}`, `${on_cluster}` and `${retention_days}`.
fn render(template: &str, config: &MigrateConfig) -> String {
    template
        .replace("${database}", &format!("`{}`", config.database))
        .replace("${on_cluster}", &config.on_cluster())
        .replace("${retention_days}", &config.retention_days.to_string())
}

/// The statements of a migration for a dialect and configuration, comments dropped, in order.
pub fn render_migration(
    migration: &Migration,
    dialect: Dialect,
    config: &MigrateConfig,
) -> Result<Vec<String>> {
    config.validate()?;
    let statements = sqltext::split_statements(&render(migration.template(dialect), config));
    Ok(match &config.cluster {
        None => statements,
        Some(cluster) => statements
            .into_iter()
            .flat_map(|s| cluster_statements(&s, &config.database, cluster))
            .collect(),
    })
}

/// The statements [`migrate`] runs before any migration: the database and `schema_migrations`.
pub fn bootstrap_statements(config: &MigrateConfig) -> Result<Vec<String>> {
    config.validate()?;
    let mut statements = vec![format!(
        "CREATE DATABASE IF NOT EXISTS `{}`{}",
        config.database,
        config.on_cluster()
    )];
    let schema_migrations = render(SCHEMA_MIGRATIONS_DDL, config);
    match &config.cluster {
        None => statements.push(schema_migrations),
        Some(cluster) => statements.extend(cluster_statements(
            &schema_migrations,
            &config.database,
            cluster,
        )),
    }
    Ok(statements)
}

/// What [`migrate`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrateReport {
    /// The server's version.
    pub server_version: ServerVersion,
    /// The dialect the server supports.
    pub server_dialect: Dialect,
    /// The dialect of the schema in the database: the one it was first created with (a legacy
    /// schema stays legacy after a server upgrade; its DDL and queries run on modern servers).
    pub schema_dialect: Dialect,
    /// Versions applied by this call, in order.
    pub applied: Vec<u32>,
    /// Versions that were already there.
    pub already_applied: Vec<u32>,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct AppliedRow {
    version: u32,
    dialect: String,
    checksum: u64,
}

/// Brings the schema in `config.database` up to date: creates the database and
/// `schema_migrations` if missing, then applies every migration not recorded there, in order,
/// each statement idempotent (`IF NOT EXISTS`), recording each migration after its last
/// statement. Running it again is a no-op; a run cut short is finished by the next one.
pub async fn migrate(client: &Client, config: &MigrateConfig) -> Result<MigrateReport> {
    config.validate()?;
    let client = config.prepare_client(client.clone());
    let (server_dialect, server_version) = Dialect::detect(&client).await?;
    let db = &config.database;
    if config.cluster.is_some() {
        refuse_single_server_schema(&client, db).await?;
    }

    for statement in bootstrap_statements(config)? {
        client
            .query_raw(&statement)
            .execute()
            .await
            .map_err(ch_err(format!("creating {db} and {db}.schema_migrations")))?;
    }

    let applied: Vec<AppliedRow> = client
        .query_raw(&format!(
            "SELECT version, any(dialect) AS dialect, any(checksum) AS checksum \
             FROM `{db}`.schema_migrations GROUP BY version ORDER BY version"
        ))
        .fetch_all()
        .await
        .map_err(ch_err(format!("reading {db}.schema_migrations")))?;

    let schema_dialect = match applied.first() {
        None => server_dialect,
        Some(row) => {
            Dialect::from_name(&row.dialect).ok_or_else(|| Error::UnknownRecordedDialect {
                database: db.clone(),
                dialect: row.dialect.clone(),
            })?
        }
    };
    if schema_dialect == Dialect::Modern && server_dialect == Dialect::Legacy {
        return Err(Error::SchemaNeedsNewerServer {
            database: db.clone(),
            schema: schema_dialect,
            server: server_version,
        });
    }
    if schema_dialect != server_dialect {
        tracing::info!(
            database = %db,
            server = %server_version,
            schema = %schema_dialect,
            "keeping the legacy schema on a modern server"
        );
    }

    let mut report = MigrateReport {
        server_version,
        server_dialect,
        schema_dialect,
        applied: Vec::new(),
        already_applied: Vec::new(),
    };
    for migration in MIGRATIONS {
        if let Some(row) = applied.iter().find(|r| r.version == migration.version) {
            let shipped = migration.checksum(schema_dialect);
            if !migration.matches_checksum(schema_dialect, row.checksum) {
                tracing::warn!(
                    database = %db,
                    version = migration.version,
                    name = migration.name,
                    applied = row.checksum,
                    shipped,
                    "an applied migration's file has changed since; the change is not applied"
                );
            }
            report.already_applied.push(migration.version);
            continue;
        }
        let statements = render_migration(migration, schema_dialect, config)?;
        for (i, statement) in statements.iter().enumerate() {
            if let Some((table, column)) = added_column(statement)
                && column_exists(&client, db, &table, &column).await?
            {
                // A run cut short already added it (18.16 has no ADD COLUMN IF NOT EXISTS).
                continue;
            }
            client
                .query_raw(statement)
                .execute()
                .await
                .map_err(|source| Error::Migration {
                    version: migration.version,
                    name: migration.name,
                    dialect: schema_dialect,
                    statement: i + 1,
                    source,
                })?;
        }
        client
            .query(&format!(
                "INSERT INTO `{db}`.schema_migrations (version, name, dialect, checksum) VALUES (?, ?, ?, ?)"
            ))
            .bind(migration.version)
            .bind(migration.name)
            .bind(schema_dialect.as_str())
            .bind(migration.checksum(schema_dialect))
            .execute()
            .await
            .map_err(ch_err(format!(
                "recording migration {:04}_{} in {db}.schema_migrations",
                migration.version, migration.name
            )))?;
        tracing::info!(
            database = %db,
            version = migration.version,
            name = migration.name,
            dialect = %schema_dialect,
            "applied migration"
        );
        report.applied.push(migration.version);
    }
    Ok(report)
}

/// Cluster mode needs the database's `flows` to be a Distributed table (or missing): a database
/// migrated without a cluster keeps its local tables, and the relay would write to one server.
async fn refuse_single_server_schema(client: &Client, db: &str) -> Result<()> {
    let engines: Vec<String> = client
        .query("SELECT engine FROM system.tables WHERE database = ? AND name = 'flows'")
        .bind(db)
        .fetch_all()
        .await
        .map_err(ch_err(format!("looking up the engine of {db}.flows")))?;
    match engines.first() {
        Some(engine) if engine != "Distributed" => Err(Error::InvalidConfig {
            what: "cluster",
            value: format!("{db}.flows is {engine}"),
            reason: "the database was migrated without a cluster (local tables); cluster mode \
                     needs a new database (then INSERT INTO new.flows SELECT * FROM old.flows)",
        }),
        _ => Ok(()),
    }
}

/// `(table, column)` of a statement `ALTER TABLE <db>.<table> [ON CLUSTER c] ADD COLUMN <column>
/// ...` (without `IF NOT EXISTS`): the legacy dialect's way to add a column, which fails when the
/// column is there, so [`migrate`] runs it only when it is not.
fn added_column(statement: &str) -> Option<(String, String)> {
    let words: Vec<&str> = statement
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .flat_map(str::split_whitespace)
        .collect();
    let upper = |i: usize| words.get(i).map(|w| w.to_ascii_uppercase());
    if upper(0)? != "ALTER" || upper(1)? != "TABLE" {
        return None;
    }
    let add = (2..words.len()).find(|&i| {
        upper(i).as_deref() == Some("ADD") && upper(i + 1).as_deref() == Some("COLUMN")
    })?;
    if upper(add + 2).as_deref() == Some("IF") {
        return None;
    }
    let table = words[2].rsplit('.').next()?.trim_matches('`').to_owned();
    let column = words.get(add + 2)?.trim_matches('`').to_owned();
    Some((table, column))
}

/// Whether `db.table` has `column`.
async fn column_exists(client: &Client, db: &str, table: &str, column: &str) -> Result<bool> {
    let n: u64 = client
        .query("SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?")
        .bind(db)
        .bind(table)
        .bind(column)
        .fetch_one()
        .await
        .map_err(ch_err(format!(
            "looking for column {column} of {db}.{table}"
        )))?;
    Ok(n > 0)
}

/// What [`apply_retention`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// `(table, partition id)` of each dropped day partition (legacy schema).
    pub dropped_partitions: Vec<(String, String)>,
    /// The TTL statements run (modern schema).
    pub ttl_statements: Vec<String>,
}

/// The `ALTER TABLE ... MODIFY TTL` statements that set a modern schema's retention.
pub fn modern_ttl_statements(config: &MigrateConfig) -> Result<Vec<String>> {
    config.validate()?;
    Ok(RETAINED_TABLES
        .iter()
        .map(|(table, column)| {
            let table = match config.cluster {
                None => (*table).to_owned(),
                Some(_) => crate::cluster::local_table(table),
            };
            format!(
                "ALTER TABLE `{}`.{table}{} MODIFY TTL {column} + INTERVAL {} DAY",
                config.database,
                config.on_cluster(),
                config.retention_days
            )
        })
        .collect())
}

/// `YYYYMMDD` of the oldest day partition to keep: the UTC day of `now - days`. Partitions of
/// earlier days hold only flows older than `days` days.
pub fn retention_cutoff_day(now: SystemTime, days: u32) -> u32 {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
        - i64::from(days) * 86_400;
    let (y, m, d) = calendar::civil_from_days(secs.div_euclid(86_400));
    (y * 10_000 + m * 100 + d).clamp(0, i64::from(u32::MAX)) as u32
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct PartitionRow {
    table: String,
    partition_id: String,
}

/// The day partitions of the retained local tables on every server of `cluster` (the
/// `cluster()` table function over `system.parts`).
async fn cluster_partitions(client: &Client, db: &str, cluster: &str) -> Result<Vec<PartitionRow>> {
    let tables: Vec<String> = RETAINED_TABLES
        .iter()
        .map(|(t, _)| format!("'{}'", crate::cluster::local_table(t)))
        .collect();
    // `cluster` is validated ([A-Za-z0-9_.-]) and `tables` are ours: no user text is quoted here.
    client
        .query(&format!(
            "SELECT DISTINCT table, partition_id FROM cluster('{cluster}', system, parts) \
             WHERE database = ? AND table IN ({}) AND active ORDER BY table, partition_id",
            tables.join(", ")
        ))
        .bind(db)
        .fetch_all()
        .await
        .map_err(ch_err(format!(
            "listing the partitions of {db} on cluster {cluster}"
        )))
}

/// Enforces `config.retention_days` on a schema of dialect `schema`.
///
/// - Legacy (no TTL): drops every day partition of the tables that hold flows or their
///   aggregates (`flows`, `flows_denied`, `flow_edges_1m` and 0006's three) older than the cutoff ([`retention_cutoff_day`]). The relay calls this at start and then
///   periodically (hourly is plenty: partitions are days).
/// - Modern: sets the tables' TTL to the configured days (`MODIFY TTL`); the server then drops
///   expired parts itself. Only needed when the retention changes after the first migration.
pub async fn apply_retention(
    client: &Client,
    config: &MigrateConfig,
    schema: Dialect,
) -> Result<RetentionReport> {
    config.validate()?;
    let client = config.prepare_client(client.clone());
    let db = &config.database;
    let mut report = RetentionReport::default();
    match schema {
        Dialect::Modern => {
            for statement in modern_ttl_statements(config)? {
                client
                    .query_raw(&statement)
                    .execute()
                    .await
                    .map_err(ch_err(format!("setting the TTL in {db}: {statement}")))?;
                report.ttl_statements.push(statement);
            }
        }
        Dialect::Legacy => {
            let cutoff = retention_cutoff_day(SystemTime::now(), config.retention_days);
            let parts: Vec<PartitionRow> = match &config.cluster {
                // Every retained table (`logs` too); the names are ours, no user text.
                None => client
                    .query(&format!(
                        "SELECT DISTINCT table, partition_id FROM system.parts \
                         WHERE database = ? AND table IN ({}) AND active \
                         ORDER BY table, partition_id",
                        RETAINED_TABLES
                            .iter()
                            .map(|(t, _)| format!("'{t}'"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .bind(db.as_str())
                    .fetch_all()
                    .await
                    .map_err(ch_err(format!("listing the partitions of {db}")))?,
                Some(cluster) => cluster_partitions(&client, db, cluster).await?,
            };
            for part in parts {
                // Partition ids of toYYYYMMDD keys are the day's digits; anything else is not ours.
                let Ok(day) = part.partition_id.parse::<u32>() else {
                    continue;
                };
                if day >= cutoff {
                    continue;
                }
                client
                    .query(&format!(
                        "ALTER TABLE `{db}`.`{}`{} DROP PARTITION ID ?",
                        part.table,
                        config.on_cluster()
                    ))
                    .bind(part.partition_id.as_str())
                    .execute()
                    .await
                    .map_err(ch_err(format!(
                        "dropping partition {} of {db}.{}",
                        part.partition_id, part.table
                    )))?;
                tracing::info!(
                    database = %db,
                    table = %part.table,
                    partition = %part.partition_id,
                    "dropped an expired partition"
                );
                report
                    .dropped_partitions
                    .push((part.table, part.partition_id));
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn added_columns_are_recognised() {
        assert_eq!(
            added_column(
                "ALTER TABLE `p`.flow_edges_1m ON CLUSTER c\n    ADD COLUMN flow_bytes UInt64"
            ),
            Some(("flow_edges_1m".into(), "flow_bytes".into()))
        );
        assert_eq!(
            added_column("-- comment\nalter table t add column `b` UInt64"),
            Some(("t".into(), "b".into()))
        );
        assert_eq!(
            added_column("ALTER TABLE t ADD COLUMN IF NOT EXISTS b UInt64"),
            None
        );
        assert_eq!(added_column("ALTER TABLE t MODIFY TTL x"), None);
        assert_eq!(added_column("CREATE TABLE t (a UInt8) ENGINE = Log"), None);
        // Every legacy migration's ADD COLUMN is recognised; the modern ones say IF NOT EXISTS.
        let cfg = MigrateConfig::default();
        let adds = |dialect| -> Vec<(String, String)> {
            MIGRATIONS
                .iter()
                .flat_map(|m| render_migration(m, dialect, &cfg).unwrap())
                .filter_map(|st| added_column(&st))
                .collect()
        };
        assert_eq!(
            adds(Dialect::Legacy),
            [
                ("flow_edges_1m", "flow_bytes"),
                ("flow_edges_1m_settled", "bytes")
            ]
            .map(|(t, c)| (t.to_owned(), c.to_owned()))
        );
        assert!(adds(Dialect::Modern).is_empty());
    }

    #[test]
    fn migrations_are_ordered_and_fully_rendered() {
        let mut last = 0;
        for m in MIGRATIONS {
            assert!(m.version > last, "{} out of order", m.version);
            let first_line = m.legacy.lines().next().unwrap();
            assert!(
                first_line.starts_with(&format!("-- {:04} {}", m.version, m.name)),
                "{first_line}"
            );
            assert!(
                m.modern
                    .starts_with(&format!("-- {:04} {}", m.version, m.name))
            );
            last = m.version;
            for dialect in [Dialect::Legacy, Dialect::Modern] {
                let cfg = MigrateConfig {
                    database: "db_x".into(),
                    retention_days: 9,
                    cluster: Some("main-1".into()),
                };
                let statements = render_migration(m, dialect, &cfg).unwrap();
                assert!(!statements.is_empty());
                for s in &statements {
                    assert!(!s.contains("${"), "unrendered placeholder in {s}");
                    assert!(!s.contains("--"), "comment left in {s}");
                    assert!(s.contains("`db_x`."), "database not qualified in {s}");
                    assert!(s.contains(" ON CLUSTER `main-1`"), "no ON CLUSTER in {s}");
                    let idempotent = if s.starts_with("DROP ") {
                        s.contains(" IF EXISTS ")
                    } else if added_column(s).is_some() {
                        // The runner skips it when the column is there.
                        true
                    } else {
                        s.contains("IF NOT EXISTS")
                    };
                    assert!(idempotent, "not idempotent: {s}");
                }
                if dialect == Dialect::Modern && m.version == 1 {
                    assert!(statements[0].contains("INTERVAL 9 DAY"));
                }
                let single = render_migration(m, dialect, &MigrateConfig::default()).unwrap();
                assert!(single.iter().all(|s| !s.contains("ON CLUSTER")));
            }
        }
    }

    #[test]
    fn checksums_leave_comments_out_and_know_earlier_texts() {
        let m = |sql: &'static str| Migration {
            version: 9,
            name: "x",
            legacy: sql,
            modern: sql,
        };
        let a = m(
            "-- 0009 x\n-- says one thing\nCREATE TABLE IF NOT EXISTS t (x UInt8) ENGINE = Log;\n",
        );
        let b = m(
            "-- 0009 x\n-- says another\n\nCREATE TABLE IF NOT EXISTS t (x UInt8) ENGINE = Log; -- !\n",
        );
        let c = m("-- 0009 x\nCREATE TABLE IF NOT EXISTS t (x UInt16) ENGINE = Log;\n");
        assert_eq!(a.checksum(Dialect::Legacy), b.checksum(Dialect::Legacy));
        assert_ne!(a.checksum(Dialect::Legacy), c.checksum(Dialect::Legacy));
        // What earlier versions recorded: the whole file's FNV-1a.
        assert!(a.matches_checksum(Dialect::Modern, fnv1a(a.modern.as_bytes())));
        assert!(!a.matches_checksum(Dialect::Modern, fnv1a(b.modern.as_bytes())));

        // 0002's earlier text: today's with the comment as it was before it pointed at 0005.
        let m2 = &MIGRATIONS[1];
        assert_eq!(m2.version, 2);
        for dialect in [Dialect::Legacy, Dialect::Modern] {
            let now = "-- One row per (minute, cluster, source, destination, port, protocol, verdict) edge. This file's
-- view counts every L3/L4 flow that is not a reply (a reply would draw the edge backwards);
-- 0005_flow_edges_1m_edge_rule.sql replaces it with one that counts one observation per packet,
-- the rule of the live map (`periscope_ui_api::edge_of`; see 0005). An end is named by its
";
            let then = "-- One row per (minute, cluster, source, destination, port, protocol, verdict) edge. Only L3/L4
-- flows that are not replies count (a reply would draw the edge backwards). An end is named by its
";
            let template = m2.template(dialect);
            assert!(
                template.contains(now),
                "0002 {dialect} comment changed again"
            );
            let earlier = fnv1a(template.replace(now, then).as_bytes());
            assert!(
                m2.matches_checksum(dialect, earlier),
                "{dialect}: {earlier:#x}"
            );
            assert!(!m2.matches_checksum(dialect, earlier ^ 1));
        }
    }

    #[test]
    fn the_edge_rule_view_is_the_same_in_both_dialects() {
        let m = MIGRATIONS.iter().find(|m| m.version == 5).unwrap();
        let cfg = MigrateConfig::default();
        let legacy = render_migration(m, Dialect::Legacy, &cfg).unwrap();
        let modern = render_migration(m, Dialect::Modern, &cfg).unwrap();
        assert_eq!(
            legacy,
            [
                "DROP TABLE IF EXISTS `periscope`.flow_edges_1m_mv".to_owned(),
                modern[1].clone()
            ]
        );
        assert_eq!(
            modern[0],
            "DROP VIEW IF EXISTS `periscope`.flow_edges_1m_mv"
        );
        assert!(modern[1].starts_with(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS `periscope`.flow_edges_1m_mv\nTO `periscope`.flow_edges_1m"
        ));
        // The view's select is 0002's, only the filter differs.
        let select = |s: &str| s[s.find("AS SELECT").unwrap()..s.find("WHERE").unwrap()].to_owned();
        let old = render_migration(&MIGRATIONS[1], Dialect::Modern, &cfg).unwrap();
        assert_eq!(select(&modern[1]), select(&old[1]));
    }

    #[test]
    fn legacy_ddl_avoids_what_18_16_lacks() {
        for m in MIGRATIONS {
            for bad in [
                "DateTime64",
                "LowCardinality",
                "TTL",
                "CODEC",
                "INDEX ",
                "IPv6",
                " Map(",
                "SimpleAggregateFunction",
                "${retention_days}",
            ] {
                assert!(
                    !sqltext::strip_comments(m.legacy).contains(bad),
                    "{:04}_{} legacy uses {bad}",
                    m.version,
                    m.name
                );
            }
        }
    }

    #[test]
    fn config_is_validated() {
        let ok = MigrateConfig::default();
        ok.validate().unwrap();
        for database in ["", "1db", "a-b", "a`b", "x; DROP TABLE y", "périscope"] {
            let cfg = MigrateConfig {
                database: database.into(),
                ..ok.clone()
            };
            assert!(cfg.validate().is_err(), "{database:?} accepted");
        }
        let cfg = MigrateConfig {
            retention_days: 0,
            ..ok.clone()
        };
        assert!(cfg.validate().is_err());
        let cfg = MigrateConfig {
            cluster: Some("a` b".into()),
            ..ok.clone()
        };
        assert!(cfg.validate().is_err());
        let parsed: MigrateConfig =
            serde_json::from_str(r#"{"database":"p2","retention_days":3}"#).unwrap();
        assert_eq!(parsed.database, "p2");
        assert!(serde_json::from_str::<MigrateConfig>(r#"{"retention":3}"#).is_err());
    }

    #[test]
    fn cutoff_is_the_utc_day_of_now_minus_retention() {
        // 2024-03-31T10:00:00Z
        let now = UNIX_EPOCH + Duration::from_secs(1_711_879_200);
        assert_eq!(retention_cutoff_day(now, 30), 20240301);
        assert_eq!(retention_cutoff_day(now, 1), 20240330);
        assert_eq!(retention_cutoff_day(now, 366), 20230331);
    }

    #[test]
    fn modern_ttl_covers_every_table() {
        let cfg = MigrateConfig {
            retention_days: 3,
            ..MigrateConfig::default()
        };
        let statements = modern_ttl_statements(&cfg).unwrap();
        assert_eq!(statements.len(), 7);
        assert!(statements[0].ends_with("flows MODIFY TTL toDateTime(time) + INTERVAL 3 DAY"));
    }
}
