"""The writer: group commit of every aggregator's ticks into Postgres.

Policy: when no flush is running and rows wait, flush at once (an idle writer adds no
latency). While flushes run, rows gather; another flush may overlap them (up to
`concurrency` at once) as soon as `batch_max` rows wait or the oldest has waited
`flush_s`. A flush takes whole receipts in arrival order up to `batch_max` rows; a single
receipt larger than that is flushed alone rather than split, so each webhook batch is
committed all at once and its answer is exact. A failed flush fails its receipts (the
webhook answers 503 and nothing of them was stored); the writer itself carries on.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

import attrs
import structlog
import trio

from tickhub import metrics
from tickhub.actors.messages import FlushOutcome, Receipt, TickColumns, WriteRequest
from tickhub.actors.supervisor import ActorHealth

log = structlog.get_logger(actor="writer")


class Store(Protocol):
    async def write(self, parts: Sequence[TickColumns]) -> FlushOutcome: ...


@attrs.define(eq=False)
class _Ready:
    receipt: Receipt
    requests: list[WriteRequest]
    since: float

    @property
    def rows(self) -> int:
        return sum(len(r.ticks) for r in self.requests)


@attrs.define
class Writer:
    rx: trio.MemoryReceiveChannel
    store: Store
    health: ActorHealth
    batch_max: int = 500
    flush_s: float = 0.2
    concurrency: int = 1
    flushes: int = 0
    _partial: dict[Receipt, list[WriteRequest]] = attrs.field(factory=dict)
    _ready: deque[_Ready] = attrs.field(factory=deque)
    _ready_rows: int = 0
    _inflight: int = 0
    _closed: bool = False
    _changed: trio.Event = attrs.field(factory=trio.Event)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._collect)
            task_status.started()
            await self._schedule(nursery)

    @property
    def queued_rows(self) -> int:
        partial = sum(len(r.ticks) for reqs in self._partial.values() for r in reqs)
        return self._ready_rows + partial

    async def _collect(self) -> None:
        async with self.rx:
            async for request in self.rx:
                self._add(request)
        self._closed = True
        for receipt in list(self._partial):
            receipt.fail(RuntimeError("writer stopped before the whole batch arrived"))
        self._partial.clear()
        self._notify()

    def _add(self, request: WriteRequest) -> None:
        receipt = request.receipt
        if receipt.failed:
            return
        parts = self._partial.setdefault(receipt, [])
        parts.append(request)
        if len(parts) == receipt.parts:
            del self._partial[receipt]
            ready = _Ready(receipt, parts, trio.current_time())
            self._ready.append(ready)
            self._ready_rows += ready.rows
            metrics.WRITER_QUEUE.set(self._ready_rows)
            self._notify()

    def _notify(self) -> None:
        self._changed.set()

    def _may_flush(self) -> bool:
        if not self._ready:
            return False
        if self._inflight == 0:
            return True
        if self._inflight >= self.concurrency:
            return False
        overdue = trio.current_time() >= self._ready[0].since + self.flush_s
        return self._ready_rows >= self.batch_max or overdue

    async def _schedule(self, nursery: trio.Nursery) -> None:
        while True:
            if self._may_flush():
                batch = self._take()
                self._inflight += 1
                nursery.start_soon(self._flush, batch)
                continue
            if self._closed and not self._ready and self._inflight == 0:
                return
            deadline = math.inf
            if self._ready and self._inflight < self.concurrency:
                deadline = self._ready[0].since + self.flush_s
            with trio.move_on_at(deadline):
                await self._changed.wait()
            self._changed = trio.Event()

    def _take(self) -> list[_Ready]:
        batch = [self._ready.popleft()]
        rows = batch[0].rows
        while self._ready and rows + self._ready[0].rows <= self.batch_max:
            rows += self._ready[0].rows
            batch.append(self._ready.popleft())
        self._ready_rows -= rows
        metrics.WRITER_QUEUE.set(self._ready_rows)
        return batch

    async def _flush(self, batch: list[_Ready]) -> None:
        requests = [req for ready in batch if not ready.receipt.failed for req in ready.requests]
        try:
            if requests:
                await self._write(requests)
        finally:
            self._inflight -= 1
            self._notify()

    async def _write(self, requests: list[WriteRequest]) -> None:
        rows = sum(len(r.ticks) for r in requests)
        started = trio.current_time()
        try:
            outcome = await self.store.write([r.ticks for r in requests])
        except Exception as exc:
            metrics.FLUSH_FAILURES.inc()
            log.warning("flush failed", rows=rows, error=f"{type(exc).__name__}: {exc}")
            for request in requests:
                request.receipt.fail(exc)
            return
        self.flushes += 1
        self.health.touch()
        metrics.FLUSH_ROWS.observe(rows)
        metrics.FLUSH_SECONDS.observe(trio.current_time() - started)
        _settle(requests, outcome)
        await _reply(requests, outcome)


def _settle(requests: list[WriteRequest], outcome: FlushOutcome) -> None:
    """Tell each receipt how many of its ticks were new; a key seen twice counts once."""
    inserted = {(t.symbol, t.key) for t in outcome.ticks}
    for request in requests:
        symbol = request.ticks.symbol
        accepted = 0
        for key in request.ticks.keys:
            if (symbol, key) in inserted:
                inserted.discard((symbol, key))
                accepted += 1
        request.receipt.part_stored(accepted, len(request.ticks) - accepted)


async def _reply(requests: list[WriteRequest], outcome: FlushOutcome) -> None:
    """Hand each aggregator the stored ticks of its symbol.

    Without yielding between aggregators while their mailboxes have room: they then all
    publish in the same scheduler batch, before any SSE subscriber runs, so a client gets a
    whole flush in one write rather than one write per symbol."""
    by_symbol: dict[str, list] = {}
    for tick in outcome.ticks:
        by_symbol.setdefault(tick.symbol, []).append(tick)
    replied: set[str] = set()
    for request in requests:
        symbol = request.ticks.symbol
        if symbol in replied or symbol not in by_symbol:
            continue
        replied.add(symbol)
        reply = FlushOutcome(by_symbol[symbol])
        try:
            try:
                request.reply.send_nowait(reply)
            except trio.WouldBlock:
                await request.reply.send(reply)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            log.info("aggregator gone; live update skipped", symbol=symbol)
