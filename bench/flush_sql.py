"""Where a flush's time goes in PostgreSQL: the writer's one flush statement, measured.

The writer's flush (`tickhub.sql.store`) is one statement. This runs it through the
writer's own call (`TickStore.write`) on flushes of `--size` rows (4 symbols, unique keys,
as `bench/ingest.py`'s DB-only pass) against an embedded PostgreSQL (fsync off), and saves
an `EXPLAIN ANALYZE` of the statement (bench/results/flush_sql-explain.txt: where the time
goes inside it). In the same run, for ratios:

- a bare COPY of the same rows into a temporary table without keys (the ceiling of COPY),
- one `SELECT 1` round trip through the trio → asyncio bridge,
- the same flush statement, and `SELECT 1`, on one asyncpg connection in a plain asyncio loop
  (no bridge, no pool, no tickhub around it): the floor of the database step of any event
  path that commits before it publishes, on this stack (with `--size 1`: a one-tick flush),
- with `--what-if`: RAW_AUDIT=0 beside RAW_AUDIT=1, and no symbol live (nobody subscribes:
  the flush returns keys only) beside every symbol live, flush by flush in turn.

Prints one JSON line and appends a row to bench/results/flush_sql.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import trio

from bench.machine import machine
from bench.report import RESULTS_DIR, append_row, now_stamp, run_bench
from bench.stack import SYMBOLS
from tickhub.bridge import open_bridge
from tickhub.messages import TickColumns
from tickhub.sql.db import open_database
from tickhub.sql.embedded import EmbeddedPostgres
from tickhub.sql.migrate import migrate_up
from tickhub.sql.store import TickStore, flush_arguments, flush_statement

RESULTS = RESULTS_DIR / "flush_sql.md"
COLUMNS = [
    "date", "rows/flush", "flushes", "flush ms", "DB-only rows/s", "COPY-only rows/s",
    "DB-only ÷ COPY-only", "round trip ms", "raw audit on rows/s", "raw audit off rows/s",
    "none live rows/s", "bare asyncpg flush ms", "bare asyncpg round trip ms",
]  # fmt: skip
STAGE_COLUMNS = ["symbol", "idem_key", "ts_us", "price", "volume", "source", "received_us"]


def parts_for(tag: str, n: int, size: int, base_us: int) -> list[TickColumns]:
    parts = []
    for s, symbol in enumerate(SYMBOLS):
        idx = range(s, size, len(SYMBOLS))
        parts.append(
            TickColumns(
                symbol,
                "bench-sql",
                base_us + n * 1_000_000 + 999_000,  # received: after the ticks, as in life
                [f"{tag}-{n}-{i}" for i in idx],
                [base_us + n * 1_000_000 + i * 1000 for i in idx],
                [100 + (i % 97) / 100 for i in idx],
                [float(1 + i % 3) for i in idx],
            )
        )
    return parts


def records_of(parts: list[TickColumns]) -> list[tuple]:
    return [
        (p.symbol, k, ts, pr, v, p.source, p.received_us)
        for p in parts
        for k, ts, pr, v in zip(p.keys, p.ts_us, p.price, p.volume, strict=True)
    ]


async def explain(conn: asyncpg.Connection, parts: list[TickColumns]) -> str:
    """EXPLAIN ANALYZE of the flush statement on one more flush (rolled back)."""
    tr = conn.transaction()
    await tr.start()
    try:
        sql = "EXPLAIN (ANALYZE, BUFFERS) " + flush_statement(raw_audit=True)
        rows = await conn.fetch(sql, *flush_arguments(parts))
        return "\n".join(r[0] for r in rows)
    finally:
        await tr.rollback()


async def copy_only(conn: asyncpg.Connection, records: list[tuple]) -> float:
    await conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS bare_stage (symbol text, idem_key text, ts_us bigint,"
        " price float8, volume float8, source text, received_us bigint)"
    )
    started = time.perf_counter()
    await conn.copy_records_to_table("bare_stage", records=records, columns=STAGE_COLUMNS)
    took = time.perf_counter() - started
    await conn.execute("TRUNCATE bare_stage")
    return took


async def interleaved(db, args, variants: dict[str, Any], base_us: int) -> dict:
    """rows/s of each way to write a flush, flushes taken in turn so that drift hits every
    one alike."""
    spent = dict.fromkeys(variants, 0.0)
    for n in range(args.flushes):
        for k, (name, write) in enumerate(variants.items()):
            parts = parts_for(f"{name}", n, args.size, base_us + k * 400_000_000)
            started = time.perf_counter()
            await write(parts)
            spent[name] += time.perf_counter() - started
    return {name: round(args.size * args.flushes / t) for name, t in spent.items()}


def bare_asyncpg(url: str, flushes: list[list[TickColumns]]) -> tuple[float, float]:
    """(flush ms, `SELECT 1` ms), on average, on one asyncpg connection in a plain asyncio
    loop of its own (run it in a thread): the statement with nothing of tickhub around it."""

    async def run() -> tuple[float, float]:
        conn = await asyncpg.connect(url)
        try:
            await conn.set_type_codec(
                "numeric", encoder=str, decoder=float, schema="pg_catalog", format="text"
            )
            sql = flush_statement(raw_audit=True)
            started = time.perf_counter()
            for parts in flushes:
                await conn.fetch(sql, *flush_arguments(parts))
            flush_s = (time.perf_counter() - started) / len(flushes)
            started = time.perf_counter()
            for _ in range(200):
                await conn.fetchval("SELECT 1")
            return 1000 * flush_s, (time.perf_counter() - started) / 200 * 1000
        finally:
            await conn.close()

    return asyncio.run(run())


async def what_ifs(db, args, base_us: int) -> dict:
    """The writer's call with RAW_AUDIT=0 beside RAW_AUDIT=1, and with no symbol live (no
    one subscribes: keys back, no candles) beside every symbol live, flush by flush in turn."""
    on, off = TickStore(db, True), TickStore(db, False)
    variants = {
        "raw_audit_on": on.write,
        "raw_audit_off": off.write,
        "none_live": functools.partial(on.write, live=()),
    }
    return await interleaved(db, args, variants, base_us + 4_000_000_000)


async def main(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg", fsync=False)
        url = pg.start()
        try:
            async with open_bridge(), open_database(url) as db:
                await migrate_up(db)
                base_us = int((time.time() - 7200) * 1_000_000)
                tick_store = TickStore(db, raw_audit=True)
                for n in range(args.warmup):
                    await tick_store.write(parts_for("warm", n, args.size, base_us))
                # the writer's own call, end to end (later minutes: no key collides)
                started = time.perf_counter()
                for n in range(args.flushes):
                    await tick_store.write(parts_for("w", n, args.size, base_us + 3_600_000_000))
                db_only_s = time.perf_counter() - started
                what_if = {}
                if args.what_if:
                    what_if = await what_ifs(db, args, base_us)
                copy_s = 0.0
                for n in range(args.flushes):
                    records = records_of(parts_for("c", n, args.size, base_us))
                    copy_s += await db.run(copy_only, records)
                parts = parts_for("e", 0, args.size, base_us + 7_200_000_000)
                plan = await db.run(explain, parts)
                (RESULTS_DIR / "flush_sql-explain.txt").write_text(
                    f"EXPLAIN ANALYZE of the flush statement, {args.size} rows, after "
                    f"{args.warmup + (4 if args.what_if else 1) * args.flushes} flushes:\n\n"
                    f"{plan}\n"
                )
                started = time.perf_counter()
                for _ in range(200):
                    await db.fetchval("SELECT 1")
                round_trip_ms = (time.perf_counter() - started) / 200 * 1000
                flushes = [
                    parts_for("b", n, args.size, base_us + 8_000_000_000)
                    for n in range(args.flushes)
                ]
                bare_flush_ms, bare_round_trip_ms = await trio.to_thread.run_sync(
                    bare_asyncpg, url, flushes
                )
        finally:
            pg.stop()
    rows = args.size * args.flushes
    return {
        "bench": "flush_sql",
        "size": args.size,
        "flushes": args.flushes,
        "postgres": machine()["postgres"],
        "flush_ms": round(1000 * db_only_s / args.flushes, 2),
        "db_only_rows_per_s": round(rows / db_only_s),
        "copy_only_rows_per_s": round(rows / copy_s),
        "db_only_over_copy_only": round(copy_s / db_only_s, 3),
        "round_trip_ms": round(round_trip_ms, 3),
        "bare_asyncpg_flush_ms": round(bare_flush_ms, 3),
        "bare_asyncpg_round_trip_ms": round(bare_round_trip_ms, 3),
        "what_if_db_only_rows_per_s": what_if,
    }


def record(result: dict) -> None:
    what_if = result["what_if_db_only_rows_per_s"]
    append_row(
        RESULTS,
        COLUMNS,
        [
            now_stamp(), result["size"], result["flushes"], result["flush_ms"],
            result["db_only_rows_per_s"], result["copy_only_rows_per_s"],
            result["db_only_over_copy_only"], result["round_trip_ms"],
            what_if.get("raw_audit_on", "-"), what_if.get("raw_audit_off", "-"),
            what_if.get("none_live", "-"), result["bare_asyncpg_flush_ms"],
            result["bare_asyncpg_round_trip_ms"],
        ],
    )  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=500, help="rows per flush")
    parser.add_argument("--flushes", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--what-if", action="store_true", help="also: RAW_AUDIT=0 beside 1, none live beside all"
    )
    run_bench(main, parser.parse_args(), record)
