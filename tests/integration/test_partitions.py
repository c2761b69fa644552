"""Day partitions on a real PostgreSQL (migration 0004): a re-sent tick is a duplicate at
any age, a day with no partition is made by the flush (also by several at once, and again
after retention dropped it), the keeper makes the days ahead, retention drops whole days
and keeps today and the candles, and the read queries still read one index per day.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import trio

from tests.conftest import psql
from tests.consistency import differences
from tests.integration.test_pipeline import ticks
from tests.integration.test_plans import day_indexes, explain, nodes
from tickhub.actors.partitions import PartitionKeeper
from tickhub.actors.retention import RetentionSweeper
from tickhub.actors.supervisor import ActorHealth
from tickhub.bridge import open_bridge
from tickhub.messages import TickColumns
from tickhub.sql.db import Database, open_database
from tickhub.sql.migrate import migrate_down, migrate_up
from tickhub.sql.partitions import DayPartitions, day_of
from tickhub.sql.queries import LATEST_TICK, LATEST_TICK_SINCE, Queries
from tickhub.sql.retention import TickRetention
from tickhub.sql.store import TickStore

DAY_S = 86_400
# 2024-03-01 00:00Z and the days after it: older than anything the keeper makes.
OLD_DAY_S = 1_709_251_200


def part(symbol: str, keys: list[str], ts_s: list[float], received_s: float | None = None):
    """One symbol's ticks of one batch, as the writer hands them to the store."""
    return TickColumns(
        symbol=symbol,
        source="test",
        received_us=int((received_s or time.time()) * 1e6),
        keys=keys,
        ts_us=[int(t * 1e6) for t in ts_s],
        price=[100.0 + i for i in range(len(keys))],
        volume=[1.0] * len(keys),
    )


async def partitions_of(db, table: str) -> list[str]:
    rows = await db.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = $1::text::regclass ORDER BY 1",
        table,
    )
    return [r[0] for r in rows]


def name(table: str, day_s: float) -> str:
    return table + "_p" + time.strftime("%Y%m%d", time.gmtime(day_s))


async def test_a_resent_tick_is_a_duplicate_on_an_old_day_with_no_partition(db):
    store = TickStore(db)
    assert name("ticks_history", OLD_DAY_S) not in await partitions_of(db, "ticks_history")
    first = await store.write([part("OLD", ["a", "b"], [OLD_DAY_S + 10, OLD_DAY_S + 20])])
    assert [t.key for t in first] == ["a", "b"]
    assert name("ticks_history", OLD_DAY_S) in await partitions_of(db, "ticks_history")
    # The same ticks again, from this store and from another process's (an empty cache).
    assert await store.write([part("OLD", ["a", "b"], [OLD_DAY_S + 10, OLD_DAY_S + 20])]) == []
    assert await TickStore(db).write([part("OLD", ["a"], [OLD_DAY_S + 10])]) == []
    assert await db.fetchval("SELECT count(*) FROM ticks_history") == 2
    assert await db.fetchval("SELECT count(*) FROM ticks_raw") == 5  # the audit keeps all
    assert await differences(db) == []


