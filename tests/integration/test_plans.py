"""Read queries keep their cost as history grows: on tables of a few hundred thousand rows
(enough for the planner to tell an index from a scan), each one reads its index, and no step
of its plan touches more rows than the answer can need — never the whole symbol. An empty
table would hide a bad plan.

Each query is checked with the plan PostgreSQL makes for its parameters and with the generic
plan a prepared statement switches to after a few calls (asyncpg prepares every statement).
The checks hold for day-partitioned tick tables too: a relation counts as `ticks_history`
when its name starts with it (a partition), and an Append of per-partition index scans
passes as long as none of them scans and together they stay within the bound.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
import trio

from tickhub.bridge import open_bridge
from tickhub.sql.db import Database, open_database
from tickhub.sql.embedded import EmbeddedPostgres
from tickhub.sql.migrate import migrate_up
from tickhub.sql.queries import (
    ACTIVE_SYMBOLS,
    HISTORY_PAGE,
    HISTORY_TIES,
    INTERVALS,
    LATEST_TICK,
    METRICS,
    SOURCE_STATS,
    SYMBOLS,
    WINDOWS,
    candle_fetch,
    candles_sql,
)

PLANS_DATABASE = "tickhub_plans"
TICK_TABLES = ("ticks_history", "ticks_raw", "ohlc_1m", "metrics_1m", "candles_1h")
TICKS = 300_000  # over 3 symbols, one every 10 ms
MINUTES = 100_000  # per symbol: 69 days, so a page of 1-day candles is a fraction of it
START_US = 1_767_225_600_000_000  # 2026-01-01 00:00 UTC
FAR_FUTURE_US = START_US + 10**15  # the API's default `before`: from the newest
MIDDLE_US = START_US + MINUTES // 2 * 60_000_000  # a page deep in the history
# Small pages, so that a query reading the whole symbol (100,000 minutes) is far above the
# bound even for 1-day candles (15 days of minutes).
CANDLE_LIMIT = 5
HISTORY_LIMIT = 200

FILL = [
    # The ticks' day partition (migration 0004): the flush makes it; a fill in SQL must.
    "SELECT tickhub_ensure_partitions('ticks_history', ARRAY[date '2026-01-01'])",
    f"""
    INSERT INTO ticks_history (symbol, idem_key, ts, price, volume, source, received_at)
    SELECT 'S' || (i % 3), md5('k' || i),
           timestamptz '2026-01-01 00:00:00+00' + i * interval '10 ms', 100 + i % 7, 1, 'fill',
           timestamptz '2026-01-01 00:00:00+00' + i * interval '10 ms'
    FROM generate_series(1, {TICKS}) AS i
    """,
    f"""
    INSERT INTO ohlc_1m (symbol, bucket_start, open, open_ts, open_key, high, low, close,
                         close_ts, close_key, volume, count)
    SELECT s, m, 100, m, 'k', 101, 99, 100.5, m, 'k', 2, 3
    FROM unnest(array['S0', 'S1', 'S2']) AS s,
         generate_series(timestamptz '2026-01-01 00:00:00+00',
                         timestamptz '2026-01-01 00:00:00+00' + {MINUTES - 1} * interval '1 min',
                         interval '1 minute') AS m
    """,
    f"""
    INSERT INTO metrics_1m (symbol, bucket_start, count, sum, min, max, last, last_ts, last_key,
                            volume, pv_sum)
    SELECT s, m, 3, 300, 99, 101, 100.5, m, 'k', 2, 200
    FROM unnest(array['S0', 'S1', 'S2']) AS s,
         generate_series(timestamptz '2026-01-01 00:00:00+00',
                         timestamptz '2026-01-01 00:00:00+00' + {MINUTES - 1} * interval '1 min',
                         interval '1 minute') AS m
    """,
    # The hours of those minutes, as the flush would have kept them (migration 0005).
    "SELECT tickhub_rebuild_candles_1h()",
    "INSERT INTO symbols (symbol) VALUES ('S0'), ('S1'), ('S2')",
    "INSERT INTO source_stats VALUES ('fill', 300000, now(), now())",
]


async def build(url: str, admin_url: str) -> None:
    async with open_bridge():
        async with open_database(admin_url) as admin:
            await admin.execute(f"DROP DATABASE IF EXISTS {PLANS_DATABASE}")
            await admin.execute(f"CREATE DATABASE {PLANS_DATABASE}")
        async with open_database(url, timeout_s=120) as db:
            await migrate_up(db)
            for sql in FILL:
                await db.execute(sql)
            await db.execute("VACUUM ANALYZE")


@pytest.fixture(scope="module")
def plans_url(pg: EmbeddedPostgres) -> Iterator[str]:
    """A database of its own, filled once for the module (a few seconds), not per test."""
    url = pg.url.rsplit("/", 1)[0] + "/" + PLANS_DATABASE
    trio.run(build, url, pg.url)
    yield url


@pytest.fixture
async def plans_db(plans_url: str) -> AsyncIterator[Database]:
    async with open_bridge(), open_database(plans_url) as database:
        yield database


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan tree."""
    out = [plan]
    for child in plan.get("Plans", ()):
        out.extend(nodes(child))
    return out


