-- 0001 flows (modern dialect: ClickHouse >= 23.8).
--
-- One row per Hubble flow: the columns are FlowRow's (src/row.rs), in the same order, with the same
-- names and the same RowBinary encoding as in the legacy dialect (LowCardinality(T) and codecs do not
-- change the wire format), so one FlowRow and one set of queries serve both. Only `time` differs in
-- type (DateTime64(9) here, DateTime in legacy) and it is not part of FlowRow: it is derived from
-- `time_ns` on insert.
--
-- IP addresses stay String (not IPv6) to keep that shared encoding; bloom-filter indexes make
-- point lookups on them cheap.
--
-- Deduplication: ReplacingMergeTree whose sorting key ends with `uuid`. A replayed flow (same uuid)
-- produces an identical row with an identical key, in the same day partition, and merges collapse
-- the copies. Queries must not wait for merges: they count uniqExact(uuid) or read through
-- `LIMIT 1 BY uuid` (see queries/). The primary index leaves `uuid` out (it only lengthens the index).
--
-- Retention: TTL on `time`; ttl_only_drop_parts drops whole expired parts instead of rewriting them.
--
-- Placeholders filled in by the crate: ${database}, ${on_cluster}, ${retention_days}.

CREATE TABLE IF NOT EXISTS ${database}.flows${on_cluster}
(
    uuid String CODEC(ZSTD(1)),
    -- Flow.time as nanoseconds since the Unix epoch (UTC): the exact time, what FlowRow carries.
    time_ns Int64 CODEC(Delta, ZSTD(1)),
    -- Derived on insert, exact to the nanosecond; the partition, sorting and retention key.
    time DateTime64(9, 'UTC') DEFAULT fromUnixTimestamp64Nano(time_ns, 'UTC') CODEC(Delta, ZSTD(1)),
    cluster LowCardinality(String),
    node_name LowCardinality(String),
    verdict LowCardinality(String),
    drop_reason UInt32,
    drop_reason_desc LowCardinality(String),
    auth_type LowCardinality(String),
    flow_type LowCardinality(String),
    event_type Int32,
    event_sub_type Int32,
    traffic_direction LowCardinality(String),
    trace_observation_point LowCardinality(String),
    debug_capture_point LowCardinality(String),
    sock_xlate_point LowCardinality(String),
    policy_match_type UInt32,
    is_reply Nullable(UInt8),
    reply UInt8,
    ethernet_source String CODEC(ZSTD(1)),
    ethernet_destination String CODEC(ZSTD(1)),
    ip_version LowCardinality(String),
    source_ip String CODEC(ZSTD(1)),
    destination_ip String CODEC(ZSTD(1)),
    ip_encrypted UInt8,
    protocol LowCardinality(String),
    source_port UInt32,
    destination_port UInt32,
    tcp_flags Array(LowCardinality(String)),
    icmp_type UInt32,
    icmp_code UInt32,
    source_endpoint_id UInt32,
    source_identity UInt32,
    source_namespace LowCardinality(String),
    source_pod_name String CODEC(ZSTD(1)),
    source_labels Array(LowCardinality(String)),
    source_workload LowCardinality(String),
    source_workload_kind LowCardinality(String),
    source_workload_names Array(String) CODEC(ZSTD(1)),
    source_workload_kinds Array(LowCardinality(String)),
    source_names Array(String) CODEC(ZSTD(1)),
    source_service_name LowCardinality(String),
    source_service_namespace LowCardinality(String),
    destination_endpoint_id UInt32,
    destination_identity UInt32,
    destination_namespace LowCardinality(String),
    destination_pod_name String CODEC(ZSTD(1)),
    destination_labels Array(LowCardinality(String)),
    destination_workload LowCardinality(String),
    destination_workload_kind LowCardinality(String),
    destination_workload_names Array(String) CODEC(ZSTD(1)),
    destination_workload_kinds Array(LowCardinality(String)),
    destination_names Array(String) CODEC(ZSTD(1)),
    destination_service_name LowCardinality(String),
    destination_service_namespace LowCardinality(String),
    interface_index UInt32,
    interface_name LowCardinality(String),
    proxy_port UInt32,
    trace_id String CODEC(ZSTD(1)),
    socket_cookie UInt64 CODEC(ZSTD(1)),
    cgroup_id UInt64 CODEC(ZSTD(1)),
    ingress_allowed_by Array(String) CODEC(ZSTD(1)),
    ingress_allowed_by_namespaces Array(String) CODEC(ZSTD(1)),
    ingress_allowed_by_kinds Array(String) CODEC(ZSTD(1)),
    ingress_allowed_by_revisions Array(UInt64) CODEC(ZSTD(1)),
    ingress_allowed_by_labels Array(Array(String)) CODEC(ZSTD(1)),
    egress_allowed_by Array(String) CODEC(ZSTD(1)),
    egress_allowed_by_namespaces Array(String) CODEC(ZSTD(1)),
    egress_allowed_by_kinds Array(String) CODEC(ZSTD(1)),
    egress_allowed_by_revisions Array(UInt64) CODEC(ZSTD(1)),
    egress_allowed_by_labels Array(Array(String)) CODEC(ZSTD(1)),
    ingress_denied_by Array(String) CODEC(ZSTD(1)),
    ingress_denied_by_namespaces Array(String) CODEC(ZSTD(1)),
    ingress_denied_by_kinds Array(String) CODEC(ZSTD(1)),
    ingress_denied_by_revisions Array(UInt64) CODEC(ZSTD(1)),
    ingress_denied_by_labels Array(Array(String)) CODEC(ZSTD(1)),
    egress_denied_by Array(String) CODEC(ZSTD(1)),
    egress_denied_by_namespaces Array(String) CODEC(ZSTD(1)),
    egress_denied_by_kinds Array(String) CODEC(ZSTD(1)),
    egress_denied_by_revisions Array(UInt64) CODEC(ZSTD(1)),
    egress_denied_by_labels Array(Array(String)) CODEC(ZSTD(1)),
    l7_type LowCardinality(String),
    l7_protocol LowCardinality(String),
    l7_latency_ns UInt64 CODEC(ZSTD(1)),
    dns_query String CODEC(ZSTD(1)),
    dns_ips Array(String) CODEC(ZSTD(1)),
    dns_ttl UInt32,
    dns_cnames Array(String) CODEC(ZSTD(1)),
    dns_observation_source LowCardinality(String),
    dns_rcode UInt32,
    dns_qtypes Array(LowCardinality(String)),
    dns_rrtypes Array(LowCardinality(String)),
    http_code UInt32,
    http_method LowCardinality(String),
    http_url String CODEC(ZSTD(1)),
    http_protocol LowCardinality(String),
    http_header_keys Array(String) CODEC(ZSTD(1)),
    http_header_values Array(String) CODEC(ZSTD(1)),
    kafka_error_code Int32,
    kafka_api_version Int32,
    kafka_api_key LowCardinality(String),
    kafka_correlation_id Int32,
    kafka_topic LowCardinality(String),
    summary String CODEC(ZSTD(1)),
    bytes UInt64,
    packets UInt64,
    INDEX idx_destination_namespace destination_namespace TYPE set(1024) GRANULARITY 4,
    INDEX idx_destination_workload destination_workload TYPE bloom_filter GRANULARITY 4,
    INDEX idx_source_pod source_pod_name TYPE bloom_filter GRANULARITY 4,
    INDEX idx_destination_pod destination_pod_name TYPE bloom_filter GRANULARITY 4,
    INDEX idx_source_ip source_ip TYPE bloom_filter GRANULARITY 4,
    INDEX idx_destination_ip destination_ip TYPE bloom_filter GRANULARITY 4,
    INDEX idx_uuid uuid TYPE bloom_filter GRANULARITY 4,
    INDEX idx_verdict verdict TYPE set(16) GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(time)
PRIMARY KEY (source_namespace, source_workload, time)
ORDER BY (source_namespace, source_workload, time, uuid)
TTL toDateTime(time) + INTERVAL ${retention_days} DAY
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1;
