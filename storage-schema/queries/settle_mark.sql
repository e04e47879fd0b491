-- Records a settling run (migration 0006), after settle_minute.sql wrote its rows: from now on
-- the minute reads from them, as long as its latest write is still `written_s`.
-- Parameters:
--   cluster    String  the minute's cluster
--   minute_s   UInt32  the minute, Unix seconds
--   written_s  UInt32  the minute's latest write when it was chosen (settle_candidates.sql)
--   settle_id  UInt64  the run's id, as given to settle_minute.sql
INSERT INTO flow_minutes_settled
SELECT
    toDateTime({minute_s:UInt32}) AS minute,
    {cluster:String} AS cluster,
    toDateTime({written_s:UInt32}) AS written_at,
    toUInt64({settle_id:UInt64}) AS settle_id
