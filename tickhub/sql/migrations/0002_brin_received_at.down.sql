DROP INDEX ticks_history_received_at;
CREATE INDEX ticks_history_received_at ON ticks_history (received_at);
DROP INDEX ticks_raw_received_at;
CREATE INDEX ticks_raw_received_at ON ticks_raw (received_at);
