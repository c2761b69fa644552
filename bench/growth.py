"""Growth: durable ingest and every read route on an empty database, then on the same server
after millions of ticks of history, in one run (issue 17, item 4).

Nothing else in `bench/` keeps more than the minutes of ticks it posts, and a query that
reads the whole symbol looks as fast as an index on a table that small. Steps, one tickhub
process (`run --role all`) on one embedded PostgreSQL throughout:

1. empty: bench.ingest's durable measurement (its posters, 202 → row stored), then
   `--requests` GETs of every read route of API.md, one at a time, p50 and p99 of each;
2. fill, in SQL (generate_series, not HTTP): `--rows` ticks into `ticks_history` and as many
   into `ticks_raw` for the bench's own symbols, spread over the 90 days (`TICK_DAYS`) before
   the posted ticks, with random-looking 32-character keys (md5) like real idempotency keys;
   a year of minutes into `ohlc_1m` and `metrics_1m`, their hours into `candles_1h` by the
   function migration 0005 backfills with (timed: what that migration costs on a year of
   minutes); then `VACUUM ANALYZE`;
3. full: the same ingest (new keys) and the same reads.

The fill names the parent tables and their columns only, and relies on no primary key, so it
runs unchanged on day-partitioned `ticks_history` / `ticks_raw`.

Prints the table (empty beside full, ratios, the targets of issue 17) and one JSON line, and
appends the table to bench/results/growth.md.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import httpx
import trio

from bench.ingest import durable_stored
from bench.load import pick
from bench.machine import machine
from bench.report import RESULTS_DIR, now_stamp, run_bench
from bench.stack import SYMBOLS, Stack
from tickhub.bridge import open_bridge
from tickhub.logs import configure_logging
from tickhub.sql.db import open_database
from tickhub.sql.queries import INTERVALS, WINDOWS

RESULTS = RESULTS_DIR / "growth.md"
PREFIX = "/api/v1"

# The targets of issue 17 for a database with ≥ 20 million ticks.
INGEST_RATIO_MIN = 0.8
READ_P50_MS = 10.0
READ_P99_MS = 50.0
LATEST_P50_MS = 2.0

# Statements of at most this many rows: progress is visible, and a failure loses one chunk.
FILL_CHUNK = 1_000_000
YEAR_MINUTES = 365 * 24 * 60
# The ticks span "months of ticks" (the words), one day partition each: what a read
# costs grows with the number of day partitions (docs/performance.md §3.7), so the span is
# stated, not hidden. 20 million ticks over 90 days is ~2.6 ticks/s per symbol.
TICK_DAYS = 90

# The filled history ends an hour before the posted ticks (bench.ingest posts at now - 50
# min), so no filled tick or minute shares a key or a bucket with them.
FILL_END = "date_trunc('minute', now()) - interval '2 hours'"


# The day partitions (migration 0004) of the filled ticks and the day after their end.
DAY_PARTITIONS = f"""
SELECT tickhub_ensure_partitions($1, ARRAY(
    SELECT d::date
    FROM generate_series((({FILL_END} - interval '{TICK_DAYS + 1} days') AT TIME ZONE 'UTC')::date,
                         (({FILL_END} + interval '1 day') AT TIME ZONE 'UTC')::date,
                         interval '1 day') AS d))
"""


def ticks_fill(table: str) -> str:
    """Ticks lo..hi of `total`, one every `step_us`, ending at FILL_END, oldest first (rows
    arrive in received_at order in life, which the BRIN indexes assume)."""
    columns = {
        "ticks_history": "symbol, idem_key, ts, price, volume, source, received_at",
        "ticks_raw": "received_at, source, symbol, idem_key, ts, price, volume",
    }[table]
    return f"""
    INSERT INTO {table} ({columns})
    SELECT {columns}
    FROM (
        SELECT ($1::text[])[1 + i % cardinality($1::text[])] AS symbol,
               md5('growth-' || i) AS idem_key,
               ts, ts + interval '50 ms' AS received_at, 'growth' AS source,
               round((100 + 10 * sin(i / 100000.0) + (i % 97) / 100.0)::numeric, 2) AS price,
               (1 + i % 3)::numeric AS volume
        FROM generate_series($2::int8, $3::int8) AS i,
             LATERAL (SELECT {FILL_END} - ($4::int8 - i) * $5::int8 * interval '1 microsecond'
                      AS ts) t
    ) g
    """


# A year of minutes per symbol, every minute a candle of 20 ticks; open/close keys and the
# last key are md5 keys too, as the flush would store them.
MINUTES = f"""
SELECT s AS symbol, m AS bucket_start,
       round((100 + 10 * sin(extract(epoch FROM m) / 6000000.0))::numeric, 2) AS p,
       md5(s || m::text) AS key
FROM unnest($1::text[]) AS s,
     generate_series({FILL_END} - ($2::int8 - 1) * interval '1 minute', {FILL_END},
                     interval '1 minute') AS m
