//! Against a real ClickHouse 18.16 (Debian's), each test on its own private server
//! ([`TestServer`]): migrations, the FlowRow and AlertRow round trips, every shipped query on
//! seeded flows (with replayed duplicates), hostile parameters, retention.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use clickhouse::Client;
use periscope_storage::queries::{HistoryFilter, Window};
use periscope_storage::testing::{TestServer, full_flow};
use periscope_storage::{
    ALERTS_TABLE, AlertRow, Dialect, Error, FlowRow, MIGRATIONS, MigrateConfig, ParamValue,
    Queries, QuerySpec, apply_retention, bootstrap_statements, migrate, render_migration,
};

use common::SEC;
use common::server::{insert, run_all, run_cases, scalar_u64, settle_all};

fn start() -> TestServer {
    TestServer::start().unwrap_or_else(|e| panic!("starting a private clickhouse-server: {e}"))
}

fn config(database: &str, retention_days: u32) -> MigrateConfig {
    MigrateConfig {
        database: database.into(),
        retention_days,
        cluster: None,
    }
}

#[tokio::test]
async fn the_server_is_detected_as_legacy() {
    let server = start();
    let (dialect, version) = Dialect::detect(&server.client()).await.expect("detecting");
    assert_eq!(dialect, Dialect::Legacy);
    assert_eq!((version.major, version.minor), (18, 16), "{version}");
}