async def test_a_resent_tick_is_a_duplicate_across_days(db):
    """A batch spanning midnight, sent again: each tick is found in its own day."""
    store = TickStore(db)
    midnight = (int(time.time()) // DAY_S) * DAY_S
    keys, ts = ["late", "early"], [midnight - 0.5, midnight + 0.5]
    assert len(await store.write([part("MID", keys, ts)])) == 2
    assert await TickStore(db).write([part("MID", keys, ts)]) == []
    rows = await db.fetch("SELECT tableoid::regclass::text, idem_key FROM ticks_history")
    assert sorted(rows) == [
        (name("ticks_history", midnight - DAY_S), "late"),
        (name("ticks_history", midnight), "early"),
    ]
    assert await differences(db) == []


async def test_a_key_sent_again_with_another_ts_is_another_tick(db):
    """What README says: the key is (symbol, key, ts), so another instant is another row."""
    store = TickStore(db)
    await store.write([part("K", ["same"], [OLD_DAY_S + 1])])
    await store.write([part("K", ["same"], [OLD_DAY_S + DAY_S + 1])])
    assert await db.fetchval("SELECT count(*) FROM ticks_history WHERE idem_key = 'same'") == 2
    assert await differences(db) == []


async def test_a_webhook_replay_of_an_old_day_is_stored_once(tickhub, db):
    items = ticks("REPLAY", 30, start=OLD_DAY_S + 3 * DAY_S, step=60)
    for _ in range(2):
        response = await tickhub.post_ticks(items)
        assert response.status_code == 202
    assert response.json()["duplicates"] == 30
    assert await db.fetchval("SELECT count(*) FROM ticks_history") == 30
    assert await differences(db) == []


async def test_concurrent_flushes_make_the_same_new_day_once(db):
    """Six processes' stores (each with its own empty cache) reach one new day at once,
    with overlapping keys: every tick is stored once and no flush fails."""
    day = OLD_DAY_S + 10 * DAY_S
    results: list[int] = []

    async def flush(k: int) -> None:
        n = range(k, k + 20)  # neighbours share 19 of 20 ticks (same key, same ts)
        stored = await TickStore(db).write(
            [part("RACE", [f"k{i}" for i in n], [day + i for i in n])]
        )
        results.append(len(stored))

    async with trio.open_nursery() as nursery:
        for k in range(6):
            nursery.start_soon(flush, k)
    assert sum(results) == 25 == await db.fetchval("SELECT count(*) FROM ticks_history")
    assert name("ticks_history", day) in await partitions_of(db, "ticks_history")
    assert await differences(db) == []


async def test_a_day_dropped_behind_the_stores_back_is_made_again(db):
    """Retention in another process drops a day this store knows: the flush still stores."""
    store = TickStore(db)
    day = OLD_DAY_S + 20 * DAY_S
    await store.write([part("GONE", ["a"], [day + 1])])
    await db.execute(f"DROP TABLE {name('ticks_history', day)}")
    stored = await store.write([part("GONE", ["b"], [day + 2])])
    assert [t.key for t in stored] == ["b"]
    assert await db.fetchval("SELECT idem_key FROM ticks_history WHERE symbol = 'GONE'") == "b"


async def test_the_keeper_makes_yesterday_to_a_week_ahead(db):
    today = int(time.time()) // DAY_S * DAY_S
    await db.execute(f"DROP TABLE IF EXISTS {name('ticks_raw', today + 3 * DAY_S)}")
    keeper = PartitionKeeper(DayPartitions(db), ActorHealth("partitions", True), every_s=3600)
    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run)
        with trio.fail_after(10):
            while keeper.health.last_activity is None:  # noqa: ASYNC110 (the actor's record)
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    for table in ("ticks_history", "ticks_raw"):
        have = set(await partitions_of(db, table))
        assert {name(table, today + d * DAY_S) for d in range(-1, 8)} <= have


async def test_the_process_keeps_the_partitions(tickhub):
    body = (await tickhub.get("/ops/health/readiness")).json()
    assert "partitions" in {a["name"] for a in body["actors"]}


async def test_retention_drops_old_days_and_keeps_today_and_the_candles(tickhub, db):
    now = time.time()
    today = int(now) // DAY_S * DAY_S
    old = today - 10 * DAY_S
    await tickhub.post_ticks(ticks("OLD", 20, start=old + 600))
    await tickhub.post_ticks(ticks("NEW", 20, start=now - 60))
    # The audit rows of OLD as if stored ten days ago (moved into that day's partition).
    await DayPartitions(db).create([], [day_of(int(old * 1e6))])
    await db.execute(
        "UPDATE ticks_raw SET received_at = received_at - interval '10 days' WHERE symbol = 'OLD'"
    )
    candles = await db.fetch("SELECT * FROM ohlc_1m ORDER BY symbol, bucket_start")
    health = ActorHealth("retention", True)
    sweeper = RetentionSweeper(TickRetention(db), 7, health, batch=2, pause_s=0)
    dropped = await sweeper.sweep()
    assert name("ticks_history", old) in dropped["ticks_history"]
    assert name("ticks_raw", old) in dropped["ticks_raw"]
    for table in ("ticks_history", "ticks_raw"):
        left = await partitions_of(db, table)
        assert all(p >= name(table, today - 7 * DAY_S) for p in left), left  # kept: 7 days on
        assert name(table, today) in left
        assert [r[0] for r in await db.fetch(f"SELECT DISTINCT symbol FROM {table}")] == ["NEW"]
    assert await db.fetch("SELECT * FROM ohlc_1m ORDER BY symbol, bucket_start") == candles
    assert await sweeper.sweep() == {"ticks_raw": [], "ticks_history": []}


# --- plans ------------------------------------------------------------------------------

FILL = """
INSERT INTO ticks_history (symbol, idem_key, ts, price, volume, source, received_at)
SELECT 'S' || (i % 3), 'k' || i, timestamptz '2025-06-01' + i * interval '1 s',
       100 + i % 7, 1, 'fill', now()
FROM generate_series(1, 300000) AS i
"""
JUNE_1 = 1_748_736_000  # 2025-06-01 00:00Z; FILL covers it and the three days after


