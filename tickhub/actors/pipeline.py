"""The pipeline: admission → per-symbol aggregators → writer → publisher (hub or stream).

It owns every channel of the pipeline (so restarted actors get clones of the same mailboxes)
and the registry that starts an aggregator on a symbol's first tick and retires it when it
has been idle (at most `max_aggregators` at once: the least recently busy idle one makes room
for a new symbol). `submit()` is what ingest calls: it waits until the batch's deadline for
room (backpressure — a batch is admitted whole or not at all), hands each symbol's part to
its aggregator, and returns the receipt that completes once the whole batch is committed.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import attrs
import structlog
import trio

from tickhub import metrics
from tickhub.actors.aggregator import Aggregator, Load, Publisher
from tickhub.actors.supervisor import Supervisor
from tickhub.actors.writer import Store, Writer
from tickhub.messages import Receipt, SymbolBatch, TickColumns

log = structlog.get_logger(actor="pipeline")

# Parts of batches waiting for one symbol's aggregator; admission bounds the ticks behind them.
AGGREGATOR_MAILBOX = 64
# Parts waiting for the writer, from every aggregator.
WRITER_MAILBOX = 1024
# Flush outcomes waiting for one aggregator to publish them.
STORED_MAILBOX = 64
# How long an admitted batch may take to reach its aggregators before it is given up (503).
HANDOFF_TIMEOUT_S = 30.0


class Overloaded(RuntimeError):
    """The pipeline had no room for the batch within the ingest timeout."""


@attrs.define(eq=False)
class Admission:
    """A counting gate over ticks admitted and not yet committed (bounded memory)."""

    capacity: int
    pending: int = 0
    _freed: trio.Event = attrs.field(factory=trio.Event)

    async def acquire(self, n: int, deadline: float) -> None:
        need = min(n, self.capacity)  # a batch larger than the gate waits for an empty gate
        with trio.move_on_at(deadline):
            while self.pending + need > self.capacity:
                await self._freed.wait()
            self.pending += n
            metrics.PENDING_TICKS.set(self.pending)
            return
        raise Overloaded(f"{self.pending} ticks pending")

    def release(self, n: int) -> None:
        self.pending -= n
        metrics.PENDING_TICKS.set(self.pending)
        self._freed.set()
        self._freed = trio.Event()


@attrs.define(eq=False)
class _Route:
    symbol: str
    tx: trio.MemorySendChannel
    rx: trio.MemoryReceiveChannel  # the mailbox's original receive side (its depth)
    stored_tx: trio.MemorySendChannel
    load: Load = attrs.field(factory=Load)

    @property
    def idle(self) -> bool:
        return self.load.in_flight == 0 and self.rx.statistics().current_buffer_used == 0

    def close(self) -> None:
        self.tx.close()
        self.stored_tx.close()


@attrs.define(eq=False)
class Pipeline:
    supervisor: Supervisor
    store: Store
    publisher: Publisher
    batch_max: int = 500
    flush_s: float = 0.2
    concurrency: int = 2
    backlog_max: int = 500
    ingest_timeout_s: float = 2.0
    flush_timeout_s: float = math.inf
    admission: Admission = attrs.field(factory=lambda: Admission(50_000))
    aggregator_idle_s: float = math.inf
    max_aggregators: int = 4096
    completed: int = 0
    failed: int = 0
    # By recency of use: the first is the least recently busy.
    _routes: OrderedDict[str, _Route] = attrs.field(factory=OrderedDict)
    _lock: trio.Lock = attrs.field(factory=trio.Lock)
    _writer_tx: Any = None

    async def start(self) -> None:
        tx, rx = trio.open_memory_channel(WRITER_MAILBOX)
        self._writer_tx = tx

        def make_writer(health: Any) -> Writer:
            return Writer(
                rx.clone(),
                self.store,
                health,
                self.batch_max,
                self.flush_s,
                self.concurrency,
                self.flush_timeout_s,
                self.backlog_max,
            )

        await self.supervisor.start("writer", make_writer, restart=True, mailbox=rx)

    async def submit(
        self, parts: Sequence[TickColumns], items: int, deadline: float | None = None
    ) -> Receipt:
        """Admit a validated batch (all of it or none) and hand it on; raise Overloaded.

        `deadline` (trio time) is when its client stops waiting: admission waits until then,
        and the batch must be committed by then or is dropped. Without one (the stream
        consumer, which retries) admission waits INGEST_TIMEOUT_MS and commit has no limit."""
        admit_by = trio.current_time() + self.ingest_timeout_s if deadline is None else deadline
        await self.admission.acquire(items, admit_by)
        receipt = Receipt(
            len(parts),
            items,
            on_done=self._on_done,
            deadline=math.inf if deadline is None else deadline,
        )
        # Once admitted the batch must reach its aggregators even if the client goes away,
        # or the writer would wait for the missing parts.
        with trio.CancelScope(shield=True), trio.move_on_after(HANDOFF_TIMEOUT_S):
            for part in parts:
                await self._hand(SymbolBatch(part, receipt))
            return receipt
        receipt.fail(Overloaded("the aggregators did not take the batch in time"))
        return receipt

    async def _hand(self, batch: SymbolBatch) -> None:
        while True:
            route = await self._route(batch.ticks.symbol)
            try:
                await route.tx.send(batch)
                return
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                continue  # retired while we waited for room: its successor takes it

    def _on_done(self, receipt: Receipt) -> None:
        self.admission.release(receipt.items)
        if receipt.failed:
            self.failed += receipt.items
        else:
            self.completed += receipt.items

    async def _route(self, symbol: str) -> _Route:
        route = self._routes.get(symbol)
        if route is not None:
            self._routes.move_to_end(symbol)
            return route
        async with self._lock:
            if symbol not in self._routes:
                await self._make_room()
                self._routes[symbol] = await self._start_aggregator(symbol)
        return self._routes[symbol]

    async def _make_room(self) -> None:
        """Below the cap: retire the least recently busy idle aggregator, waiting for one to
        become idle if they are all busy."""
        while len(self._routes) >= self.max_aggregators:
            idle = next((r for r in self._routes.values() if r.idle), None)
            if idle is not None:
                self._retire(idle)
                return
            oldest = next(iter(self._routes.values()))
            await oldest.load.idle.wait()

    def _retire(self, route: _Route) -> bool:
        """Stop routing to an idle aggregator (it then finishes and exits); False when work
        arrived meanwhile."""
        if self._routes.get(route.symbol) is not route or not route.idle:
            return False
        del self._routes[route.symbol]
        route.close()
        return True

    async def _start_aggregator(self, symbol: str) -> _Route:
        tx, rx = trio.open_memory_channel(AGGREGATOR_MAILBOX)
        stored_tx, stored_rx = trio.open_memory_channel(STORED_MAILBOX)
        route = _Route(symbol, tx, rx, stored_tx)

        def make(health: Any) -> Aggregator:
            return Aggregator(
                symbol,
                rx.clone(),
                self._writer_tx.clone(),
                stored_rx.clone(),
                stored_tx,
                self.publisher,
                health,
                route.load,
                self.aggregator_idle_s,
                lambda: self._retire(route),
            )

        await self.supervisor.start(
            f"aggregator:{symbol}", make, restart=True, mailbox=rx, transient=True
        )
        return route

    @property
    def symbols(self) -> list[str]:
        return sorted(self._routes)

    def stats(self) -> dict[str, int]:
        """Ticks waiting (`pending`), being stored (`inFlight`), stored, failed."""
        writer = self.supervisor.current("writer")
        queued = writer.queued_rows if writer is not None else 0
        return {
            "pending": queued,
            "inFlight": max(self.admission.pending - queued, 0),
            "completed": self.completed,
            "failed": self.failed,
        }

    async def close(self) -> None:
        """Graceful stop: no new batches; everything admitted is flushed, then published."""
        routes = list(self._routes.values())
        for route in routes:
            await route.tx.aclose()
        await self._writer_tx.aclose()
        await self.supervisor.actors["writer"].finished.wait()
        for route in routes:
            await route.stored_tx.aclose()
        for route in routes:
            health = self.supervisor.actors.get(f"aggregator:{route.symbol}")
            if health is not None:
                await health.finished.wait()
