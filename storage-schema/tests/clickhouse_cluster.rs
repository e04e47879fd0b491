//! Cluster mode ([`MigrateConfig::cluster`]) on a real 18.16 cluster: a private ZooKeeper and
//! three private servers ([`TestCluster`]): shard 1 with two replicas (to show replication),
//! shard 2 with one.
//!
//! ZooKeeper is real, not mocked: 18.16 runs `ON CLUSTER` DDL through its distributed DDL queue
//! in ZooKeeper and `Replicated*` tables keep their replication log there, so neither works
//! without one. Each test starts its own (Debian's zookeeper 3.8, standalone, on a free
//! loopback port with a temporary data directory; see `periscope_storage::testing::TestZooKeeper`)
//! and its own servers, and drops them all at the end.
//!
//! What is checked: the migrations in cluster mode (replicated local tables behind Distributed
//! ones, views on the local tables, idempotent re-runs from any server), the seed written the
//! way the relay writes it (RowBinary into `flows`, the Distributed table) and spread over both
//! shards with every copy of a flow on one shard, and every shipped query answering exactly what
//! it answers on one server (`common::cases`) — from a server of each shard, with replays, after
//! merges, after settling, after late replays and settling again — and retention dropping old
//! day partitions on every shard.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clickhouse::Client;
use periscope_storage::testing::{TestCluster, full_flow};
use periscope_storage::{
    Dialect, FlowRow, MIGRATIONS, MigrateConfig, Queries, apply_retention, migrate,
};

use common::{Case, Expected, SEC};

const CLUSTER: &str = "periscope_test";

fn start() -> TestCluster {
    TestCluster::start(CLUSTER, &[2, 1])
        .unwrap_or_else(|e| panic!("starting ZooKeeper and a 2-shard clickhouse cluster: {e}"))
}

fn config(database: &str, retention_days: u32) -> MigrateConfig {
    MigrateConfig {
        database: database.into(),
        retention_days,
        cluster: Some(CLUSTER.into()),
    }
}

/// Server `i`'s client with the cluster settings, as the relay makes it.
fn client(cluster: &TestCluster, cfg: &MigrateConfig, i: usize) -> Client {
    cfg.prepare_client(cluster.servers()[i].client())
}

/// Writes rows the way the relay does: RowBinary into `flows` (here the Distributed table).
async fn insert(client: &Client, database: &str, rows: &[FlowRow]) {
    let client = client.clone().with_database(database);
    let mut insert = client
        .insert::<FlowRow>(periscope_storage::FLOWS_TABLE)
        .await
        .expect("starting an insert");
    for row in rows {
        insert.write(row).await.expect("writing a row");
    }
    insert.end().await.expect("finishing an insert");
}

