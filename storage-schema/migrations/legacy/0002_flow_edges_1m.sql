-- 0002 flow_edges_1m (legacy dialect): service-map edges per minute, fed by a materialized view.
--
-- One row per (minute, cluster, source, destination, port, protocol, verdict) edge. This file's
-- view counts every L3/L4 flow that is not a reply (a reply would draw the edge backwards);
-- 0005_flow_edges_1m_edge_rule.sql replaces it with one that counts one observation per packet,
-- the rule of the live map (`periscope_ui_api::edge_of`; see 0005). An end is named by its
-- workload, else its pod, else its first `reserved:` label (reserved:world, reserved:host, ...):
-- columns `source` and `destination`, each with its namespace (empty outside the cluster).
--
-- Replay safety: the counters are aggregate states that are idempotent under duplicates:
-- uniqExact over flow uuids (a replayed flow adds a uuid that is already in the set), min and max
-- of the flow time. So a replayed insert, which the view processes again, changes nothing. Read
-- with uniqExactMerge / minMerge / maxMerge, grouping by the key (queries/service_map_edges.sql).
-- Byte and packet sums are left out on purpose: they would count replays twice.
--
-- The view only sees flows inserted after it exists (no backfill).

CREATE TABLE IF NOT EXISTS ${database}.flow_edges_1m${on_cluster}
(
    minute DateTime('UTC'),
    cluster String,
    source_namespace String,
    source String,
    destination_namespace String,
    destination String,
    destination_port UInt32,
    protocol String,
    verdict String,
    flows AggregateFunction(uniqExact, String),
    first_seen_ns AggregateFunction(min, Int64),
    last_seen_ns AggregateFunction(max, Int64)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMMDD(minute)
ORDER BY (minute, cluster, source_namespace, source, destination_namespace, destination, destination_port, protocol, verdict)
SETTINGS index_granularity = 8192;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.flow_edges_1m_mv${on_cluster}
TO ${database}.flow_edges_1m
AS SELECT
    toStartOfMinute(toDateTime(intDiv(time_ns, 1000000000))) AS minute,
    cluster,
    source_namespace,
    if(source_workload != '', source_workload,
        if(source_pod_name != '', source_pod_name, arrayFirst(l -> l LIKE 'reserved:%', source_labels))) AS source,
    destination_namespace,
    if(destination_workload != '', destination_workload,
        if(destination_pod_name != '', destination_pod_name, arrayFirst(l -> l LIKE 'reserved:%', destination_labels))) AS destination,
    destination_port,
    protocol,
    verdict,
    uniqExactState(uuid) AS flows,
    minState(time_ns) AS first_seen_ns,
    maxState(time_ns) AS last_seen_ns
FROM ${database}.flows
WHERE flow_type = 'L3_L4' AND ifNull(is_reply, 0) = 0
GROUP BY minute, cluster, source_namespace, source, destination_namespace, destination, destination_port, protocol, verdict;
