-- 0007 flow_edges_bytes (modern dialect): bytes on the service map's edges.
--
-- Flows carry the bytes of their connection they account for (`flows.bytes`, from the agent's
-- Flow.periscope_bytes; 0 before). An edge's bytes are the sum over the flows it counts (0005's
-- rule): the view keeps `sumState(bytes)` per edge and minute (`flow_bytes`), the queries
-- `sumMerge` it, and settling (0006) writes the sum as a plain number,
-- `flow_edges_1m_settled.bytes`.
--
-- Unlike the flow counts (uuid sets), a sum cannot tell a replayed copy from a new flow: a flow
-- the relay inserted twice (a replay after an insert whose outcome was unknown, e.g. a timeout
-- after the server had committed it) adds its bytes twice. Keeping a (uuid, bytes) set instead
-- would be exact but costs more memory than the uuid set itself on the map's unsettled minutes
-- (10M flows: the query over a 1.86 GiB limit), for an error only replays can cause.
--
-- Minutes aggregated before this migration have no sums: their bytes read 0 (their flows had
-- none either). The view is replaced as in 0005 (DROP, then CREATE): flows inserted between the
-- two statements are not counted on the map (the `flows` table has them).
--
-- Placeholders filled in by the crate: ${database}, ${on_cluster}.

ALTER TABLE ${database}.flow_edges_1m${on_cluster}
    ADD COLUMN IF NOT EXISTS flow_bytes AggregateFunction(sum, UInt64);

ALTER TABLE ${database}.flow_edges_1m_settled${on_cluster}
    ADD COLUMN IF NOT EXISTS bytes UInt64;

DROP VIEW IF EXISTS ${database}.flow_edges_1m_mv${on_cluster};

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.flow_edges_1m_mv${on_cluster}
TO ${database}.flow_edges_1m
AS SELECT
    toStartOfMinute(toDateTime(intDiv(time_ns, 1000000000))) AS minute,
    cluster,
    source_namespace,
    if(source_workload != '', source_workload,
        if(source_pod_name != '', source_pod_name, arrayFirst(l -> l LIKE 'reserved:%', source_labels))) AS source,
    destination_namespace,
    if(destination_workload != '', destination_workload,
        if(destination_pod_name != '', destination_pod_name, arrayFirst(l -> l LIKE 'reserved:%', destination_labels))) AS destination,
    destination_port,
    protocol,
    verdict,
    uniqExactState(uuid) AS flows,
    minState(time_ns) AS first_seen_ns,
    maxState(time_ns) AS last_seen_ns,
    sumState(bytes) AS flow_bytes
FROM ${database}.flows
WHERE flow_type = 'L3_L4'
    AND protocol != ''
    AND ifNull(is_reply, 0) = 0
    AND event_type != 5
    AND NOT (verdict IN ('FORWARDED', 'REDIRECTED', 'TRANSLATED', 'TRACED')
        AND traffic_direction = 'EGRESS'
        AND destination_namespace != '')
GROUP BY minute, cluster, source_namespace, source, destination_namespace, destination, destination_port, protocol, verdict;
