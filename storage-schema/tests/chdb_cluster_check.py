#!/usr/bin/env python3
"""Cluster mode's modern DDL and queries in chdb-core (in-process ClickHouse 26.x).

Run by tests/chdb.rs:  chdb_cluster_check.py PLAN.json RESULTS.json

chdb has a cluster when its configuration names one (`remote_servers`), and a one-shard cluster
whose replica is this process (127.0.0.1 on its own `tcp_port`) is read and written in process.
It has no ZooKeeper, so the `Replicated*` engines are replaced by their plain engines and
`ON CLUSTER` is dropped; everything else is the rendered cluster-mode migration: the local tables
(modern codecs, skipping indexes, TTL), the Distributed tables made `AS` them, the views on the
local tables. The seed and its replay are inserted through the Distributed `flows` with the
cluster client's settings, and every case runs with the SQL `Queries::for_cluster` sends, with
replays, settled, with late copies and settled again; RESULTS.json gets the rows for the Rust test
to compare with the single-server expectations. Two shards are the 18.16 test's job
(tests/clickhouse_cluster.rs).
"""

import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chdb_check import fail, insert, migrate, rows, run, scalar, settle  # noqa: E402

from chdb import session as chs  # noqa: E402


def without_zookeeper(statement, cluster):
    s = statement.replace(f" ON CLUSTER `{cluster}`", "")
    return re.sub(r"Replicated(\w*MergeTree)\('/clickhouse/tables/\{shard\}/[^']*', '\{replica\}'(?:, )?",
                  r"\1(", s)


def main():
    plan_path, out_path = sys.argv[1], sys.argv[2]
    with open(plan_path) as f:
        plan = json.load(f)
    cluster, db = plan["cluster"], plan["database"]
    home = tempfile.mkdtemp(prefix="periscope-chdb-cluster-")
    config = os.path.join(home, "config.xml")
    with open(config, "w") as f:
        f.write(f"""<clickhouse>
  <tcp_port>9000</tcp_port>
  <remote_servers><{cluster}><shard><replica><host>127.0.0.1</host><port>9000</port></replica></shard></{cluster}></remote_servers>
</clickhouse>
""")
    sess = chs.Session(f"{os.path.join(home, 'data')}?config-file={config}")
    local = rows(sess, f"SELECT is_local FROM system.clusters WHERE cluster = '{cluster}'")
    if local != [{"is_local": 1}]:
        fail(f"cluster {cluster} is not this process: {local}")
    run(sess, "SET output_format_json_quote_64bit_integers = 0")
    for name, value in plan["settings"].items():
        run(sess, f"SET {name} = {value}")

    statements = [[without_zookeeper(s, cluster) for s in m] for m in plan["migrations"]]
    migrate(sess, statements)
    migrate(sess, statements)  # idempotent
    engines = {r["name"]: r["engine"] for r in rows(
        sess, f"SELECT name, engine FROM system.tables WHERE database = '{db}'")}
    for table in plan["sharded_tables"]:
        if engines.get(table) != "Distributed" or not engines.get(table + "_local", "").endswith("MergeTree"):
            fail(f"{table}: {engines.get(table)}, {table}_local: {engines.get(table + '_local')}")
    for view in ("flow_edges_1m_mv", "flow_minutes_mv", "flows_denied_mv"):
        create = scalar(sess, f"SELECT create_table_query AS q FROM system.tables WHERE database = '{db}' AND name = '{view}'")
        if f"{db}.flows_local" not in create or "_local" not in create.split(" AS SELECT")[0]:
            fail(f"{view} is not on the local tables: {create}")

    insert(sess, db, plan["seed"])
    insert(sess, db, plan["replay"])
    stored = scalar(sess, f"SELECT count() AS n FROM {db}.flows")
    if stored != len(plan["seed"]) + len(plan["replay"]):
        fail(f"{db}.flows holds {stored} rows")

    results = {}

    def run_cases(label):
        run(sess, f"USE {db}")
        results[label] = {c["id"]: rows(sess, c["sql"], c["params"]) for c in plan["cases"]}

    run_cases("cluster")
    if settle(sess, db, plan["settle"]) == 0:
        fail("nothing to settle")
    run_cases("cluster_settled")
    insert(sess, db, plan["replay"])
    run_cases("cluster_late")
    if settle(sess, db, plan["settle"]) == 0:
        fail("the late copies left nothing to settle")
    run_cases("cluster_resettled")

    with open(out_path, "w") as f:
        json.dump({"results": results}, f)
    print(f"chdb_cluster_check: ok, {len(plan['cases'])} cases x {len(results)} runs", file=sys.stderr)


if __name__ == "__main__":
    main()
