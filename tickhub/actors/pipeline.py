"""The pipeline: admission → per-symbol aggregators → writer → publisher (hub or stream).

It owns every channel of the pipeline (so restarted actors get clones of the same mailboxes)
and the registry that starts an aggregator on a symbol's first tick. `submit()` is what ingest
calls: it waits up to the ingest timeout for room (backpressure — a batch is admitted whole
or not at all), hands each symbol's part to its aggregator, and returns the receipt that
completes once the whole batch is committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import structlog
import trio

from tickhub import metrics
from tickhub.actors.aggregator import Aggregator, Publisher
from tickhub.actors.messages import Receipt, SymbolBatch, TickColumns
from tickhub.actors.supervisor import Supervisor
from tickhub.actors.writer import Store, Writer

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

    async def acquire(self, n: int, timeout_s: float) -> None:
        need = min(n, self.capacity)  # a batch larger than the gate waits for an empty gate
        with trio.move_on_after(timeout_s):
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
    tx: trio.MemorySendChannel
    stored_tx: trio.MemorySendChannel


@attrs.define(eq=False)
class Pipeline:
    supervisor: Supervisor
    store: Store
    publisher: Publisher
    batch_max: int = 500
    flush_s: float = 0.2
    concurrency: int = 1
    ingest_timeout_s: float = 2.0
    admission: Admission = attrs.field(factory=lambda: Admission(50_000))
    writer: Writer | None = None
    completed: int = 0
    failed: int = 0
    _routes: dict[str, _Route] = attrs.field(factory=dict)
    _lock: trio.Lock = attrs.field(factory=trio.Lock)
    _writer_tx: Any = None

    async def start(self) -> None:
        tx, rx = trio.open_memory_channel(WRITER_MAILBOX)
        self._writer_tx = tx

        def make_writer(health: Any) -> Writer:
            self.writer = Writer(
                rx.clone(), self.store, health, self.batch_max, self.flush_s, self.concurrency
            )
            return self.writer

        await self.supervisor.start("writer", make_writer, restart=True, mailbox=rx)

    async def submit(self, parts: Sequence[TickColumns], items: int) -> Receipt:
        """Admit a validated batch (all of it or none) and hand it on; raise Overloaded."""
        await self.admission.acquire(items, self.ingest_timeout_s)
        receipt = Receipt(len(parts), items, on_done=self._on_done)
        # Once admitted the batch must reach its aggregators even if the client goes away,
        # or the writer would wait for the missing parts.
        with trio.CancelScope(shield=True), trio.move_on_after(HANDOFF_TIMEOUT_S):
            for part in parts:
                route = await self._route(part.symbol)
                await route.tx.send(SymbolBatch(part, receipt))
            return receipt
        receipt.fail(Overloaded("the aggregators did not take the batch in time"))
        return receipt

    def _on_done(self, receipt: Receipt) -> None:
        self.admission.release(receipt.items)
        if receipt.failed:
            self.failed += receipt.items
        else:
            self.completed += receipt.items

    async def _route(self, symbol: str) -> _Route:
        route = self._routes.get(symbol)
        if route is not None:
            return route
        async with self._lock:
            if symbol not in self._routes:
                self._routes[symbol] = await self._start_aggregator(symbol)
        return self._routes[symbol]

    async def _start_aggregator(self, symbol: str) -> _Route:
        tx, rx = trio.open_memory_channel(AGGREGATOR_MAILBOX)
        stored_tx, stored_rx = trio.open_memory_channel(STORED_MAILBOX)

        def make(health: Any) -> Aggregator:
            return Aggregator(
                symbol,
                rx.clone(),
                self._writer_tx.clone(),
                stored_rx.clone(),
                stored_tx,
                self.publisher,
                health,
            )

        await self.supervisor.start(f"aggregator:{symbol}", make, restart=True, mailbox=rx)
        return _Route(tx, stored_tx)

    @property
    def symbols(self) -> list[str]:
        return sorted(self._routes)

    async def close(self) -> None:
        """Graceful stop: no new batches; everything admitted is flushed, then published."""
        for route in self._routes.values():
            await route.tx.aclose()
        await self._writer_tx.aclose()
        await self.supervisor.actors["writer"].finished.wait()
        for symbol, route in self._routes.items():
            await route.stored_tx.aclose()
            await self.supervisor.actors[f"aggregator:{symbol}"].finished.wait()
