-- 0006 flow_edges_settled (modern dialect): exact edge counts that read as plain numbers.
--
-- The same tables as the legacy file (see it for the design), with LowCardinality strings,
-- codecs and the retention TTL.
--
-- Placeholders filled in by the crate: ${database}, ${on_cluster}, ${retention_days}.

CREATE TABLE IF NOT EXISTS ${database}.flow_minutes${on_cluster}
(
    minute DateTime('UTC'),
    cluster LowCardinality(String),
    written_at AggregateFunction(max, DateTime)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMMDD(minute)
ORDER BY (cluster, minute)
TTL minute + INTERVAL ${retention_days} DAY
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1;

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
    minute DateTime('UTC') CODEC(Delta, ZSTD(1)),
    cluster LowCardinality(String),
    settle_id UInt64,
    source_namespace LowCardinality(String),
    source LowCardinality(String),
    destination_namespace LowCardinality(String),
    destination LowCardinality(String),
    destination_port UInt32,
    protocol LowCardinality(String),
    verdict LowCardinality(String),
    flows UInt64,
    first_seen_ns Int64,
    last_seen_ns Int64
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(minute)
ORDER BY (minute, cluster, settle_id)
TTL minute + INTERVAL ${retention_days} DAY
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1;

CREATE TABLE IF NOT EXISTS ${database}.flow_minutes_settled${on_cluster}
(
    minute DateTime('UTC'),
    cluster LowCardinality(String),
    written_at DateTime,
    settle_id UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(minute)
ORDER BY (cluster, minute)
TTL minute + INTERVAL ${retention_days} DAY
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1;