class _Recorder:
    """A database that records the statement a query would run (and finds nothing)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []

    async def fetch(self, sql: str, *args: Any) -> list:
        self.calls.append((sql, args))
        return []


async def _filled(db) -> None:
    days = [day_of((JUNE_1 + d * DAY_S) * 1_000_000) for d in range(4)]
    await DayPartitions(db).create(days, [])
    await db.execute(FILL)
    await db.execute("ANALYZE ticks_history")


async def test_the_latest_tick_reads_the_newest_day_first(db):
    await _filled(db)
    plan = await explain(db, LATEST_TICK, "S1")
    kinds = [n["Node Type"] for n in plan]
    assert kinds[:2] == ["Limit", "Append"], kinds  # days in order: no merge, no sort
    assert "Seq Scan" not in kinds and "Sort" not in kinds, kinds
    scans = [n for n in plan if n["Node Type"] == "Index Scan"]
    assert scans and {n["Index Name"] for n in scans} <= await day_indexes(db)
    read = [n["Relation Name"] for n in scans]
    assert read == sorted(read, reverse=True), read  # newest day first: stops at the first hit
    assert name("ticks_history", JUNE_1 + 3 * DAY_S) in read


async def _executed_plan(conn, sql: str, mode: str, *args: Any) -> list[dict[str, Any]]:
    """The plan a prepared statement ran with under `plan_cache_mode = mode`: the nodes the
    executor opened (a day pruned at start-up is not among them)."""
    await conn.execute(f"SET plan_cache_mode = {mode}")
    statement = await conn.prepare("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)
    try:
        raw = await statement.fetchval(*args)
    finally:
        await conn.execute("RESET plan_cache_mode")
    return nodes((orjson.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"])


async def test_the_latest_tick_opens_only_the_days_from_the_newest_close(db):
    """A year of empty days before the data: the bound from the newest candle leaves every
    day before it out of the plan, custom or generic (pruned when the executor starts)."""
    year = [day_of((JUNE_1 - d * DAY_S) * 1_000_000) for d in range(1, 366)]
    await DayPartitions(db).create(year, [])
    store = TickStore(db)
    await store.write([part("S1", ["a", "b"], [JUNE_1 + DAY_S + 5, JUNE_1 + 2 * DAY_S + 7])])
    await store.write([part("S1", ["c"], [JUNE_1 + 3 * DAY_S + 9])])
    since = await db.fetchval("SELECT max(close_ts) FROM ohlc_1m WHERE symbol = 'S1'")
    days = await partitions_of(db, "ticks_history")
    later = {d for d in days if d >= name("ticks_history", JUNE_1 + 3 * DAY_S)}
    assert len(days) - len(later) > 365
    for mode in ("force_custom_plan", "force_generic_plan"):
        plan = await db.run(_executed_plan, LATEST_TICK_SINCE, mode, "S1", since)
        opened = {n["Relation Name"] for n in plan if "Relation Name" in n}
        assert opened and opened <= later, (mode, sorted(opened - later)[:5])
    latest = await Queries(db).latest_tick("S1")
    assert latest is not None and latest["ts"] == JUNE_1 + 3 * DAY_S + 9


async def test_the_latest_tick_without_a_candle_reads_every_day(db):
    """Rows written around the flush (no candle): found over every day all the same."""
    await _filled(db)
    latest = await Queries(db).latest_tick("S1")
    newest = await db.fetchrow(LATEST_TICK, "S1")
    assert latest is not None and latest == dict(newest)


async def test_a_history_page_reads_only_its_days(db):
    await _filled(db)
    recorder = _Recorder()
    before_us = (JUNE_1 + DAY_S + 3600) * 1_000_000  # one hour into the second day
    await Queries(recorder).history("S1", 200, before_us)  # type: ignore[arg-type]
    sql, args = recorder.calls[0]
    plan = await explain(db, sql, *args)
    kinds = [n["Node Type"] for n in plan]
    assert "Seq Scan" not in kinds and "Sort" not in kinds, kinds
    scans = [n for n in plan if n["Node Type"] == "Index Scan"]
    assert {n["Index Name"] for n in scans} <= await day_indexes(db)
    read = {n["Relation Name"] for n in scans}
    assert {name("ticks_history", JUNE_1 + d * DAY_S) for d in (0, 1)} <= read, read
    later = {name("ticks_history", JUNE_1 + d * DAY_S) for d in (2, 3)}
    later.add(name("ticks_history", time.time()))
    assert not read & later, read  # pruned: the days after `before` are not in the plan


# --- migration ----------------------------------------------------------------------------

ROWS_0003 = """
INSERT INTO symbols (symbol) VALUES ('M1'), ('M2');
INSERT INTO ticks_history (symbol, idem_key, ts, price, volume, source, received_at)
SELECT 'M' || (1 + i % 2), 'key-' || i, timestamptz '2024-12-30' + i * interval '1 min',
       100 + i % 9, 1, 'old', timestamptz '2025-01-05' + i * interval '1 s'
