-- Service-map edges in a window, from flow_edges_1m (per-minute aggregates of the MV).
--
-- One row per (cluster, source, destination, port, protocol, verdict) over the minutes that
-- overlap the window, most flows first, with the flows' bytes (migration 0007: the sum of the
-- counted flows' `bytes`, a replayed copy's again; 0 for minutes aggregated before 0007). Ends are named by workload, else pod, else their
-- reserved: label (reserved:world, ...). What counts is the view's rule, the live map's
-- (`periscope_ui_api::edge_of`), from migration 0005_flow_edges_1m_edge_rule on: one observation
-- per packet. Replies, records without L4 and L7 records, and policy verdict notifications
-- (event_type 5) do not count, nor a packet forwarded (FORWARDED, REDIRECTED, TRANSLATED, TRACED)
-- at its source's EGRESS towards a workload in the cluster (its destination's INGRESS
-- observation counts it). Minutes aggregated before 0005 keep 0002's counting: every L3/L4 flow
-- that is not a reply.
-- Parameters:
--   since_ns, until_ns  Int64   window, Unix nanoseconds (whole minutes: the table's grain)
--   limit               UInt32  at most this many rows
-- Exact before merges, replayed copies (inserted twice through the view) counting once. A flow's
-- copies share its minute, so a window's count is the sum of its minutes' exact counts; each
-- minute is read either
-- - settled (migration 0006, queries/settle_*.sql): from flow_edges_1m_settled, the rows of the
--   latest run whose marker saw the minute's latest write (`written_at` in flow_minutes), plain
--   numbers; or
-- - not (yet, or a flow arrived after it was settled): uniqExactMerge over the minute's uuid
--   sets in flow_edges_1m.
--
-- clickhouse-client --database periscope --param_since_ns=1700000000000000000 \
--   --param_until_ns=1700003600000000000 --param_limit=1000 --queries-file service_map_edges.sql
SELECT
    cluster,
    source_namespace,
    source,
    destination_namespace,
    destination,
    destination_port,
    protocol,
    verdict,
    sum(flows) AS flows,
    sum(bytes) AS bytes,
    min(first_seen_ns) AS first_seen_ns,
    max(last_seen_ns) AS last_seen_ns
FROM
(
    SELECT
        cluster, source_namespace, source, destination_namespace, destination,
        destination_port, protocol, verdict, flows, bytes, first_seen_ns, last_seen_ns
    FROM flow_edges_1m_settled
    WHERE minute >= toStartOfMinute(toDateTime(intDiv({since_ns:Int64}, 1000000000)))
        AND minute <= toDateTime(intDiv({until_ns:Int64}, 1000000000))
        AND (cluster, minute, settle_id) IN
        (
            -- The settled minutes of the window: the latest run that saw the latest write.
            SELECT cluster, minute, max(settle_id)
            FROM flow_minutes_settled
            WHERE minute >= toStartOfMinute(toDateTime(intDiv({since_ns:Int64}, 1000000000)))
                AND minute <= toDateTime(intDiv({until_ns:Int64}, 1000000000))
                AND (cluster, minute, written_at) IN
                (
                    SELECT cluster, minute, maxMerge(written_at)
                    FROM flow_minutes
                    WHERE minute >= toStartOfMinute(toDateTime(intDiv({since_ns:Int64}, 1000000000)))
                        AND minute <= toDateTime(intDiv({until_ns:Int64}, 1000000000))
                    GROUP BY cluster, minute
                )
            GROUP BY cluster, minute
        )
    UNION ALL
    SELECT
        cluster, source_namespace, source, destination_namespace, destination,
        destination_port, protocol, verdict,
        uniqExactMerge(flows) AS flows,
        sumMerge(flow_bytes) AS bytes,
        minMerge(first_seen_ns) AS first_seen_ns,
        maxMerge(last_seen_ns) AS last_seen_ns
    FROM flow_edges_1m
    WHERE minute >= toStartOfMinute(toDateTime(intDiv({since_ns:Int64}, 1000000000)))
        AND minute <= toDateTime(intDiv({until_ns:Int64}, 1000000000))
        AND (cluster, minute) NOT IN
        (
            -- The same settled minutes, as above.
            SELECT cluster, minute
            FROM flow_minutes_settled
            WHERE minute >= toStartOfMinute(toDateTime(intDiv({since_ns:Int64}, 1000000000)))
                AND minute <= toDateTime(intDiv({until_ns:Int64}, 1000000000))
                AND (cluster, minute, written_at) IN
                (
                    SELECT cluster, minute, maxMerge(written_at)
                    FROM flow_minutes
                    WHERE minute >= toStartOfMinute(toDateTime(intDiv({since_ns:Int64}, 1000000000)))
                        AND minute <= toDateTime(intDiv({until_ns:Int64}, 1000000000))
                    GROUP BY cluster, minute
                )
        )
    GROUP BY minute, cluster, source_namespace, source, destination_namespace, destination, destination_port, protocol, verdict
)
GROUP BY cluster, source_namespace, source, destination_namespace, destination, destination_port, protocol, verdict
ORDER BY flows DESC, cluster, source_namespace, source, destination_namespace, destination, destination_port, protocol, verdict
LIMIT {limit:UInt32}
