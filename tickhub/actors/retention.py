"""The retention sweeper: deletes raw and deduplicated ticks stored more than RETENTION_DAYS
ago (candles and metrics are kept), in small batches with a pause between them so no delete
holds locks for long or starves the writer. One sweeper at a time across all processes (an
advisory lock); the others skip their turn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs
import structlog
import trio

from tickhub.actors.supervisor import ActorHealth
from tickhub.clock import wall_s
from tickhub.sql.db import DatabaseUnavailable

log = structlog.get_logger(actor="retention")


class Sweepable(Protocol):
    async def delete_batch(self, cutoff_s: float, batch: int) -> dict[str, int] | None: ...


@attrs.define
class RetentionSweeper:
    store: Sweepable  # sql.retention.TickRetention
    days: float
    health: ActorHealth
    every_s: float = 3600.0
    batch: int = 5000
    pause_s: float = 0.2
    clock: Callable[[], float] = wall_s

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
        totals: dict[str, int] = {}
        while True:
            deleted = await self.store.delete_batch(cutoff, self.batch)
            if deleted is None:
                return totals
            for table, n in deleted.items():
                totals[table] = totals.get(table, 0) + n
            if max(deleted.values()) < self.batch:
                return totals
            await trio.sleep(self.pause_s)