#[tokio::test]
async fn migrations_apply_in_order_and_reapplying_is_a_noop() {
    let server = start();
    let client = server.client();
    let cfg = config("periscope_m", 7);

    let first = migrate(&client, &cfg).await.expect("first migrate");
    assert_eq!(first.server_dialect, Dialect::Legacy);
    assert_eq!(first.schema_dialect, Dialect::Legacy);
    assert_eq!(first.applied, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    assert!(first.already_applied.is_empty());

    let second = migrate(&client, &cfg).await.expect("second migrate");
    assert!(second.applied.is_empty(), "{second:?}");
    assert_eq!(second.already_applied, vec![1, 2, 3, 4, 5, 6, 7, 8]);

    let tables: Vec<String> = client
        .query_raw("SELECT name FROM system.tables WHERE database = 'periscope_m' ORDER BY name")
        .fetch_all()
        .await
        .expect("listing tables");
    assert_eq!(
        tables,
        [
            "alerts",
            "flow_edges_1m",
            "flow_edges_1m_mv",
            "flow_edges_1m_settled",
            "flow_minutes",
            "flow_minutes_mv",
            "flow_minutes_settled",
            "flows",
            "flows_denied",
            "flows_denied_mv",
            "logs",
            "schema_migrations"
        ]
    );
    let recorded = scalar_u64(
        &client,
        "SELECT count() FROM periscope_m.schema_migrations WHERE dialect = 'legacy'",
    )
    .await;
    assert_eq!(recorded, 8);

    // A migration cut short (tables there, not recorded) is finished by the next run.
    client
        .query_raw("ALTER TABLE periscope_m.schema_migrations DELETE WHERE version = 3")
        .execute()
        .await
        .expect("forgetting migration 3");
    // 0007 too: its ADD COLUMNs (18.16 has no IF NOT EXISTS) must not fail the second time.
    client
        .query_raw("ALTER TABLE periscope_m.schema_migrations DELETE WHERE version = 7")
        .execute()
        .await
        .expect("forgetting migration 7");
    wait_for_mutations(&client, "periscope_m").await;
    let third = migrate(&client, &cfg).await.expect("third migrate");
    assert_eq!(third.applied, vec![3, 7]);

    // Another database on the same server is independent.
    let other = migrate(&client, &config("periscope_other", 7))
        .await
        .expect("other db");
    assert_eq!(other.applied, vec![1, 2, 3, 4, 5, 6, 7, 8]);
}

async fn wait_for_mutations(client: &Client, database: &str) {
    for _ in 0..100 {
        let pending = scalar_u64(
            client,
            &format!(
                "SELECT count() FROM system.mutations WHERE database = '{database}' AND is_done = 0"
            ),
        )
        .await;
        if pending == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("mutations in {database} did not finish");
}

#[tokio::test]
async fn a_modern_schema_is_refused_on_a_legacy_server() {
    let server = start();
    let client = server.client();
    let cfg = config("periscope_x", 7);
    migrate(&client, &cfg).await.expect("migrate");
    client
        .query_raw("INSERT INTO periscope_x.schema_migrations (version, name, dialect, checksum) VALUES (0, 'x', 'modern', 0)")
        .execute()
        .await
        .expect("faking a modern schema");
    let err = migrate(&client, &cfg).await.expect_err("must refuse");
    assert!(matches!(err, Error::SchemaNeedsNewerServer { .. }), "{err}");
}

#[tokio::test]
async fn flow_rows_round_trip_through_the_server() {
    let server = start();
    let client = server.client();
    let cfg = config("periscope_rt", 7);
    migrate(&client, &cfg).await.expect("migrate");

    let mut full = full_flow();
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    full.time = Some(prost_types::Timestamp {
        seconds: t.as_secs() as i64,
        nanos: 987_654_321,
    });
    let sparse = periscope_proto::flow::Flow {
        time: full.time,
        uuid: "sparse-1".into(),
        verdict: 42, // no name: stored as its number
        ..Default::default()
    };
    let rows = [
        FlowRow::from_flow(&full, "c1"),
        FlowRow::from_flow(&sparse, "c1"),
    ];
    insert(&client, &cfg.database, &rows).await;

    let queries = Queries::new(&client, &cfg.database, Dialect::Legacy).expect("queries");
    let t_ns = periscope_storage::time_ns_of(full.time.as_ref());
    let mut back = queries
        .history(&HistoryFilter::window(
            Window {
                since_ns: t_ns,
                until_ns: t_ns,
            },
            10,
        ))
        .await
        .expect("history");
    back.sort_by(|a, b| a.uuid.cmp(&b.uuid));
    assert_eq!(back.len(), 2);
    assert_eq!(back[0], rows[0], "the stored row differs");
    assert_eq!(back[0].to_flow().expect("to_flow"), full);
    assert_eq!(back[1].to_flow().expect("to_flow"), sparse);

    // The table derives `time` (seconds) from time_ns; the day partition follows it.
    let (secs, day): (u32, u32) = client
        .query_raw("SELECT toUInt32(time), toYYYYMMDD(time) FROM periscope_rt.flows WHERE uuid = 'sparse-1'")
        .fetch_one()
        .await
        .expect("reading time");
    assert_eq!(i64::from(secs), t.as_secs() as i64);
    assert_eq!(
        day,
        periscope_storage::retention_cutoff_day(UNIX_EPOCH + t, 0)
    );
}

#[tokio::test]
async fn alert_rows_round_trip_and_keep_the_newest_state() {
    let server = start();
    let client = server.client();
    let cfg = config("periscope_al", 7);
    migrate(&client, &cfg).await.expect("migrate");

    let t0 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let firing = AlertRow {
        fingerprint: "9f2c1e0a7b3d4c5e".into(),
        starts_at_ns: t0,
        updated_at_ns: t0 as u64,
        notification: "firing".into(),
        state: "firing".into(),
        rule: "DbDenied".into(),
        severity: "critical".into(),
        label_keys: vec!["alertname".into(), "source_workload".into()],
        label_values: vec!["DbDenied".into(), "evil'pod\\; --".into()],
        annotation_keys: vec!["summary".into()],
        annotation_values: vec!["frontend denied 7 times in 1m".into()],
        active_at_ns: t0 - 5 * SEC,
        ends_at_ns: 0,
        count: 7,
        peak_count: 7,
        threshold: 5,
        window_ms: 60_000,
        sample_flow_uuids: vec!["u1".into(), "u2".into()],
    };
    let resolved = AlertRow {
        updated_at_ns: (t0 + 90 * SEC) as u64,
        notification: "resolved".into(),
        state: "resolved".into(),
        ends_at_ns: t0 + 90 * SEC,
        count: 0,
        peak_count: 12,
        ..firing.clone()
    };
    let db_client = client.clone().with_database("periscope_al");
    // Two inserts, the second replaying the first row (a retried delivery).
    for rows in [vec![firing.clone()], vec![firing.clone(), resolved.clone()]] {
        let mut insert = db_client
            .insert::<AlertRow>(ALERTS_TABLE)
            .await
            .expect("starting an insert");
        for row in &rows {
            insert.write(row).await.expect("writing an alert row");
        }
        insert.end().await.expect("finishing an insert");
    }

    let latest = "SELECT ?fields FROM periscope_al.alerts \
                  ORDER BY updated_at_ns DESC LIMIT 1 BY fingerprint, starts_at_ns";
    let rows: Vec<AlertRow> = client
        .query(latest)
        .fetch_all()
        .await
        .expect("reading alerts");
    assert_eq!(
        rows,
        vec![resolved.clone()],
        "the newest state, before merges"
    );
    let day = scalar_u64(
        &client,
        "SELECT toUInt64(toYYYYMM(starts_at)) FROM periscope_al.alerts LIMIT 1",
    )
    .await;
    assert!(day > 202_000, "starts_at derived from starts_at_ns: {day}");

    client
        .query_raw("OPTIMIZE TABLE periscope_al.alerts FINAL")
        .execute()
        .await
        .expect("merging");
    assert_eq!(
        scalar_u64(&client, "SELECT count() FROM periscope_al.alerts").await,
        1,
        "older states and replays collapse"
    );
    let rows: Vec<AlertRow> = client.query(latest).fetch_all().await.expect("reading");
    assert_eq!(rows, vec![resolved]);
}

#[tokio::test]
async fn shipped_queries_answer_exactly_on_seeded_flows_with_replays() {
    let server = start();
    let client = server.client();
    let cfg = config("periscope_q", 30);
    migrate(&client, &cfg).await.expect("migrate");

    let t0 = common::base_time_ns();
    let (rows, replay) = common::seed_batches(t0);
    insert(&client, &cfg.database, &rows).await;
    insert(&client, &cfg.database, &replay).await;
    let stored = scalar_u64(&client, "SELECT count() FROM periscope_q.flows").await;
    assert_eq!(
        stored as usize,
        rows.len() + replay.len(),
        "replays are stored before merges"
    );

    let queries = Queries::new(&client, &cfg.database, Dialect::Legacy).expect("queries");
    let cases = common::cases(t0);
    run_cases(&queries, &cases, "before merges").await;

    // Merges collapse the copies (ReplacingMergeTree keyed by uuid) and the answers stay.
    for table in ["flows", "flows_denied", "flow_edges_1m"] {
        client
            .query_raw(&format!("OPTIMIZE TABLE periscope_q.{table} FINAL"))
            .execute()
            .await
            .unwrap_or_else(|e| panic!("optimizing {table}: {e}"));
    }
    let merged = scalar_u64(&client, "SELECT count() FROM periscope_q.flows").await;
    assert_eq!(merged as usize, rows.len());
    run_cases(&queries, &cases, "after merges").await;

    // Settled minutes (0006) answer the same; then replayed copies arrive late (the minutes they
    // touch read from the uuid sets again) and are settled in turn: still the same.
    let settled = settle_all(&queries).await;
    assert!(!settled.is_empty(), "the seed's minutes are settled");
    run_cases(&queries, &cases, "settled").await;
    insert(&client, &cfg.database, &replay).await;
    run_cases(&queries, &cases, "late copies").await;
    assert!(
        !settle_all(&queries).await.is_empty(),
        "late copies unsettle"
    );
    run_cases(&queries, &cases, "settled again").await;
}

/// The sort key of `service_map_edges` after the count.
fn edge_key(
    e: &periscope_storage::queries::ServiceMapEdge,
) -> (&str, &str, &str, &str, &str, u32, &str, &str) {
    (
        &e.cluster,
        &e.source_namespace,
        &e.source,
        &e.destination_namespace,
        &e.destination,
        e.destination_port,
        &e.protocol,
        &e.verdict,
    )
}

/// A schema at 0004 gets 0005: the view then counts one observation per packet (the live
/// map's rule) while the minutes aggregated before keep 0002's counting; re-running 0005 and
/// replaying flows change nothing.
#[tokio::test]
async fn the_map_counts_one_observation_per_packet_from_0005_on() {
    let server = start();
    let client = server.client();
    let cfg = config("periscope_e", 7);
    let t0 = common::base_time_ns();
    let scenario = common::edge_rule(t0);

    // The schema as a relay before 0005 left it: 0001-0004 applied and recorded.
    run_all(&client, &bootstrap_statements(&cfg).expect("bootstrap")).await;
    for m in MIGRATIONS.iter().filter(|m| m.version < 5) {
        run_all(
            &client,
            &render_migration(m, Dialect::Legacy, &cfg).expect("render"),
        )
        .await;
        client
            .query(
                "INSERT INTO periscope_e.schema_migrations (version, name, dialect, checksum) \
                 VALUES (?, ?, 'legacy', ?)",
            )
            .bind(m.version)
            .bind(m.name)
            .bind(m.checksum(Dialect::Legacy))
            .execute()
            .await
            .expect("recording a migration");
    }
    insert(&client, &cfg.database, &scenario.before).await;

    let report = migrate(&client, &cfg).await.expect("migrate");
    assert_eq!(report.applied, vec![5, 6, 7, 8]);
    assert_eq!(report.already_applied, vec![1, 2, 3, 4]);
    // A run cut short after 0005's statements runs them again: same view; then 0007's view
    // again (its ADD COLUMNs are there: the runner skips them, and so does this).
    for version in [5, 7] {
        let m = MIGRATIONS
            .iter()
            .find(|m| m.version == version)
            .expect("migration");
        let statements: Vec<String> = render_migration(m, Dialect::Legacy, &cfg)
            .expect("render")
            .into_iter()
            .filter(|st| !st.contains("ADD COLUMN"))
            .collect();
        run_all(&client, &statements).await;
    }
    // The flows after, then a replay of them.
    insert(&client, &cfg.database, &scenario.after).await;
    insert(&client, &cfg.database, &scenario.after).await;

    let queries = Queries::new(&client, &cfg.database, Dialect::Legacy).expect("queries");
    let check = |merged: &'static str| {
        let queries = &queries;
        let windows = &scenario.windows;
        async move {
            for (id, window, want) in windows {
                let got = queries
                    .service_map_edges(*window, 100)
                    .await
                    .unwrap_or_else(|e| panic!("{id}: {e}"));
                assert_eq!(&got, want, "{id} ({merged})");
            }
        }
    };
    check("before merges").await;
    client
        .query_raw("OPTIMIZE TABLE periscope_e.flow_edges_1m FINAL")
        .execute()
        .await
        .expect("merging");
    check("after merges").await;
    // The minute after 0006 settles (the one before has no flow_minutes row and keeps reading
    // from the uuid sets); the answers stay.
    assert_eq!(settle_all(&queries).await.len(), 1);
    check("settled").await;
}

/// Settled minutes (0006) stay exact: rows of a run cut short before its marker, of a run at
/// an earlier write, and of a second relay's run at the same write are not counted; a flow
/// arriving after the minute was settled counts at once and then in the next settling.
#[tokio::test]
async fn settled_minutes_stay_exact() {
    let server = start();
    let client = server.client();
    let cfg = config("periscope_s", 7);
    migrate(&client, &cfg).await.expect("migrate");
    let t0 = common::base_time_ns();
    let scenario = common::edge_rule(t0);
    insert(&client, &cfg.database, &scenario.after).await;
    insert(&client, &cfg.database, &scenario.after).await;
    let queries = Queries::new(&client, &cfg.database, Dialect::Legacy).expect("queries");
    let (_, window, want) = scenario
        .windows
        .iter()
        .find(|(id, ..)| id == "edge_rule_after")
        .expect("the minute after 0005")
        .clone();
    let answer = || async {
        queries
            .service_map_edges(window, 100)
            .await
            .expect("service_map_edges")
    };
    assert_eq!(answer().await, want, "unsettled");
    let settled = settle_all(&queries).await;
    assert_eq!(settled.len(), 1);
    let minute = &settled[0];
    assert_eq!(answer().await, want, "settled");

    // Competing rows: copies of the run's rows, inflated, under other run ids.
    let run_id = scalar_u64(
        &client,
        "SELECT any(settle_id) FROM periscope_s.flow_edges_1m_settled",
    )
    .await;
    assert!(run_id > 1, "a random run id: {run_id}");
    let copy = |settle_id: u64, times: u64| {
        format!(
            "INSERT INTO periscope_s.flow_edges_1m_settled SELECT minute, cluster, {settle_id}, \
             source_namespace, source, destination_namespace, destination, destination_port, \
             protocol, verdict, flows * {times}, first_seen_ns, last_seen_ns, bytes * {times} \
             FROM periscope_s.flow_edges_1m_settled WHERE settle_id = {run_id}"
        )
    };
    let mark = |written_s: u32, settle_id: u64| {
        format!(
            "INSERT INTO periscope_s.flow_minutes_settled VALUES \
             ({}, '{}', {written_s}, {settle_id})",
            minute.minute_s, minute.cluster
        )
    };
    let (low, high) = (run_id - 1, run_id + 1);
    for statement in [
        // Cut short: rows, no marker. Higher id than the real run.
        copy(high + 1, 100),
        // A run at an earlier write (superseded), higher id too.
        copy(high + 2, 1000),
        mark(minute.written_s - 1, high + 2),
        // A second relay's complete run at the same write, lower id: its rows are right too,
        // but only one run is read.
        copy(low, 1),
        mark(minute.written_s, low),
    ] {
        run_all(&client, &[statement]).await;
    }
    assert_eq!(answer().await, want, "only the latest complete run is read");

    // A late flow: one more packet frontend → api, forwarded at api's ingress.
    let mut late = scenario
        .after
        .iter()
        .find(|r| r.uuid.ends_with("ingress-fwd-1"))
        .expect("ingress-fwd-1")
        .clone();
    late.uuid = "late-ingress-fwd".into();
    late.time_ns += 30 * SEC;
    insert(&client, &cfg.database, &[late.clone()]).await;
    let mut grown = want.clone();
    let edge = grown
        .iter_mut()
        .find(|e| e.source == "frontend" && e.destination == "api" && e.verdict == "FORWARDED")
        .expect("the frontend → api edge");
    edge.flows += 1;
    edge.bytes += late.bytes;
    edge.last_seen_ns = late.time_ns;
    grown.sort_by(|a, b| {
        b.flows
            .cmp(&a.flows)
            .then_with(|| edge_key(a).cmp(&edge_key(b)))
    });
    assert_eq!(
        answer().await,
        grown,
        "a late flow counts before the minute is settled again"
    );
    assert_eq!(settle_all(&queries).await.len(), 1);
    assert_eq!(answer().await, grown, "and after");
}

#[tokio::test]
async fn hostile_strings_are_bound_as_data() {
    let server = start();
    let client = server.client();
    let cfg = config("periscope_h", 7);
    migrate(&client, &cfg).await.expect("migrate");
    insert(
        &client,
        &cfg.database,
        &common::seed_batches(common::base_time_ns()).0,
    )
    .await;
    let queries = Queries::new(&client, &cfg.database, Dialect::Legacy).expect("queries");

    // Each string comes back exactly as sent: it was a literal, not SQL.
    const ECHO: QuerySpec = QuerySpec {
        name: "echo",
        // A bound number is a plain literal on 18.16 (its type is the literal's, e.g. UInt8), so
        // the shipped queries use numeric parameters only in comparisons and LIMIT.
        sql: "SELECT {s:String} AS s, length({s:String}) AS n, toUInt32({limit:UInt32}) AS l",
    };
    let mut strings: Vec<&str> = common::HOSTILE.to_vec();
    strings.extend([common::EVIL_POD, "", "é ✓ \u{1}\0", "??", "'''", "\\\\'"]);
    for s in strings {
        let (echo, n, _): (String, u64, u32) = queries
            .prepare(&ECHO, &[("s", s.into()), ("limit", ParamValue::UInt(1))])
            .expect("binding")
            .fetch_one()
            .await
            .unwrap_or_else(|e| panic!("echo of {s:?}: {e}"));
        assert_eq!(echo, s);
        assert_eq!(n as usize, s.len());
    }

    // A string where a number goes is refused before anything is sent.
    let Err(err) = queries.prepare(
        &ECHO,
        &[("s", "x".into()), ("limit", "1; DROP TABLE flows".into())],
    ) else {
        panic!("a string bound to a UInt32 parameter");
    };
    assert!(matches!(err, Error::Param { .. }), "{err}");

    let n = scalar_u64(&client, "SELECT count() FROM periscope_h.flows").await;
    assert_eq!(
        n as usize,
        common::seed_flows(0).len(),
        "the table is intact"
    );
}

#[tokio::test]
async fn retention_drops_expired_day_partitions() {
    let server = start();
    let client = server.client();
    let cfg = config("periscope_r", 30);
    migrate(&client, &cfg).await.expect("migrate");

    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let day = 86_400 * SEC;
    let mut rows = Vec::new();
    for (uuid, age_days) in [("old-40", 40), ("old-32", 32), ("new-1", 1), ("new-0", 0)] {
        let mut f = full_flow();
        f.uuid = uuid.into();
        f.time = Some(prost_types::Timestamp {
            seconds: (now_ns - age_days * day) / SEC,
            nanos: 0,
        });
        f.is_reply = Some(false);
        f.r#type = periscope_proto::flow::FlowType::L3L4 as i32;
        // A drop, not the policy verdict notification that the map leaves out.
        f.event_type = Some(periscope_proto::flow::CiliumEventType {
            r#type: 1,
            sub_type: 0,
        });
        rows.push(FlowRow::from_flow(&f, "c1"));
    }
    insert(&client, &cfg.database, &rows).await;
    // Log rows (0008) of the same four days.
    let logs: Vec<String> = [40, 32, 1, 0]
        .iter()
        .map(|age_days| {
            format!(
                "({}, 'WARN', 't', 'm', '{{}}', 'n1', 'agent', 'c1')",
                now_ns - age_days * day
            )
        })
        .collect();
    run_all(
        &client,
        &[format!(
            "INSERT INTO periscope_r.logs (time_ns, level, target, message, fields, node, \
             component, cluster) VALUES {}",
            logs.join(", ")
        )],
    )
    .await;
    let queries = Queries::new(&client, &cfg.database, Dialect::Legacy).expect("queries");
    assert_eq!(settle_all(&queries).await.len(), 4);
    // The full flow is denied and L3/L4: every retained table got rows of all four days.
    for table in [
        "flows",
        "flows_denied",
        "flow_edges_1m",
        "flow_minutes",
        "flow_edges_1m_settled",
        "flow_minutes_settled",
        "logs",
    ] {
        let parts = scalar_u64(
            &client,
            &format!("SELECT uniqExact(partition_id) FROM system.parts WHERE database = 'periscope_r' AND table = '{table}' AND active"),
        )
        .await;
        assert_eq!(parts, 4, "{table}");
    }

    let report = apply_retention(&client, &cfg, Dialect::Legacy)
        .await
        .expect("retention");
    assert_eq!(report.dropped_partitions.len(), 14, "{report:?}");
    let mut uuids: Vec<String> = client
        .query_raw("SELECT uuid FROM periscope_r.flows ORDER BY uuid")
        .fetch_all()
        .await
        .expect("reading");
    uuids.sort();
    assert_eq!(uuids, ["new-0", "new-1"]);
    let denied = scalar_u64(&client, "SELECT count() FROM periscope_r.flows_denied").await;
    assert_eq!(denied, 2);
    let logs = scalar_u64(&client, "SELECT count() FROM periscope_r.logs").await;
    assert_eq!(logs, 2, "the log rows of the last two days stay");

    let again = apply_retention(&client, &cfg, Dialect::Legacy)
        .await
        .expect("retention again");
    assert!(again.dropped_partitions.is_empty(), "{again:?}");
}
