"""The writer's SQL: one flush = one statement = one round trip, which commits only before
the flush's cutoff (`sql.guard`), so a late flush is rolled back, never stored behind the
back of a webhook that already answered 503.

The flush's ticks (duplicates included) travel as arrays, one per column, and are unnested
once. From them the same statement inserts into `ticks_raw` (when RAW_AUDIT is on), inserts
the new ones into `ticks_history` (ON CONFLICT DO NOTHING — the idempotency), and upserts
`ohlc_1m`, `metrics_1m`, `source_stats` and `symbols` from exactly the rows that were
inserted, and `candles_1h` (the hours) from those minutes. Candles merge by (ts, key), so
the result does not depend on arrival order. It returns each inserted tick with its candle
as stored after the flush and that candle's SMA10, which is what the live events carry: the
same numbers REST serves (numeric → float8 in SQL is the same conversion as the pool's
numeric codec, decoded in C instead of Python). For a symbol nobody subscribes to it returns
only the new ticks' keys: no SMA10, no join, no conversion, no result columns to decode.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from tickhub.messages import Expired, NewTick, Rejected, StoredTick, TickColumns
from tickhub.sql.db import DATA_FAULTS, CommitRefused, Database
from tickhub.sql.guard import Guarded
from tickhub.sql.partitions import DayPartitions, missed
from tickhub.symbols import split_symbol

# Exact microsecond arithmetic; float8 → numeric keeps 15 significant digits.
_TS = "timestamptz 'epoch' + {col} * interval '1 microsecond'"
_ORIGIN = "timestamptz '2000-01-01 00:00:00+00'"

_STAGE = """
WITH stage AS MATERIALIZED (
    SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::float8[], $5::float8[],
                         $6::text[], $7::int8[])
        AS s(symbol, idem_key, ts_us, price, volume, source, received_us)
),"""

_RAW = f"""
raw AS (
    INSERT INTO ticks_raw (received_at, source, symbol, idem_key, ts, price, volume)
    SELECT {_TS.format(col="received_us")}, source, symbol, idem_key, {_TS.format(col="ts_us")},
           price::numeric, volume::numeric
    FROM stage
),"""


def _candle_merge(t: str) -> str:
    """The SET of a candle upsert into the table aliased `t` (minutes and hours alike): the
    earliest open and the latest close by (ts, key), so the result does not depend on the
    order flushes arrive in; the extremes; the sums."""
    return f"""\
        open = CASE WHEN (EXCLUDED.open_ts, EXCLUDED.open_key) < ({t}.open_ts, {t}.open_key)
                    THEN EXCLUDED.open ELSE {t}.open END,
        open_key = CASE WHEN (EXCLUDED.open_ts, EXCLUDED.open_key) < ({t}.open_ts, {t}.open_key)
                        THEN EXCLUDED.open_key ELSE {t}.open_key END,
        open_ts = LEAST({t}.open_ts, EXCLUDED.open_ts),
        high = GREATEST({t}.high, EXCLUDED.high),
        low = LEAST({t}.low, EXCLUDED.low),
        close = CASE WHEN (EXCLUDED.close_ts, EXCLUDED.close_key) > ({t}.close_ts, {t}.close_key)
                     THEN EXCLUDED.close ELSE {t}.close END,
        close_key = CASE WHEN (EXCLUDED.close_ts, EXCLUDED.close_key)
                              > ({t}.close_ts, {t}.close_key)
                         THEN EXCLUDED.close_key ELSE {t}.close_key END,
        close_ts = GREATEST({t}.close_ts, EXCLUDED.close_ts),
        volume = {t}.volume + EXCLUDED.volume,
        count = {t}.count + EXCLUDED.count"""


# Rows are fed to each insert in key order so that concurrent flushes lock rows in the same
# order and cannot deadlock each other.
_WRITE = f"""
ins AS (
    INSERT INTO ticks_history (symbol, idem_key, ts, price, volume, source, received_at)
    SELECT symbol, idem_key, {_TS.format(col="ts_us")}, price::numeric, volume::numeric,
           source, {_TS.format(col="received_us")}
    FROM stage
    ORDER BY symbol, idem_key
    ON CONFLICT (symbol, idem_key, ts) DO NOTHING
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
{_candle_merge("o")}
    RETURNING o.symbol, o.bucket_start, o.open, o.high, o.low, o.close, o.volume, o.count
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
), hours AS (
    -- The hourly roll-up (migration 0005) from the same minutes, one row per (symbol, hour),
    -- merged by the same (ts, key) rules; the minutes of an hour are disjoint in time, so
    -- the earliest minute's open is the hour's open.
    INSERT INTO candles_1h AS h (symbol, bucket_start, open, open_ts, open_key, high, low,
                                 close, close_ts, close_key, volume, count, pv_sum)
    SELECT symbol, date_bin('1 hour', bucket_start, {_ORIGIN}),
           (array_agg(open ORDER BY open_ts, open_key))[1], min(open_ts),
           (array_agg(open_key ORDER BY open_ts, open_key))[1],
           max(high), min(low),
           (array_agg(close ORDER BY close_ts DESC, close_key DESC))[1], max(close_ts),
           (array_agg(close_key ORDER BY close_ts DESC, close_key DESC))[1],
           sum(volume), sum(count), sum(pv_sum)
    FROM agg GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (symbol, bucket_start) DO UPDATE SET
{_candle_merge("h")},
        pv_sum = h.pv_sum + EXCLUDED.pv_sum
), sources AS (
    INSERT INTO source_stats AS s (source, ticks, last_ts, last_ingest_at)
    SELECT source, count(*), max(ts), now() FROM ins GROUP BY source ORDER BY source
    ON CONFLICT (source) DO UPDATE SET
        ticks = s.ticks + EXCLUDED.ticks,
        last_ts = GREATEST(s.last_ts, EXCLUDED.last_ts),
        last_ingest_at = EXCLUDED.last_ingest_at
), new_symbols AS (
    INSERT INTO symbols (symbol, base, quote)
    SELECT * FROM unnest($8::text[], $9::text[], $10::text[]) ORDER BY 1
    ON CONFLICT (symbol) DO NOTHING
), touched AS MATERIALIZED (
    -- SMA10 over the 10 latest candles up to each (row-based, as the REST candle view
    -- computes it). The statement's snapshot predates its own upserts, so the closes this
    -- flush just wrote are taken from `candles` and the older ones from the table.
    SELECT c.*,
           (SELECT CASE WHEN count(*) = 10 THEN avg(w.close) END
            FROM (SELECT u.close FROM (
                      SELECT n.bucket_start, n.close FROM candles n
                      WHERE n.symbol = c.symbol AND n.bucket_start <= c.bucket_start
                      UNION ALL
                      (SELECT p.bucket_start, p.close FROM ohlc_1m p
                       WHERE p.symbol = c.symbol AND p.bucket_start <= c.bucket_start
                         AND NOT EXISTS (SELECT 1 FROM candles n
                                         WHERE n.symbol = p.symbol
                                           AND n.bucket_start = p.bucket_start)
                       ORDER BY p.bucket_start DESC LIMIT 10)
                  ) u
                  ORDER BY u.bucket_start DESC LIMIT 10) w) AS sma10
    FROM candles c
    WHERE c.symbol = ANY($11)
)
SELECT i.symbol, i.idem_key, (extract(epoch FROM i.ts) * 1000000)::int8 AS ts_us,
       i.price::float8, i.volume::float8, extract(epoch FROM t.bucket_start)::int8,
       t.open::float8, t.high::float8, t.low::float8, t.close::float8, t.volume::float8,
       t.count, t.sma10::float8
