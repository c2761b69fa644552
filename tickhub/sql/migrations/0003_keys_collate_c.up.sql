-- The text keys that break ties in ts (a tick's idem_key; a candle's open_key and close_key;
-- a minute's last_key) compare byte by byte, under COLLATE "C", whatever the database's
-- locale. Under the database's default collation they compared by its locale: C on the
-- embedded server, en_US.UTF-8 on most managed PostgreSQL, so the same ticks could give
-- another open or close depending on where they were stored, and an order unlike the one
-- the aggregators use in Python (code points, which is the byte order of UTF-8). memcmp is
-- also cheaper than strcoll on the hottest index.
--
-- No table is rewritten (text stays text); the indexes on these columns are rebuilt, under
-- the exclusive lock ALTER TABLE takes: on a large ticks_history, apply it in a quiet moment.

-- A column that a view reads cannot change type: the view is dropped and made again as
-- 0001 made it.
DROP VIEW ticks_recent;

ALTER TABLE ticks_raw ALTER COLUMN idem_key TYPE text COLLATE "C";
ALTER TABLE ticks_history ALTER COLUMN idem_key TYPE text COLLATE "C";
ALTER TABLE ohlc_1m
    ALTER COLUMN open_key TYPE text COLLATE "C",
    ALTER COLUMN close_key TYPE text COLLATE "C";
ALTER TABLE metrics_1m ALTER COLUMN last_key TYPE text COLLATE "C";

CREATE VIEW ticks_recent AS
SELECT s.symbol, t.idem_key, t.ts, t.price, t.volume, t.source
FROM symbols s
CROSS JOIN LATERAL (
    SELECT h.idem_key, h.ts, h.price, h.volume, h.source
    FROM ticks_history h
    WHERE h.symbol = s.symbol
    ORDER BY h.ts DESC, h.idem_key DESC
    LIMIT 1
) t;