"""
OHLC_FILL = f"""
INSERT INTO ohlc_1m (symbol, bucket_start, open, open_ts, open_key, high, low, close,
                     close_ts, close_key, volume, count)
SELECT symbol, bucket_start, p, bucket_start, key, p + 0.5, p - 0.5, p + 0.1,
       bucket_start + interval '59 seconds', key, 30, 20
FROM ({MINUTES}) m
"""
METRICS_FILL = f"""
INSERT INTO metrics_1m (symbol, bucket_start, count, sum, min, max, last, last_ts, last_key,
                        volume, pv_sum)
SELECT symbol, bucket_start, 20, p * 20, p - 0.5, p + 0.5, p + 0.1,
       bucket_start + interval '59 seconds', key, 30, (p + 0.05) * 30
FROM ({MINUTES}) m
"""
# /stats counts stored ticks per source; the filled ones are stored ticks of their own source.
SOURCE_FILL = f"""
INSERT INTO source_stats (source, ticks, last_ts, last_ingest_at)
VALUES ('growth', $1, {FILL_END}, now())
"""


def read_routes() -> list[tuple[str, str]]:
    """(name, path with {symbol}) for every read route of API.md, at its default parameters:
    the latest tick, a raw history page, candles at every interval with and without fill,
    metrics at every window, /stats, /symbols."""
    base = f"{PREFIX}/ticks/{{symbol}}"
    routes = [
        # No query at all: what the HTTP round trip alone costs, to read the others against.
        ("liveness (no query)", f"{PREFIX}/health/liveness"),
        ("latest tick", base),
        ("history raw", f"{base}/history"),
        ("candles 1m", f"{base}/history?view=ohlc1m"),
        ("candles 1m fill", f"{base}/history?view=ohlc1m&fill=true"),
    ]
    for interval in INTERVALS:
        if interval != "1m":
            routes.append((f"candles {interval}", f"{base}/history?view=ohlc&interval={interval}"))
            routes.append(
                (
                    f"candles {interval} fill",
                    f"{base}/history?view=ohlc&interval={interval}&fill=true",
                )
            )
    routes += [(f"metrics {w}", f"{PREFIX}/metrics/{{symbol}}?window={w}") for w in WINDOWS]
    routes += [("stats", f"{PREFIX}/stats"), ("symbols", f"{PREFIX}/symbols")]
    return routes


async def time_route(
    client: httpx.AsyncClient, path: str, requests: int, seconds: float
) -> dict[str, float]:
    """`requests` GETs one after the other (the symbols in turn), or fewer if `seconds` run out:
    a route that scans the table must not hold the run for an hour."""
    for k in range(3):  # first calls prepare the statements on the pool's connections
        (await client.get(path.format(symbol=SYMBOLS[k % len(SYMBOLS)]))).raise_for_status()
    ms: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(ms) < requests and (len(ms) < 5 or time.perf_counter() < deadline):
        url = path.format(symbol=SYMBOLS[len(ms) % len(SYMBOLS)])
        t0 = time.perf_counter()
        response = await client.get(url)
        ms.append((time.perf_counter() - t0) * 1000)
        response.raise_for_status()
    ms.sort()
    return {"p50_ms": round(pick(ms, 0.50), 2), "p99_ms": round(pick(ms, 0.99), 2), "n": len(ms)}


async def reads(url: str, requests: int, seconds: float) -> dict[str, dict[str, float]]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        return {
            name: await time_route(client, path, requests, seconds) for name, path in read_routes()
        }


async def fill(db, rows: int) -> dict[str, float]:
    """The history, in SQL; seconds per step."""
    symbols = list(SYMBOLS)
    step_us = TICK_DAYS * 86400 * 1_000_000 // rows  # TICK_DAYS of ticks, whatever their number
    took: dict[str, float] = {}
    t0 = time.perf_counter()
    for table in ("ticks_history", "ticks_raw"):  # the flush makes a new day; SQL must
        await db.execute(DAY_PARTITIONS, table)
    took["day partitions"] = time.perf_counter() - t0
    for table in ("ticks_history", "ticks_raw"):
        t0 = time.perf_counter()
        for lo in range(1, rows + 1, FILL_CHUNK):
            hi = min(rows, lo + FILL_CHUNK - 1)
            await db.execute(ticks_fill(table), symbols, lo, hi, rows, step_us)
        took[table] = time.perf_counter() - t0
    t0 = time.perf_counter()
    await db.execute(OHLC_FILL, symbols, YEAR_MINUTES)
    await db.execute(METRICS_FILL, symbols, YEAR_MINUTES)
    await db.execute(SOURCE_FILL, rows)
    took["ohlc_1m + metrics_1m"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    await db.execute("SELECT tickhub_rebuild_candles_1h()")
    took["candles_1h (0005's backfill)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    await db.execute("VACUUM ANALYZE")
    took["vacuum analyze"] = time.perf_counter() - t0
    return took


async def table_rows(db) -> dict[str, int]:
    """Row counts from the planner's statistics (a count(*) would scan the table)."""
    await db.execute("ANALYZE ticks_history, ticks_raw, ohlc_1m, metrics_1m, candles_1h")
    out = {}
    for table in ("ticks_history", "ticks_raw", "ohlc_1m", "metrics_1m", "candles_1h"):
        out[table] = int(
            await db.fetchval(
                """SELECT coalesce(sum(c.reltuples), 0)::int8 FROM pg_class c
                   WHERE (c.oid = $1::regclass AND c.relkind <> 'p')  -- a parent: its days
                      OR c.oid IN (SELECT inhrelid FROM pg_inherits
                                   WHERE inhparent = $1::regclass)""",
                table,
            )
        )
    return out


