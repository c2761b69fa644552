-- tickhub schema (ARCHITECTURE §3). Prices and volumes are numeric so that sums, VWAP and
-- the consistency check are exact and independent of the order ticks arrive in.

CREATE TABLE symbols (
    symbol      text PRIMARY KEY,
    base        text NOT NULL DEFAULT '',
    quote       text NOT NULL DEFAULT '',
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Audit stream of every accepted item, duplicates included.
CREATE TABLE ticks_raw (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at  timestamptz NOT NULL,
    source       text NOT NULL,
    symbol       text NOT NULL,
    idem_key     text NOT NULL,
    ts           timestamptz NOT NULL,
    price        numeric NOT NULL,
    volume       numeric NOT NULL
);
CREATE INDEX ticks_raw_received_at ON ticks_raw (received_at);

-- Deduplicated ticks: one row per (symbol, idempotency key); ticks in one second stay distinct.
CREATE TABLE ticks_history (
    symbol       text NOT NULL,
    idem_key     text NOT NULL,
    ts           timestamptz NOT NULL,
    price        numeric NOT NULL,
    volume       numeric NOT NULL,
    source       text NOT NULL,
    received_at  timestamptz NOT NULL,
    PRIMARY KEY (symbol, idem_key)
);
-- History pages newest first and the latest tick per symbol; the key breaks ties in ts.
CREATE INDEX ticks_history_symbol_ts ON ticks_history (symbol, ts DESC, idem_key DESC);
CREATE INDEX ticks_history_received_at ON ticks_history (received_at);

-- The latest tick per symbol: one index probe per symbol, not a scan of the table.
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

-- One candle per symbol and minute. open/close carry the (ts, key) of the tick they came
-- from, so merging two partial candles keeps the earliest open and the latest close.
CREATE TABLE ohlc_1m (
    symbol        text NOT NULL,
    bucket_start  timestamptz NOT NULL,
    open          numeric NOT NULL,
    open_ts       timestamptz NOT NULL,
    open_key      text NOT NULL,
    high          numeric NOT NULL,
    low           numeric NOT NULL,
    close         numeric NOT NULL,
    close_ts      timestamptz NOT NULL,
    close_key     text NOT NULL,
    volume        numeric NOT NULL,
    count         bigint NOT NULL,
    PRIMARY KEY (symbol, bucket_start)
);

CREATE TABLE metrics_1m (
    symbol        text NOT NULL,
    bucket_start  timestamptz NOT NULL,
    count         bigint NOT NULL,
    sum           numeric NOT NULL,
    min           numeric NOT NULL,
    max           numeric NOT NULL,
    last          numeric NOT NULL,
    last_ts       timestamptz NOT NULL,
    last_key      text NOT NULL,
    volume        numeric NOT NULL,
    pv_sum        numeric NOT NULL,
    PRIMARY KEY (symbol, bucket_start)
);

-- Stored-tick counts per source for /stats, kept in the flush transaction.
CREATE TABLE source_stats (
    source          text PRIMARY KEY,
    ticks           bigint NOT NULL,
    last_ts         timestamptz NOT NULL,
    last_ingest_at  timestamptz NOT NULL
);
