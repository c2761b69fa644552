DROP VIEW ticks_recent;

ALTER TABLE ticks_raw ALTER COLUMN idem_key TYPE text COLLATE "default";
ALTER TABLE ticks_history ALTER COLUMN idem_key TYPE text COLLATE "default";
ALTER TABLE ohlc_1m
    ALTER COLUMN open_key TYPE text COLLATE "default",
    ALTER COLUMN close_key TYPE text COLLATE "default";
ALTER TABLE metrics_1m ALTER COLUMN last_key TYPE text COLLATE "default";

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
