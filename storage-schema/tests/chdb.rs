//! The modern dialect, checked in chdb-core (in-process ClickHouse 26.x, Python only): the modern
//! DDL and every shipped query with server-side `{name:Type}` parameters, on the same seed and
//! with the same expected results as the 18.16 test. See `tests/chdb_check.py`.
//!
//! The interpreter is `$PERISCOPE_VENV/bin/python`, default
//! `${XDG_CACHE_HOME:-~/.cache}/periscope-venv/bin/python`, with `chdb-core` installed
//! (`xtask/setup.sh` makes it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use clickhouse::Row;
use periscope_storage::queries::{self, modern_param_text};
use periscope_storage::testing::full_flow;
use periscope_storage::{
    AlertRow, Dialect, FlowRow, MIGRATIONS, MigrateConfig, bootstrap_statements,
    modern_ttl_statements, render_migration,
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use common::{Expected, SEC};

fn venv_python() -> PathBuf {
    let venv = std::env::var_os("PERISCOPE_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .map(|c| c.join("periscope-venv"))
        })
        .expect("neither PERISCOPE_VENV nor HOME is set");
    let python = venv.join("bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run `cargo xtask setup` (a venv with chdb-core) or set PERISCOPE_VENV",
        python.display()
    );
    python
}

/// Every statement `migrate` would run on an empty database, per migration.
fn migrations(cfg: &MigrateConfig, dialect: Dialect) -> Vec<Vec<String>> {
    let mut out = vec![bootstrap_statements(cfg).expect("bootstrap")];
    for m in MIGRATIONS {
        out.push(render_migration(m, dialect, cfg).expect("render"));
    }
    out
}

fn config(database: &str, retention_days: u32) -> MigrateConfig {
    MigrateConfig {
        database: database.into(),
        retention_days,
        cluster: None,
    }
}

fn compare<T>(label: &str, id: &str, got: &Value, want: &[T])
where
    T: DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let got: Vec<T> = serde_json::from_value(got.clone())
        .unwrap_or_else(|e| panic!("{label} case {id}: rows do not fit: {e}\n{got:#}"));
    assert_eq!(got, want, "{label} case {id}");
}

/// Runs `tests/<script>` with `plan` (written to a temp file) and returns its results.
fn run_script(python: &Path, script: &str, plan: &Value) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan_path = dir.path().join("plan.json");
    let out_path = dir.path().join("results.json");
    std::fs::write(&plan_path, serde_json::to_vec(plan).unwrap()).expect("writing the plan");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let output = Command::new(python)
        .arg(&path)
        .arg(&plan_path)
        .arg(&out_path)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed ({}):\n{stderr}",
        output.status
    );
    eprint!("{stderr}");
    serde_json::from_slice(&std::fs::read(&out_path).expect("reading results")).unwrap()
}

/// Every case's answer in the run `label` of `results` is the expected one.
fn check_cases(results: &Value, label: &str, cases: &[common::Case]) {
    for case in cases {
        let got = &results["results"][label][case.id.as_str()];
        assert!(got.is_array(), "{label}: no result for {}", case.id);
        match &case.expected {
            Expected::DeniedByPolicy(want) => compare(label, &case.id, got, want),
            Expected::TopTalkers(want) => compare(label, &case.id, got, want),
            Expected::NewWorldDestinations(want) => compare(label, &case.id, got, want),
            Expected::DnsFailures(want) => compare(label, &case.id, got, want),
            Expected::TcpResets(want) => compare(label, &case.id, got, want),
            Expected::PodFlows(want) => compare(label, &case.id, got, want),
            Expected::ServiceMapEdges(want) => compare(label, &case.id, got, want),
            Expected::History(want) => compare(label, &case.id, got, want),
        }
    }
}

