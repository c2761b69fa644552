"""The partition keeper and the retention sweeper under the mock clock, with fake stores: the
keeper makes yesterday to a week ahead at start and every hour, and retries a failed pass
sooner; the sweeper drops in batches with a pause and stops at a short batch or when
another process holds the sweep."""

from __future__ import annotations

import attrs
import trio

from tickhub.actors.partitions import PartitionKeeper
from tickhub.actors.retention import RetentionSweeper
from tickhub.actors.supervisor import ActorHealth
from tickhub.sql.db import DatabaseUnavailable

DAY_S = 86_400


@attrs.define
class FakeDays:
    calls: list = attrs.Factory(list)
    down: int = 0  # the first passes that find the database unreachable

    async def ahead(self, today: int, days: int) -> int:
        self.calls.append((trio.current_time(), today, days))
        if len(self.calls) <= self.down:
            raise DatabaseUnavailable("no route")
        return days + 2


async def test_the_keeper_makes_the_days_ahead_every_hour(autojump_clock):
    store = FakeDays(down=1)
    wall = 20_000 * DAY_S + 3600.0  # one hour into day 20,000
    keeper = PartitionKeeper(store, ActorHealth("partitions", True), clock=lambda: wall)
    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run)
        await trio.sleep(2 * 3600 + 60)
        nursery.cancel_scope.cancel()
    assert [(t, today, days) for t, today, days in store.calls] == [
        (0, 20_000, 7),  # unreachable: tried again after retry_s
        (30, 20_000, 7),
        (3630, 20_000, 7),
        (7230, 20_000, 7),
    ]
    assert keeper.health.last_activity is not None  # a pass that worked is activity


@attrs.define
class FakePartitions:
    days: dict  # table -> partitions older than the cutoff, oldest first
    calls: list = attrs.Factory(list)
    busy: bool = False

    async def drop_batch(self, cutoff_s: float, batch: int):
        self.calls.append((trio.current_time(), cutoff_s))
        if self.busy:
            return None
        dropped = {}
        for table, names in self.days.items():
            dropped[table], self.days[table] = names[:batch], names[batch:]
        return dropped


async def test_the_sweeper_drops_in_batches_with_a_pause(autojump_clock):
    store = FakePartitions({"ticks_raw": [f"r{i}" for i in range(5)], "ticks_history": ["h0"]})
    sweeper = RetentionSweeper(
        store, 7, ActorHealth("retention", True), batch=2, clock=lambda: 10 * DAY_S
    )
    assert await sweeper.sweep() == {
        "ticks_raw": ["r0", "r1", "r2", "r3", "r4"],
        "ticks_history": ["h0"],
    }
    assert [t for t, _ in store.calls] == [0, 0.2, 0.4]  # the third batch is short: done
    assert {cutoff for _, cutoff in store.calls} == {3 * DAY_S}
    store.busy = True
    assert await sweeper.sweep() == {}  # another process sweeps
