"""The retention sweeper: drops the days of raw ticks stored, and of deduplicated ticks
timestamped, more than RETENTION_DAYS ago (whole day partitions; candles and metrics are
kept), a few days per call with a pause between calls so no drop queues the writer for
long. One sweeper at a time across all processes (an advisory lock); the others skip their
turn.
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
    async def drop_batch(self, cutoff_s: float, batch: int) -> dict[str, list[str]] | None: ...


@attrs.define
class RetentionSweeper:
    store: Sweepable  # sql.retention.TickRetention
    days: float
    health: ActorHealth
    every_s: float = 3600.0
    batch: int = 8  # day partitions per table and call: each drop takes milliseconds
    pause_s: float = 0.2
    clock: Callable[[], float] = wall_s

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                dropped = await self.sweep()
                if any(dropped.values()):
                    log.info("old ticks dropped", **dropped)
                self.health.touch()
            except DatabaseUnavailable as exc:
                log.warning("retention sweep skipped", error=str(exc))
            await trio.sleep(self.every_s)

    async def sweep(self) -> dict[str, list[str]]:
        """Drop every day wholly older than the cutoff, batch by batch; the partitions
        dropped, per table."""
        cutoff = self.clock() - self.days * 86_400
        totals: dict[str, list[str]] = {}
        while True:
            dropped = await self.store.drop_batch(cutoff, self.batch)
            if dropped is None:
                return totals
            for table, names in dropped.items():
                totals.setdefault(table, []).extend(names)
            if max(map(len, dropped.values()), default=0) < self.batch:
                return totals
            await trio.sleep(self.pause_s)
