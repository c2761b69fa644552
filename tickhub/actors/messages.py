"""What flows between actors. Ticks travel as columns (one list per field) per symbol, never
one object per tick: a channel send costs microseconds, so the hot path moves lists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import attrs
import trio


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


@attrs.frozen
class FlushOutcome:
    """What one committed flush stored: the new ticks, each with the candle it touched."""

    ticks: list[StoredTick]


@attrs.define(eq=False)
class Receipt:
    """One accepted batch on its way to storage: it completes when every part is committed.

    The writer only flushes whole receipts, so a batch is stored entirely or not at all and
    its answer (accepted / duplicates, or a failure) is exact.
    """

    parts: int
    items: int
    on_done: Callable[[Receipt], None] = lambda r: None
    accepted: int = 0
    duplicates: int = 0
    stored_parts: int = 0
    error: BaseException | None = None
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

    @property
    def failed(self) -> bool:
        return self.error is not None

    def _finish(self) -> None:
        self.done.set()
        self.on_done(self)


@attrs.frozen
class WriteRequest:
    """A part handed by an aggregator to the writer; the outcome goes back on `reply`."""

    ticks: TickColumns
    receipt: Receipt
    reply: trio.MemorySendChannel


@attrs.frozen
class SymbolBatch:
    """A part of an accepted batch for one symbol's aggregator."""

    ticks: TickColumns
    receipt: Receipt
