"""The writer: group commit of every aggregator's ticks into Postgres.

Policy: when no flush is running and rows wait, flush at once (an idle writer adds no
latency). While flushes run, rows gather; another flush may overlap them (up to
`concurrency` at once) as soon as `batch_max` rows wait or the oldest has waited
`flush_s`. A flush takes whole receipts in arrival order, all that wait up to `backlog_max`
rows: an idle writer flushes each batch as it comes (small flushes, no wait), and flushes
grow with the backlog, which spreads a flush's fixed cost (a round trip, a commit, a
statement's start and its per-candle work) over more rows exactly when rows queue. A single
receipt larger than that is flushed alone rather than split, so each webhook batch is
committed all at once and its answer is exact. The store returns each new tick with its
candle only for the symbols whose requests are live (someone subscribes); for the others
only the new keys, which is all the answers need.

Failures stay where they start:
- A flush the store refuses for its data (`Rejected`: a value it cannot hold) is tried again
  receipt by receipt, so only the offending batch fails (its webhook answers 422) and the
  batches flushed with it are stored.
- Any other failure (the database unreachable or too slow) fails the flush's receipts: their
  webhooks answer 503 and nothing of them was stored.
- Every flush has a cutoff: the earliest of its receipts' deadlines, and never later than
  `timeout_s` from its start. It commits only before the cutoff, else it rolls back (so a
  webhook that gave up at its deadline is never stored behind its back); shortly after the
  cutoff the writer stops waiting for it. A receipt whose deadline passed before a flush
  took it is dropped unflushed. The writer itself carries on.
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
from tickhub.actors.supervisor import ActorHealth
from tickhub.messages import (
    Expired,
    FlushOutcome,
    NewTick,
    Receipt,
    Rejected,
    StoredTick,
    TickColumns,
    WriteRequest,
)
from tickhub.sql.guard import OUTCOME_WITHIN_S

log = structlog.get_logger(actor="writer")


# How long after a flush's cutoff the store takes at most to know its outcome (committed
# just in time, or not at all), waiting for a server that is still there: beyond it the
# writer gives the flush up and frees its slot.
COMMIT_ANSWER_S = OUTCOME_WITHIN_S + 0.25  # the store's own verdict first


class Store(Protocol):
    async def write(
        self, parts: Sequence[TickColumns], cutoff: float, live: frozenset[str]
    ) -> list[StoredTick | NewTick]:
        """Store the parts in one transaction that commits only before `cutoff` (trio
        time); the ticks new to the store, with their candles for the symbols in `live`
        (StoredTick), only their keys for the others (NewTick). Raises Rejected when the
        data itself cannot be stored, Expired when the cutoff passed first (nothing was
        stored). Answers within COMMIT_ANSWER_S of the cutoff."""
        ...


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
    batch_max: int = 500  # rows waiting that make a flush due at once (BATCH_MAX)
    flush_s: float = 0.2
    concurrency: int = 1
    timeout_s: float = math.inf  # a flush's longest run (DB_TIMEOUT_MS)
    backlog_max: int = 500  # the largest flush, taken while rows wait (BATCH_BACKLOG_MAX)
    flushes: int = 0
    _partial: dict[Receipt, list[WriteRequest]] = attrs.field(factory=dict)
    _ready: deque[_Ready] = attrs.field(factory=deque)
    _ready_rows: int = 0
    _inflight: int = 0
    _closed: bool = False
    _changed: trio.Event = attrs.field(factory=trio.Event)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)  # flushes run here

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._collect)
            task_status.started()
            await self._schedule()

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
            self._partial.pop(receipt, None)  # its other parts go nowhere either
            return
        parts = self._partial.setdefault(receipt, [])
        parts.append(request)
        if len(parts) == receipt.parts:
            del self._partial[receipt]
            ready = _Ready(receipt, parts, trio.current_time())
            self._ready.append(ready)
            self._ready_rows += ready.rows
            metrics.WRITER_QUEUE.set(self._ready_rows)
            self._start_due()  # here, not in the scheduler's task: one scheduler pass less
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

    def _start_due(self) -> None:
        """Start every flush that is due now."""
        assert self._nursery is not None
        while self._may_flush():
            batch = self._take()
            self._inflight += 1
            self._nursery.start_soon(self._flush, batch)

    async def _schedule(self) -> None:
        """Start the flushes that become due by waiting (`flush_s`), and end the writer once
        its mailbox is closed and every flush is done."""
        while True:
            self._start_due()
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
        limit = max(self.batch_max, self.backlog_max)
        while self._ready and rows + self._ready[0].rows <= limit:
            rows += self._ready[0].rows
            batch.append(self._ready.popleft())
        self._ready_rows -= rows
        metrics.WRITER_QUEUE.set(self._ready_rows)
        now = trio.current_time()
        for ready in batch:
            if not ready.receipt.failed and ready.receipt.deadline <= now:
                ready.receipt.fail(Expired("not committed before its deadline"))
        return batch

    async def _flush(self, batch: list[_Ready]) -> None:
        try:
            live = [ready for ready in batch if not ready.receipt.failed]
            if live:
                await self._write(live)
            await _reply([req for ready in batch if ready not in live for req in ready.requests])
        finally:
            self._inflight -= 1
            self._notify()  # the scheduler starts what waited for this slot

    async def _write(self, batch: list[_Ready]) -> None:
        requests = [req for ready in batch for req in ready.requests]
        rows = sum(len(r.ticks) for r in requests)
        started = trio.current_time()
        cutoff = min(started + self.timeout_s, *(ready.receipt.deadline for ready in batch))
        for ready in batch:
            ready.receipt.flushing = True
        try:
            # Past the cutoff the store can no longer commit; a moment later (its answer on
            # the way) the writer stops waiting and frees its flush slot.
            with trio.fail_at(cutoff + COMMIT_ANSWER_S):
                live = frozenset(r.ticks.symbol for r in requests if r.live)
                stored = await self.store.write([r.ticks for r in requests], cutoff, live)
        except Rejected as exc:
            if len(batch) > 1:
                log.warning("flush refused; storing its batches one by one", error=str(exc))
                for ready in batch:
                    await self._write([ready])
                return
            metrics.FLUSH_FAILURES.inc()
            log.warning("batch refused by the store", rows=rows, error=str(exc))
            batch[0].receipt.fail(exc)
            await _reply(requests)
            return
        except Exception as exc:  # unreachable, too slow (TooSlowError), or a bug
            metrics.FLUSH_FAILURES.inc()
            log.warning("flush failed", rows=rows, error=f"{type(exc).__name__}: {exc}")
            for ready in batch:
                ready.receipt.fail(exc)
            await _reply(requests)
            return
        self.flushes += 1
        self.health.touch()
        metrics.FLUSH_ROWS.observe(rows)
        metrics.FLUSH_SECONDS.observe(trio.current_time() - started)
        try:
            await _reply(requests, stored)
            if any(r.live for r in requests):
                await _events_first()
        finally:
            _settle(requests, stored)  # the answers (202), whatever happens


async def _events_first() -> None:
    """Let the flush's live events leave before its webhooks' answers: the aggregators
    publish in the next scheduler pass and the hub writes in the one after, while a webhook
    woken with them would build its answer first half of the time (trio runs a pass's tasks
    in either order), holding the event back by as long (~0.3 ms)."""
    await trio.lowlevel.checkpoint()
    await trio.lowlevel.checkpoint()


def _settle(requests: list[WriteRequest], stored: list[StoredTick | NewTick]) -> None:
    """Tell each receipt how many of its ticks were new; a key seen twice counts once."""
    inserted = {(t.symbol, t.key) for t in stored}
    for request in requests:
        symbol = request.ticks.symbol
        accepted = 0
        for key in request.ticks.keys:
            if (symbol, key) in inserted:
                inserted.discard((symbol, key))
                accepted += 1
        request.receipt.part_stored(accepted, len(request.ticks) - accepted)


async def _reply(requests: list[WriteRequest], stored: Sequence[StoredTick | NewTick] = ()) -> None:
    """Answer every aggregator of these requests once: the stored ticks of its symbol (none
    when the flush failed), how many of them came without live data, and how many of its
    requests this answers.

    Without yielding between aggregators while their mailboxes have room: they then all
    publish in the same scheduler batch, so a client gets a whole flush in one write rather
    than one write per symbol."""
    ticks: dict[str, list[StoredTick]] = {}
    unpublished: dict[str, int] = {}
    for tick in stored:
        if isinstance(tick, StoredTick):
            ticks.setdefault(tick.symbol, []).append(tick)
        else:
            unpublished[tick.symbol] = unpublished.get(tick.symbol, 0) + 1
    answered: dict[str, tuple[trio.MemorySendChannel, int]] = {}
    for request in requests:
        _, count = answered.get(request.ticks.symbol, (request.reply, 0))
        answered[request.ticks.symbol] = (request.reply, count + 1)
    for symbol, (reply_tx, count) in answered.items():
        reply = FlushOutcome(ticks.get(symbol, []), count, unpublished.get(symbol, 0))
        try:
            try:
                reply_tx.send_nowait(reply)
            except trio.WouldBlock:
                await reply_tx.send(reply)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            log.info("aggregator gone; live update skipped", symbol=symbol)
