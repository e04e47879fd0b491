//! Cluster mode ([`MigrateConfig::cluster`](crate::MigrateConfig::cluster)): the rendered
//! single-server DDL turned into sharded, replicated tables behind `Distributed` ones.
//!
//! Each `CREATE TABLE` of a `*MergeTree` table `T` becomes
//!
//! - `T_local`, the same table with the `Replicated*` engine
//!   (`ReplicatedMergeTree('/clickhouse/tables/{shard}/<database>/T_local', '{replica}', ...)`;
//!   `{shard}` and `{replica}` are the servers' `macros`), on every server (`ON CLUSTER`), and
//! - `T`, `Distributed('<cluster>', '<database>', 'T_local'[, <sharding key>])` with `T_local`'s
//!   columns: the name the relay writes to and every shipped query reads.
//!
//! Materialized views read from and write to the local tables (a view on a Distributed table
//! would only see the inserts made through that server), so a shard's aggregates cover its own
//! flows. The sharding keys ([`sharding_key`]) keep every copy of a flow (same `uuid`) on one
//! shard: `ReplacingMergeTree` collapses them there, `LIMIT 1 BY uuid` is exact per shard, and the
//! per-shard aggregate states (`uniqExact` uuid sets, `(uuid hash, bytes)` sets, min/max) merge
//! into the single-server answer when a query reads the Distributed table. `ALTER ... COLUMN`
//! statements run on both tables, other `ALTER`s (TTL) on the local one.
//!
//! The statements are derived from the migration files (the same files serve both modes), so
//! the single-server SQL is untouched and a new migration works in cluster mode as long as it
//! uses these forms.

use crate::migrate::{MIGRATIONS, SCHEMA_MIGRATIONS_DDL};
use crate::{Dialect, sqltext};

/// Suffix of a sharded table's local table in cluster mode: `flows` reads `flows_local`.
pub const LOCAL_SUFFIX: &str = "_local";

/// The local table of a sharded table, in cluster mode.
pub fn local_table(table: &str) -> String {
    format!("{table}{LOCAL_SUFFIX}")
}

/// The sharding key of table `table`'s Distributed table; `None`: no key, because the table is
/// only written by materialized views on the shards' local tables (an insert through the
/// Distributed table of a multi-shard cluster then fails, which is what it should do).
///
/// - `flows`, `flows_denied` (`cityHash64(uuid)`): a flow's copies on one shard, so copies
///   collapse and `LIMIT 1 BY uuid` and `uniqExact(uuid)` stay exact; `flows_denied` is filled on
///   the shard of its flow, which is the same shard.
/// - `alerts` (`cityHash64(fingerprint)`): an alert's states on one shard, so the newest one
///   wins there (`ReplacingMergeTree(updated_at_ns)`, `LIMIT 1 BY fingerprint, starts_at_ns`).
/// - `flow_edges_1m_settled`, `flow_minutes_settled` (`settle_id`): a settling run's rows and
///   marker together (reads do not depend on it: they go through the Distributed tables).
/// - `schema_migrations` (`version`).
/// - `flow_edges_1m`, `flow_minutes`: `None`, filled by views on each shard.
/// - any other table: `rand()`.
pub fn sharding_key(table: &str) -> Option<&'static str> {
    match table {
        "flows" | "flows_denied" => Some("cityHash64(uuid)"),
        "alerts" => Some("cityHash64(fingerprint)"),
        "flow_edges_1m_settled" | "flow_minutes_settled" => Some("settle_id"),
        "schema_migrations" => Some("version"),
        "flow_edges_1m" | "flow_minutes" => None,
        _ => Some("rand()"),
    }
}

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS ";

/// The `*MergeTree` tables the migrations (and `schema_migrations`) create: the tables cluster
/// mode shards. Read from the templates, so a new migration's tables are included.
pub fn sharded_tables() -> Vec<String> {
    let mut tables: Vec<String> = MIGRATIONS
        .iter()
        .flat_map(|m| [m.template(Dialect::Legacy), m.template(Dialect::Modern)])
        .chain([SCHEMA_MIGRATIONS_DDL])
        .flat_map(sqltext::split_statements)
        .filter_map(|s| {
            let rest = s.strip_prefix(CREATE_TABLE)?.strip_prefix("${database}.")?;
            let name: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            engine(&s)
                .is_some_and(|(e, ..)| e.ends_with("MergeTree"))
                .then_some(name)
        })
        .collect();
    tables.sort();
    tables.dedup();
    tables
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `(engine name, its arguments, byte range of the whole engine clause)` of a statement's
/// `ENGINE = Name(args)` or `ENGINE = Name`.
fn engine(statement: &str) -> Option<(&str, &str, std::ops::Range<usize>)> {
    let at = statement.find("ENGINE = ")? + "ENGINE = ".len();
    let name_len = statement[at..]
        .find(|c: char| !is_ident(c))
        .unwrap_or(statement.len() - at);
    let name = &statement[at..at + name_len];
    let open = at + name_len;
    if !statement[open..].starts_with('(') {
        return Some((name, "", at..open));
    }
    let close = open + statement[open..].find(')')?;
    Some((name, statement[open + 1..close].trim(), at..close + 1))
}

/// The table `` `database`.name `` right after `prefix` (and a `` `database`. ``), if any.
fn table_after<'a>(statement: &'a str, prefix: &str, database: &str) -> Option<&'a str> {
    let rest = statement
        .strip_prefix(prefix)?
        .strip_prefix(&format!("`{database}`."))?;
    let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Appends [`LOCAL_SUFFIX`] to every `` `database`.T `` of a sharded `T` in `statement`.