FROM generate_series(1, 5000) AS i;
INSERT INTO ticks_raw (received_at, source, symbol, idem_key, ts, price, volume)
SELECT received_at, source, symbol, idem_key, ts, price, volume FROM ticks_history;
"""
CONTENT = {
    "ticks_history": "SELECT symbol, idem_key, ts, price, volume, source, received_at "
    "FROM ticks_history ORDER BY 1, 2",
    "ticks_raw": "SELECT id, received_at, source, symbol, idem_key, ts, price, volume "
    "FROM ticks_raw ORDER BY id",
    "ticks_recent": "SELECT * FROM ticks_recent ORDER BY symbol",
}


UNDONE = ["0005_candles_1h", "0004_partitioned_history"]


async def _content(db) -> dict[str, list]:
    return {k: [tuple(r) for r in await db.fetch(sql)] for k, sql in CONTENT.items()}


@asynccontextmanager
async def fresh_database(pg, name: str) -> AsyncIterator[Database]:
    """A database of its own on the test server, made anew, for a migration to run on."""
    await trio.to_thread.run_sync(psql, pg, f"DROP DATABASE IF EXISTS {name}")
    await trio.to_thread.run_sync(psql, pg, f"CREATE DATABASE {name}")
    async with open_bridge(), open_database(pg.url.rsplit("/", 1)[0] + "/" + name) as db:
        yield db


async def test_migration_0004_keeps_the_rows_both_ways(pg):
    async with fresh_database(pg, "mig_part") as db:
        await migrate_up(db)
        assert await migrate_down(db, 2) == UNDONE  # 0005 first: it reads 0004's tables
        for statement in ROWS_0003.split(";\n"):
            if statement.strip():
                await db.execute(statement)
        before = await _content(db)

        assert await migrate_up(db) == UNDONE[::-1]
        assert await _content(db) == before
        # 2024-12-30 00:01 to 2025-01-02 11:20: four days of ts; received over two hours.
        days = [f"ticks_history_p{d}" for d in ("20241230", "20241231", "20250101", "20250102")]
        assert await partitions_of(db, "ticks_history") == days
        assert await partitions_of(db, "ticks_raw") == ["ticks_raw_p20250105"]
        collations = await db.fetch(
            "SELECT c.relname, a.attcollation::regcollation::text FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid "
            "WHERE a.attname = 'idem_key' AND c.relname LIKE 'ticks_%'"
        )
        assert {r[1] for r in collations} == {'"C"'}, collations
        # The new rows continue the audit's numbering, and a day of 2030 is made on demand.
        await TickStore(db).write([part("M1", ["new"], [1_893_456_000], 1_893_456_000)])
        assert await db.fetchval("SELECT max(id) FROM ticks_raw") == 5001

        after_up = await _content(db)
        assert await migrate_down(db, 2) == UNDONE
        assert await _content(db) == after_up
        kinds = "SELECT relname, relkind::text FROM pg_class WHERE relname LIKE 'ticks_%'"
        assert {tuple(r) for r in await db.fetch(kinds)} >= {
            ("ticks_history", "r"),
            ("ticks_raw", "r"),
        }
        assert await partitions_of(db, "ticks_history") == []


async def test_migration_0004_down_refuses_a_key_with_two_timestamps(pg):
    async with fresh_database(pg, "mig_part_two") as db:
        await migrate_up(db)
        store = TickStore(db)
        await store.write([part("TWO", ["same"], [OLD_DAY_S])])
        await store.write([part("TWO", ["same"], [OLD_DAY_S + 1])])
        try:
            await migrate_down(db, 2)  # 0005 goes, then 0004 refuses
        except Exception as exc:  # the duplicate key, named
            assert "same" in str(exc)
        else:
            raise AssertionError("the down migration merged two ticks into one key")
        assert await db.fetchval("SELECT count(*) FROM ticks_history") == 2
        assert await db.fetchval("SELECT max(version) FROM schema_migrations") == 4
