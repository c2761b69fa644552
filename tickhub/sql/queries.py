"""The read side of API.md: symbols, latest tick, raw history, candles with SMA10, metrics
windows and stats. Coarser candles and SMA10 are computed here, in SQL, from `ohlc_1m` (and
from its hourly roll-up `candles_1h` for 1h, 4h and 1d), with the same arithmetic the flush
uses for live events — so REST and SSE agree to the digit.
"""

from __future__ import annotations

from typing import Any

import attrs

from tickhub.sql.db import Database
from tickhub.symbols import split_symbol

INTERVALS = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "4h": 14400, "1d": 86400}
WINDOWS = {"1m": 60, "5m": 300, "1h": 3600, "1d": 86400}
ORIGIN = "timestamptz '2000-01-01 00:00:00+00'"
SMA_WINDOW = 10


# ORDER BY the table's column, not the output's `ts` (an expression of it): only then is the
# answer one entry of the (symbol, ts DESC, idem_key DESC) index, however long the history.
LATEST_TICK = """
SELECT h.symbol, extract(epoch FROM h.ts)::float8 AS ts, h.price, h.volume
FROM ticks_history h WHERE h.symbol = $1
ORDER BY h.ts DESC, h.idem_key DESC LIMIT 1
"""
# Without a bound in time that plan opens the index of every day partition (~5 µs each: 2 ms
# at a year of days) to read one. The newest candle's close is the latest tick's ts, stored in
# the same transaction; given as a parameter — known when the statement starts, unlike a
# subquery's value — it prunes every older day before the executor opens any.
LATEST_CLOSE_TS = """
SELECT close_ts FROM ohlc_1m WHERE symbol = $1 ORDER BY bucket_start DESC LIMIT 1
"""
LATEST_TICK_SINCE = """
SELECT h.symbol, extract(epoch FROM h.ts)::float8 AS ts, h.price, h.volume
FROM ticks_history h WHERE h.symbol = $1 AND h.ts >= $2
ORDER BY h.ts DESC, h.idem_key DESC LIMIT 1
"""


def _ts_expr(us: str) -> str:
    return f"timestamptz 'epoch' + ({us})::int8 * interval '1 microsecond'"


SYMBOLS = "SELECT symbol, base, quote, active FROM symbols WHERE active ORDER BY symbol"

# ($1 symbol, $2 before µs, $3 limit): one range of the (symbol, ts DESC, idem_key DESC) index.
HISTORY_PAGE = f"""
SELECT (extract(epoch FROM ts) * 1000000)::int8 AS ts_us, price, volume
FROM ticks_history
WHERE symbol = $1 AND ts < {_ts_expr("$2")}
ORDER BY ts DESC, idem_key DESC LIMIT $3
"""

# ($1 symbol, $2 ts µs): every tick of one microsecond, when they outnumber a page.
HISTORY_TIES = f"""
SELECT (extract(epoch FROM ts) * 1000000)::int8 AS ts_us, price, volume
FROM ticks_history WHERE symbol = $1 AND ts = {_ts_expr("$2")}
ORDER BY idem_key DESC
"""

SOURCE_STATS = """
SELECT source, ticks, extract(epoch FROM last_ts)::float8 AS last_ts,
       extract(epoch FROM last_ingest_at)::float8 AS last_ingest_at
FROM source_stats ORDER BY source
"""
ACTIVE_SYMBOLS = "SELECT count(*) FROM symbols WHERE active"

# ($1 symbol, $2 window seconds): the latest minute, then the minutes of its window.
METRICS = f"""
WITH latest AS (
    SELECT date_bin($2 * interval '1 second', bucket_start, {ORIGIN}) AS w
    FROM metrics_1m WHERE symbol = $1 ORDER BY bucket_start DESC LIMIT 1
)
SELECT extract(epoch FROM latest.w)::int8 AS "windowStart",
       extract(epoch FROM latest.w + $2 * interval '1 second')::int8 AS "windowEnd",
       sum(m.count)::int8 AS count,
       (array_agg(o.open ORDER BY m.bucket_start))[1] AS open,
       min(m.min) AS min, max(m.max) AS max,
       sum(m.sum) / sum(m.count) AS avg,
       CASE WHEN sum(m.volume) > 0 THEN sum(m.pv_sum) / sum(m.volume) END AS vwap,
       sum(m.volume) AS volume,
       (array_agg(m.last ORDER BY m.last_ts DESC, m.last_key DESC))[1] AS last
FROM latest
JOIN metrics_1m m ON m.symbol = $1 AND m.bucket_start >= latest.w
                 AND m.bucket_start < latest.w + $2 * interval '1 second'
JOIN ohlc_1m o USING (symbol, bucket_start)
GROUP BY latest.w
"""


