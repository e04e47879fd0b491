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

use std::time::{SystemTime, UNIX_EPOCH};

use clickhouse::Client;
use periscope_storage::testing::{TestCluster, full_flow};
use periscope_storage::{
    Dialect, FlowRow, MIGRATIONS, MigrateConfig, Queries, apply_retention, migrate,
};

use common::SEC;
use common::server::{insert, run_all, run_cases, scalar_u64, settle_all};

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
fn client_of(cluster: &TestCluster, cfg: &MigrateConfig, i: usize) -> Client {
    cfg.prepare_client(cluster.servers()[i].client())
}

/// `SYSTEM SYNC REPLICA` on every server for the local tables that hold flows, so the replica
/// of shard 1 has what its peer received.
async fn sync_replicas(cluster: &TestCluster, cfg: &MigrateConfig) {
    for i in 0..cluster.servers().len() {
        let c = client_of(cluster, cfg, i);
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
    let first = client_of(&cluster, &cfg, 0);
    // The other shard's server.
    let other = client_of(&cluster, &cfg, 2);

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
        let engines: Vec<(String, String)> = client_of(&cluster, &cfg, i)
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
        let c = client_of(&cluster, &cfg, i);
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
    let queries = |c: &Client| {
        Queries::new(c, db, Dialect::Legacy)
            .expect("queries")
            .for_cluster(true)
    };
    let (q_first, q_other) = (queries(&first), queries(&other));
    run_cases(&q_first, &cases, "with replays, shard 1").await;
    run_cases(&q_other, &cases, "with replays, shard 2").await;
    // `LIMIT 1 BY uuid` then `LIMIT n` over the Distributed table, with the copies not merged
    // yet: every limit gives the first n flows of the whole answer (a shard cutting its rows at
    // n before dropping copies would give fewer), in both orders, and keyset pages of any size
    // add up to it.
    let window = periscope_storage::queries::Window {
        since_ns: t0 - 3_600 * SEC,
        until_ns: t0 + 3_600 * SEC,
    };
    for descending in [false, true] {
        let filter = |limit: u32| periscope_storage::queries::HistoryFilter {
            descending,
            ..periscope_storage::queries::HistoryFilter::window(window, limit)
        };
        let all = q_first.history(&filter(10_000)).await.expect("history");
        assert_eq!(all.len(), rows.len(), "every flow once");
        for limit in 1..=all.len() as u32 {
            let got = q_first.history(&filter(limit)).await.expect("history");
            assert_eq!(
                got,
                all[..limit as usize],
                "limit {limit}, descending {descending}"
            );
        }
        for page in [1, 2, 3, 7] {
            let mut paged = Vec::new();
            loop {
                let mut f = filter(page);
                f.after = paged
                    .last()
                    .map(periscope_storage::queries::HistoryCursor::after);
                let got = q_other.history(&f).await.expect("a page");
                let last = got.len() < page as usize;
                paged.extend(got);
                if last {
                    break;
                }
            }
            let uuids = |rows: &[FlowRow]| rows.iter().map(|r| r.uuid.clone()).collect::<Vec<_>>();
            assert_eq!(
                uuids(&paged),
                uuids(&all),
                "pages of {page}, descending {descending}"
            );
            assert!(paged == all, "pages of {page}, descending {descending}");
        }
    }

    // Merges (on each shard's local tables) collapse the copies; the answers stay. The merge
    // runs on each shard's leader replica (18.16 fails `OPTIMIZE ... ON CLUSTER` of replicated
    // tables, and a non-leader forwarding it, with "Unknown log entry type: 0").
    for i in 0..cluster.servers().len() {
        let c = client_of(&cluster, &cfg, i);
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
    // `insert_deduplicate = 0` (at least on the shard of the server written to).
    let late: Vec<FlowRow> = replay.iter().rev().cloned().collect();
    insert(
        &other.clone().with_setting("insert_deduplicate", "0"),
        db,
        &late,
    )
    .await;
    // (Not counted: a background merge may already have collapsed some; the settling below
    // shows that the views took them.)
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
    let first = client_of(&cluster, &cfg, 0);
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
        let c = client_of(&cluster, &cfg, i);
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

/// A database migrated without a cluster keeps its local tables: cluster mode refuses it (the
/// relay would otherwise write to one server's local `flows`), before running any DDL.
#[tokio::test]
async fn cluster_mode_refuses_a_single_server_database() {
    let server = periscope_storage::testing::TestServer::start().expect("a server");
    let client = server.client();
    let single = MigrateConfig {
        cluster: None,
        ..config("periscope_single", 7)
    };
    migrate(&client, &single)
        .await
        .expect("migrate without a cluster");
    let err = migrate(&client, &config("periscope_single", 7))
        .await
        .expect_err("cluster mode on a single-server database");
    let text = err.to_string();
    assert!(
        text.contains("cluster") && text.contains("ReplacingMergeTree"),
        "{text}"
    );
}

/// `PERISCOPE_SIZING_FLOWS` (default 2 000 000) realistic flows generated by the server, as
/// `INSERT ... SELECT FROM numbers(N)` into `database.flows` (the views fill the aggregates on
/// the way): 200 workloads in 20 namespaces, 5 000 edges (source, destination, port), random
/// uuids, 10% dropped by policy and 2% audited (`flows_denied`), spread evenly over one hour.
/// The same shape as `cargo xtask bench ui`'s (xtask/src/bench/ui.rs), narrowed to the columns
/// a flow of Periscope's agent fills for an L3/L4 record.
fn sizing_insert(database: &str, flows: u64, start_ns: i64) -> String {
    let step = 3_600 * SEC / flows as i64;
    format!(
        "INSERT INTO {database}.flows (uuid, time_ns, cluster, node_name, verdict, drop_reason_desc, \
         flow_type, event_type, traffic_direction, trace_observation_point, is_reply, reply, ip_version, \
         source_ip, destination_ip, protocol, source_port, destination_port, tcp_flags, \
         source_identity, source_namespace, source_pod_name, source_labels, source_workload, \
         source_workload_kind, source_workload_names, source_workload_kinds, destination_identity, \
         destination_namespace, destination_pod_name, destination_labels, destination_workload, \
         destination_workload_kind, destination_workload_names, destination_workload_kinds, \
         ingress_denied_by, ingress_denied_by_namespaces, summary, bytes, packets)
SELECT
    toString(generateUUIDv4()),
    {start_ns} + number * {step},
    'prod',
    concat('node-', toString(s % 8)),
    verdict,
    if(verdict = 'DROPPED', 'POLICY_DENIED', ''),
    'L3_L4',
    if(verdict = 'DROPPED', 1, 4),
    'INGRESS',
    'TO_ENDPOINT',
    0,
    0,
    'IPv4',
    IPv4NumToString(toUInt32(167772160 + s * 16 + r % 4)),
    IPv4NumToString(toUInt32(167772160 + d * 16 + intDiv(r, 4) % 4)),
    'TCP',
    toUInt32(32768 + number % 28000),
    toUInt32([80, 443, 5432, 8080, 9092][k % 5 + 1]),
    ['SYN'],
    toUInt32(10000 + s),
    concat('ns-', toString(s % 20)),
    concat('svc-', toString(s), '-', toString(r % 4)),
    [concat('k8s:app=svc-', toString(s)), concat('k8s:io.kubernetes.pod.namespace=ns-', toString(s % 20))],
    concat('svc-', toString(s)),
    'Deployment',
    [concat('svc-', toString(s))],
    ['Deployment'],
    toUInt32(10000 + d),
    concat('ns-', toString(d % 20)),
    concat('svc-', toString(d), '-', toString(intDiv(r, 4) % 4)),
    [concat('k8s:app=svc-', toString(d)), concat('k8s:io.kubernetes.pod.namespace=ns-', toString(d % 20))],
    concat('svc-', toString(d)),
    'Deployment',
    [concat('svc-', toString(d))],
    ['Deployment'],
    if(verdict = 'DROPPED', ['deny-all'], emptyArrayString()),
    if(verdict = 'DROPPED', [concat('ns-', toString(d % 20))], emptyArrayString()),
    'TCP Flags: SYN',
    toUInt64(74 + number % 1400),
    toUInt64(1 + number % 10)
FROM
(
    SELECT
        number,
        number % 5000 AS e,
        intDiv(number, 5000) AS r,
        e % 200 AS s,
        intDiv(e, 200) AS k,
        (s + 1 + (k * 211 + s * 17) % 199) % 200 AS d,
        multiIf(e % 10 = 0, 'DROPPED', e % 50 = 2, 'AUDIT', 'FORWARDED') AS verdict
    FROM numbers({flows})
)"
    )
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct TableSize {
    table: String,
    rows: u64,
    compressed: u64,
    uncompressed: u64,
}

/// Rows and bytes on disk of the database's tables (active parts), on one server.
async fn table_sizes(client: &Client, database: &str) -> Vec<TableSize> {
    client
        .query(
            "SELECT table, sum(rows) AS rows, sum(data_compressed_bytes) AS compressed, \
             sum(data_uncompressed_bytes) AS uncompressed FROM system.parts \
             WHERE database = ? AND active GROUP BY table ORDER BY table",
        )
        .bind(database)
        .fetch_all()
        .await
        .expect("reading system.parts")
}

fn print_sizes(what: &str, flows: u64, sizes: &[TableSize]) {
    println!("{what}: bytes on disk per stored flow (compressed / uncompressed), rows");
    for t in sizes {
        println!(
            "  {:<24} {:>8.1} B/flow {:>8.1} B/flow uncompressed {:>10} rows {:>12} B",
            t.table,
            t.compressed as f64 / flows as f64,
            t.uncompressed as f64 / flows as f64,
            t.rows,
            t.compressed
        );
    }
    let total: u64 = sizes.iter().map(|t| t.compressed).sum();
    println!(
        "  {:<24} {:>8.1} B/flow",
        "all tables",
        total as f64 / flows as f64
    );
}

/// Sizing measurements for storage-schema/README.md ("Clusters and sizing"); numbers printed,
/// not asserted:
///
/// `cargo test -p periscope-storage --release --test clickhouse_cluster -- --ignored --nocapture sizing`
///
/// 1. One private 18.16 server (single-server schema): rows/s of the server-side insert (the
///    views included), bytes on disk per flow of each table right after the insert, after
///    `OPTIMIZE ... FINAL` and after settling every minute.
/// 2. The 2-shard cluster (no replica, so both shards take one copy each): the same insert
///    through the Distributed `flows` (`insert_distributed_sync = 1`), rows/s in total and the
///    rows each shard took. All servers share this machine's cores.
#[tokio::test]
#[ignore = "sizing benchmark; run with --ignored --nocapture"]
async fn sizing() {
    let flows: u64 = std::env::var("PERISCOPE_SIZING_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let start_ns = common::base_time_ns() - 3_600 * SEC;

    let server = periscope_storage::testing::TestServer::start().expect("a server");
    let single = MigrateConfig {
        database: "sizing".into(),
        retention_days: 30,
        cluster: None,
    };
    let client = server.client();
    migrate(&client, &single).await.expect("migrate");
    let started = std::time::Instant::now();
    run_all(&client, &[sizing_insert("sizing", flows, start_ns)]).await;
    let elapsed = started.elapsed();
    println!(
        "one server: {flows} flows in {elapsed:.2?}: {:.0} rows/s (views included)",
        flows as f64 / elapsed.as_secs_f64()
    );
    print_sizes(
        "one server, after the insert",
        flows,
        &table_sizes(&client, "sizing").await,
    );
    for table in ["flows", "flows_denied", "flow_edges_1m", "flow_minutes"] {
        run_all(&client, &[format!("OPTIMIZE TABLE sizing.{table} FINAL")]).await;
    }
    let queries = Queries::new(&client, "sizing", Dialect::Legacy).expect("queries");
    let settled = queries.settle(0, 100_000).await.expect("settling");
    println!("settled {} minutes", settled.len());
    print_sizes(
        "one server, merged and settled",
        flows,
        &table_sizes(&client, "sizing").await,
    );
    drop(server);

    let cluster = TestCluster::start(CLUSTER, &[1, 1]).expect("a cluster");
    let cfg = config("sizing_c", 30);
    let first = client_of(&cluster, &cfg, 0);
    migrate(&first, &cfg).await.expect("migrate the cluster");
    let started = std::time::Instant::now();
    run_all(&first, &[sizing_insert("sizing_c", flows, start_ns)]).await;
    let elapsed = started.elapsed();
    let mut per_shard = Vec::new();
    for i in 0..cluster.servers().len() {
        let c = client_of(&cluster, &cfg, i);
        per_shard.push(scalar_u64(&c, "SELECT count() FROM sizing_c.flows_local").await);
    }
    println!(
        "2 shards on this machine, through the Distributed table: {flows} flows in {elapsed:.2?}: \
         {:.0} rows/s in total; rows per shard {per_shard:?}",
        flows as f64 / elapsed.as_secs_f64()
    );
    print_sizes(
        "shard 1 of 2, after the insert (per flow of the shard)",
        per_shard[0],
        &table_sizes(&first, "sizing_c").await,
    );
}
