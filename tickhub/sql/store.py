"""The writer's SQL: one flush = one transaction = one bridged call.

COPY the flush's ticks (duplicates included) into a per-connection staging table, then one
statement inserts them into `ticks_raw`, inserts the new ones into `ticks_history` (ON
CONFLICT DO NOTHING — the idempotency), and upserts `ohlc_1m`, `metrics_1m`, `source_stats`
and `symbols` from exactly the rows that were inserted. Candles merge by (ts, key), so the
result does not depend on arrival order. A last statement reads back the candles the flush
touched with their SMA10, which is what the live events carry: the same numbers REST serves.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import attrs

from tickhub.actors.messages import Candle, FlushOutcome, StoredTick, TickColumns
from tickhub.sql.db import Database

_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS tick_stage (
    symbol text, idem_key text, ts_us bigint, price float8, volume float8,
    source text, received_us bigint
) ON COMMIT DELETE ROWS
"""
_STAGE_COLUMNS = ["symbol", "idem_key", "ts_us", "price", "volume", "source", "received_us"]

# Exact microsecond arithmetic; float8 → numeric keeps 15 significant digits.
_TS = "timestamptz 'epoch' + {col} * interval '1 microsecond'"
_ORIGIN = "timestamptz '2000-01-01 00:00:00+00'"

_RAW = f"""
INSERT INTO ticks_raw (received_at, source, symbol, idem_key, ts, price, volume)
SELECT {_TS.format(col="received_us")}, source, symbol, idem_key, {_TS.format(col="ts_us")},
       price::numeric, volume::numeric
FROM tick_stage
"""

# Rows are fed to each upsert in (symbol, bucket) order so that concurrent flushes lock
# candle rows in the same order and cannot deadlock each other.
_WRITE = f"""
WITH ins AS (
    INSERT INTO ticks_history (symbol, idem_key, ts, price, volume, source, received_at)
    SELECT symbol, idem_key, {_TS.format(col="ts_us")}, price::numeric, volume::numeric,
           source, {_TS.format(col="received_us")}
    FROM tick_stage
    ORDER BY symbol, idem_key
    ON CONFLICT (symbol, idem_key) DO NOTHING
    RETURNING symbol, idem_key, ts, price, volume, source
), agg AS (
    SELECT symbol,
           date_bin('1 minute', ts, {_ORIGIN}) AS bucket_start,
           (array_agg(price ORDER BY ts, idem_key))[1] AS open,
           min(ts) AS open_ts,
           (array_agg(idem_key ORDER BY ts, idem_key))[1] AS open_key,
           max(price) AS high,
           min(price) AS low,
           (array_agg(price ORDER BY ts DESC, idem_key DESC))[1] AS close,
           max(ts) AS close_ts,
           (array_agg(idem_key ORDER BY ts DESC, idem_key DESC))[1] AS close_key,
           sum(volume) AS volume,
           count(*) AS count,
           sum(price) AS sum,
           sum(price * volume) AS pv_sum
    FROM ins
    GROUP BY 1, 2
), candles AS (
    INSERT INTO ohlc_1m AS o (symbol, bucket_start, open, open_ts, open_key, high, low,
                              close, close_ts, close_key, volume, count)
    SELECT symbol, bucket_start, open, open_ts, open_key, high, low,
           close, close_ts, close_key, volume, count
    FROM agg ORDER BY symbol, bucket_start
    ON CONFLICT (symbol, bucket_start) DO UPDATE SET
        open = CASE WHEN (EXCLUDED.open_ts, EXCLUDED.open_key) < (o.open_ts, o.open_key)
                    THEN EXCLUDED.open ELSE o.open END,
        open_key = CASE WHEN (EXCLUDED.open_ts, EXCLUDED.open_key) < (o.open_ts, o.open_key)
                        THEN EXCLUDED.open_key ELSE o.open_key END,
        open_ts = LEAST(o.open_ts, EXCLUDED.open_ts),
        high = GREATEST(o.high, EXCLUDED.high),
        low = LEAST(o.low, EXCLUDED.low),
        close = CASE WHEN (EXCLUDED.close_ts, EXCLUDED.close_key) > (o.close_ts, o.close_key)
                     THEN EXCLUDED.close ELSE o.close END,
        close_key = CASE WHEN (EXCLUDED.close_ts, EXCLUDED.close_key) > (o.close_ts, o.close_key)
                         THEN EXCLUDED.close_key ELSE o.close_key END,
        close_ts = GREATEST(o.close_ts, EXCLUDED.close_ts),
        volume = o.volume + EXCLUDED.volume,
        count = o.count + EXCLUDED.count
    RETURNING 1
), metrics AS (
    INSERT INTO metrics_1m AS m (symbol, bucket_start, count, sum, min, max, last, last_ts,
                                 last_key, volume, pv_sum)
    SELECT symbol, bucket_start, count, sum, low, high, close, close_ts, close_key,
           volume, pv_sum
    FROM agg ORDER BY symbol, bucket_start
    ON CONFLICT (symbol, bucket_start) DO UPDATE SET
        count = m.count + EXCLUDED.count,
        sum = m.sum + EXCLUDED.sum,
        min = LEAST(m.min, EXCLUDED.min),
        max = GREATEST(m.max, EXCLUDED.max),
        last = CASE WHEN (EXCLUDED.last_ts, EXCLUDED.last_key) > (m.last_ts, m.last_key)
                    THEN EXCLUDED.last ELSE m.last END,
        last_key = CASE WHEN (EXCLUDED.last_ts, EXCLUDED.last_key) > (m.last_ts, m.last_key)
                        THEN EXCLUDED.last_key ELSE m.last_key END,
        last_ts = GREATEST(m.last_ts, EXCLUDED.last_ts),
        volume = m.volume + EXCLUDED.volume,
        pv_sum = m.pv_sum + EXCLUDED.pv_sum
    RETURNING 1
), sources AS (
    INSERT INTO source_stats AS s (source, ticks, last_ts, last_ingest_at)
    SELECT source, count(*), max(ts), now() FROM ins GROUP BY source ORDER BY source
    ON CONFLICT (source) DO UPDATE SET
        ticks = s.ticks + EXCLUDED.ticks,
        last_ts = GREATEST(s.last_ts, EXCLUDED.last_ts),
        last_ingest_at = EXCLUDED.last_ingest_at
    RETURNING 1
), new_symbols AS (
    INSERT INTO symbols (symbol, base, quote)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ORDER BY 1
    ON CONFLICT (symbol) DO NOTHING
    RETURNING 1
)
SELECT symbol, idem_key, (extract(epoch FROM ts) * 1000000)::int8 AS ts_us, price, volume
FROM ins
"""

