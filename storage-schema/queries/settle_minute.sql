-- Settles one minute of one cluster (migration 0006): its edges' exact counts, read once from
-- the uuid sets of flow_edges_1m, and their bytes from its sums (0007),
-- written as plain numbers into flow_edges_1m_settled under the run's `settle_id`. One INSERT, one block: a minute has at most a few thousand edges.
-- settle_mark.sql then records the run; until it does, these rows are not read.
-- Parameters:
--   settle_id  UInt64  this run's id (random)
--   cluster    String  the minute's cluster
--   minute_s   UInt32  the minute, Unix seconds
INSERT INTO flow_edges_1m_settled
SELECT
    minute,
    cluster,
    toUInt64({settle_id:UInt64}) AS settle_id,
    source_namespace,
    source,
    destination_namespace,
    destination,
    destination_port,
    protocol,
    verdict,
    uniqExactMerge(flows) AS flows,
    minMerge(first_seen_ns) AS first_seen_ns,
    maxMerge(last_seen_ns) AS last_seen_ns,
    sumMerge(flow_bytes) AS bytes
FROM flow_edges_1m
WHERE cluster = {cluster:String} AND minute = toDateTime({minute_s:UInt32})
GROUP BY minute, cluster, source_namespace, source, destination_namespace, destination, destination_port, protocol, verdict
