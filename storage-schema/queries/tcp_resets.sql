-- TCP resets: flows carrying RST in a window, by who reset whom.
--
-- One row per (resetting end, other end, port): the source of an RST packet is the end that
-- reset the connection. `port` is the service port: the destination port of a request, the
-- source port of a reply.
-- Parameters:
--   since_ns, until_ns  Int64   window, Unix nanoseconds, both ends inclusive
--   limit               UInt32  at most this many rows
-- Exact before merges: resets are uniqExact(uuid).
--
-- clickhouse-client --database periscope --param_since_ns=1700000000000000000 \
--   --param_until_ns=1700003600000000000 --param_limit=50 --queries-file tcp_resets.sql
SELECT
    source_namespace,
    if(source_workload != '', source_workload,
        if(source_pod_name != '', source_pod_name, source_ip)) AS source,
    destination_namespace,
    if(destination_workload != '', destination_workload,
        if(destination_pod_name != '', destination_pod_name, destination_ip)) AS destination,
    if(ifNull(is_reply, 0) = 1, source_port, destination_port) AS port,
    uniqExact(uuid) AS resets,
    uniqExactIf(uuid, verdict = 'DROPPED') AS dropped,
    min(time_ns) AS first_seen_ns,
    max(time_ns) AS last_seen_ns
FROM flows
WHERE time >= toDateTime(intDiv({since_ns:Int64}, 1000000000))
    AND time < toDateTime(intDiv({until_ns:Int64}, 1000000000) + 1)
    AND time_ns >= {since_ns:Int64}
    AND time_ns <= {until_ns:Int64}
    AND protocol = 'TCP'
    AND has(tcp_flags, 'RST')
GROUP BY source_namespace, source, destination_namespace, destination, port
ORDER BY resets DESC, source_namespace, source, destination_namespace, destination, port
LIMIT {limit:UInt32}
