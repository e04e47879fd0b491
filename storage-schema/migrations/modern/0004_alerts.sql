-- 0004 alerts (modern dialect): the notifications of the relay's alert engine, one row per
-- notification (firing, repeat, resolved); columns are `AlertRow`'s, plus `starts_at`.
--
-- An alert instance is (fingerprint, starts_at_ns); its newest row by updated_at_ns is its last
-- known state: ReplacingMergeTree(updated_at_ns) keeps only that one on merge, and a replayed
-- insert collapses with it. Read exactly with
-- `ORDER BY updated_at_ns DESC LIMIT 1 BY fingerprint, starts_at_ns`.
-- Alerts are few (rows per alert, not per flow): no TTL on this table.

CREATE TABLE IF NOT EXISTS ${database}.alerts${on_cluster}
(
    fingerprint String,
    starts_at_ns Int64 CODEC(Delta, ZSTD(1)),
    updated_at_ns UInt64 CODEC(Delta, ZSTD(1)),
    notification LowCardinality(String),
    state LowCardinality(String),
    rule LowCardinality(String),
    severity LowCardinality(String),
    label_keys Array(LowCardinality(String)),
    label_values Array(String) CODEC(ZSTD(1)),
    annotation_keys Array(LowCardinality(String)),
    annotation_values Array(String) CODEC(ZSTD(1)),
    active_at_ns Int64,
    ends_at_ns Int64,
    count UInt64,
    peak_count UInt64,
    threshold UInt64,
    window_ms UInt64,
    sample_flow_uuids Array(String) CODEC(ZSTD(1)),
    starts_at DateTime64(9, 'UTC') DEFAULT fromUnixTimestamp64Nano(starts_at_ns)
)
ENGINE = ReplacingMergeTree(updated_at_ns)
PARTITION BY toYYYYMM(starts_at)
ORDER BY (fingerprint, starts_at_ns)
SETTINGS index_granularity = 8192;