async fn scalar_u64(client: &Client, sql: &str) -> u64 {
    client
        .query_raw(sql)
        .fetch_one::<u64>()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn run_all(client: &Client, statements: &[String]) {
    for statement in statements {
        client
            .query_raw(statement)
            .execute()
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

async fn run_cases(queries: &Queries, cases: &[Case], when: &str) {
    for case in cases {
        let query = queries
            .prepare(&case.spec, &case.params)
            .unwrap_or_else(|e| panic!("{}: {e}", case.id));
        let id = format!("{} ({when})", case.id);
        match &case.expected {
            Expected::DeniedByPolicy(want) => check(query, want, &id).await,
            Expected::TopTalkers(want) => check(query, want, &id).await,
            Expected::NewWorldDestinations(want) => check(query, want, &id).await,
            Expected::DnsFailures(want) => check(query, want, &id).await,
            Expected::TcpResets(want) => check(query, want, &id).await,
            Expected::PodFlows(want) => check(query, want, &id).await,
            Expected::ServiceMapEdges(want) => check(query, want, &id).await,
            Expected::History(want) => check(query, want, &id).await,
        }
    }
}

async fn check<T>(query: clickhouse::query::Query, want: &[T], id: &str)
where
    T: clickhouse::RowOwned + clickhouse::RowRead + PartialEq + std::fmt::Debug,
{
    let got: Vec<T> = query
        .fetch_all()
        .await
        .unwrap_or_else(|e| panic!("case {id}: {e}"));
    assert_eq!(got, want, "case {id}");
}

/// Settles every minute whose writes are done (see clickhouse_legacy.rs), checking that a
/// second run finds nothing left.
async fn settle_all(queries: &Queries) -> Vec<periscope_storage::queries::SettleCandidate> {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let settled = queries.settle(0, 100_000).await.expect("settling");
    let again = queries.settle(0, 100_000).await.expect("settling again");
    assert_eq!(again, [], "settling twice");
    settled
}

/// `SYSTEM SYNC REPLICA` on every server for the local tables that hold flows, so the replica
/// of shard 1 has what its peer received.
async fn sync_replicas(cluster: &TestCluster, cfg: &MigrateConfig) {
    for i in 0..cluster.servers().len() {
        let c = client(cluster, cfg, i);
        for table in ["flows_local", "flows_denied_local", "flow_edges_1m_local"] {
            run_all(
                &c,
                &[format!("SYSTEM SYNC REPLICA {}.{table}", cfg.database)],
            )
            .await;
        }
    }
}

#[tokio::test]
async fn every_query_answers_on_the_cluster_as_on_one_server() {
    let cluster = start();
    let cfg = config("periscope_c", 30);
    let db = &cfg.database;
    let first = client(&cluster, &cfg, 0);
    // The other shard's server.
    let other = client(&cluster, &cfg, 2);

    let versions: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
    let report = migrate(&first, &cfg).await.expect("migrate on the cluster");
    assert_eq!(report.schema_dialect, Dialect::Legacy);
    assert_eq!(report.applied, versions);
    // Re-runs are no-ops, from any server: schema_migrations is a Distributed table too.
    for c in [&first, &other] {
        let again = migrate(c, &cfg).await.expect("migrate again");
        assert!(again.applied.is_empty(), "{again:?}");
        assert_eq!(again.already_applied, versions);
    }
    // Every server has the local tables and the Distributed ones under the shipped names.
    for i in 0..cluster.servers().len() {
        let engines: Vec<(String, String)> = client(&cluster, &cfg, i)
            .query_raw(&format!(
                "SELECT name, engine FROM system.tables WHERE database = '{db}' \
                 AND name IN ('flows', 'flows_local', 'flow_edges_1m', 'flow_edges_1m_local', \
                 'alerts_local', 'flow_edges_1m_mv') ORDER BY name"
            ))
            .fetch_all()
            .await
            .expect("listing tables");
        let engines: Vec<(&str, &str)> = engines
            .iter()
            .map(|(n, e)| (n.as_str(), e.as_str()))
            .collect();
        assert_eq!(
            engines,
            [
                ("alerts_local", "ReplicatedReplacingMergeTree"),
                ("flow_edges_1m", "Distributed"),
                ("flow_edges_1m_local", "ReplicatedAggregatingMergeTree"),
                ("flow_edges_1m_mv", "MaterializedView"),
                ("flows", "Distributed"),
                ("flows_local", "ReplicatedReplacingMergeTree"),
            ],
            "server {i}"
        );
    }

    // The seed and its replay, through the Distributed table (what the relay writes to).
    let t0 = common::base_time_ns();
    let (rows, replay) = common::seed_batches(t0);
    insert(&first, db, &rows).await;
    insert(&other, db, &replay).await;
    sync_replicas(&cluster, &cfg).await;
    let stored = scalar_u64(&first, &format!("SELECT count() FROM {db}.flows")).await;
    assert_eq!(stored as usize, rows.len() + replay.len());
    // Spread over both shards; the replica of shard 1 holds what its peer holds; a flow's
    // copies are on one shard (the uuid sets of the shards are disjoint).
    let local = |i: usize, what: &'static str| {
        let c = client(&cluster, &cfg, i);
        let sql = format!("SELECT {what} FROM {db}.flows_local");
        async move { scalar_u64(&c, &sql).await }
    };
    let (s1, s1r2, s2) = (
        local(0, "count()").await,
        local(1, "count()").await,
        local(2, "count()").await,
    );
    assert!(s1 > 0 && s2 > 0, "both shards hold flows: {s1} + {s2}");
    assert_eq!(s1, s1r2, "the replica of shard 1 has its rows");
    assert_eq!(s1 + s2, stored);
    assert_eq!(
        local(0, "uniqExact(uuid)").await + local(2, "uniqExact(uuid)").await,
        rows.len() as u64,
        "no flow on two shards"
    );

    let cases = common::cases(t0);
    let queries = |c: &Client| Queries::new(c, db, Dialect::Legacy).expect("queries");
    let (q_first, q_other) = (queries(&first), queries(&other));
    run_cases(&q_first, &cases, "with replays, shard 1").await;
    run_cases(&q_other, &cases, "with replays, shard 2").await;

    // Merges (on each shard's local tables) collapse the copies; the answers stay. The merge
    // runs on each shard's leader replica (18.16 fails `OPTIMIZE ... ON CLUSTER` of replicated
    // tables, and a non-leader forwarding it, with "Unknown log entry type: 0").
    for i in 0..cluster.servers().len() {
        let c = client(&cluster, &cfg, i);
        for table in ["flows_local", "flows_denied_local", "flow_edges_1m_local"] {
            let leader = scalar_u64(
                &c,
                &format!(
                    "SELECT toUInt64(is_leader) FROM system.replicas \
                     WHERE database = '{db}' AND table = '{table}'"
                ),
            )
            .await;
            if leader == 1 {
                run_all(&c, &[format!("OPTIMIZE TABLE {db}.{table} FINAL")]).await;
            }
        }
    }
    sync_replicas(&cluster, &cfg).await;
    let merged = scalar_u64(&first, &format!("SELECT count() FROM {db}.flows")).await;
    assert_eq!(merged as usize, rows.len(), "merged");
    run_cases(&q_first, &cases, "merged").await;

    // Settled minutes: flow_minutes is per shard (each shard's latest write per minute); read
    // through the Distributed table, maxMerge gives the minute's latest write on any shard.
    let settled = settle_all(&q_first).await;
    assert!(!settled.is_empty(), "the seed's minutes are settled");
    run_cases(&q_first, &cases, "settled").await;
    run_cases(&q_other, &cases, "settled, read from shard 2").await;
    // The same replay block again: Replicated tables drop a block they already have (18.16's
    // insert deduplication, per shard block), views included, so nothing changes and the
    // minutes stay settled.
    let count_sql = format!("SELECT count() FROM {db}.flows");
    let count = || scalar_u64(&first, &count_sql);
    let before = count().await;
    insert(&other, db, &replay).await;
    assert_eq!(count().await, before, "an identical block is deduplicated");
    run_cases(&q_first, &cases, "deduplicated replay").await;
    assert_eq!(settle_all(&q_first).await, [], "nothing to settle again");
    // The block ID is a hash of the sorted part, so the same rows in another order are dropped
    // too; a shard's part with another set of rows is stored. Copies that are stored must
    // unsettle the minutes they touch until they are settled again: forced here with
    // `insert_deduplicate = 0`, so that every shard stores its copies.
    let late: Vec<FlowRow> = replay.iter().rev().cloned().collect();
    insert(
        &other.clone().with_setting("insert_deduplicate", "0"),
        db,
        &late,
    )
    .await;
    assert_eq!(
        count().await,
        before + late.len() as u64,
        "late copies stored"
    );
    run_cases(&q_first, &cases, "late replays").await;
    assert!(
        !settle_all(&q_other).await.is_empty(),
        "late copies unsettle"
    );
    run_cases(&q_first, &cases, "settled again").await;
    run_cases(&q_other, &cases, "settled again, read from shard 2").await;
}

#[tokio::test]
async fn retention_drops_old_partitions_on_every_shard() {
    let cluster = start();
    let cfg = config("periscope_cr", 30);
    let db = &cfg.database;
    let first = client(&cluster, &cfg, 0);
    migrate(&first, &cfg).await.expect("migrate");
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let day = 86_400 * SEC;
    let mut rows = Vec::new();
    // Enough flows per day that both shards get some of each day.
    for age_days in [40, 32, 1, 0] {
        for n in 0..8 {
            let mut f = full_flow();
            f.uuid = format!("d{age_days}-{n}");
            f.time = Some(prost_types::Timestamp {
                seconds: (now_ns - age_days * day) / SEC,
                nanos: 0,
            });
            rows.push(FlowRow::from_flow(&f, "c1"));
        }
    }
    insert(&first, db, &rows).await;
    let shard_days = |i: usize| {
        let c = client(&cluster, &cfg, i);
        let sql = format!(
            "SELECT uniqExact(partition_id) FROM system.parts WHERE database = '{db}' \
             AND table = 'flows_local' AND active"
        );
        async move { scalar_u64(&c, &sql).await }
    };
    assert_eq!((shard_days(0).await, shard_days(2).await), (4, 4));

    let report = apply_retention(&first, &cfg, Dialect::Legacy)
        .await
        .expect("retention");
    assert!(
        report
            .dropped_partitions
            .iter()
            .all(|(table, _)| table.ends_with("_local")),
        "{report:?}"
    );
    assert!(
        report
            .dropped_partitions
            .iter()
            .any(|(table, _)| table == "flows_local"),
        "{report:?}"
    );
    sync_replicas(&cluster, &cfg).await;
    for i in 0..cluster.servers().len() {
        assert_eq!(shard_days(i).await, 2, "server {i} keeps the recent days");
    }
    let kept = scalar_u64(&first, &format!("SELECT count() FROM {db}.flows")).await;
    assert_eq!(kept, 16);
    let again = apply_retention(&first, &cfg, Dialect::Legacy)
        .await
        .expect("retention again");
    assert!(again.dropped_partitions.is_empty(), "{again:?}");
}