def candle_fetch(limit: int, fill: bool) -> int:
    """Candles the source reads for a page: the page, the SMA look-back, and with fill one
    more to seed the close carried into leading empty buckets."""
    look = limit + SMA_WINDOW - 1
    return look + 1 if fill else look


def candles_sql(interval_s: int, limit: int, fill: bool, *, hourly: bool = True) -> str:
    """($1 symbol, $2 before µs, $3 candles to read = candle_fetch, $4 limit): the latest
    `limit` candles before `before`, oldest last, with VWAP and SMA10. Intervals of whole
    hours read the hourly roll-up `candles_1h` (unless `hourly` is false), the others the
    minutes; both give the same candles to the digit."""
    step = f"interval '{int(interval_s)} seconds'"  # from the INTERVALS whitelist
    hourly = hourly and interval_s % 3600 == 0
    if interval_s == 60:
        # `before` on both tables: merged, metrics_1m would otherwise be read from its
        # newest minute down to `before`, all of it for a page deep in the past.
        source = f"""
            SELECT o.bucket_start AS bucket, o.open, o.high, o.low, o.close, o.volume,
                   o.count, m.pv_sum
            FROM ohlc_1m o JOIN metrics_1m m USING (symbol, bucket_start)
            WHERE o.symbol = $1 AND o.bucket_start < {_ts_expr("$2")}
              AND m.symbol = $1 AND m.bucket_start < {_ts_expr("$2")}
            ORDER BY o.bucket_start DESC LIMIT $3
        """
    elif hourly and interval_s == 3600:
        # An hour is included when it starts before `before`, as the grouped minutes are.
        source = f"""
            SELECT bucket_start AS bucket, open, high, low, close, volume, count, pv_sum
            FROM candles_1h
            WHERE symbol = $1 AND bucket_start < {_ts_expr("$2")}
            ORDER BY bucket_start DESC LIMIT $3
        """
    elif hourly:
        source = _from_hours(step, interval_s)
    else:
        source = _from_minutes(step, interval_s)
    look = limit + SMA_WINDOW - 1
    newest = "candles_1h" if hourly else "ohlc_1m"
    series = _filled(source, step, look, newest) if fill else f"SELECT * FROM ({source}) c"
    return f"""
        WITH series AS ({series})
        SELECT extract(epoch FROM bucket)::int8 AS ts, open, high, low, close, volume,
               count, CASE WHEN volume > 0 THEN pv_sum / volume END AS vwap,
               CASE WHEN count(*) OVER w = {SMA_WINDOW} THEN avg(close) OVER w END AS sma10
        FROM series
        WINDOW w AS (ORDER BY bucket ROWS {SMA_WINDOW - 1} PRECEDING)
        ORDER BY bucket DESC LIMIT $4
    """


def _upper(step: str) -> str:
    """The end of the bucket that holds the instant just before `before`."""
    return f"date_bin({step}, {_ts_expr('$2')} - interval '1 microsecond', {ORIGIN}) + {step}"


def _lower(step: str, table: str, per_bucket: int) -> str:
    """The $3 latest buckets hold at most $3 times `per_bucket` rows of `table`, so the
    bucket of the row that many back from the upper end starts at or before the oldest of
    them: a lower bound that reads what the page can show, never the symbol's whole history
    (no bound when there are fewer rows than that)."""
    return f"""
        SELECT coalesce((
            SELECT date_bin({step}, b.bucket_start, {ORIGIN}) FROM {table} b
            WHERE b.symbol = $1 AND b.bucket_start < {_upper(step)}
            ORDER BY b.bucket_start DESC OFFSET $3 * {per_bucket} - 1 LIMIT 1
        ), '-infinity') AS lo"""


