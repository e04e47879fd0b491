-- Flows of one pod around a time: everything the pod sent or received within
-- [at_ns - around_ns, at_ns + around_ns], oldest first.
--
-- Parameters:
--   namespace, pod   String  the pod
--   at_ns            Int64   the moment of interest, Unix nanoseconds
--   around_ns        Int64   half-width of the window, nanoseconds
--   limit            UInt32  at most this many rows
-- Exact before merges: LIMIT 1 BY uuid returns each flow once even when a replayed copy has not
-- been merged away yet.
--
-- clickhouse-client --database periscope --param_namespace=shop --param_pod=frontend-1 \
--   --param_at_ns=1700000000000000000 --param_around_ns=60000000000 --param_limit=500 \
--   --queries-file pod_flows.sql
SELECT
    time_ns,
    uuid,
    node_name,
    verdict,
    drop_reason_desc,
    traffic_direction,
    is_reply,
    source_namespace,
    source_pod_name,
    source_ip,
    source_port,
    destination_namespace,
    destination_pod_name,
    destination_ip,
    destination_port,
    protocol,
    tcp_flags,
    arrayConcat(ingress_denied_by, egress_denied_by) AS denied_by,
    summary
FROM flows
WHERE time >= toDateTime(intDiv({at_ns:Int64} - {around_ns:Int64}, 1000000000))
    AND time < toDateTime(intDiv({at_ns:Int64} + {around_ns:Int64}, 1000000000) + 1)
    AND time_ns >= {at_ns:Int64} - {around_ns:Int64}
    AND time_ns <= {at_ns:Int64} + {around_ns:Int64}
    AND ((source_namespace = {namespace:String} AND source_pod_name = {pod:String})
        OR (destination_namespace = {namespace:String} AND destination_pod_name = {pod:String}))
ORDER BY time_ns, uuid
LIMIT 1 BY uuid
LIMIT {limit:UInt32}
