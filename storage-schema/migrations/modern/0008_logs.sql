-- 0008 logs (modern dialect): log events of the agents and relays (warnings and errors by
-- default: `periscope-relay --log-to-clickhouse`, `periscope-agent --log-clickhouse-url`), one row
-- per event; columns are `periscope_logging::clickhouse::LogRow`'s, plus `time`.
--
-- Rows are not deduplicated: a batch whose INSERT failed after reaching the server may be
-- stored twice (logs are for looking and alerting, not counting exactly).
-- Retention: TTL on `time` (the flows' retention_days); whole expired parts are dropped.

CREATE TABLE IF NOT EXISTS ${database}.logs${on_cluster}
(
    time_ns Int64 CODEC(Delta, ZSTD(1)),
    level LowCardinality(String),
    target LowCardinality(String),
    message String CODEC(ZSTD(1)),
    fields String CODEC(ZSTD(1)),
    node LowCardinality(String),
    component LowCardinality(String),
    cluster LowCardinality(String),
    time DateTime64(9, 'UTC') DEFAULT fromUnixTimestamp64Nano(time_ns)
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(time)
ORDER BY (cluster, component, node, time_ns)
TTL toDateTime(time) + INTERVAL ${retention_days} DAY
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1;
