"""The per-symbol aggregator: one actor per symbol, started on the symbol's first tick.

Its mailbox holds the symbol's parts of accepted batches. It orders each part by time and
hands it to the writer; after the commit the writer sends back the ticks really inserted and
the candles they touched (with SMA10), and the aggregator turns those into the symbol's live
events, in time order, for the hub. A symbol nobody subscribes to costs no live work: its
parts go to the writer marked not live, the flush returns only their new keys, and the hub
is told that it has no events for them (a resume from before cannot be served for that
symbol; see `Hub.skipped`). Per-minute aggregation itself is done by the flush SQL
from the rows the insert returned — only that way can a duplicate never count twice.

Two loops run side by side so that a reply from the writer is always taken even while the
aggregator waits for room in the writer's mailbox (no cycle of full channels).

A symbol's state lives in Postgres, so an aggregator is cheap to stop and start again: one
that has had nothing to do for `idle_s` asks its pipeline to retire it (granted only while
nothing waits in its mailbox and no write of its is in flight), and the pipeline retires the
least recently busy idle one to make room for a new symbol. Memory then follows the symbols
trading now, not every symbol ever seen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs
import structlog
import trio

from tickhub.actors.supervisor import ActorHealth
from tickhub.messages import StoredTick, TickColumns, WriteRequest
from tickhub.wire import event_data

log = structlog.get_logger(actor="aggregator")


class Publisher(Protocol):
    """Where live events go: the local hub, or the updates stream in split mode."""

    async def publish(self, symbol: str, payloads: list[bytes]) -> None: ...

    def wants(self, symbol: str) -> bool:
        """Whether a live event of the symbol may reach anyone now (True when it cannot
        know: the updates stream's readers are other processes)."""
        ...

    def skipped(self, symbol: str) -> None:
        """New ticks of the symbol were stored without live events (it was not wanted when
        they went to the writer)."""
        ...


def ordered(ticks: TickColumns) -> TickColumns:
    """The same ticks sorted by (ts, key), so the writer sees each symbol in time order.

    Python compares keys by code point, which is UTF-8 byte order: the order of the keys'
    `COLLATE "C"` in SQL (migration 0003), so a tie in ts is broken here as the flush
    statement and the REST queries break it."""
    ts = ticks.ts_us
    if all(ts[i] <= ts[i + 1] for i in range(len(ts) - 1)):
        return ticks
    order = sorted(range(len(ts)), key=lambda i: (ts[i], ticks.keys[i]))
    return attrs.evolve(
        ticks,
        keys=[ticks.keys[i] for i in order],
        ts_us=[ts[i] for i in order],
        price=[ticks.price[i] for i in order],
        volume=[ticks.volume[i] for i in order],
    )


def live_events(ticks: list[StoredTick]) -> list[bytes]:
    """One event per stored tick, in time order, carrying its candle and SMA10."""
    return [event_data(tick) for tick in sorted(ticks, key=lambda t: (t.ts_us, t.key))]


@attrs.define(eq=False)
class Load:
    """What an aggregator has in flight, shared with its pipeline (which decides retirement)
    and with every incarnation of the actor."""

    in_flight: int = 0  # write requests sent to the writer and not yet answered
    idle: trio.Event = attrs.field(factory=trio.Event)  # set whenever in_flight drops to 0

    def sent(self) -> None:
        self.in_flight += 1

    def answered(self, count: int) -> None:
        self.in_flight -= count
        if self.in_flight == 0:
            self.idle.set()
            self.idle = trio.Event()


@attrs.define
class Aggregator:
    symbol: str
    rx: trio.MemoryReceiveChannel  # SymbolBatch
    writer_tx: trio.MemorySendChannel  # WriteRequest
    stored_rx: trio.MemoryReceiveChannel  # FlushOutcome, from the writer
    stored_tx: trio.MemorySendChannel  # handed to the writer as the reply address
    publisher: Publisher
    health: ActorHealth
    load: Load = attrs.field(factory=Load)
    idle_s: float = float("inf")
    # The pipeline's consent to stop: True once it has closed this symbol's mailbox.
    retire: Callable[[], bool] = lambda: False

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publish_loop)
            task_status.started()
            await self._forward_loop()

    async def _forward_loop(self) -> None:
        async with self.rx, self.writer_tx:
            while True:
                with trio.move_on_after(self.idle_s) as idle:
                    try:
                        batch = await self.rx.receive()
                    except trio.EndOfChannel:
                        return
                if idle.cancelled_caught:
                    if self.load.in_flight == 0 and self.retire():
                        return
                    continue
                try:
                    live = self.publisher.wants(self.symbol)
                    request = WriteRequest(
                        ordered(batch.ticks), batch.receipt, self.stored_tx, live
                    )
                    self.load.sent()
                    await self.writer_tx.send(request)
                except BaseException as exc:
                    self.load.answered(1)  # never reached the writer
                    batch.receipt.fail(exc)  # its webhook answers 503; nothing was stored
                    raise
                self.health.touch()

    async def _publish_loop(self) -> None:
        async with self.stored_rx:
            async for outcome in self.stored_rx:
                if outcome.ticks:
                    events = live_events(outcome.ticks)
                    await self.publisher.publish(self.symbol, events)
                if outcome.unpublished:
                    self.publisher.skipped(self.symbol)
                # Only now: a successor for this symbol must not publish before we have.
                self.load.answered(outcome.answered)
                self.health.touch()