async def phase(db, stack: Stack, args: argparse.Namespace, run: str) -> dict[str, Any]:
    acked, elapsed = await durable_stored(
        db, stack.api_url, args.posters, args.batches, args.size, run=run
    )
    timings = await reads(stack.api_url, args.requests, args.route_seconds)
    return {"ingest_ticks_per_s": round(acked / elapsed), "ingest_ticks": acked, "reads": timings}


async def main(args: argparse.Namespace) -> dict:
    configure_logging("warning")
    stack = Stack("all", gateways=0)
    await trio.to_thread.run_sync(stack.start)
    try:
        async with open_bridge(), open_database(stack.database_url, timeout_s=7200) as db:
            empty = await phase(db, stack, args, "e")
            empty_rows = await table_rows(db)
            fill_s = await fill(db, args.rows)
            full_rows = await table_rows(db)
            full = await phase(db, stack, args, "f")
    finally:
        await trio.to_thread.run_sync(stack.stop)
    return {
        "bench": "growth",
        "date": now_stamp(),
        "rows": args.rows,
        "machine": machine(),
        "fill_s": {k: round(v, 1) for k, v in fill_s.items()},
        "rows_empty": empty_rows,
        "rows_full": full_rows,
        "empty": empty,
        "full": full,
    }


def held(ok: bool) -> str:
    return "yes" if ok else "**no**"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def table(result: dict) -> str:
    empty, full = result["empty"], result["full"]
    rows_full = result["rows_full"]["ticks_history"]
    lines = [
        f"### {result['date']} — {result['rows']:,} ticks filled "
        f"(ticks_history ≈ {rows_full:,} rows after the fill)",
        "",
        f"fill: {', '.join(f'{k} {v} s' for k, v in result['fill_s'].items())}; "
        f"PostgreSQL {result['machine']['postgres']}, {result['machine']['nproc']} cores",
        "",
        "| what | empty p50 ms | empty p99 ms | full p50 ms | full p99 ms | p50 full ÷ empty "
        "| p99 full ÷ empty | requests (full) | target holds (full) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    e_rate, f_rate = empty["ingest_ticks_per_s"], full["ingest_ticks_per_s"]
    lines.append(
        f"| durable ingest, ticks/s | {e_rate:,} | | {f_rate:,} | | {ratio(f_rate, e_rate)} | | "
        f"{full['ingest_ticks']:,} ticks | {held(f_rate >= INGEST_RATIO_MIN * e_rate)} "
        f"(≥ {INGEST_RATIO_MIN}x empty) |"
    )
    for name, f in full["reads"].items():
        e = empty["reads"][name]
        p50_max = LATEST_P50_MS if name == "latest tick" else READ_P50_MS
        ok = f["p50_ms"] <= p50_max and f["p99_ms"] <= READ_P99_MS
        lines.append(
            f"| {name} | {e['p50_ms']} | {e['p99_ms']} | {f['p50_ms']} | {f['p99_ms']} | "
            f"{ratio(f['p50_ms'], e['p50_ms'])} | {ratio(f['p99_ms'], e['p99_ms'])} | {f['n']} | "
            f"{held(ok)} (p50 ≤ {p50_max:g}, p99 ≤ {READ_P99_MS:g}) |"
        )
    return "\n".join(lines) + "\n"


def record(result: dict) -> None:
    text = table(result)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Growth: empty database beside millions of stored ticks, one run each\n\n"
            "`python -m bench.growth` (`make bench-growth`); targets of issue 17: ingest "
            f"≥ {INGEST_RATIO_MIN}x empty, every read p50 ≤ {READ_P50_MS:g} ms and p99 ≤ "
            f"{READ_P99_MS:g} ms, the latest tick p50 ≤ {LATEST_P50_MS:g} ms.\n\n",
            encoding="utf-8",
        )
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000, help="ticks filled per table")
    parser.add_argument("--posters", type=int, default=4)
    parser.add_argument("--batches", type=int, default=40, help="batches per poster")
    parser.add_argument("--size", type=int, default=500, help="ticks per batch")
    parser.add_argument("--requests", type=int, default=200, help="GETs per route")
    parser.add_argument(
        "--route-seconds", type=float, default=20.0, help="time limit per route (≥ 5 GETs)"
    )
    run_bench(main, parser.parse_args(), record)
