"""The partition keeper: makes the day partitions of `ticks_history` and `ticks_raw` from
yesterday to `ahead_days` days after today, at start and then every `every_s`, so that the
flush of a live tick never has a day to make (the store makes a missing day itself, in one
extra round trip: a backfill, a replay, a clock far off). Yesterday too, for ticks
received just after midnight and a consumer catching up on the stream. Every process that
writes runs one; the schema's creator lock serialises them, and a pass over days that
exist changes nothing.
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

log = structlog.get_logger(actor="partitions")


class Partitionable(Protocol):
    async def ahead(self, today: int, days: int) -> int: ...


@attrs.define
class PartitionKeeper:
    store: Partitionable  # sql.partitions.DayPartitions
    health: ActorHealth
    ahead_days: int = 7  # a week of room: a keeper down for days still leaves days made
    every_s: float = 3600.0
    retry_s: float = 30.0  # after a failed pass: the next day may be hours away, or not
    clock: Callable[[], float] = wall_s

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                made = await self.store.ahead(int(self.clock() // 86_400), self.ahead_days)
                if made:
                    log.info("partitions made", partitions=made, ahead_days=self.ahead_days)
                self.health.touch()
                wait = self.every_s
            except DatabaseUnavailable as exc:
                log.warning("partitions not made", error=str(exc), retry_in_s=self.retry_s)
                wait = self.retry_s
            await trio.sleep(wait)
