-- The received_at indexes serve only the retention sweeper, which deletes the oldest rows.
-- Rows arrive in received_at order, so a BRIN index (a few pages, summarising block ranges)
-- finds them as well as a B-tree would, without a B-tree descent on every insert.
DROP INDEX ticks_raw_received_at;
CREATE INDEX ticks_raw_received_at ON ticks_raw USING brin (received_at);
DROP INDEX ticks_history_received_at;
CREATE INDEX ticks_history_received_at ON ticks_history USING brin (received_at);
