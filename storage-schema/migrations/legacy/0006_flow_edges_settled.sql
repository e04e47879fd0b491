-- 0006 flow_edges_settled (legacy dialect): exact edge counts that read as plain numbers.
--
-- flow_edges_1m counts an edge's flows per minute as a uniqExact state over their uuids: exact
-- when a flow was inserted twice (a spool replay, a relay reconnecting to an agent), but a map
-- query has to merge every uuid of the window (10M flows: over a second). A flow's copies share
-- its minute, so a minute's exact count never changes once no more flows arrive for it. This
-- migration adds what lets the relay write those counts down once ("settle" the minute) and
-- lets `service_map_edges` read them as numbers, while staying exact:
--
-- - `flow_minutes` (+ `flow_minutes_mv`): when each (cluster, minute) last received flows
--   (`maxState(now())` at insert, the server's clock).
-- - `flow_edges_1m_settled`: a settled minute's edges with final counts, one set of rows per
--   settling run (`settle_id`, random). Plain MergeTree: rows of a run are never merged with
--   another run's.
-- - `flow_minutes_settled`: one marker per run, written after its rows: the minute, the
--   `written_at` it saw and its `settle_id`.
--
-- A minute reads from `flow_edges_1m_settled` only when a marker's `written_at` equals the
-- minute's latest `written_at` (no flow arrived since; a late flow makes it read from
-- flow_edges_1m again until it is settled anew), and then only the rows of that marker's run
-- (the highest `settle_id` if two relays settled it): rows of a run cut short before its marker,
-- and of superseded runs, are never read. See queries/settle_*.sql and service_map_edges.sql.
--
-- Minutes aggregated before this migration have no `flow_minutes` row: they are never settled
-- and keep reading from the uuid sets (exact, slower) until retention drops them.
--
-- Placeholders filled in by the crate: ${database}, ${on_cluster}.

CREATE TABLE IF NOT EXISTS ${database}.flow_minutes${on_cluster}
(
    minute DateTime('UTC'),
    cluster String,
    written_at AggregateFunction(max, DateTime)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMMDD(minute)
ORDER BY (cluster, minute)
SETTINGS index_granularity = 8192;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.flow_minutes_mv${on_cluster}
TO ${database}.flow_minutes
AS SELECT
    toStartOfMinute(toDateTime(intDiv(time_ns, 1000000000))) AS minute,
    cluster,
    maxState(now()) AS written_at
FROM ${database}.flows
GROUP BY minute, cluster;

CREATE TABLE IF NOT EXISTS ${database}.flow_edges_1m_settled${on_cluster}
(
    minute DateTime('UTC'),
    cluster String,
    settle_id UInt64,
    source_namespace String,
    source String,
    destination_namespace String,
    destination String,
    destination_port UInt32,
    protocol String,
    verdict String,
    flows UInt64,
    first_seen_ns Int64,
    last_seen_ns Int64
)
ENGINE = MergeTree()
PARTITION BY toYYYYMMDD(minute)
ORDER BY (minute, cluster, settle_id)
SETTINGS index_granularity = 8192;

CREATE TABLE IF NOT EXISTS ${database}.flow_minutes_settled${on_cluster}
(
    minute DateTime('UTC'),
    cluster String,
    written_at DateTime,
    settle_id UInt64
)
ENGINE = MergeTree()
PARTITION BY toYYYYMMDD(minute)
ORDER BY (cluster, minute)
SETTINGS index_granularity = 8192;
