-- DNS failures: DNS responses with a non-zero rcode (NXDOMAIN, SERVFAIL, REFUSED, ...) in a window.
--
-- One row per (query name, rcode, client), most failures first. The client is the pod that asked:
-- the destination of a response, the source of anything else.
-- Parameters:
--   since_ns, until_ns  Int64   window, Unix nanoseconds, both ends inclusive
--   limit               UInt32  at most this many rows
-- Exact before merges: failures are uniqExact(uuid).
--
-- clickhouse-client --database periscope --param_since_ns=1700000000000000000 \
--   --param_until_ns=1700003600000000000 --param_limit=50 --queries-file dns_failures.sql
SELECT
    dns_query,
    dns_rcode,
    multiIf(dns_rcode = 1, 'FORMERR', dns_rcode = 2, 'SERVFAIL', dns_rcode = 3, 'NXDOMAIN',
        dns_rcode = 4, 'NOTIMP', dns_rcode = 5, 'REFUSED', concat('RCODE', toString(dns_rcode))) AS rcode_name,
    if(l7_type = 'RESPONSE', destination_namespace, source_namespace) AS client_namespace,
    if(l7_type = 'RESPONSE', destination_pod_name, source_pod_name) AS client_pod,
    uniqExact(uuid) AS failures,
    min(time_ns) AS first_seen_ns,
    max(time_ns) AS last_seen_ns
FROM flows
WHERE time >= toDateTime(intDiv({since_ns:Int64}, 1000000000))
    AND time < toDateTime(intDiv({until_ns:Int64}, 1000000000) + 1)
    AND time_ns >= {since_ns:Int64}
    AND time_ns <= {until_ns:Int64}
    AND l7_protocol = 'dns'
    AND dns_rcode != 0
GROUP BY dns_query, dns_rcode, client_namespace, client_pod
ORDER BY failures DESC, dns_query, client_namespace, client_pod
LIMIT {limit:UInt32}
