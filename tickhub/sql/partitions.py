"""Day partitions of `ticks_history` (by ts) and `ticks_raw` (by received_at): making the
days a flush needs, and the days ahead, with the schema's own `tickhub_ensure_partitions`
(migration 0004), which serialises every creator under one advisory lock.

A tick whose day has no partition (a backfill of old files, a replay, a client's odd but
accepted timestamp) must still be stored exactly once. The flush therefore makes its
missing days first, in one extra round trip that happens only when a day new to this
process appears (`DayPartitions.ensure`); every later flush of that day costs nothing.
Not a DEFAULT partition: it would collect every such day into one unpartitioned table that
retention cannot drop by day, and making a day's partition later would have to scan it
under an exclusive lock and move its rows out, on every keeper pass.

The set of known days is a cache of this process; it can only be wrong one way, when the
retention sweeper (of any process) dropped a day since. The flush then fails on a row with
no partition, rolled back whole (nothing stored), and `missed()` tells the store to forget
what it knew, make the days again and flush once more. The set is bounded by the accepted
timestamps: one entry per day since 2000 (validation refuses older ones), some ten
thousand integers at most.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

import asyncpg
import trio

from tickhub.messages import TickColumns
from tickhub.sql.db import Database

LOCK_KEY = 0x7469636B70617274  # "tickpart": the key tickhub_ensure_partitions takes
US_PER_DAY = 86_400_000_000
_EPOCH = dt.date(1970, 1, 1)
_ENSURE = """
SELECT tickhub_ensure_partitions('ticks_history', $1::date[])
     + tickhub_ensure_partitions('ticks_raw', $2::date[])
"""


def day_of(epoch_us: int) -> int:
    """The UTC day (days since 1970-01-01) of an epoch-microsecond time."""
    return epoch_us // US_PER_DAY


def _days(ts_us: Sequence[int]) -> set[int]:
    """The days of a part's ticks: almost always one, told by its first and last without a
    step per tick (a part is one symbol's ticks of one batch, and the flush is hot)."""
    if not ts_us:
        return set()
    lo, hi = day_of(min(ts_us)), day_of(max(ts_us))
    return {lo} if lo == hi else {day_of(t) for t in ts_us}


def _dates(days: Iterable[int]) -> list[dt.date]:
    return [_EPOCH + dt.timedelta(days=d) for d in sorted(days)]


def missed(exc: BaseException) -> bool:
    """Whether a flush failed on a row whose day has no partition (PostgreSQL reports it as
    a check violation that names no constraint)."""
    return (
        isinstance(exc, asyncpg.exceptions.CheckViolationError)
        and not getattr(exc, "constraint_name", None)
        and "no partition" in str(exc)
    )


class DayPartitions:
    """The days this process knows to have partitions, and the making of the others."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._history: set[int] = set()
        self._raw: set[int] = set()

    async def ensure(
        self, parts: Sequence[TickColumns], raw_audit: bool, cutoff: float | None = None
    ) -> bool:
        """Make sure the days of a flush's ticks (ts) and, with the audit on, of their audit
        rows (received) have partitions, asking the server only for days new to this
        process. Returns whether any day was taken on trust from what this process knew:
        a flush that then `missed()` a partition should `forget()` and try again. With a
        `cutoff` (trio time) it may only take until then: nothing of the flush is stored
        yet, and a partition made a moment late is harmless."""
        history_days = set().union(*(_days(p.ts_us) for p in parts))
        raw_days = {day_of(p.received_us) for p in parts} if raw_audit else set()
        history, raw = history_days - self._history, raw_days - self._raw
        if history or raw:
            await self.create(history, raw, cutoff)
            self._history |= history
            self._raw |= raw
        return len(history) < len(history_days) or len(raw) < len(raw_days)

    async def create(
        self, history: Iterable[int], raw: Iterable[int], cutoff: float | None = None
    ) -> int:
        """Make these days' partitions (days since 1970-01-01) where missing; the number
        made. Safe against any number of concurrent creators."""
        timeout = None if cutoff is None else max(cutoff - trio.current_time(), 0.01)
        rows = await self.db.fetch(_ENSURE, _dates(history), _dates(raw), timeout_s=timeout)
        return int(rows[0][0])

    def forget(self) -> None:
        """After a flush `missed()` a partition: what this process knew is stale."""
        self._history.clear()
        self._raw.clear()

    async def ahead(self, today: int, days: int) -> int:
        """Partitions for yesterday through `days` days after `today` in both tables (the
        keeper's pass); they are known from then on."""
        span = range(today - 1, today + days + 1)
        made = await self.create(span, span)
        self._history.update(span)
        self._raw.update(span)
        return made
