"""The retention sweeper: deletes raw and deduplicated ticks stored more than RETENTION_DAYS
ago (candles and metrics are kept), in small batches with a pause between them so no delete
holds locks for long or starves the writer. One sweeper at a time across all processes (an
advisory lock); the others skip their turn.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import attrs
import structlog
import trio

from tickhub.actors.supervisor import ActorHealth
from tickhub.sql.db import Database, DatabaseUnavailable

log = structlog.get_logger(actor="retention")

LOCK_KEY = 0x7469636B72657465  # "tickrete"
TABLES = ("ticks_raw", "ticks_history")
_DELETE = """
WITH doomed AS (
    SELECT ctid FROM {table} WHERE received_at < to_timestamp($1) LIMIT $2
)
DELETE FROM {table} t USING doomed d WHERE t.ctid = d.ctid
"""


async def _sweep(conn: asyncpg.Connection, cutoff_s: float, batch: int) -> dict[str, int] | None:
    """One batch per table under the lock; None when another process holds the lock."""
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


@attrs.define
class RetentionSweeper:
    db: Database
    days: float
    health: ActorHealth
    every_s: float = 3600.0
    batch: int = 5000
    pause_s: float = 0.2
    clock: Any = time.time

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                totals = await self.sweep()
                if any(totals.values()):
                    log.info("old ticks deleted", **totals)
                self.health.touch()
            except DatabaseUnavailable as exc:
                log.warning("retention sweep skipped", error=str(exc))
            await trio.sleep(self.every_s)

    async def sweep(self) -> dict[str, int]:
        """Delete everything older than the cutoff, batch by batch; the rows deleted."""
        cutoff = self.clock() - self.days * 86_400
        totals = dict.fromkeys(TABLES, 0)
        while True:
            deleted = await self.db.run(_sweep, cutoff, self.batch)
            if deleted is None:
                return totals
            for table, n in deleted.items():
                totals[table] += n
            if max(deleted.values()) < self.batch:
                return totals
            await trio.sleep(self.pause_s)
