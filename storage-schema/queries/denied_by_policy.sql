-- Denied flows by policy and source in a time window.
--
-- Which policies denied what, from where: one row per (policy, direction, source, destination
-- workload, port, protocol), most denials first. A flow denied without a named policy (default
-- deny) counts under '(default deny)'; a flow naming several policies counts under each.
--
-- Reads flows_denied (the materialized view of denied flows).
-- Parameters:
--   since_ns, until_ns  Int64   window, Unix nanoseconds, both ends inclusive
--   limit               UInt32  at most this many rows
-- Exact before merges: counts are uniqExact(uuid), so a replayed copy of a flow counts once.
-- `flows` counts every denied flow; `drops` only the drop events (monitor type 1), i.e. about one
-- per denied packet, without the policy-verdict event that often accompanies it.
--
-- clickhouse-client --database periscope --param_since_ns=1700000000000000000 \
--   --param_until_ns=1700003600000000000 --param_limit=50 --queries-file denied_by_policy.sql
SELECT
    arrayJoin(if(empty(denied_by), ['(default deny)'], denied_by)) AS policy,
    traffic_direction,
    source_namespace,
    if(source_workload != '', source_workload,
        if(source_pod_name != '', source_pod_name, source_ip)) AS source,
    source_identity,
    destination_namespace,
    if(destination_workload != '', destination_workload,
        if(destination_pod_name != '', destination_pod_name, destination_ip)) AS destination,
    destination_port,
    protocol,
    uniqExact(uuid) AS flows,
    uniqExactIf(uuid, event_type = 1) AS drops,
    min(time_ns) AS first_seen_ns,
    max(time_ns) AS last_seen_ns
FROM flows_denied
WHERE time >= toDateTime(intDiv({since_ns:Int64}, 1000000000))
    AND time < toDateTime(intDiv({until_ns:Int64}, 1000000000) + 1)
    AND time_ns >= {since_ns:Int64}
    AND time_ns <= {until_ns:Int64}
GROUP BY policy, traffic_direction, source_namespace, source, source_identity,
    destination_namespace, destination, destination_port, protocol
ORDER BY flows DESC, policy, source_namespace, source, destination_namespace, destination, destination_port
LIMIT {limit:UInt32}