def _from_minutes(step: str, interval_s: int) -> str:
    """Buckets of `interval_s` grouped from the 1-minute candles."""
    upper = _upper(step)
    # Both tables get the range, so they are read as two ranges of their keys and merged
    # (one index probe per minute into metrics_1m cost more than the aggregate). Open and
    # close are looked up by the first and last minute of each bucket: grouping needs no
    # sort of the minutes, which array_agg(... ORDER BY) asked for.
    return f"""
        WITH bound AS MATERIALIZED ({_lower(step, "ohlc_1m", interval_s // 60)}),
        minutes AS (
            SELECT o.bucket_start, o.high, o.low, o.volume, o.count, m.pv_sum
            FROM ohlc_1m o JOIN metrics_1m m USING (symbol, bucket_start)
            WHERE o.symbol = $1 AND m.symbol = $1
              AND o.bucket_start < {upper} AND m.bucket_start < {upper}
              AND o.bucket_start >= (SELECT lo FROM bound)
              AND m.bucket_start >= (SELECT lo FROM bound)
        ),
        buckets AS (
            SELECT date_bin({step}, bucket_start, {ORIGIN}) AS bucket,
                   min(bucket_start) AS first_minute, max(bucket_start) AS last_minute,
                   max(high) AS high, min(low) AS low, sum(volume) AS volume,
                   sum(count)::int8 AS count, sum(pv_sum) AS pv_sum
            FROM minutes GROUP BY 1
            HAVING date_bin({step}, min(bucket_start), {ORIGIN}) < {_ts_expr("$2")}
            ORDER BY 1 DESC LIMIT $3
        )
        SELECT k.bucket, f.open, k.high, k.low, l.close, k.volume, k.count, k.pv_sum
        FROM buckets k
        JOIN ohlc_1m f ON f.symbol = $1 AND f.bucket_start = k.first_minute
        JOIN ohlc_1m l ON l.symbol = $1 AND l.bucket_start = k.last_minute
    """


def _from_hours(step: str, interval_s: int) -> str:
    """Buckets of `interval_s` (whole hours) grouped from `candles_1h`, as `_from_minutes`
    groups minutes: the sums of the hours are the sums of their minutes, and the first
    hour's open (the last hour's close) is the first minute's open (the last one's close)."""
    upper = _upper(step)
    return f"""
        WITH bound AS MATERIALIZED ({_lower(step, "candles_1h", interval_s // 3600)}),
        buckets AS (
            SELECT date_bin({step}, bucket_start, {ORIGIN}) AS bucket,
                   min(bucket_start) AS first_hour, max(bucket_start) AS last_hour,
                   max(high) AS high, min(low) AS low, sum(volume) AS volume,
                   sum(count)::int8 AS count, sum(pv_sum) AS pv_sum
            FROM candles_1h
            WHERE symbol = $1 AND bucket_start < {upper}
              AND bucket_start >= (SELECT lo FROM bound)
            GROUP BY 1
            HAVING date_bin({step}, min(bucket_start), {ORIGIN}) < {_ts_expr("$2")}
            ORDER BY 1 DESC LIMIT $3
        )
        SELECT k.bucket, f.open, k.high, k.low, l.close, k.volume, k.count, k.pv_sum
        FROM buckets k
        JOIN candles_1h f ON f.symbol = $1 AND f.bucket_start = k.first_hour
        JOIN candles_1h l ON l.symbol = $1 AND l.bucket_start = k.last_hour
    """


