"""The retention sweeper's SQL: drop the day partitions (migration 0004) of raw and
deduplicated ticks that lie wholly before a cutoff, under an advisory lock so that one
process sweeps at a time.

A day goes in one DROP TABLE: no DELETE, no dead rows left for VACUUM, no index to shrink;
the time does not grow with the rows of the day. `ticks_raw` is partitioned by received_at,
so a dropped day is one whose every row was stored before the cutoff; `ticks_history` by
ts, so it keeps the ticks of the last days of market time, whenever they arrived. A day is
dropped once all of it is older than the cutoff: rows stay up to a day longer than
RETENTION_DAYS, never shorter.

Dropping a partition takes ACCESS EXCLUSIVE on its parent for the moment of the drop: it
waits for the flushes and reads in flight (milliseconds) and those that come meanwhile wait
for it. `LOCK_TIMEOUT_MS` bounds that wait, so a long query on the table never holds the
writer up behind a queued drop: that day is left to the next sweep. Each day is dropped in
a transaction of its own, under the partition creators' lock (`sql.partitions`), so a flush
making the same day at that moment finds it either whole or gone, and makes it again.
"""

from __future__ import annotations

import asyncpg
import attrs

from tickhub.sql import partitions
from tickhub.sql.db import Database

LOCK_KEY = 0x7469636B72657465  # "tickrete"
TABLES = ("ticks_raw", "ticks_history")
LOCK_TIMEOUT_MS = 500
# The days of a table, by the names tickhub_ensure_partitions gives them (<table>_pYYYYMMDD),
# oldest first, with the end of each day: the partition bound, without parsing it.
_EXPIRED = r"""
SELECT c.relname
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = $1::text::regclass
  AND c.relname ~ ('^' || $1::text || '_p[0-9]{8}$')
  AND (to_date(right(c.relname, 8), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC'
      <= to_timestamp($2)
ORDER BY c.relname
LIMIT $3
"""


async def _drop(conn: asyncpg.Connection, partition: str) -> bool:
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
            await conn.execute("SELECT pg_advisory_xact_lock($1)", partitions.LOCK_KEY)
            await conn.execute(f'DROP TABLE IF EXISTS "{partition}"')  # a name of ours
    except asyncpg.exceptions.LockNotAvailableError:
        return False
    return True


async def _sweep(
    conn: asyncpg.Connection, cutoff_s: float, batch: int
) -> dict[str, list[str]] | None:
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
        return None
    try:
        dropped: dict[str, list[str]] = {}
        for table in TABLES:
            expired = await conn.fetch(_EXPIRED, table, cutoff_s, batch)
            dropped[table] = [r[0] for r in expired if await _drop(conn, r[0])]
        return dropped
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)


@attrs.frozen
class TickRetention:
    """What `actors.retention` sweeps with."""

    db: Database
    timeout_s: float = 30.0  # a batch of drops, each bounded by LOCK_TIMEOUT_MS while it waits

    async def drop_batch(self, cutoff_s: float, batch: int) -> dict[str, list[str]] | None:
        """Drop up to `batch` day partitions of each table that end before `cutoff_s`
        (epoch seconds), oldest first, as {table: partitions dropped}; a day whose drop
        had to wait longer than LOCK_TIMEOUT_MS is left for the next sweep. None when
        another process holds the sweep."""
        return await self.db.run(_sweep, cutoff_s, batch, timeout_s=self.timeout_s)