#[test]
fn modern_ddl_and_every_query_run_in_chdb() {
    let python = venv_python();
    let t0 = common::base_time_ns();
    let (seed, replay) = common::seed_batches(t0);
    let cases = common::cases(t0);

    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let ttl_rows: Vec<FlowRow> = [("ttl-old", 40), ("ttl-new", 0)]
        .into_iter()
        .map(|(uuid, age_days)| {
            let mut f = full_flow();
            f.uuid = uuid.into();
            f.time = Some(prost_types::Timestamp {
                seconds: (now_ns - age_days * 86_400 * SEC) / SEC,
                nanos: 0,
            });
            FlowRow::from_flow(&f, "c1")
        })
        .collect();

    // The map's edge rule across migration 0005, in a database of each dialect.
    let edge_rule = common::edge_rule(t0);
    let edge_rule_runs: Vec<Value> = [
        ("edge_rule_modern", Dialect::Modern),
        ("edge_rule_legacy_schema", Dialect::Legacy),
    ]
    .into_iter()
    .map(|(label, dialect)| {
        let cfg = config(label, 30);
        let mut before = migrations(&cfg, dialect);
        // The bootstrap statements, then 0001-0004.
        let mut after = before.split_off(5);
        let rest = after.split_off(1);
        assert_eq!(MIGRATIONS[4].version, 5, "0005 is the fifth");
        json!({
            "label": label,
            "database": label,
            "before_migrations": before,
            "after_migrations": after,
            "rest_migrations": rest,
            "before": edge_rule.before,
            "after": edge_rule.after,
            "cases": edge_rule.windows.iter().map(|(id, w, _)| json!({
                "id": id,
                "sql": queries::SERVICE_MAP_EDGES.sql,
                "params": {
                    "since_ns": modern_param_text(&w.since_ns.into()),
                    "until_ns": modern_param_text(&w.until_ns.into()),
                    "limit": modern_param_text(&100u32.into()),
                },
            })).collect::<Vec<_>>(),
        })
    })
    .collect();

    let plan = json!({
        "modern_database": "periscope",
        "legacy_database": "periscope_legacy",
        "modern_migrations": migrations(&config("periscope", 30), Dialect::Modern),
        "legacy_migrations": migrations(&config("periscope_legacy", 30), Dialect::Legacy),
        "flow_columns": FlowRow::COLUMN_NAMES,
        "alert_columns": AlertRow::COLUMN_NAMES,
        "seed": seed,
        "replay": replay,
        "cases": cases.iter().map(|c| json!({
            "id": c.id,
            "query": c.spec.name,
            "sql": c.spec.sql,
            "params": c.params.iter()
                .map(|(name, value)| (name.to_string(), Value::from(modern_param_text(value))))
                .collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
        "ttl_database": "periscope_ttl",
        "ttl_migrations": migrations(&config("periscope_ttl", 30), Dialect::Modern),
        "ttl_rows": ttl_rows,
        "ttl_kept": ["ttl-new"],
        "ttl_statements": modern_ttl_statements(&config("periscope_ttl", 5)).expect("ttl"),
        "edge_rule": edge_rule_runs,
        "settle": {
            "candidates": queries::SETTLE_CANDIDATES.sql,
            "minute": queries::SETTLE_MINUTE.sql,
            "mark": queries::SETTLE_MARK.sql,
        },
    });

    let results = run_script(&python, "chdb_check.py", &plan);
    let engine = results["engine_version"].as_str().unwrap_or_default();
    assert!(
        engine.split('.').next().and_then(|m| m.parse::<u32>().ok()) >= Some(23),
        "chdb runs ClickHouse {engine}, not a modern one"
    );
    for label in [
        "modern",
        "legacy_schema",
        "modern_merged",
        "modern_settled",
        "legacy_schema_settled",
        "modern_late",
        "modern_resettled",
    ] {
        check_cases(&results, label, &cases);
    }
    for label in [
        "edge_rule_modern",
        "edge_rule_legacy_schema",
        "edge_rule_modern_settled",
        "edge_rule_legacy_schema_settled",
    ] {
        for (id, _, want) in &edge_rule.windows {
            let got = &results["results"][label][id.as_str()];
            assert!(got.is_array(), "{label}: no result for {id}");
            compare(label, id, got, want);
        }
    }
}

/// Cluster mode's modern statements and queries in chdb, on a one-shard cluster that is the chdb
/// process itself (no ZooKeeper there: the `Replicated*` engines run as their plain engines;
/// see `tests/chdb_cluster_check.py`): every case answers through the Distributed tables as on
/// one server, with the SQL and settings `Queries::for_cluster` and
/// `MigrateConfig::prepare_client` use, with replays, settled, with late copies and settled
/// again.
#[test]
fn cluster_mode_modern_ddl_and_every_query_run_in_chdb() {
    let python = venv_python();
    let t0 = common::base_time_ns();
    let (seed, replay) = common::seed_batches(t0);
    let cases = common::cases(t0);
    let cfg = MigrateConfig {
        cluster: Some("periscope_test".into()),
        ..config("periscope_c", 30)
    };
    let plan = json!({
        "cluster": "periscope_test",
        "database": "periscope_c",
        "migrations": migrations(&cfg, Dialect::Modern),
        "sharded_tables": periscope_storage::cluster::sharded_tables(),
        "settings": {
            "insert_distributed_sync": "1",
            "distributed_product_mode": "'global'",
            "load_balancing": "'in_order'",
        },
        "seed": seed,
        "replay": replay,
        "cases": cases.iter().map(|c| json!({
            "id": c.id,
            "sql": queries::distributed_text(c.spec.sql).unwrap_or_else(|| c.spec.sql.to_owned()),
            "params": c.params.iter()
                .map(|(name, value)| (name.to_string(), Value::from(modern_param_text(value))))
                .collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
        "settle": {
            "candidates": queries::SETTLE_CANDIDATES.sql,
            "minute": queries::SETTLE_MINUTE.sql,
            "mark": queries::SETTLE_MARK.sql,
        },
    });
    let results = run_script(&python, "chdb_cluster_check.py", &plan);
    for label in [
        "cluster",
        "cluster_settled",
        "cluster_late",
        "cluster_resettled",
    ] {
        check_cases(&results, label, &cases);
    }
}
