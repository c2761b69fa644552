"""The one-process pipeline against a real PostgreSQL: durable ack, exactly-once effect, order
independence, exact roll-ups (ARCHITECTURE §4.1 to §4.3)."""

from __future__ import annotations

import random
import time

import trio

from tests.consistency import differences

NOW = int(time.time()) - 3600  # an hour ago: whole minutes, well inside the skew limit


def ticks(symbol: str, n: int, start: float = NOW, step: float = 0.25, seed: int = 1) -> list:
    rng = random.Random(seed)
    price = 100.0
    out = []
    for i in range(n):
        price = round(max(price * (1 + rng.gauss(0, 0.002)), 0.01), 2)
        out.append(
            {
                "symbol": symbol,
                "price": price,
                "ts": start + i * step,
                "volume": round(rng.uniform(0, 3), 3),
                "idempotencyKey": f"{symbol}-{seed}-{i}",
            }
        )
    return out


async def test_accepted_batch_is_stored_before_the_202(tickhub, db):
    items = ticks("BTCUSDT", 50) + ticks("ETHUSDT", 30)
    response = await tickhub.post_ticks(items)
    assert response.status_code == 202
    assert response.json() == {
        "accepted": 80,
        "duplicates": 0,
        "queued": 80,
        "rejected": 0,
        "skipped": 0,
    }
    # Durable ack: the rows are committed by the time the answer arrives.
    assert await db.fetchval("SELECT count(*) FROM ticks_history") == 80
    assert await db.fetchval("SELECT count(*) FROM ticks_raw") == 80
    symbols = await db.fetch("SELECT symbol, base, quote FROM symbols ORDER BY symbol")
    assert [tuple(r) for r in symbols] == [("BTCUSDT", "BTC", "USDT"), ("ETHUSDT", "ETH", "USDT")]
    assert await differences(db) == []


async def test_reposting_a_batch_changes_nothing(tickhub, db):
    items = ticks("BTCUSDT", 40)
    first = await tickhub.post_ticks(items)
    candles = await db.fetch("SELECT * FROM ohlc_1m ORDER BY bucket_start")
    again = await tickhub.post_ticks(items)
    assert first.json()["accepted"] == 40
    assert again.status_code == 202
    assert again.json()["accepted"] == 0 and again.json()["duplicates"] == 40
    assert await db.fetch("SELECT * FROM ohlc_1m ORDER BY bucket_start") == candles
    assert await db.fetchval("SELECT count(*) FROM ticks_history") == 40
    assert await db.fetchval("SELECT count(*) FROM ticks_raw") == 80  # the audit keeps both


async def test_duplicate_inside_one_batch_counts_once(tickhub, db):
    item = ticks("BTCUSDT", 1)[0]
    response = await tickhub.post_ticks([item, dict(item)])
    assert response.json()["accepted"] == 1
    assert response.json()["duplicates"] == 1


async def test_ticks_in_the_same_second_are_all_kept(tickhub, db):
    same_second = [
        {"symbol": "BTCUSDT", "price": 100 + i, "ts": NOW, "volume": 1} for i in range(5)
    ]
    response = await tickhub.post_ticks(same_second)
    assert response.json()["accepted"] == 5
    candle = await db.fetchrow("SELECT open, high, low, close, count FROM ohlc_1m")
    assert candle["count"] == 5
    assert (candle["high"], candle["low"]) == (104, 100)


async def test_candles_do_not_depend_on_arrival_order(tickhub, db):
    items = ticks("BTCUSDT", 200, step=0.7) + ticks("ETHUSDT", 120, step=1.3, seed=2)
    shuffled = items[:]
    random.Random(7).shuffle(shuffled)
    for i in range(0, len(shuffled), 37):  # several batches, out of order
        assert (await tickhub.post_ticks(shuffled[i : i + 37])).status_code == 202
    from_shuffled = await db.fetch("SELECT * FROM ohlc_1m ORDER BY symbol, bucket_start")
    await db.execute(
        "TRUNCATE ticks_raw, ticks_history, ohlc_1m, metrics_1m, candles_1h, source_stats"
    )
    assert (await tickhub.post_ticks(sorted(items, key=lambda t: t["ts"]))).status_code == 202
    from_sorted = await db.fetch("SELECT * FROM ohlc_1m ORDER BY symbol, bucket_start")
    assert from_shuffled == from_sorted
    assert await differences(db) == []


async def test_randomized_run_keeps_rollups_exact(tickhub, db):
    rng = random.Random(42)
    pool = []
    for s, symbol in enumerate(("BTCUSDT", "ETHUSDT", "SOL-USD", "XRP/EUR")):
        pool += ticks(
            symbol, 800, start=NOW - rng.randint(0, 600), step=rng.uniform(0.05, 1), seed=s
        )
    # Ties on ts across different keys, to exercise the deterministic tie-break.
    pool += [
        dict(t, idempotencyKey=t["idempotencyKey"] + "-tie", price=t["price"] + 1)
        for t in pool[::50]
    ]

    async def poster(batches):
        for batch in batches:
            response = await tickhub.post_ticks(batch)
            assert response.status_code == 202, response.text

    batches = []
    for _ in range(60):
        batch = rng.sample(pool, rng.randint(1, 120))  # overlapping samples: duplicates
        batches.append(batch)
    async with trio.open_nursery() as nursery:
        for k in range(4):
            nursery.start_soon(poster, batches[k::4])
    unique = {(t["symbol"], t["idempotencyKey"]) for b in batches for t in b}
    assert await db.fetchval("SELECT count(*) FROM ticks_history") == len(unique)
    assert await differences(db) == []
