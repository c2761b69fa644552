"""What flows between actors. Ticks travel as columns (one list per field) per symbol, never
one object per tick: a channel send costs microseconds, so the hot path moves lists.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import attrs
import trio


class Rejected(Exception):
    """The store refused a batch's data (a value it cannot hold): trying again cannot help,
    so its client is told (422) instead of being asked to retry."""


class Expired(Exception):
    """A batch was not committed before its deadline (its webhook has answered 503)."""


@attrs.frozen
class TickColumns:
    """One symbol's ticks from one accepted batch, column by column."""

    symbol: str
    source: str
    received_us: int
    keys: list[str]
    ts_us: list[int]
    price: list[float]
    volume: list[float]

    def __len__(self) -> int:
        return len(self.keys)


@attrs.frozen
class TickBatch:
    """A validated webhook batch: its source, item count, and columns per symbol."""

    source: str
    items: int
    parts: list[TickColumns]


class StoredTick(NamedTuple):
    """A tick the flush inserted into `ticks_history`, with its 1-minute candle as stored
    after the flush and the SMA10 of the closes up to that candle (None before the 10th):
    one row of the flush statement's result, which is all a live event needs."""

    symbol: str
    key: str
    ts_us: int
    price: float
    volume: float
    bucket_start: int
    open: float
    high: float
    low: float
    close: float
    candle_volume: float
    count: int
    sma10: float | None


class NewTick(NamedTuple):
    """A tick the flush inserted, of a symbol whose live events nobody wanted when it was
    handed to the writer: only its identity comes back (no candle, no SMA10, no event)."""

    symbol: str
    key: str


@attrs.frozen
class FlushOutcome:
    """What one flush did for one aggregator: the new ticks it stored, each with the candle it
    touched (none when the flush failed or held only duplicates), and how many of that
    aggregator's write requests it answers — so an aggregator knows when none is in flight.
    `unpublished` counts new ticks stored without their live data (nobody subscribed)."""

    ticks: list[StoredTick]
    answered: int = 1
    unpublished: int = 0


@attrs.define(eq=False)
class Receipt:
    """One accepted batch on its way to storage: it completes when every part is committed.

    The writer only flushes whole receipts, so a batch is stored entirely or not at all and
    its answer (accepted / duplicates, or a failure) is exact.
    """

    parts: int
    items: int
    on_done: Callable[[Receipt], None] = lambda r: None
    # trio time by which the batch must be committed (its webhook's deadline); the writer
    # drops it unflushed after that, and bounds the flush holding it by it.
    deadline: float = math.inf
    accepted: int = 0
    duplicates: int = 0
    stored_parts: int = 0
    error: BaseException | None = None
    flushing: bool = False  # in a flush: its outcome is that flush's
    done: trio.Event = attrs.field(factory=trio.Event)

    def part_stored(self, accepted: int, duplicates: int) -> None:
        self.accepted += accepted
        self.duplicates += duplicates
        self.stored_parts += 1
        if self.stored_parts == self.parts:
            self._finish()

    def fail(self, error: BaseException) -> None:
        if not self.done.is_set():
            self.error = error
            self._finish()

    def withdraw(self) -> bool:
        """Its webhook's deadline passed: a batch not yet in a flush is given up and nothing
        of it will be stored (True). One in a flush has its answer coming: that flush
        commits only before its cutoff, which is no later than this deadline."""
        if self.done.is_set() or self.flushing:
            return False
        self.fail(Expired("not committed in time"))
        return True

    @property
    def failed(self) -> bool:
        return self.error is not None

    def _finish(self) -> None:
        self.done.set()
        self.on_done(self)


@attrs.frozen
class WriteRequest:
    """A part handed by an aggregator to the writer; the outcome goes back on `reply`.
    `live`: someone may want the symbol's live events, so the flush returns each new tick
    with its candle and SMA10; otherwise only the new ticks' keys."""

    ticks: TickColumns
    receipt: Receipt
    reply: trio.MemorySendChannel
    live: bool = True


@attrs.frozen
class SymbolBatch:
    """A part of an accepted batch for one symbol's aggregator."""

    ticks: TickColumns
    receipt: Receipt
