"""The consistency check of ARCHITECTURE §4.2: recompute `ohlc_1m` and `metrics_1m` and the
hourly roll-up `candles_1h` from `ticks_history` in SQL and list every difference (both
directions). Empty means exact.
"""

from __future__ import annotations

from tickhub.sql.db import Database

RECOMPUTED = """
SELECT symbol, date_bin('1 minute', ts, timestamptz '2000-01-01 00:00:00+00') AS bucket_start,
       (array_agg(price ORDER BY ts, idem_key))[1] AS open,
       max(price) AS high, min(price) AS low,
       (array_agg(price ORDER BY ts DESC, idem_key DESC))[1] AS close,
       sum(volume) AS volume, count(*) AS count, sum(price) AS sum,
       sum(price * volume) AS pv_sum
FROM ticks_history GROUP BY 1, 2
"""

STORED = """
SELECT o.symbol, o.bucket_start, o.open, o.high, o.low, o.close, o.volume, o.count,
       m.sum, m.pv_sum
FROM ohlc_1m o FULL JOIN metrics_1m m USING (symbol, bucket_start)
"""

METRICS_AGREE = """
SELECT symbol, bucket_start FROM ohlc_1m o JOIN metrics_1m m USING (symbol, bucket_start)
WHERE (m.min, m.max, m.last, m.volume, m.count) IS DISTINCT FROM
      (o.low, o.high, o.close, o.volume, o.count)
"""

# The (ts, key) of open and close too: the next flush merges by them, so a wrong one would
# give a wrong hour later even while the prices still agree.
HOURS_RECOMPUTED = """
SELECT 'hour' AS kind, symbol,
       date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00') AS bucket_start,
       (array_agg(price ORDER BY ts, idem_key))[1] AS open, min(ts) AS open_ts,
       (array_agg(idem_key ORDER BY ts, idem_key))[1] AS open_key,
       max(price) AS high, min(price) AS low,
       (array_agg(price ORDER BY ts DESC, idem_key DESC))[1] AS close, max(ts) AS close_ts,
       (array_agg(idem_key ORDER BY ts DESC, idem_key DESC))[1] AS close_key,
       sum(volume) AS volume, count(*) AS count, sum(price * volume) AS pv_sum
FROM ticks_history GROUP BY 2, 3
"""

HOURS_STORED = """
SELECT 'hour' AS kind, symbol, bucket_start, open, open_ts, open_key, high, low, close,
       close_ts, close_key, volume, count, pv_sum
FROM candles_1h
"""


def _both_ways(recomputed: str, stored: str) -> str:
    return f"(({recomputed}) EXCEPT ({stored})) UNION ALL (({stored}) EXCEPT ({recomputed}))"


async def differences(db: Database) -> list[str]:
    rows = await db.fetch(_both_ways(RECOMPUTED, STORED))
    rows += await db.fetch(METRICS_AGREE)
    rows += await db.fetch(_both_ways(HOURS_RECOMPUTED, HOURS_STORED))
    return [str(dict(r)) for r in rows]