# The candles a flush touched, as stored now, with SMA10 over the 10 latest candles up to
# each (row-based, as the REST candle view computes it).
_TOUCHED = f"""
SELECT c.symbol, extract(epoch FROM c.bucket_start)::int8 AS bucket_start,
       c.open, c.high, c.low, c.close, c.volume, c.count,
       (SELECT CASE WHEN count(*) = 10 THEN avg(w.close) END
        FROM (SELECT p.close FROM ohlc_1m p
              WHERE p.symbol = c.symbol AND p.bucket_start <= c.bucket_start
              ORDER BY p.bucket_start DESC LIMIT 10) w) AS sma10
FROM unnest($1::text[], $2::int8[]) AS k(symbol, bucket_s)
JOIN ohlc_1m c ON c.symbol = k.symbol
              AND c.bucket_start = {_ORIGIN} + (k.bucket_s - 946684800) * interval '1 second'
"""

QUOTES = ("USDT", "USDC", "BUSD", "USD", "EUR", "GBP", "JPY", "BTC", "ETH", "BNB")


def split_symbol(symbol: str) -> tuple[str, str]:
    """Derive (base, quote) from a symbol: `BTC/USD`, `BTC-USD`, or a known quote suffix."""
    for sep in ("/", "-", "_", ":"):
        if sep in symbol:
            base, _, quote = symbol.partition(sep)
            return base, quote
    for quote in QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    return symbol, ""


@attrs.define
class TickStore:
    """Writes flushes to Postgres; what the writer actor depends on (see `actors.writer`)."""

    db: Database
    raw_audit: bool = True

    async def write(self, parts: Sequence[TickColumns]) -> FlushOutcome:
        records = []
        for part in parts:
            symbol, source, received = part.symbol, part.source, part.received_us
            records.extend(
                zip(
                    [symbol] * len(part.keys),
                    part.keys,
                    part.ts_us,
                    part.price,
                    part.volume,
                    [source] * len(part.keys),
                    [received] * len(part.keys),
                    strict=True,
                )
            )
        symbols = sorted({p.symbol for p in parts})
        pairs = [split_symbol(s) for s in symbols]
        return await self.db.transaction(
            _flush, records, symbols, [b for b, _ in pairs], [q for _, q in pairs], self.raw_audit
        )


async def _flush(
    conn: asyncpg.Connection,
    records: list[tuple],
    symbols: list[str],
    bases: list[str],
    quotes: list[str],
    raw_audit: bool,
) -> FlushOutcome:
    await conn.execute(_STAGE)
    await conn.copy_records_to_table("tick_stage", records=records, columns=_STAGE_COLUMNS)
    if raw_audit:
        await conn.execute(_RAW)
    inserted = await conn.fetch(_WRITE, symbols, bases, quotes)
    ticks = [StoredTick(r[0], r[1], r[2], r[3], r[4]) for r in inserted]
    buckets = sorted({(t.symbol, t.ts_us // 60_000_000 * 60) for t in ticks})
    rows = await conn.fetch(_TOUCHED, [s for s, _ in buckets], [b for _, b in buckets])
    candles = {(r[0], r[1]): Candle(r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]) for r in rows}
    return FlushOutcome(ticks, candles)
