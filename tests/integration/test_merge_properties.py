"""Properties of the candle merge against a real PostgreSQL, through the writer's own flush SQL
(`TickStore.write`), no HTTP (ARCHITECTURE §4.2, §4.3): flushes commute; any partition of a
tick set into flushes gives what one flush gives; writing any subset again (duplicates inside
a flush included) changes nothing; and `ohlc_1m` / `metrics_1m` and the hours of
`candles_1h` always equal their recomputation from `ticks_history`.

Ticks come from a few symbols, sources and minutes (on both sides of an hour), with many
ties on ts (so open/close are decided by the key) and prices with up to 15 significant
digits (what float8 → numeric keeps).

Hypothesis cannot drive an async test, so `@given` runs in a worker thread
(`trio.to_thread.run_sync`) and hands each example back to the test's trio loop
(`trio.from_thread.run`), where it uses the `db` fixture's bridge and pool. Tables are
truncated at the start of every example.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import TABLES
from tests.consistency import differences
from tickhub.messages import TickColumns
from tickhub.sql.db import Database
from tickhub.sql.store import TickStore

MAX_EXAMPLES = 30
SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SYMBOLS = ("BTCUSDT", "ETH-USD", "SOL/EUR")
SOURCES = ("feed-a", "feed-b")
BASE_US = 1_730_419_200_000_000  # 2024-11-01T00:00:00Z, a minute boundary
MINUTE_US = 60_000_000
RECEIVED_US = BASE_US + 3_600_000_000

Tick = tuple[str, str, int, float, float, str]  # symbol, key, ts_us, price, volume, source


def mostly(common: st.SearchStrategy, rare: st.SearchStrategy) -> st.SearchStrategy:
    return st.integers(0, 3).flatmap(lambda k: common if k else rare)


# Few distinct offsets inside a minute, so that ticks often share a ts (and a minute edge);
# three minutes of the first hour, its last among them, and the next hour's first, so that
# an hour merges minutes flushed apart.
offsets = mostly(st.sampled_from([0, 1, 30_000_000, 59_999_999]), st.integers(0, MINUTE_US - 1))
timestamps = st.builds(
    lambda minute, offset: BASE_US + minute * MINUTE_US + offset,
    st.sampled_from([0, 1, 59, 60]),
    offsets,
)
# Keys that sort differently by byte and by collation ("b" vs "B" vs "_b"); PostgreSQL's
# one ordering must decide ties in ts the same way in the flush and in the recomputation.
keys = st.text("aAbB_-01", min_size=1, max_size=3)
prices = st.one_of(
    st.integers(1, 2_000_000).map(lambda cents: cents / 100),
    st.floats(1e-6, 1e9).map(lambda p: float(f"{p:.15g}")),
)
volumes = st.one_of(
    st.just(0.0),
    st.integers(0, 10_000).map(lambda v: v / 1000),
    st.floats(0, 1e6).map(lambda v: float(f"{v:.15g}")),
)
tick_sets = st.lists(
    st.tuples(
        st.sampled_from(SYMBOLS),
        keys,
        timestamps,
        prices,
        volumes,
        st.sampled_from(SOURCES),
    ),
    min_size=1,
    max_size=40,
    unique_by=lambda t: (t[0], t[1]),  # (symbol, key) is a tick's identity
)


@st.composite
def partitions(draw, ticks: list[Tick]) -> list[list[Tick]]:
    """The ticks split into 1-5 non-empty flushes, each in its own order."""
    count = draw(st.integers(1, min(5, len(ticks))))
    slots = draw(st.lists(st.integers(0, count - 1), min_size=len(ticks), max_size=len(ticks)))
    flushes = [[t for t, s in zip(ticks, slots, strict=True) if s == n] for n in range(count)]
    return [draw(st.permutations(f)) for f in flushes if f]


def parts_of(flush: Sequence[Tick]) -> list[TickColumns]:
    """One flush as the writer hands it over: columns per (symbol, source)."""
    groups: dict[tuple[str, str], list[Tick]] = {}
    for tick in flush:
        groups.setdefault((tick[0], tick[5]), []).append(tick)
    return [
        TickColumns(
            symbol,
            source,
            RECEIVED_US,
            [t[1] for t in group],
            [t[2] for t in group],
            [t[3] for t in group],
            [t[4] for t in group],
        )
        for (symbol, source), group in groups.items()
    ]


async def reset(db: Database) -> None:
    await db.execute(f"TRUNCATE {TABLES}")


async def write_all(db: Database, flushes: Sequence[Sequence[Tick]]) -> list[int]:
    """Write each flush in order; how many new ticks each one stored."""
    store = TickStore(db)
    return [len(await store.write(parts_of(flush))) for flush in flushes]


async def state(db: Database) -> dict[str, list[tuple]]:
    """Everything a flush maintains, minus wall-clock columns (received_at, last_ingest_at)."""
    queries = {
        "ohlc_1m": "SELECT * FROM ohlc_1m ORDER BY symbol, bucket_start",
        "metrics_1m": "SELECT * FROM metrics_1m ORDER BY symbol, bucket_start",
        "candles_1h": "SELECT * FROM candles_1h ORDER BY symbol, bucket_start",
        "ticks_history": "SELECT symbol, idem_key, ts, price, volume, source FROM ticks_history"
        " ORDER BY symbol, idem_key",
        "source_stats": "SELECT source, ticks, last_ts FROM source_stats ORDER BY source",
        "symbols": "SELECT symbol, base, quote, active FROM symbols ORDER BY symbol",
    }
    return {name: [tuple(r) for r in await db.fetch(sql)] for name, sql in queries.items()}


async def check_consistent(db: Database, ticks: Sequence[Tick]) -> dict[str, list[tuple]]:
    """Roll-ups equal the recomputation, every tick is stored once, counts add up."""
    assert await differences(db) == []
    now = await state(db)
    assert {(r[0], r[1]) for r in now["ticks_history"]} == {(t[0], t[1]) for t in ticks}
    per_bucket = Counter((t[0], (t[2] - BASE_US) // MINUTE_US) for t in ticks)
    assert sorted(r[-1] for r in now["ohlc_1m"]) == sorted(per_bucket.values())
    assert {r[0]: r[1] for r in now["source_stats"]} == Counter(t[5] for t in ticks)
    assert [r[0] for r in now["symbols"]] == sorted({t[0] for t in ticks})
    return now


def run_property(
    strategy: st.SearchStrategy,
    body: Callable[[Any], Awaitable[None]],
    config: settings = SETTINGS,
) -> int:
    """In a worker thread: run `body` on the trio loop for every example; count the runs."""
    runs = 0

    @config
    @given(example=strategy)
    def prop(example: Any) -> None:
        nonlocal runs
        runs += 1
        trio.from_thread.run(body, example)

    prop()
    return runs


async def check_property(strategy: st.SearchStrategy, body: Callable) -> None:
    runs = await trio.to_thread.run_sync(run_property, strategy, body)
    # Hypothesis may stop early only if it runs out of distinct examples; these never do.
    assert runs >= MAX_EXAMPLES


# --- the properties -----------------------------------------------------------------------

two_orders = tick_sets.flatmap(
    lambda ticks: st.tuples(st.just(ticks), partitions(ticks)).flatmap(
        lambda tp: st.tuples(st.just(tp[0]), st.just(tp[1]), st.permutations(tp[1]))
    )
)


async def test_flushes_commute(db):
    async def body(example: tuple) -> None:
        ticks, flushes, reordered = example
        await reset(db)
        await write_all(db, flushes)
        first = await check_consistent(db, ticks)
        await reset(db)
        await write_all(db, reordered)
        assert await check_consistent(db, ticks) == first

    await check_property(two_orders, body)


split_or_whole = tick_sets.flatmap(lambda ticks: st.tuples(st.just(ticks), partitions(ticks)))


async def test_any_partition_into_flushes_equals_one_flush(db):
    async def body(example: tuple) -> None:
        ticks, flushes = example
        await reset(db)
        stored = await write_all(db, flushes)
        assert sum(stored) == len(ticks)
        split = await check_consistent(db, ticks)
        await reset(db)
        assert await write_all(db, [ticks]) == [len(ticks)]
        assert await check_consistent(db, ticks) == split

    await check_property(split_or_whole, body)


@st.composite
def rewrites(draw) -> tuple[list[Tick], list[list[Tick]], list[list[Tick]]]:
    """A tick set in flushes, then a selection of it (with repeats) in 1-3 flushes again."""
    ticks = draw(tick_sets)
    again = draw(st.lists(st.sampled_from(ticks), min_size=1, max_size=2 * len(ticks)))
    return ticks, draw(partitions(ticks)), draw(partitions(again))


async def test_writing_ticks_again_changes_nothing(db):
    async def body(example: tuple) -> None:
        ticks, flushes, again = example
        await reset(db)
        await write_all(db, flushes)
        before = await check_consistent(db, ticks)
        raw_before = await db.fetchval("SELECT count(*) FROM ticks_raw")
        assert await write_all(db, again) == [0] * len(again)  # nothing new
        assert await check_consistent(db, ticks) == before
        # The audit stream keeps every accepted item, duplicates included.
        rewritten = sum(len(f) for f in again)
        assert await db.fetchval("SELECT count(*) FROM ticks_raw") == raw_before + rewritten

    await check_property(rewrites(), body)


async def test_overlapping_flushes_neither_deadlock_nor_double_count(db):
    """Flushes run at once (WORKER_CONCURRENCY > 1, or several consumers), some of them
    repeating ticks of the others: each tick is stored by exactly one of them, and the
    result is what one flush of the whole set gives. Rows are fed to every insert in key
    order, so concurrent flushes lock in the same order and never deadlock."""

    async def body(example: tuple) -> None:
        ticks, flushes, again = example
        await reset(db)
        store = TickStore(db)
        stored: list[int] = []

        async def write(flush: Sequence[Tick]) -> None:
            stored.append(len(await store.write(parts_of(flush))))

        async with trio.open_nursery() as nursery:
            for flush in [*flushes, *again]:
                nursery.start_soon(write, flush)
        assert sum(stored) == len(ticks)
        together = await check_consistent(db, ticks)
        await reset(db)
        await write_all(db, [ticks])
        assert await check_consistent(db, ticks) == together

    await check_property(rewrites(), body)


async def test_a_broken_merge_fails_the_property(db):
    """The harness itself: examples reach the database and their failures reach pytest."""

    async def body(ticks: list[Tick]) -> None:
        await reset(db)
        await write_all(db, [ticks])
        await db.execute("UPDATE ohlc_1m SET count = count + 1")  # what a double count does
        assert await differences(db) == []

    quick = settings(SETTINGS, max_examples=3, phases=[Phase.generate])
    with pytest.raises(AssertionError):
        await trio.to_thread.run_sync(run_property, tick_sets, body, quick)


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE candles_1h SET volume = volume + 1",  # an hour counted twice
        "UPDATE candles_1h SET close_key = close_key || 'x'",  # the next merge would err
        "DELETE FROM candles_1h",  # an hour never rolled up
    ],
    ids=["sum", "close key", "missing"],
)
async def test_a_wrong_hour_fails_the_consistency_check(db, damage):
    await reset(db)
    await write_all(db, [[("BTCUSDT", "k", BASE_US, 10.0, 1.0, "feed-a")]])
    assert await differences(db) == []
    await db.execute(damage)
    assert await differences(db) != []


async def test_without_raw_audit_the_same_ticks_are_stored_and_nothing_audited(db):
    """RAW_AUDIT=0 drops the audit insert from the flush statement, nothing else."""
    await reset(db)
    part = TickColumns(
        "BTCUSDT", "t", 1_700_000_000_000_000, ["a", "b", "a"],
        [1_700_000_000_000_000, 1_700_000_001_000_000, 1_700_000_000_000_000],
        [10.0, 11.0, 10.0], [1.0, 2.0, 1.0],
    )  # fmt: skip
    stored = await TickStore(db, raw_audit=False).write([part])
    assert [(t.key, t.close, t.count) for t in stored] == [("a", 11.0, 2), ("b", 11.0, 2)]
    assert await db.fetchval("SELECT count(*) FROM ticks_history") == 2
    assert await db.fetchval("SELECT count(*) FROM ticks_raw") == 0
    assert await differences(db) == []
