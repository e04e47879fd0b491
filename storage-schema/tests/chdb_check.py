#!/usr/bin/env python3
"""Checks the modern dialect in chdb-core (in-process ClickHouse 26.x).

Run by tests/chdb.rs with the venv's python:  chdb_check.py PLAN.json RESULTS.json

PLAN.json is written by the Rust test from the crate itself: the rendered migrations (modern, and
legacy too since a legacy schema keeps running after a server upgrade), the modern TTL statements,
FlowRow's columns, the seed rows (FlowRow as JSON, the replayed copies separately) and the query
cases, each with its SQL exactly as shipped and its parameters already turned into the texts a
modern server receives (`param_<name>`), which chdb binds server-side like the server does.

This script asserts what is about the engine (DDL applies and re-applies, FlowRow's columns have
the same wire types in both dialects, TTL expires old parts, hostile parameters leave the data
alone) and writes every case's rows to RESULTS.json, for the Rust test to compare against the
same expected values as the 18.16 test.
"""

import json
import re
import sys
import tempfile
import time

import chdb
from chdb import session as chs


def fail(message):
    print(f"chdb_check: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def rows(sess, sql, params=None):
    try:
        out = sess.query(sql, "JSONEachRow", params=params or {})
    except Exception as e:  # chdb raises its own error types
        fail(f"{e}\n--- query ---\n{sql}\n--- params ---\n{params}")
    return [json.loads(line) for line in str(out).splitlines() if line.strip()]


def run(sess, sql):
    try:
        sess.query(sql)
    except Exception as e:
        fail(f"{e}\n--- statement ---\n{sql}")


def scalar(sess, sql):
    got = rows(sess, sql)
    return next(iter(got[0].values()))


def insert(sess, db, batch):
    if batch:
        body = "\n".join(json.dumps(r) for r in batch)
        run(sess, f"INSERT INTO {db}.flows FORMAT JSONEachRow\n{body}")


def settle(sess, db, spec):
    """Settles every minute of db as the relay does (Queries::settle with quiet_s 0): the
    candidates, then for each its rows and its marker. Returns how many were settled."""
    run(sess, f"USE {db}")
    time.sleep(1.1)  # a minute settles once its latest write is in an earlier second
    every = {"quiet_s": "0", "limit": "100000"}
    minutes = rows(sess, spec["candidates"], every)
    for i, m in enumerate(minutes):
        common = {"cluster": m["cluster"], "minute_s": str(m["minute_s"])}
        settle_id = str(1000 + i)
        rows(sess, spec["minute"], {**common, "settle_id": settle_id})
        rows(sess, spec["mark"], {**common, "written_s": str(m["written_s"]), "settle_id": settle_id})
    left = rows(sess, spec["candidates"], every)
    if left:
        fail(f"{db}: minutes left to settle after settling: {left}")
    return len(minutes)


def migrate(sess, statements_per_migration):
    for statements in statements_per_migration:
        for statement in statements:
            run(sess, statement)


def unwrap_low_cardinality(t):
    """LowCardinality(T) has T's wire format (RowBinary and JSON alike)."""
    while True:
        new = re.sub(r"LowCardinality\(([^()]*(?:\([^()]*\))?[^()]*)\)", r"\1", t)
        if new == t:
            return t
        t = new


def main():
    plan_path, out_path = sys.argv[1], sys.argv[2]
    with open(plan_path) as f:
        plan = json.load(f)

    sess = chs.Session(tempfile.mkdtemp(prefix="periscope-chdb-"))
    version = scalar(sess, "SELECT version() AS v")
    print(f"chdb_check: chdb {chdb.__version__}, ClickHouse engine {version}", file=sys.stderr)
    run(sess, "SET output_format_json_quote_64bit_integers = 0")

    modern, legacy = plan["modern_database"], plan["legacy_database"]
    migrate(sess, plan["modern_migrations"])
    migrate(sess, plan["legacy_migrations"])
    tables = lambda db: [r["name"] for r in rows(sess, f"SELECT name FROM system.tables WHERE database = '{db}' ORDER BY name")]
    before = tables(modern)
    migrate(sess, plan["modern_migrations"])  # idempotent: a second run changes nothing
    if tables(modern) != before:
        fail(f"re-applying migrations changed the tables: {before} -> {tables(modern)}")
    expected_tables = ["alerts", "flow_edges_1m", "flow_edges_1m_mv", "flow_edges_1m_settled",
                       "flow_minutes", "flow_minutes_mv", "flow_minutes_settled",
                       "flows", "flows_denied", "flows_denied_mv", "logs", "schema_migrations"]
    for db in (modern, legacy):
        if tables(db) != expected_tables:
            fail(f"{db} has tables {tables(db)}")

    # 0008 logs: LogRow's columns insert in both dialects, `time` follows `time_ns`. An hour ago:
    # an older row could be gone at once (the modern table's TTL is days).
    log_s = int(time.time()) - 3600
    for db in (modern, legacy):
        run(sess, f"""INSERT INTO {db}.logs (time_ns, level, target, message, fields, node, component, cluster)
            VALUES ({log_s}123456789, 'WARN', 'periscope_relay::peers', 'peer down', '{{"peer":"a:1"}}',
                    'n1', 'relay', 'default')""")
        got = rows(sess, f"SELECT toUnixTimestamp(time) AS t, level, node FROM {db}.logs")
        if got != [{"t": log_s, "level": "WARN", "node": "n1"}]:
            fail(f"{db}.logs after one insert: {got}")
        cols = [r["name"] for r in rows(sess, f"""
            SELECT name FROM system.columns WHERE database = '{db}' AND table = 'logs'
            AND default_kind = '' ORDER BY position""")]
        if cols != ["time_ns", "level", "target", "message", "fields", "node", "component", "cluster"]:
            fail(f"{db}.logs insertable columns: {cols}")

    # FlowRow's columns: the insertable columns of both dialects, in FlowRow's order, with the
    # same wire types once LowCardinality is unwrapped.
    columns = {}
    for db in (modern, legacy):
        columns[db] = rows(sess, f"""
            SELECT name, type, default_kind FROM system.columns
            WHERE database = '{db}' AND table = 'flows' ORDER BY position""")
    for db, cols in columns.items():
        insertable = [c["name"] for c in cols if c["default_kind"] == ""]
        if insertable != plan["flow_columns"]:
            fail(f"{db}.flows insertable columns differ from FlowRow's:\n{insertable}\n{plan['flow_columns']}")
    legacy_types = {c["name"]: c["type"] for c in columns[legacy]}
    modern_types = {c["name"]: c["type"] for c in columns[modern]}
    for name in plan["flow_columns"]:
        if unwrap_low_cardinality(modern_types[name]) != legacy_types[name]:
            fail(f"column {name}: modern {modern_types[name]} vs legacy {legacy_types[name]}")
    if modern_types["time"] != "DateTime64(9, 'UTC')" or legacy_types["time"] != "DateTime('UTC')":
        fail(f"time types: modern {modern_types['time']}, legacy {legacy_types['time']}")

    # AlertRow's columns, likewise.
    alert_types = {}
    for db in (modern, legacy):
        cols = rows(sess, f"""
            SELECT name, type, default_kind FROM system.columns
            WHERE database = '{db}' AND table = 'alerts' ORDER BY position""")
        insertable = [c["name"] for c in cols if c["default_kind"] == ""]
        if insertable != plan["alert_columns"]:
            fail(f"{db}.alerts insertable columns differ from AlertRow's:\n{insertable}\n{plan['alert_columns']}")
        alert_types[db] = {c["name"]: c["type"] for c in cols}
    for name in plan["alert_columns"]:
        m, l = alert_types[modern][name], alert_types[legacy][name]
        if unwrap_low_cardinality(m) != l:
            fail(f"alerts column {name}: modern {m} vs legacy {l}")

    # Seed, then the replayed copies (a second insert, as after a spool replay).
    for db in (modern, legacy):
        insert(sess, db, plan["seed"])
        insert(sess, db, plan["replay"])
        stored = scalar(sess, f"SELECT count() AS n FROM {db}.flows")
        if stored != len(plan["seed"]) + len(plan["replay"]):
            fail(f"{db}.flows holds {stored} rows before merges")

    results = {}

    def run_cases(label, db):
        # Queries name tables unqualified, as with `clickhouse-client --database`.
        run(sess, f"USE {db}")
        results[label] = {c["id"]: rows(sess, c["sql"], c["params"]) for c in plan["cases"]}

    run_cases("modern", modern)
    run_cases("legacy_schema", legacy)
    for db in (modern, legacy):
        for table in ("flows", "flows_denied", "flow_edges_1m"):
            run(sess, f"OPTIMIZE TABLE {db}.{table} FINAL")
        merged = scalar(sess, f"SELECT count() AS n FROM {db}.flows")
        if merged != len(plan["seed"]):
            fail(f"{db}.flows holds {merged} rows after merging, want {len(plan['seed'])}")
    run_cases("modern_merged", modern)

    # Hostile parameters ran above; the data is all still there.
    for db in (modern, legacy):
        n = scalar(sess, f"SELECT count() AS n FROM {db}.flows")
        if n != len(plan["seed"]):
            fail(f"{db}.flows lost rows: {n}")

    # Settled minutes (migration 0006) answer the same; replayed copies arriving after that
    # unsettle the minutes they touch (still the same answers), which then settle again.
    for label, db in (("modern", modern), ("legacy_schema", legacy)):
        if settle(sess, db, plan["settle"]) == 0:
            fail(f"{db}: nothing to settle")
        run_cases(f"{label}_settled", db)
    insert(sess, modern, plan["replay"])
    run_cases("modern_late", modern)
    if settle(sess, modern, plan["settle"]) == 0:
        fail("the late copies left nothing to settle")
    run_cases("modern_resettled", modern)

    # Retention: TTL drops parts whose rows are all older than retention_days; MODIFY TTL runs.
    ttl_db = plan["ttl_database"]
    migrate(sess, plan["ttl_migrations"])
    insert(sess, ttl_db, plan["ttl_rows"])
    for table in ("flows", "flows_denied", "flow_edges_1m"):
        run(sess, f"OPTIMIZE TABLE {ttl_db}.{table} FINAL")
    kept = [r["uuid"] for r in rows(sess, f"SELECT uuid FROM {ttl_db}.flows ORDER BY uuid")]
    if kept != plan["ttl_kept"]:
        fail(f"after TTL, {ttl_db}.flows keeps {kept}, want {plan['ttl_kept']}")
    for statement in plan["ttl_statements"]:
        run(sess, statement)
    ttl = scalar(sess, f"SELECT engine_full AS e FROM system.tables WHERE database = '{ttl_db}' AND name = 'flows'")
    if "INTERVAL 5 DAY" not in ttl.replace("toIntervalDay(5)", "INTERVAL 5 DAY"):
        fail(f"MODIFY TTL did not take: {ttl}")

    # The map's edge rule across migration 0005: flows inserted under 0002's view, 0005 applied
    # (twice: a run cut short runs it again), the same flows again and a replay of them.
    for er in plan["edge_rule"]:
        db = er["database"]
        migrate(sess, er["before_migrations"])
        insert(sess, db, er["before"])
        before = tables(db)
        migrate(sess, er["after_migrations"])
        migrate(sess, er["after_migrations"])
        if tables(db) != before:
            fail(f"0005 changed the tables of {db}: {before} -> {tables(db)}")
        migrate(sess, er["rest_migrations"])
        insert(sess, db, er["after"])
        insert(sess, db, er["after"])
        run(sess, f"USE {db}")
        results[er["label"]] = {c["id"]: rows(sess, c["sql"], c["params"]) for c in er["cases"]}
        if settle(sess, db, plan["settle"]) != 1:
            fail(f"{db}: the minute after 0006 should settle (the one before has no flow_minutes row)")
        run(sess, f"USE {db}")
        results[er["label"] + "_settled"] = {c["id"]: rows(sess, c["sql"], c["params"]) for c in er["cases"]}

    with open(out_path, "w") as f:
        json.dump({"engine_version": version, "results": results}, f)
    print(f"chdb_check: ok, {len(plan['cases'])} cases x {len(results)} runs", file=sys.stderr)


if __name__ == "__main__":
    main()
