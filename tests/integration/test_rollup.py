"""The hourly roll-up `candles_1h` (migration 0005) against the minutes it rolls up: 1h, 4h
and 1d candles read from it are the candles grouped from `ohlc_1m` / `metrics_1m`, to the
digit — open, high, low, close, volume, count, VWAP and SMA10, with and without `fill`, on
every page — for ticks over several days flushed out of order, with ties in ts, duplicates
and empty hours and days; and what the flush keeps equals what the migration's backfill
(`tickhub_rebuild_candles_1h`) computes from the minutes.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

from tests.consistency import differences
from tickhub.messages import TickColumns
from tickhub.sql.db import Database
from tickhub.sql.migrate import migrate_down, migrate_up
from tickhub.sql.queries import candle_fetch, candles_sql
from tickhub.sql.store import TickStore

MINUTE_US = 60_000_000
HOUR_US = 60 * MINUTE_US
DAY_US = 24 * HOUR_US
DAY0_US = 1_772_323_200_000_000  # 2026-03-01 00:00 UTC
# From 22:30 the day before, so the first day, 4-hour bucket and hour are partial.
START_US = DAY0_US - 90 * MINUTE_US
END_US = DAY0_US + 4 * DAY_US
SYMBOLS = ("BTCUSDT", "ETHUSDT")
FAR_US = END_US + 10**15  # the API's default `before`: from the newest
HOURLY = {"1h": 3600, "4h": 14400, "1d": 86400}
LIMITS = (1, 3, 200)


def empty(ts_us: int) -> bool:
    """No ticks on 2026-03-03 (a whole day) nor from 05:00 to 09:00 on 2026-03-02."""
    day, rest = divmod(ts_us - DAY0_US, DAY_US)
    return day == 2 or (day == 1 and 5 * HOUR_US <= rest < 9 * HOUR_US)


def market(seed: int, per_symbol: int) -> list[tuple[str, str, int, float, float]]:
    """(symbol, key, ts µs, price, volume): 2-decimal prices, a ts shared by a fifth of the
    ticks (open and close then decided by the key)."""
    rng = random.Random(seed)
    out = []
    for symbol in SYMBOLS:
        price, stamps = 100.0, []
        while len(stamps) < per_symbol:
            ts = rng.choice(stamps) if stamps and rng.random() < 0.2 else None
            ts = ts or rng.randrange(START_US, END_US)
            if empty(ts):
                continue
            stamps.append(ts)
            price = round(max(price + rng.randint(-300, 300) / 100, 1), 2)
            volume = rng.choice([0, 0.001, 0.25, 0.5, 1, 2, 3.3])
            out.append((symbol, f"{symbol}-{rng.getrandbits(40):x}", ts, price, volume))
    return out


def parts(flush: list[tuple[str, str, int, float, float]]) -> list[TickColumns]:
    by_symbol: dict[str, list] = {}
    for tick in flush:
        by_symbol.setdefault(tick[0], []).append(tick)
    return [
        TickColumns(
            symbol,
            "rollup",
            END_US,
            [t[1] for t in ticks],
            [t[2] for t in ticks],
            [t[3] for t in ticks],
            [t[4] for t in ticks],
        )
        for symbol, ticks in by_symbol.items()
    ]


async def store_market(db: Database, seed: int = 17, per_symbol: int = 1500) -> None:
    """The ticks in random order and flushes of random size, a tenth of them sent twice."""
    rng = random.Random(seed)
    ticks = market(seed, per_symbol)
    arrivals = ticks + rng.sample(ticks, len(ticks) // 10)
    rng.shuffle(arrivals)
    store = TickStore(db)
    while arrivals:
        size = rng.choice([1, 7, 50, 300])
        flush, arrivals = arrivals[:size], arrivals[size:]
        await store.write(parts(flush))


def befores(seconds: int) -> list[int]:
    """Where pages end: the newest, bucket edges and a microsecond either side, instants
    inside buckets, inside the empty day, before the first tick."""
    rng = random.Random(seconds)
    edges = [DAY0_US + k * seconds * 1_000_000 for k in (1, 5)]
    return [
        FAR_US,
        *edges,
        *(e + 1 for e in edges),
        *(e - 1 for e in edges),
        *(rng.randrange(START_US, END_US) for _ in range(3)),
        DAY0_US + 2 * DAY_US + 7 * HOUR_US,
        START_US - DAY_US,
    ]


async def pages(db: Database, *, hourly: bool) -> dict[tuple, list[tuple]]:
    out = {}
    for name, seconds in HOURLY.items():
        for fill in (False, True):
            for limit in LIMITS:
                sql = candles_sql(seconds, limit, fill, hourly=hourly)
                fetch = candle_fetch(limit, fill)
                for symbol in SYMBOLS:
                    for before in befores(seconds):
                        rows = await db.fetch(sql, symbol, before, fetch, limit)
                        out[name, fill, limit, symbol, before] = [tuple(r) for r in rows]
    return out


async def test_hourly_candles_equal_the_candles_grouped_from_minutes(db):
    await store_market(db)
    assert await differences(db) == []
    from_hours = await pages(db, hourly=True)
    from_minutes = await pages(db, hourly=False)
    assert from_hours.keys() == from_minutes.keys()
    for page, rows in from_minutes.items():
        assert from_hours[page] == rows, page
    # Not vacuous: full pages with SMA10 and VWAP, filled empty buckets, and pages with none.
    rows = [r for page in from_minutes.values() for r in page]
    assert sum(1 for r in rows if r[-1] is not None) > 100  # sma10
    assert sum(1 for r in rows if r[-2] is not None) > 100  # vwap
    assert any(r[6] == 0 for r in rows)  # a filled bucket (count 0)
    assert any(not page for page in from_minutes.values())
    assert len(from_minutes["1d", False, 200, "BTCUSDT", FAR_US]) == 4  # the empty day: none
    assert len(from_minutes["1d", True, 200, "BTCUSDT", FAR_US]) == 5  # filled


async def test_the_hourly_path_reads_the_hours(db):
    """The equality above compares two reads, not one read twice: a wrong hour shows in
    the hourly candles and not in those grouped from minutes."""
    await store_market(db, per_symbol=200)
    args = ("BTCUSDT", FAR_US, candle_fetch(10, False), 10)
    for seconds in HOURLY.values():
        hourly = candles_sql(seconds, 10, False)
        minutes = candles_sql(seconds, 10, False, hourly=False)
        before = await db.fetch(hourly, *args)
        assert before == await db.fetch(minutes, *args)
        await db.execute("UPDATE candles_1h SET high = high + 1")
        assert await db.fetch(hourly, *args) != before
        assert await db.fetch(minutes, *args) == before
        await db.execute("UPDATE candles_1h SET high = high - 1")


async def test_the_flushed_hours_equal_the_backfill_from_minutes(db):
    await store_market(db, seed=5, per_symbol=400)
    hours = "SELECT * FROM candles_1h ORDER BY symbol, bucket_start"
    flushed = await db.fetch(hours)
    assert len(flushed) > 40
    # The migration's backfill, down and up again.
    assert await migrate_down(db, 1) == ["0005_candles_1h"]
    assert await migrate_up(db) == ["0005_candles_1h"]
    assert await db.fetch(hours) == flushed
    # A rebuild from an instant on recomputes the hours from the start of its hour on and
    # leaves the older ones be.
    since_us = DAY0_US + DAY_US + 30 * MINUTE_US
    hour_us = since_us - 30 * MINUTE_US
    hour = datetime.fromtimestamp(hour_us / 1e6, UTC)
    cut = "timestamptz 'epoch' + $1::int8 * interval '1 microsecond'"
    await db.execute(f"UPDATE candles_1h SET count = 0 WHERE bucket_start >= {cut}", hour_us)
    await db.execute(f"UPDATE candles_1h SET low = -1 WHERE bucket_start < {cut}", hour_us)
    rebuilt = await db.fetchval(f"SELECT tickhub_rebuild_candles_1h({cut})", since_us)
    newer = [r for r in flushed if r["bucket_start"] >= hour]
    assert 0 < rebuilt == len(newer) < len(flushed)
    now = await db.fetch(hours)
    assert [r for r in now if r["bucket_start"] >= hour] == newer
    assert all(r["low"] == -1 for r in now if r["bucket_start"] < hour)
