-- 0003 flows_denied (legacy dialect): the flows a policy denied (or would deny, in audit mode),
-- narrow and sorted by the destination, fed by a materialized view on `flows`.
--
-- Denied means: verdict DROPPED on a policy-verdict event (monitor type 5) or with drop reason
-- POLICY_DENIED / POLICY_DENY, or verdict AUDIT, or any flow naming a policy in
-- ingress_denied_by / egress_denied_by. A packet denied by policy usually yields two such flows (the
-- policy verdict and the drop), each with its own uuid; `event_type` tells them apart.
--
-- Columns keep the names of `flows`; `denied_by` joins ingress_denied_by and egress_denied_by as
-- "namespace/name" ("name" for cluster-wide policies). An empty `denied_by` is a default deny.
--
-- Deduplication as in `flows`: ReplacingMergeTree keyed by (..., time, uuid); a replayed flow goes
-- through the view again and its copy collapses on merge; queries count uniqExact(uuid).
-- The view only sees flows inserted after it exists (no backfill).

CREATE TABLE IF NOT EXISTS ${database}.flows_denied${on_cluster}
(
    uuid String,
    time_ns Int64,
    time DateTime('UTC'),
    cluster String,
    node_name String,
    verdict String,
    drop_reason_desc String,
    event_type Int32,
    traffic_direction String,
    policy_match_type UInt32,
    protocol String,
    source_ip String,
    source_port UInt32,
    source_identity UInt32,
    source_namespace String,
    source_pod_name String,
    source_workload String,
    source_labels Array(String),
    destination_ip String,
    destination_port UInt32,
    destination_identity UInt32,
    destination_namespace String,
    destination_pod_name String,
    destination_workload String,
    destination_labels Array(String),
    destination_names Array(String),
    tcp_flags Array(String),
    denied_by Array(String),
    summary String
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMMDD(time)
ORDER BY (destination_namespace, destination_workload, time, uuid)
SETTINGS index_granularity = 8192;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.flows_denied_mv${on_cluster}
TO ${database}.flows_denied
AS SELECT
    uuid, time_ns, time, cluster, node_name, verdict, drop_reason_desc, event_type, traffic_direction,
    policy_match_type, protocol,
    source_ip, source_port, source_identity, source_namespace, source_pod_name, source_workload, source_labels,
    destination_ip, destination_port, destination_identity, destination_namespace, destination_pod_name,
    destination_workload, destination_labels, destination_names, tcp_flags,
    arrayConcat(
        arrayMap((n, ns) -> if(ns = '', n, concat(ns, '/', n)), ingress_denied_by, ingress_denied_by_namespaces),
        arrayMap((n, ns) -> if(ns = '', n, concat(ns, '/', n)), egress_denied_by, egress_denied_by_namespaces)
    ) AS denied_by,
    summary
FROM ${database}.flows
WHERE (verdict = 'DROPPED' AND (event_type = 5 OR drop_reason_desc IN ('POLICY_DENIED', 'POLICY_DENY')))
    OR verdict = 'AUDIT'
    OR notEmpty(ingress_denied_by)
    OR notEmpty(egress_denied_by);
