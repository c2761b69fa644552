"""Retention of a day of ticks: the sweeper's drop of a day partition (migration 0004) beside
the DELETE of the same rows from one table (what the sweeper did before 0004).

On an embedded PostgreSQL (fsync off): one old day of `--rows` ticks in `ticks_history` and
as many in `ticks_raw`, made in SQL (generate_series, random 32-character keys), then
- **drop**: `TickRetention.drop_batch` — the sweeper's own call, both tables' day — timed,
  with the day's size before and the database's size after (the space comes back at once);
- **delete**: the same rows in a table without partitions (the 0003 shape: the key, the
  (symbol, ts) index, a BRIN on received_at), deleted in one statement, timed, and its size
  after (unchanged: the dead rows wait for VACUUM).

Prints one JSON line and appends a row to bench/results/retention.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.report import RESULTS_DIR, append_row, now_stamp, run_bench
from tickhub.bridge import open_bridge
from tickhub.sql.db import open_database
from tickhub.sql.embedded import EmbeddedPostgres
from tickhub.sql.migrate import migrate_up
from tickhub.sql.partitions import DayPartitions
from tickhub.sql.retention import TickRetention

RESULTS = RESULTS_DIR / "retention.md"
COLUMNS = [
    "date", "rows per table", "day size (both tables)", "drop ms", "database after drop",
    "delete ms", "table after delete",
]  # fmt: skip
DAY_S = 86_400
FILL = """
INSERT INTO {table} (symbol, idem_key, ts, price, volume, source, received_at)
SELECT 'S' || (i % 4), md5(i::text), to_timestamp($1) + i * ($2 / $3) * interval '1 s',
       100 + i % 7, 1, 'bench', to_timestamp($1) + i * ($2 / $3) * interval '1 s'
FROM generate_series(0, $3 - 1) AS i
"""
PLAIN = """
CREATE TABLE plain_history (LIKE ticks_history INCLUDING DEFAULTS);
ALTER TABLE plain_history ADD PRIMARY KEY (symbol, idem_key);
CREATE INDEX ON plain_history (symbol, ts DESC, idem_key DESC);
CREATE INDEX ON plain_history USING brin (received_at)
"""
SIZE = "SELECT pg_size_pretty({expr})"


async def main(args: argparse.Namespace) -> dict:
    day = (int(time.time()) // DAY_S - 30) * DAY_S  # a month ago: older than any keeper day
    with tempfile.TemporaryDirectory(prefix="tickhub-bench-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg", fsync=False)
        pg.start()
        try:
            async with open_bridge(), open_database(pg.url, timeout_s=600) as db:
                await migrate_up(db)
                await DayPartitions(db).create([day // DAY_S], [day // DAY_S])
                for table in ("ticks_history", "ticks_raw"):
                    await db.execute(FILL.format(table=table), day, float(DAY_S), args.rows)
                stamp = time.strftime("%Y%m%d", time.gmtime(day))
                parts = f"'ticks_history_p{stamp}'::regclass, 'ticks_raw_p{stamp}'::regclass"
                day_size = await db.fetchval(
                    SIZE.format(expr=f"(SELECT sum(pg_total_relation_size(r)) FROM "
                                     f"unnest(ARRAY[{parts}]) AS r)")
                )  # fmt: skip
                await db.execute("CHECKPOINT")
                started = time.perf_counter()
                dropped = await TickRetention(db).drop_batch(day + DAY_S, 8)
                drop_ms = (time.perf_counter() - started) * 1000
                assert dropped and all(dropped.values()), dropped
                after_drop = await db.fetchval(
                    SIZE.format(expr="pg_database_size(current_database())")
                )

                for statement in PLAIN.split(";\n"):
                    await db.execute(statement)
                await db.execute(FILL.format(table="plain_history"), day, float(DAY_S), args.rows)
                await db.execute("CHECKPOINT")
                started = time.perf_counter()
                await db.execute(
                    "DELETE FROM plain_history WHERE received_at < to_timestamp($1)", day + DAY_S
                )
                delete_ms = (time.perf_counter() - started) * 1000
                after_delete = await db.fetchval(
                    SIZE.format(expr="pg_total_relation_size('plain_history')")
                )
        finally:
            pg.stop()
    return {
        "bench": "retention",
        "rows": args.rows,
        "day_size": day_size,
        "drop_ms": round(drop_ms, 1),
        "database_after_drop": after_drop,
        "delete_ms": round(delete_ms, 1),
        "table_after_delete": after_delete,
    }


def record(result: dict) -> None:
    append_row(
        RESULTS,
        COLUMNS,
        [
            now_stamp(), result["rows"], result["day_size"], result["drop_ms"],
            result["database_after_drop"], result["delete_ms"], result["table_after_delete"],
        ],
    )  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="ticks in the day, per table")
    return parser.parse_args()


if __name__ == "__main__":
    run_bench(main, parse_args(), record)