async def analyzed_plan(db: Database, sql: str, args: tuple, *, generic: bool) -> list[dict]:
    """The nodes of the plan as run (EXPLAIN ANALYZE): with the values bound (a custom plan),
    or as a prepared statement's generic plan, which does not know them."""

    async def work(conn: Any) -> Any:
        if not generic:
            return await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
        async with conn.transaction():
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            await conn.execute(f"PREPARE plan_under_test AS {sql}")
            try:  # EXECUTE takes its values as literals, not as bound parameters
                values = f"({', '.join(literal(a) for a in args)})" if args else ""
                return await conn.fetchval(
                    f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE plan_under_test{values}"
                )
            finally:
                await conn.execute("DEALLOCATE plan_under_test")

    raw = await db.run(work)
    return nodes((orjson.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"])


async def explain(db, sql: str, *args: Any) -> list[dict[str, Any]]:
    """The nodes of the plan PostgreSQL makes for these values (EXPLAIN, not run)."""
    raw = await db.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
    return nodes((orjson.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"])


async def day_indexes(db) -> set[str]:
    """The day partitions' copies of ticks_history_symbol_ts (migration 0004)."""
    rows = await db.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'ticks_history_symbol_ts'::regclass"
    )
    return {r[0] for r in rows}


def literal(value: str | int) -> str:
    return "'" + value.replace("'", "''") + "'" if isinstance(value, str) else str(int(value))


def table_of(node: dict[str, Any]) -> str | None:
    """The tick table a node reads (a partition counts as its parent), if any."""
    name = node.get("Relation Name") or ""
    return next((t for t in TICK_TABLES if name.startswith(t)), None)


def rows_touched(node: dict[str, Any]) -> float:
    """Rows a node produced or read and threw away, over all its loops."""
    per_loop = (
        node.get("Actual Rows", 0)
        + node.get("Rows Removed by Filter", 0)
        + node.get("Rows Removed by Index Recheck", 0)
    )
    return per_loop * node.get("Actual Loops", 0)


def assert_bounded(plan: list[dict], tables: set[str], bound: int) -> None:
    """Every tick table the query needs is read through one of its indexes, never by a
    sequential scan, and no node (scan, sort, join, aggregate) touches more than `bound`
    rows — a sort or aggregate of the whole symbol fails here even if it reads an index."""
    read = {table_of(n) for n in plan} - {None}
    assert read == tables, (read, plan)
    for n in plan:
        table = table_of(n)
        assert not (table and "Seq Scan" in n["Node Type"]), n
        assert rows_touched(n) <= bound, (n["Node Type"], rows_touched(n), bound, n)
    for table in tables:
        assert any((n.get("Index Name") or "").startswith(table) for n in plan), (table, plan)


CASES: list[tuple[str, str, tuple, set[str], int]] = [
    ("latest tick", LATEST_TICK, ("S1",), {"ticks_history"}, 1),
    (
        "history page",
        HISTORY_PAGE,
        ("S1", FAR_FUTURE_US, HISTORY_LIMIT + 1),
        {"ticks_history"},
        HISTORY_LIMIT + 1,
    ),
    (
        "history page deep in the past",
        HISTORY_PAGE,
        ("S1", START_US + TICKS * 10_000 // 2, HISTORY_LIMIT + 1),
        {"ticks_history"},
        HISTORY_LIMIT + 1,
    ),
    ("history ties", HISTORY_TIES, ("S1", START_US + 10_000), {"ticks_history"}, 1),
]
for name, seconds in INTERVALS.items():
    # Whole hours read the hours (the API's path) and, as the reference the roll-up is
    # tested against, can still be grouped from the minutes.
    for hourly in (True, False) if seconds % 3600 == 0 else (False,):
        for fill in (False, True):
            fetch = candle_fetch(CANDLE_LIMIT, fill)
            for where, before in (("newest", FAR_FUTURE_US), ("deep", MIDDLE_US)):
                CASES.append(
                    (
                        f"candles {name}{' fill' if fill else ''} {where}"
                        f"{' from minutes' if seconds % 3600 == 0 and not hourly else ''}",
                        candles_sql(seconds, CANDLE_LIMIT, fill, hourly=hourly),
                        ("S1", before, fetch, CANDLE_LIMIT),
                        {"candles_1h"} if hourly else {"ohlc_1m", "metrics_1m"},
                        # the page's buckets, one more (the bound's own bucket), in hours
                        # or minutes
                        (fetch + 1) * (seconds // 3600 if hourly else seconds // 60),
                    )
                )
for name, seconds in WINDOWS.items():
    CASES.append(
        (f"metrics {name}", METRICS, ("S1", seconds), {"ohlc_1m", "metrics_1m"}, seconds // 60)
    )
CASES += [
    ("stats: sources", SOURCE_STATS, (), set(), 10),
    ("stats: symbols", ACTIVE_SYMBOLS, (), set(), 10),
    ("symbols", SYMBOLS, (), set(), 10),
]


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
@pytest.mark.parametrize(
    ("name", "sql", "args", "tables", "bound"), CASES, ids=[c[0] for c in CASES]
)
async def test_read_plan_stays_within_its_page(
    plans_db: Database,
    name: str,
    sql: str,
    args: tuple,
    tables: set[str],
    bound: int,
    generic: bool,
) -> None:
    plan = await analyzed_plan(plans_db, sql, args, generic=generic)
    assert_bounded(plan, tables, bound)


async def test_the_checks_see_a_plan_that_reads_the_whole_symbol(plans_db: Database) -> None:
    """The bound is not vacuous: the candle query without its lower bound (as it was) reads
    every minute of the symbol, and fails it."""
    unbounded = """
        SELECT date_bin(interval '1 day', o.bucket_start, timestamptz '2000-01-01 00:00:00+00')
               AS bucket, max(o.high) AS high
        FROM ohlc_1m o JOIN metrics_1m m USING (symbol, bucket_start)
        WHERE o.symbol = $1 GROUP BY 1 ORDER BY 1 DESC LIMIT $2
    """
    plan = await analyzed_plan(plans_db, unbounded, ("S1", 15), generic=False)
    with pytest.raises(AssertionError):
        assert_bounded(plan, {"ohlc_1m", "metrics_1m"}, 16 * 1440)
