-- 0008 logs (legacy dialect): log events of the agents and relays (warnings and errors by
-- default: `periscope-relay --log-to-clickhouse`, `periscope-agent --log-clickhouse-url`), one row
-- per event; columns are `periscope_logging::clickhouse::LogRow`'s, plus `time`.
--
-- Rows are not deduplicated: a batch whose INSERT failed after reaching the server may be
-- stored twice (logs are for looking and alerting, not counting exactly).
-- Partitioned by day like `flows`: retention drops old day partitions.

CREATE TABLE IF NOT EXISTS ${database}.logs${on_cluster}
(
    time_ns Int64,
    level String,
    target String,
    message String,
    fields String,
    node String,
    component String,
    cluster String,
    time DateTime('UTC') DEFAULT toDateTime(intDiv(time_ns, 1000000000))
)
ENGINE = MergeTree()
PARTITION BY toYYYYMMDD(time)
ORDER BY (cluster, component, node, time_ns)
SETTINGS index_granularity = 8192;
