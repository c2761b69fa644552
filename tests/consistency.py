"""The consistency check of ARCHITECTURE §4.2: recompute `ohlc_1m` and `metrics_1m` from
`ticks_history` in SQL and list every difference (both directions). Empty means exact.
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


async def differences(db: Database) -> list[str]:
    rows = await db.fetch(
        f"(({RECOMPUTED}) EXCEPT ({STORED})) UNION ALL (({STORED}) EXCEPT ({RECOMPUTED}))"
    )
    rows += await db.fetch(METRICS_AGREE)
    return [str(dict(r)) for r in rows]
