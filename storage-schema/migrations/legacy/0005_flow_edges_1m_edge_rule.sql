-- 0005 flow_edges_1m_edge_rule (legacy dialect): the view `flow_edges_1m_mv` counts one
-- observation per packet, with the rule of the live map (`periscope_ui_api::edge_of`).
--
-- A packet is observed more than once: leaving its source (EGRESS), arriving at its destination
-- (INGRESS), and as a policy verdict notification. 0002's view counted every L3/L4 flow that is
-- not a reply, so a packet between two workloads of the cluster counted two or three times on its
-- edge. From this migration on, a flow counts on its edge unless
--
-- - it is a reply (`is_reply`: it would draw the edge backwards), has no L4 protocol (`protocol`
--   empty), or is not an L3/L4 record (`flow_type`, as in 0002: a proxy's L7 record repeats a
--   packet its L3/L4 trace counts; the agent attaches DNS to L3/L4 flows);
-- - it is a policy verdict notification (`event_type` 5): the packet's trace or drop carries the
--   same verdict;
-- - it was forwarded (verdict FORWARDED, REDIRECTED, TRANSLATED or TRACED) at its source's EGRESS
--   towards a workload in the cluster (`destination_namespace` not empty): the destination's
--   INGRESS observation, delivered or dropped, counts it. A drop at egress, and a packet leaving
--   towards the world (no destination namespace), count where they are seen.
--
-- The table `flow_edges_1m` and its rows stay as they are: minutes aggregated before this
-- migration keep 0002's counting (such a minute may count a packet more than once); only flows
-- inserted after it are counted with the rule. The view is replaced, not altered: DROP, then
-- CREATE (18.16 has no DROP VIEW: DROP TABLE drops a view, and a view with a TO table leaves
-- that table and its rows alone). Flows inserted between the two statements are not counted on
-- the map (the `flows` table has them). Re-running both statements (a run cut short) ends in the
-- same view.
--
-- Placeholders filled in by the crate: ${database}, ${on_cluster}.

DROP TABLE IF EXISTS ${database}.flow_edges_1m_mv${on_cluster};

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
    maxState(time_ns) AS last_seen_ns
FROM ${database}.flows
WHERE flow_type = 'L3_L4'
    AND protocol != ''
    AND ifNull(is_reply, 0) = 0
    AND event_type != 5
    AND NOT (verdict IN ('FORWARDED', 'REDIRECTED', 'TRANSLATED', 'TRACED')
        AND traffic_direction = 'EGRESS'
        AND destination_namespace != '')
GROUP BY minute, cluster, source_namespace, source, destination_namespace, destination, destination_port, protocol, verdict;