@attrs.define
class Queries:
    db: Database

    async def symbols(self) -> list[dict[str, Any]]:
        rows = await self.db.fetch(SYMBOLS)
        return [dict(r) for r in rows]

    async def upsert_symbols(self, rows: list[Any]) -> int:
        derived = [split_symbol(r.symbol) for r in rows]
        await self.db.execute(
            """
            INSERT INTO symbols AS s (symbol, base, quote, active)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[])
            ON CONFLICT (symbol) DO UPDATE SET
                base = EXCLUDED.base, quote = EXCLUDED.quote, active = EXCLUDED.active,
                updated_at = now()
            """,
            [r.symbol for r in rows],
            [r.base or d[0] for r, d in zip(rows, derived, strict=True)],
            [r.quote or d[1] for r, d in zip(rows, derived, strict=True)],
            [r.active for r in rows],
        )
        return len(rows)

    async def latest_tick(self, symbol: str) -> dict[str, Any] | None:
        """The tick with the largest (ts, key): from the day of the newest candle's close on;
        over every day only when there is no such candle or no tick from it on (its day
        dropped by retention, rows written around the flush)."""
        since = await self.db.fetchval(LATEST_CLOSE_TS, symbol)
        row = await self.db.fetchrow(LATEST_TICK_SINCE, symbol, since) if since else None
        if row is None:
            row = await self.db.fetchrow(LATEST_TICK, symbol)
        return dict(row) if row else None

    async def history(self, symbol: str, limit: int, before_us: int) -> dict[str, Any]:
        """Raw ticks newest first. A page never ends inside a group of ticks sharing one ts,
        so `before = nextCursor` continues with no gap and no repeat."""
        rows = await self.db.fetch(HISTORY_PAGE, symbol, before_us, limit + 1)
        more = len(rows) > limit
        page = rows[:limit]
        if more and page[-1]["ts_us"] == rows[limit]["ts_us"]:
            boundary = page[-1]["ts_us"]
            trimmed = [r for r in page if r["ts_us"] != boundary]
            if trimmed:
                page = trimmed
            else:  # more than `limit` ticks in one microsecond: the page takes them all
                page = await self.db.fetch(HISTORY_TIES, symbol, boundary)
        items = [
            {"symbol": symbol, "ts": r["ts_us"] / 1e6, "price": r["price"], "volume": r["volume"]}
            for r in page
        ]
        cursor = page[-1]["ts_us"] / 1e6 if more and page else None
        return {"items": items, "nextCursor": cursor}

    async def candles(
        self, symbol: str, interval_s: int, limit: int, before_us: int, fill: bool
    ) -> dict[str, Any]:
        """The latest `limit` candles before `before`, oldest first, with SMA10."""
        sql = candles_sql(interval_s, limit, fill)
        fetch = candle_fetch(limit, fill)
        rows = await self.db.fetch(sql, symbol, before_us, fetch, limit)
        rows.reverse()
        items = [{"symbol": symbol, **dict(r)} for r in rows]
        cursor = items[0]["ts"] if len(rows) == limit else None
        return {"items": items, "nextCursor": cursor}

    async def metrics(self, symbol: str, window_s: int) -> dict[str, Any] | None:
        row = await self.db.fetchrow(METRICS, symbol, window_s)
        return {"symbol": symbol, **dict(row)} if row else None

    async def stats(self) -> dict[str, Any]:
        rows = await self.db.fetch(SOURCE_STATS)
        symbols = await self.db.fetchval(ACTIVE_SYMBOLS)
        return {
            "ticksTotal": sum(r["ticks"] for r in rows),
            "symbols": symbols,
            "lastIngestAt": max((r["last_ingest_at"] for r in rows), default=None),
            "sources": {r["source"]: {"ticks": r["ticks"], "lastTs": r["last_ts"]} for r in rows},
        }


def _filled(source: str, step: str, size: int, newest: str) -> str:
    """Candles plus a flat zero-volume one for every empty bucket between the first and the
    latest candle, repeating the previous close. The grid is the `size` buckets (page plus
    SMA look-back) ending at the last bucket before `before` (or the latest candle). `c` holds
    one candle more than the grid can, so the candle just before the grid is there to seed
    the close carried into leading empty buckets; buckets before the first candle ever are
    left out (no price to repeat). `newest` is the table the source reads, whose latest row
    ends the grid."""
    return f"""
        WITH c AS ({source}),
        top AS (
            SELECT least(
                (SELECT date_bin({step}, max(bucket_start), {ORIGIN})
                 FROM {newest} WHERE symbol = $1),
                date_bin({step}, {_ts_expr("$2")} - interval '1 microsecond', {ORIGIN})
            ) AS hi
        ),
        grid AS (
            SELECT generate_series(hi - {size - 1} * {step}, hi, {step}) AS bucket
            FROM top WHERE hi IS NOT NULL
        ),
        seed AS (
            SELECT * FROM c WHERE bucket < (SELECT min(bucket) FROM grid)
            ORDER BY bucket DESC LIMIT 1
        ),
        joined AS (
            SELECT g.bucket, c.open, c.high, c.low, c.close, c.volume, c.count, c.pv_sum,
                   false AS is_seed
            FROM grid g LEFT JOIN c USING (bucket)
            UNION ALL
            SELECT bucket, open, high, low, close, volume, count, pv_sum, true FROM seed
        ),
        grouped AS (SELECT *, count(close) OVER (ORDER BY bucket) AS grp FROM joined),
        carried AS (
            SELECT *, first_value(close) OVER (PARTITION BY grp ORDER BY bucket) AS carry
            FROM grouped
        )
        SELECT bucket,
               coalesce(open, carry) AS open, coalesce(high, carry) AS high,
               coalesce(low, carry) AS low, coalesce(close, carry) AS close,
               coalesce(volume, 0) AS volume, coalesce(count, 0)::int8 AS count,
               coalesce(pv_sum, 0) AS pv_sum
        FROM carried WHERE grp > 0 AND NOT is_seed
    """
