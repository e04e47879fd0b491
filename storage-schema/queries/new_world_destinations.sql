-- New destinations to the world: addresses outside the cluster first contacted in a window.
--
-- A destination is "world" when its identity is 2 or it carries the label reserved:world. It is
-- new when no flow reached it between baseline_since_ns and since_ns. Replies are left out.
-- Parameters:
--   baseline_since_ns   Int64   start of the history to compare against, Unix nanoseconds
--   since_ns, until_ns  Int64   window, Unix nanoseconds, both ends inclusive
--   limit               UInt32  at most this many rows
-- Exact before merges: flows are uniqExact(uuid); first_seen_ns is a min, which duplicates
-- cannot change.
--
-- clickhouse-client --database periscope --param_baseline_since_ns=1699400000000000000 \
--   --param_since_ns=1700000000000000000 --param_until_ns=1700003600000000000 \
--   --param_limit=100 --queries-file new_world_destinations.sql
SELECT
    destination_ip,
    arraySort(groupUniqArrayArray(destination_names)) AS destination_names,
    arraySort(groupUniqArray(destination_port)) AS destination_ports,
    arraySort(groupUniqArray(concat(source_namespace, '/',
        if(source_workload != '', source_workload,
            if(source_pod_name != '', source_pod_name, source_ip))))) AS sources,
    uniqExact(uuid) AS flows,
    min(time_ns) AS first_seen_ns
FROM flows
WHERE time >= toDateTime(intDiv({baseline_since_ns:Int64}, 1000000000))
    AND time < toDateTime(intDiv({until_ns:Int64}, 1000000000) + 1)
    AND time_ns >= {baseline_since_ns:Int64}
    AND time_ns <= {until_ns:Int64}
    AND (destination_identity = 2 OR has(destination_labels, 'reserved:world'))
    AND ifNull(is_reply, 0) = 0
GROUP BY destination_ip
HAVING first_seen_ns >= {since_ns:Int64}
ORDER BY first_seen_ns, destination_ip
LIMIT {limit:UInt32}
