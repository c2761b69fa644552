-- An hourly roll-up of the minutes, so that 1h, 4h and 1d candles read what they show: a
-- page of 200 daily candles summed 288,000 one-minute candles (474 ms at a year of minutes,
-- docs/performance.md §3.8); from hours it sums 4,800. One row per (symbol, hour) with what
-- the candle view reads of ohlc_1m and metrics_1m for that hour: open and close with the
-- (ts, key) of their tick, so that merging keeps the earliest open and the latest close as
-- the minutes do, high, low, volume, count and pv_sum (Σ price·volume, for VWAP). The flush
-- upserts it in the same statement as the minutes (sql/store.py), from the same rows.
--
-- What it costs on a large table: the backfill below reads every minute of ohlc_1m and
-- metrics_1m once (one aggregate of both, no table rewritten) and writes a sixtieth as many
-- rows. It holds SHARE on both minute tables until this transaction commits: flushes wait,
-- reads do not. Measured on the 2-core reference machine (busy): 19 s for a year of minutes
-- of 4 symbols (2.1 million minutes, 35,000 hours), so about 9 s per million minutes
-- (bench/growth.py times the same function on its fill). Webhooks whose flush waits past
-- its deadline answer 503 and are retried: apply it in a quiet moment.
--
-- A writer of an earlier version still running after this commits (a pre-deploy migration
-- beside old instances) stores minutes without their hour; once it is gone,
-- `SELECT tickhub_rebuild_candles_1h(<since>)` recomputes the hours from that instant on.

CREATE TABLE candles_1h (
    symbol        text NOT NULL,
    bucket_start  timestamptz NOT NULL,
    open          numeric NOT NULL,
    open_ts       timestamptz NOT NULL,
    open_key      text COLLATE "C" NOT NULL,
    high          numeric NOT NULL,
    low           numeric NOT NULL,
    close         numeric NOT NULL,
    close_ts      timestamptz NOT NULL,
    close_key     text COLLATE "C" NOT NULL,
    volume        numeric NOT NULL,
    count         bigint NOT NULL,
    pv_sum        numeric NOT NULL,
    PRIMARY KEY (symbol, bucket_start)
);

-- The hours from `since` on (every hour when NULL) recomputed from the minutes: open and
-- close by (ts, key) exactly as the minutes merge, sums added. SHARE on the minutes keeps
-- flushes out while it runs (their hours would otherwise be counted twice or lost); SHARE ROW
-- EXCLUSIVE on the hours keeps a second rebuild out.
CREATE FUNCTION tickhub_rebuild_candles_1h(since timestamptz DEFAULT NULL) RETURNS bigint
LANGUAGE sql AS $fn$
    LOCK TABLE candles_1h IN SHARE ROW EXCLUSIVE MODE;
    LOCK TABLE ohlc_1m, metrics_1m IN SHARE MODE;
    DELETE FROM candles_1h
    WHERE since IS NULL
       OR bucket_start >= date_bin('1 hour', since, timestamptz '2000-01-01 00:00:00+00');
    INSERT INTO candles_1h (symbol, bucket_start, open, open_ts, open_key, high, low,
                            close, close_ts, close_key, volume, count, pv_sum)
    SELECT o.symbol, date_bin('1 hour', o.bucket_start, timestamptz '2000-01-01 00:00:00+00'),
           (array_agg(o.open ORDER BY o.open_ts, o.open_key))[1], min(o.open_ts),
           (array_agg(o.open_key ORDER BY o.open_ts, o.open_key))[1],
           max(o.high), min(o.low),
           (array_agg(o.close ORDER BY o.close_ts DESC, o.close_key DESC))[1], max(o.close_ts),
           (array_agg(o.close_key ORDER BY o.close_ts DESC, o.close_key DESC))[1],
           sum(o.volume), sum(o.count), sum(m.pv_sum)
    FROM ohlc_1m o JOIN metrics_1m m USING (symbol, bucket_start)
    WHERE since IS NULL
       OR o.bucket_start >= date_bin('1 hour', since, timestamptz '2000-01-01 00:00:00+00')
    GROUP BY 1, 2;
    SELECT count(*) FROM candles_1h
    WHERE since IS NULL
       OR bucket_start >= date_bin('1 hour', since, timestamptz '2000-01-01 00:00:00+00');
$fn$;

SELECT tickhub_rebuild_candles_1h();
