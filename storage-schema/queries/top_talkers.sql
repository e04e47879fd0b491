-- Top talkers: the source -> destination pairs with the most flows in a time window.
--
-- Ends are named by workload, else pod, else IP. Replies are left out (they would count each
-- conversation twice, once per direction).
-- Parameters:
--   since_ns, until_ns  Int64   window, Unix nanoseconds, both ends inclusive
--   limit               UInt32  at most this many rows
-- Exact before merges: the inner query keeps one row per flow uuid (LIMIT 1 BY uuid), so the
-- counts and the byte and packet sums do not see replayed copies.
--
-- clickhouse-client --database periscope --param_since_ns=1700000000000000000 \
--   --param_until_ns=1700003600000000000 --param_limit=20 --queries-file top_talkers.sql
SELECT
    source_namespace,
    source,
    destination_namespace,
    destination,
    destination_port,
    protocol,
    count() AS flows,
    countIf(verdict = 'DROPPED') AS dropped,
    sum(packets) AS packets,
    sum(bytes) AS bytes
FROM
(
    SELECT
        uuid,
        source_namespace,
        if(source_workload != '', source_workload,
            if(source_pod_name != '', source_pod_name, source_ip)) AS source,
        destination_namespace,
        if(destination_workload != '', destination_workload,
            if(destination_pod_name != '', destination_pod_name, destination_ip)) AS destination,
        destination_port,
        protocol,
        verdict,
        packets,
        bytes
    FROM flows
    WHERE time >= toDateTime(intDiv({since_ns:Int64}, 1000000000))
        AND time < toDateTime(intDiv({until_ns:Int64}, 1000000000) + 1)
        AND time_ns >= {since_ns:Int64}
        AND time_ns <= {until_ns:Int64}
        AND ifNull(is_reply, 0) = 0
    LIMIT 1 BY uuid
)
GROUP BY source_namespace, source, destination_namespace, destination, destination_port, protocol
ORDER BY flows DESC, source_namespace, source, destination_namespace, destination, destination_port
LIMIT {limit:UInt32}
