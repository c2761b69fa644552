"""Durable ingest rate beside the DB-only limits, in one run.

- durable, `--mode all`: N concurrent posters (default 8) send batches of unique ticks to the
  webhook of a tickhub process (`tickhub run --role all`, embedded Postgres); there a 202
  means committed.
- durable, `--mode split`: the same posters against an api process; `--consumers` consumer
  processes and an embedded Redis between them.
- in both, rate = acknowledged ticks ÷ (first POST → last row visible in `ticks_history`).
  The posters encode every payload before the clock starts and run in this process, apart
  from tickhub's; `--env KEY=VALUE` passes settings to tickhub (e.g. BATCH_MAX=2000).
- DB-only limit (issue 17's definition, the ratio's denominator), right after on the same
  server: the same number of rows, in batches of `--limit-size` (5,000), each one
  transaction of a COPY into a raw table (the columns of `ticks_raw`, no keys) and an
  idempotent insert into a history table with the keys of `ticks_history` (a COPY into a
  temporary stage, then `INSERT … SELECT … ON CONFLICT (symbol, idem_key) DO NOTHING`). The
  rows are built before the clock starts.
- flush-SQL limit (a second column): the same rows through the writer's own flush
  (`TickStore.write`), no HTTP, no actors, in flushes of the batch size.
- PostgreSQL CPU per tick (the postmaster and its backends, from /proc) during the durable
  run and during the DB-only limit; tickhub's own CPU per tick during the durable run.

Prints one JSON line and appends a row to bench/results/ingest.md.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import httpx
import orjson
import psutil
import trio

from bench.cpu import proc_cpu_s, tree_cpu_s
from bench.flush_sql import parts_for
from bench.report import RESULTS_DIR, append_row, now_stamp, run_bench
from bench.stack import SYMBOLS, Stack
from tickhub.bridge import open_bridge
from tickhub.logs import configure_logging
from tickhub.sql.db import open_database
from tickhub.sql.store import TickStore

RESULTS = RESULTS_DIR / "ingest.md"


def batch_items(run: str, n: int, size: int, base_ts: float) -> list[dict]:
    return [
        {
            "symbol": SYMBOLS[i % len(SYMBOLS)],
            "price": 100 + (i % 97) / 100,
            "ts": base_ts + i / 1000,
            "volume": 1 + i % 3,
            "idempotencyKey": f"{run}-{n}-{i}",
        }
        for i in range(size)
    ]


async def durable(
    url: str, posters: int, batches: int, size: int, run: str = "d"
) -> tuple[int, float]:
    """Post the batches; `run` tags the keys, so a second run in one database is new ticks."""
    acked = 0
    base_ts = time.time() - 3000
    payloads = [
        orjson.dumps({"source": "bench", "items": batch_items(run, n, size, base_ts + n)})
        for n in range(posters * batches)
    ]

    async def poster(k: int, client: httpx.AsyncClient) -> None:
        nonlocal acked
        for payload in payloads[k::posters]:
            response = await client.post("/api/v1/webhooks/ticks", content=payload)
            response.raise_for_status()
            acked += response.json()["accepted"]

    limits = httpx.Limits(max_connections=posters)
    async with httpx.AsyncClient(
        base_url=url,
        headers={"x-api-key": "bench", "content-type": "application/json"},
        timeout=60,
        limits=limits,
    ) as client:
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for k in range(posters):
                nursery.start_soon(poster, k, client)
        elapsed = time.perf_counter() - started
    return acked, elapsed


# Stored ticks of the posters' source, kept by the flush statement itself: a count(*) of
# ticks_history would scan the whole table, seconds once it holds millions of rows.
STORED = "SELECT coalesce(sum(ticks), 0) FROM source_stats WHERE source = 'bench'"


async def durable_stored(
    db, url: str, posters: int, batches: int, size: int, run: str = "d"
) -> tuple[int, float]:
    """Acknowledged ticks and the seconds from the first POST to the last of them stored."""
    stored_before = await db.fetchval(STORED)
    started = time.perf_counter()
    acked, _ = await durable(url, posters, batches, size, run)
    stored = 0
    while stored < acked:  # split mode: a 202 is durable in Redis, not yet in Postgres
        stored = await db.fetchval(STORED) - stored_before
        await trio.sleep(0.01)
    return acked, time.perf_counter() - started


async def db_only(db, total: int, size: int) -> float:
    """Seconds to write `total` rows through the writer's own flush, `size` rows a flush."""
    store = TickStore(db, raw_audit=True)
    base_us = int((time.time() - 6000) * 1_000_000)
    started = time.perf_counter()
    for n in range(total // size):
        parts = parts_for("db", n, size, base_us)  # the same rows flush_sql measures
        await store.write(parts)
    return time.perf_counter() - started


LIMIT_TABLES = """
CREATE TABLE limit_raw AS
    SELECT received_at, source, symbol, idem_key, ts, price, volume FROM ticks_raw WITH NO DATA;
CREATE TABLE limit_history (LIKE ticks_history INCLUDING DEFAULTS, PRIMARY KEY (symbol, idem_key));
CREATE TEMP TABLE limit_stage (LIKE limit_history);
"""
LIMIT_COLUMNS = ["received_at", "source", "symbol", "idem_key", "ts", "price", "volume"]
LIMIT_INSERT = """
INSERT INTO limit_history (symbol, idem_key, ts, price, volume, source, received_at)
SELECT symbol, idem_key, ts, price, volume, source, received_at FROM limit_stage
ON CONFLICT (symbol, idem_key) DO NOTHING
"""


def limit_batches(total: int, size: int) -> list[list[tuple]]:
    """`total` unique rows in batches of `size`, as COPY takes them (numeric as Decimal)."""
    base = datetime.now(UTC) - timedelta(hours=3)
    batches = []
    for n in range(total // size):
        received = base + timedelta(seconds=n + 1)
        batches.append(
            [
                (
                    received,
                    "bench",
                    SYMBOLS[i % len(SYMBOLS)],
                    f"limit-{n}-{i}",
                    base + timedelta(seconds=n, microseconds=i * 100),
                    100 + Decimal(i % 97) / 100,
                    Decimal(1 + i % 3),
                )
                for i in range(size)
            ]
        )
    return batches


async def issue_limit(db, url: str, batches: list[list[tuple]], postgres: int) -> tuple:
    """Seconds to store the batches as issue 17's DB-only limit does (see the module's
    docstring), on a connection of its own (the pool's codec takes numeric as text, which
    binary COPY cannot carry), and the PostgreSQL CPU seconds it took (read before that
    connection's backend exits, while it still counts as a live child)."""

    async def run(_pooled: asyncpg.Connection) -> tuple:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(LIMIT_TABLES)
            cpu0 = tree_cpu_s(postgres)
            started = time.perf_counter()
            for records in batches:
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "limit_raw", records=records, columns=LIMIT_COLUMNS
                    )
                    await conn.copy_records_to_table(
                        "limit_stage", records=records, columns=LIMIT_COLUMNS
                    )
                    await conn.execute(LIMIT_INSERT)
                    await conn.execute("TRUNCATE limit_stage")
            return time.perf_counter() - started, tree_cpu_s(postgres) - cpu0
        finally:
            await conn.close()

    return await db.run(run, timeout_s=600)


async def postgres_pid(db) -> int:
    backend = await db.fetchval("SELECT pg_backend_pid()")
    return psutil.Process(backend).ppid()


async def main(args: argparse.Namespace) -> dict:
    """tickhub as processes (all, or api + consumers over an embedded Redis), the posters
    against its webhook; rate = acknowledged ticks ÷ (first POST → last row in
    `ticks_history`); then the DB-only limit and the flush-SQL limit on the same server."""
    configure_logging("warning")
    env = dict(kv.split("=", 1) for kv in args.env)
    stack = Stack(args.mode, consumers=args.consumers, gateways=0, env_extra=env)
    await trio.to_thread.run_sync(stack.start)
    total = args.posters * args.batches * args.size
    batches = limit_batches(total - total % args.limit_size, args.limit_size)
    try:
        async with open_bridge(), open_database(stack.database_url) as db:
            postgres = await postgres_pid(db)
            servers = list(stack.pids().values())
            pg0, server0 = tree_cpu_s(postgres), sum(proc_cpu_s(p) for p in servers)
            acked, elapsed = await durable_stored(
                db, stack.api_url, args.posters, args.batches, args.size
            )
            pg1, server1 = tree_cpu_s(postgres), sum(proc_cpu_s(p) for p in servers)
            limit_elapsed, limit_cpu = await issue_limit(db, stack.database_url, batches, postgres)
            flush_elapsed = await db_only(db, acked, args.size)
    finally:
        await trio.to_thread.run_sync(stack.stop)
    limit_rows = sum(len(b) for b in batches)
    mode = args.mode if args.mode == "all" else f"split ({args.consumers} consumers)"
    if args.env:
        mode += " " + " ".join(args.env)
    rate = acked / elapsed
    limit_rate = limit_rows / limit_elapsed
    flush_rate = acked / flush_elapsed
    return {
        "bench": "ingest",
        "mode": mode,
        "posters": args.posters,
        "batch": args.size,
        "ticks": acked,
        "durable_ticks_per_s": round(rate),
        "db_only_limit_ticks_per_s": round(limit_rate),
        "ratio": round(rate / limit_rate, 2),
        "flush_sql_ticks_per_s": round(flush_rate),
        "ratio_to_flush_sql": round(rate / flush_rate, 2),
        "postgres_us_per_tick": round((pg1 - pg0) / acked * 1e6, 1),
        "db_only_limit_postgres_us_per_tick": round(limit_cpu / limit_rows * 1e6, 1),
        "tickhub_us_per_tick": round((server1 - server0) / acked * 1e6, 1),
    }


COLUMNS = [
    "date", "mode", "posters", "batch", "ticks", "durable/s", "DB-only limit/s",
    "durable ÷ limit", "flush SQL/s", "durable ÷ flush SQL", "PG µs/tick durable",
    "PG µs/tick limit", "tickhub µs/tick",
]  # fmt: skip


def record(result: dict) -> None:
    append_row(
        RESULTS,
        COLUMNS,
        [
            now_stamp(), result["mode"], result["posters"], result["batch"], result["ticks"],
            result["durable_ticks_per_s"], result["db_only_limit_ticks_per_s"],
            result["ratio"], result["flush_sql_ticks_per_s"], result["ratio_to_flush_sql"],
            result["postgres_us_per_tick"], result["db_only_limit_postgres_us_per_tick"],
            result["tickhub_us_per_tick"],
        ],
    )  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posters", type=int, default=8)
    parser.add_argument("--batches", type=int, default=40, help="batches per poster")
    parser.add_argument("--size", type=int, default=500, help="ticks per batch")
    parser.add_argument(
        "--limit-size", type=int, default=5000, help="rows per batch of the DB-only limit"
    )
    parser.add_argument("--mode", choices=["all", "split"], default="all")
    parser.add_argument("--consumers", type=int, default=1, help="consumer processes (split)")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="a tickhub setting"
    )
    run_bench(main, parser.parse_args(), record)
