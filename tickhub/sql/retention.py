"""The retention sweeper's SQL: delete a batch of raw and deduplicated ticks stored before a
cutoff, under an advisory lock so that one process sweeps at a time."""

from __future__ import annotations

import asyncpg
import attrs

from tickhub.sql.db import Database

LOCK_KEY = 0x7469636B72657465  # "tickrete"
TABLES = ("ticks_raw", "ticks_history")
_DELETE = """
WITH doomed AS (
    SELECT ctid FROM {table} WHERE received_at < to_timestamp($1) LIMIT $2
)
DELETE FROM {table} t USING doomed d WHERE t.ctid = d.ctid
"""


async def _sweep(conn: asyncpg.Connection, cutoff_s: float, batch: int) -> dict[str, int] | None:
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
        return None
    try:
        deleted = {}
        for table in TABLES:
            status = await conn.execute(_DELETE.format(table=table), cutoff_s, batch)
            deleted[table] = int(status.split()[-1])
        return deleted
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)


@attrs.frozen
class TickRetention:
    """What `actors.retention` sweeps with."""

    db: Database

    async def delete_batch(self, cutoff_s: float, batch: int) -> dict[str, int] | None:
        """Up to `batch` rows of each table stored before `cutoff_s` (epoch seconds), as
        {table: rows deleted}; None when another process holds the sweep."""
        return await self.db.run(_sweep, cutoff_s, batch)
