-- Back to candles computed from the minutes alone (0004): nothing else reads the hours.
DROP FUNCTION tickhub_rebuild_candles_1h(timestamptz);
DROP TABLE candles_1h;
