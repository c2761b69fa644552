"""Durable ingest rate beside the DB-only limit, in one run.

- durable, `--mode all`: N concurrent posters send batches of unique ticks to the webhook of
  a tickhub process (`tickhub run --role all`, embedded Postgres); there a 202 means
  committed.
- durable, `--mode split`: the same posters against an api process; `--consumers` consumer
  processes and an embedded Redis between them.
- in both, rate = acknowledged ticks ÷ (first POST → last row visible in `ticks_history`).
  The posters encode every payload before the clock starts and run in this process, apart
  from tickhub's; `--env KEY=VALUE` passes settings to tickhub (e.g. BATCH_MAX=2000).
- DB-only: the same number of rows written with the writer's own flush SQL (`TickStore`),
  no HTTP, no actors, in flushes of the same size.

Prints one JSON line and appends a row to bench/results/results.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import httpx
import orjson
import trio

from bench.flush_sql import parts_for
from bench.report import run_bench
from bench.stack import SYMBOLS, Stack
from tickhub.bridge import open_bridge
from tickhub.logs import configure_logging
from tickhub.sql.db import open_database
from tickhub.sql.store import TickStore

RESULTS = Path(__file__).resolve().parent / "results" / "results.md"


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
    store = TickStore(db, raw_audit=True)
    base_us = int((time.time() - 6000) * 1_000_000)
    started = time.perf_counter()
    for n in range(total // size):
        parts = parts_for("db", n, size, base_us)  # the same rows flush_sql measures
        await store.write(parts)
    return time.perf_counter() - started


async def main(args: argparse.Namespace) -> dict:
    """tickhub as processes (all, or api + consumers over an embedded Redis), the posters
    against its webhook; rate = acknowledged ticks ÷ (first POST → last row in
    `ticks_history`); then the DB-only writer on the same server."""
    configure_logging("warning")
    env = dict(kv.split("=", 1) for kv in args.env)
    stack = Stack(args.mode, consumers=args.consumers, gateways=0, env_extra=env)
    await trio.to_thread.run_sync(stack.start)
    try:
        async with open_bridge(), open_database(stack.database_url) as db:
            acked, elapsed = await durable_stored(
                db, stack.api_url, args.posters, args.batches, args.size
            )
            db_elapsed = await db_only(db, acked, args.size)
    finally:
        await trio.to_thread.run_sync(stack.stop)
    return result(args, acked, elapsed, db_elapsed)


def result(args: argparse.Namespace, acked: int, elapsed: float, db_elapsed: float) -> dict:
    rate = acked / elapsed
    db_rate = acked / db_elapsed
    mode = args.mode if args.mode == "all" else f"split ({args.consumers} consumers)"
    if args.env:
        mode += " " + " ".join(args.env)
    return {
        "bench": "ingest",
        "mode": mode,
        "posters": args.posters,
        "batch": args.size,
        "ticks": acked,
        "durable_ticks_per_s": round(rate),
        "db_only_ticks_per_s": round(db_rate),
        "ratio": round(rate / db_rate, 2),
    }


def record(result: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if not RESULTS.exists():
        RESULTS.write_text(
            "| date | bench | mode | posters | batch | ticks | durable/s | DB-only/s | ratio |\n"
            "|---|---|---|---|---|---|---|---|---|\n"
        )
    with RESULTS.open("a") as f:
        f.write(
            f"| {time.strftime('%Y-%m-%d %H:%M')} | {result['bench']} | {result['mode']} | "
            f"{result['posters']} | {result['batch']} | {result['ticks']} | "
            f"{result['durable_ticks_per_s']} | {result['db_only_ticks_per_s']} | "
            f"{result['ratio']} |\n"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posters", type=int, default=4)
    parser.add_argument("--batches", type=int, default=40, help="batches per poster")
    parser.add_argument("--size", type=int, default=500, help="ticks per batch")
    parser.add_argument("--mode", choices=["all", "split"], default="all")
    parser.add_argument("--consumers", type=int, default=1, help="consumer processes (split)")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="a tickhub setting"
    )
    run_bench(main, parser.parse_args(), record)