fn to_local(statement: &str, database: &str, sharded: &[String]) -> String {
    let qualifier = format!("`{database}`.");
    let mut out = String::with_capacity(statement.len() + 32);
    let mut rest = statement;
    while let Some(i) = rest.find(&qualifier) {
        let after = i + qualifier.len();
        let end = rest[after..]
            .find(|c: char| !is_ident(c))
            .map_or(rest.len(), |e| after + e);
        out.push_str(&rest[..end]);
        if sharded.iter().any(|t| t == &rest[after..end]) {
            out.push_str(LOCAL_SUFFIX);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A rendered single-server statement (with its `ON CLUSTER`) as the statements of cluster
/// mode, in order (see the module's documentation). `database` and `cluster` are validated
/// names ([`MigrateConfig::validate`](crate::MigrateConfig::validate)).
pub fn cluster_statements(statement: &str, database: &str, cluster: &str) -> Vec<String> {
    let sharded = sharded_tables();
    if let Some(table) = table_after(statement, CREATE_TABLE, database)
        && sharded.iter().any(|t| t == table)
        && let Some((name, args, range)) = engine(statement)
    {
        let local = local_table(table);
        let replicated = format!(
            "Replicated{name}('/clickhouse/tables/{{shard}}/{database}/{local}', '{{replica}}'{}{args})",
            if args.is_empty() { "" } else { ", " }
        );
        let mut local_create = String::with_capacity(statement.len() + 80);
        local_create.push_str(&statement[..range.start]);
        local_create.push_str(&replicated);
        local_create.push_str(&statement[range.end..]);
        let local_create = local_create.replacen(
            &format!("`{database}`.{table}"),
            &format!("`{database}`.{local}"),
            1,
        );
        return vec![local_create, distributed(database, cluster, table)];
    }
    if statement.starts_with("CREATE MATERIALIZED VIEW ") {
        return vec![to_local(statement, database, &sharded)];
    }
    if let Some(table) = table_after(statement, "ALTER TABLE ", database)
        && sharded.iter().any(|t| t == table)
    {
        let local = to_local(statement, database, &sharded);
        // Columns change on both tables (the Distributed one has the columns too); anything
        // else (TTL, partitions) is the local table's. 18.16 refuses an `ALTER ... ON CLUSTER`
        // of a Distributed table when the cluster's shards replicate internally ("Table ...
        // isn't replicated, but shard #2 is replicated"), so the Distributed table is created
        // again over the altered local one: it holds no rows (inserts are synchronous), and
        // both statements are idempotent. Reads and writes of that table fail in between.
        let upper = statement.to_ascii_uppercase();
        return if upper.contains(" COLUMN ") {
            vec![
                local,
                format!("DROP TABLE IF EXISTS `{database}`.{table} ON CLUSTER `{cluster}`"),
                distributed(database, cluster, table),
            ]
        } else {
            vec![local]
        };
    }
    vec![statement.to_owned()]
}

/// `CREATE TABLE` of the Distributed table `table` over its local table.
fn distributed(database: &str, cluster: &str, table: &str) -> String {
    let local = local_table(table);
    let key = sharding_key(table)
        .map(|k| format!(", {k}"))
        .unwrap_or_default();
    format!(
        "{CREATE_TABLE}`{database}`.{table} ON CLUSTER `{cluster}` AS `{database}`.{local}\n\
         ENGINE = Distributed('{cluster}', '{database}', '{local}'{key})"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MigrateConfig, bootstrap_statements, render_migration};

    fn cfg() -> MigrateConfig {
        MigrateConfig {
            database: "p".into(),
            retention_days: 7,
            cluster: Some("c1".into()),
        }
    }

    #[test]
    fn the_sharded_tables_are_every_merge_tree() {
        let tables = sharded_tables();
        for t in [
            "alerts",
            "flow_edges_1m",
            "flow_edges_1m_settled",
            "flow_minutes",
            "flow_minutes_settled",
            "flows",
            "flows_denied",
            "schema_migrations",
        ] {
            assert!(tables.iter().any(|x| x == t), "{t} not sharded: {tables:?}");
        }
        assert!(!tables.iter().any(|t| t.ends_with("_mv")), "{tables:?}");
    }

    #[test]
    fn tables_become_replicated_local_tables_behind_distributed_ones() {
        let cfg = cfg();
        let boot = bootstrap_statements(&cfg).unwrap();
        assert_eq!(boot[0], "CREATE DATABASE IF NOT EXISTS `p` ON CLUSTER `c1`");
        assert!(
            boot[1].starts_with(
                "CREATE TABLE IF NOT EXISTS `p`.schema_migrations_local ON CLUSTER `c1`"
            ),
            "{}",
            boot[1]
        );
        assert!(boot[1].contains(
            "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/p/schema_migrations_local', '{replica}')"
        ));
        assert_eq!(
            boot[2],
            "CREATE TABLE IF NOT EXISTS `p`.schema_migrations ON CLUSTER `c1` AS `p`.schema_migrations_local\n\
             ENGINE = Distributed('c1', 'p', 'schema_migrations_local', version)"
        );

        for dialect in [Dialect::Legacy, Dialect::Modern] {
            let flows = render_migration(&MIGRATIONS[0], dialect, &cfg).unwrap();
            assert_eq!(flows.len(), 2, "{dialect}");
            assert!(
                flows[0].starts_with("CREATE TABLE IF NOT EXISTS `p`.flows_local ON CLUSTER `c1`")
            );
            assert!(flows[0].contains(
                "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/p/flows_local', '{replica}')\nPARTITION BY"
            ));
            assert!(flows[1].ends_with("Distributed('c1', 'p', 'flows_local', cityHash64(uuid))"));
            // The same statement otherwise.
            let single = render_migration(
                &MIGRATIONS[0],
                dialect,
                &MigrateConfig {
                    cluster: None,
                    ..cfg.clone()
                },
            )
            .unwrap();
            let plain = flows[0]
                .replace(" ON CLUSTER `c1`", "")
                .replace("flows_local", "flows")
                .replace(
                    "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/p/flows', '{replica}')",
                    if dialect == Dialect::Legacy {
                        "ReplacingMergeTree()"
                    } else {
                        "ReplacingMergeTree"
                    },
                );
            assert_eq!(plain, single[0]);

            // Views on the local tables; the edges without a sharding key.
            let edges = render_migration(&MIGRATIONS[1], dialect, &cfg).unwrap();
            assert!(edges[1].ends_with("Distributed('c1', 'p', 'flow_edges_1m_local')"));
            assert!(
                edges[2].contains("TO `p`.flow_edges_1m_local\n"),
                "{}",
                edges[2]
            );
            assert!(edges[2].contains("FROM `p`.flows_local\n"), "{}", edges[2]);
            assert!(edges[2].contains("`p`.flow_edges_1m_mv ON CLUSTER"));

            // ReplacingMergeTree(version column) keeps its argument.
            let alerts = render_migration(&MIGRATIONS[3], dialect, &cfg).unwrap();
            assert!(alerts[0].contains(
                "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/p/alerts_local', '{replica}', updated_at_ns)"
            ));
        }
        // A column is added to the local table, and the Distributed table is made again.
        let bytes = render_migration(&MIGRATIONS[6], Dialect::Legacy, &cfg).unwrap();
        assert!(bytes[0].starts_with("ALTER TABLE `p`.flow_edges_1m_local ON CLUSTER `c1`"));
        assert_eq!(
            bytes[1],
            "DROP TABLE IF EXISTS `p`.flow_edges_1m ON CLUSTER `c1`"
        );
        assert!(bytes[2].starts_with("CREATE TABLE IF NOT EXISTS `p`.flow_edges_1m ON CLUSTER `c1` AS `p`.flow_edges_1m_local"));
        // A TTL only to the local table.
        assert_eq!(
            cluster_statements(
                "ALTER TABLE `p`.flows ON CLUSTER `c1` MODIFY TTL x",
                "p",
                "c1"
            ),
            ["ALTER TABLE `p`.flows_local ON CLUSTER `c1` MODIFY TTL x"]
        );
    }

    #[test]
    fn every_statement_names_local_tables_only_where_it_should() {
        let cfg = cfg();
        for m in MIGRATIONS {
            for dialect in [Dialect::Legacy, Dialect::Modern] {
                for s in render_migration(m, dialect, &cfg).unwrap() {
                    assert!(s.contains(" ON CLUSTER `c1`"), "{s}");
                    if s.contains("ENGINE = ") && !s.contains("Distributed(") {
                        assert!(s.contains("ENGINE = Replicated"), "{s}");
                    }
                    if s.starts_with("CREATE MATERIALIZED VIEW") {
                        let from = &s[s.find("AS SELECT").unwrap()..];
                        assert!(from.contains(".flows_local\n"), "{s}");
                    }
                }
            }
        }
    }
}