FROM ins i
JOIN touched t ON t.symbol = i.symbol
              AND t.bucket_start = date_bin('1 minute', i.ts, {_ORIGIN})
UNION ALL
-- The symbols nobody subscribes to: only the keys, which the webhook's answer counts.
SELECT i.symbol, i.idem_key, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM ins i
WHERE i.symbol <> ALL($11)
ORDER BY symbol, ts_us, idem_key
"""


def flush_statement(raw_audit: bool) -> str:
    """The flush's one statement. Its parameters: seven per-tick column arrays (symbol, key,
    ts µs, price, volume, source, received µs), then (symbol, base, quote) of its symbols,
    then the symbols whose new ticks come back with their candles (the others: keys only)."""
    return _STAGE + (_RAW if raw_audit else "") + _WRITE


def flush_arguments(parts: Sequence[TickColumns], live: Collection[str] | None = None) -> list:
    """The statement's parameters for a flush of these parts; every symbol is live unless
    `live` says which are."""
    symbol, key, ts, price, volume, source, received = [], [], [], [], [], [], []
    for part in parts:
        n = len(part.keys)
        symbol += [part.symbol] * n
        key += part.keys
        ts += part.ts_us
        price += part.price
        volume += part.volume
        source += [part.source] * n
        received += [part.received_us] * n
    symbols = sorted({p.symbol for p in parts})
    pairs = [split_symbol(s) for s in symbols]
    return [
        symbol, key, ts, price, volume, source, received,
        symbols, [b for b, _ in pairs], [q for _, q in pairs],
        symbols if live is None else sorted(live),
    ]  # fmt: skip


class TickStore:
    """Writes flushes to Postgres; what the writer actor depends on (see `actors.writer`)."""

    def __init__(self, db: Database, raw_audit: bool = True) -> None:
        self.db = db
        self.raw_audit = raw_audit
        self._sql = flush_statement(raw_audit)
        self._guarded = Guarded(db, self._sql)
        self.partitions = DayPartitions(db)

    async def write(
        self,
        parts: Sequence[TickColumns],
        cutoff: float | None = None,
        live: Collection[str] | None = None,
    ) -> list[StoredTick | NewTick]:
        """Commit the parts — only before `cutoff` (trio time), when one is given — and
        return the ticks new to the store: with their candles (StoredTick) for the symbols
        in `live` (all when None), only their keys (NewTick) for the others."""
        args = flush_arguments(parts, live)
        cached = await self.partitions.ensure(parts, self.raw_audit, cutoff)
        try:
            if cutoff is None:
                rows = await self.db.fetch(self._sql, *args)
            else:
                rows = await self._guarded.fetch(*args, cutoff=cutoff)
        except DATA_FAULTS as exc:
            if cached and missed(exc):  # a known day dropped since (retention): make, retry
                self.partitions.forget()
                return await self.write(parts, cutoff, live)
            raise Rejected(f"{type(exc).__name__}: {exc}") from exc
        except CommitRefused:
            raise Expired("rolled back: its deadline passed before the commit") from None
        return [StoredTick(*r) if r[2] is not None else NewTick(r[0], r[1]) for r in rows]
