-- The minutes the relay should settle next (migration 0006): those whose latest write is older
-- than `quiet_s` seconds and that no run has settled at that write, newest first. The relay
-- then runs settle_minute.sql and settle_mark.sql for each.
--
-- The quiet time covers a write whose `written_at` was taken (the view's now()) before its
-- edge rows were committed: a minute is only settled once every write it saw is long done.
-- A minute settled at `written_at` w that receives a flow later gets a larger `written_at` and
-- becomes a candidate again.
-- Parameters:
--   quiet_s  UInt32  seconds without writes before a minute is settled (the relay uses 60)
--   limit    UInt32  at most this many minutes
SELECT
    cluster,
    toUInt32(minute) AS minute_s,
    toUInt32(latest) AS written_s
FROM
(
    SELECT cluster, minute, maxMerge(written_at) AS latest
    FROM flow_minutes
    GROUP BY cluster, minute
)
WHERE latest < now() - {quiet_s:UInt32}
    AND (cluster, minute, latest) NOT IN (SELECT cluster, minute, written_at FROM flow_minutes_settled)
ORDER BY minute DESC, cluster
LIMIT {limit:UInt32}
