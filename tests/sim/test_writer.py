"""The writer's group-commit policy under the mock clock, with an in-memory store: idle flush,
flushes that grow with the backlog up to BATCH_BACKLOG_MAX, the BATCH_MAX and BATCH_FLUSH_MS
triggers of an overlapping flush, whole batches, and failed flushes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import pytest
import trio

from tickhub.actors.supervisor import ActorHealth
from tickhub.actors.writer import COMMIT_ANSWER_S, Writer
from tickhub.messages import (
    Expired,
    NewTick,
    Receipt,
    Rejected,
    StoredTick,
    TickColumns,
    WriteRequest,
)


def drained(rx: trio.MemoryReceiveChannel) -> list:
    """Everything waiting in a channel, without waiting."""
    out = []
    while True:
        try:
            out.append(rx.receive_nowait())
        except trio.WouldBlock:
            return out


@attrs.define
class FakeStore:
    """Records each flush (time, rows); takes `delay` seconds; fails while `down`; refuses
    (like Postgres refusing a value) any flush holding a symbol in `refuse`."""

    delay: float = 0.0
    down: bool = False
    refuse: set[str] = attrs.field(factory=set)
    flushes: list[tuple[float, int]] = attrs.field(factory=list)
    seen: set = attrs.field(factory=set)
    live: list[frozenset[str]] = attrs.field(factory=list)  # each flush's live symbols

    async def write(
        self, parts: Sequence[TickColumns], cutoff: float, live: frozenset[str]
    ) -> list[StoredTick | NewTick]:
        start = trio.current_time()
        await trio.sleep(self.delay)
        if self.down:
            raise ConnectionError("postgres is down")
        if self.refuse & {p.symbol for p in parts}:
            raise Rejected("numeric field overflow")
        if trio.current_time() > cutoff:
            raise Expired("rolled back")
        self.flushes.append((start, sum(len(p) for p in parts)))
        self.live.append(live)
        ticks = []
        for p in parts:
            for key, ts in zip(p.keys, p.ts_us, strict=True):
                if (p.symbol, key) in self.seen:
                    continue
                self.seen.add((p.symbol, key))
                if p.symbol not in live:
                    ticks.append(NewTick(p.symbol, key))
                else:
                    candle = (ts // 60_000_000 * 60, 1.0, 1.0, 1.0, 1.0, 1.0, 1, None)
                    ticks.append(StoredTick(p.symbol, key, ts, 1.0, 1.0, *candle))
        return ticks


def part(symbol: str, n: int, tag: str = "") -> TickColumns:
    return TickColumns(
        symbol, "t", 0, [f"{tag}{i}" for i in range(n)], [i for i in range(n)], [1.0] * n, [1.0] * n
    )


@attrs.define
class Harness:
    tx: trio.MemorySendChannel
    writer: Writer
    reply_rx: trio.MemoryReceiveChannel
    reply_tx: trio.MemorySendChannel

    async def send(
        self, *parts: TickColumns, deadline: float = math.inf, live: bool = True
    ) -> Receipt:
        receipt = Receipt(len(parts), sum(len(p) for p in parts), deadline=deadline)
        for p in parts:
            await self.tx.send(WriteRequest(p, receipt, self.reply_tx, live))
        return receipt


async def open_writer(nursery, store, **kw) -> Harness:
    tx, rx = trio.open_memory_channel(100)
    reply_tx, reply_rx = trio.open_memory_channel(1000)
    writer = Writer(rx, store, ActorHealth("writer", True), **kw)
    await nursery.start(writer.run)
    return Harness(tx, writer, reply_rx, reply_tx)


async def test_an_idle_writer_flushes_at_once(autojump_clock):
    store = FakeStore(delay=0.05)
    async with trio.open_nursery() as nursery:
        h = await open_writer(nursery, store, batch_max=500, flush_s=0.2)
        await trio.sleep(1)
        receipt = await h.send(part("A", 3))
        await receipt.done.wait()
        assert store.flushes == [(pytest.approx(1.0), 3)]
        assert trio.current_time() == pytest.approx(1.05)
        assert (receipt.accepted, receipt.duplicates) == (3, 0)
        nursery.cancel_scope.cancel()


async def test_rows_gathered_during_a_flush_go_in_the_next_one_capped_at_backlog_max(
    autojump_clock,
):
    store = FakeStore(delay=1.0)
    async with trio.open_nursery() as nursery:
        h = await open_writer(nursery, store, batch_max=500, flush_s=0.2, backlog_max=500)
        first = await h.send(part("A", 10, "a"))
        await trio.sleep(0.01)  # the first flush is running
        later = [await h.send(part("B", 200, f"b{i}-")) for i in range(4)]  # 800 rows wait
        for r in [first, *later]:
            await r.done.wait()
        nursery.cancel_scope.cancel()
    # 10 alone (idle), then whole batches up to 500 rows (400), then the rest (400).
    assert [rows for _, rows in store.flushes] == [10, 400, 400]
    assert [t for t, _ in store.flushes] == pytest.approx([0.0, 1.0, 2.0])


async def test_flushes_grow_with_the_backlog_and_shrink_when_idle(autojump_clock):
    store = FakeStore(delay=1.0)
    async with trio.open_nursery() as nursery:
        h = await open_writer(nursery, store, batch_max=500, flush_s=0.2, backlog_max=2000)
        first = await h.send(part("A", 10, "a"))
        await trio.sleep(0.01)  # the first flush is running: 3,000 rows queue behind it
        queued = [await h.send(part("B", 300, f"b{i}-")) for i in range(10)]
        for r in [first, *queued]:
            await r.done.wait()
        await trio.sleep_until(5.0)  # idle again
        alone = await h.send(part("C", 300, "c"))
        await alone.done.wait()
        nursery.cancel_scope.cancel()
    # 10 alone (idle); then whole batches up to 2,000 rows (six of 300), then the other 4;
    # idle again, a batch is flushed at once on its own.
    assert store.flushes == [
        (pytest.approx(0.0), 10),
        (pytest.approx(1.0), 1800),
        (pytest.approx(2.0), 1200),
        (pytest.approx(5.0), 300),
    ]
    assert [r.accepted for r in queued] == [300] * 10


async def test_a_grown_flush_takes_a_batch_whole_or_leaves_it_whole(autojump_clock):
    store = FakeStore(delay=1.0)
    async with trio.open_nursery() as nursery:
        h = await open_writer(nursery, store, batch_max=500, flush_s=0.2, backlog_max=2000)
        first = await h.send(part("A", 10, "a"))
        await trio.sleep(0.01)
        before = await h.send(part("B", 300, "b"))
        big = await h.send(part("C", 600, "c"), part("D", 600, "d"))  # one batch, 2 parts
        after = await h.send(part("E", 300, "e"))
        too_big = await h.send(part("F", 1200, "f"), part("G", 1200, "g"))
        for r in (first, before, big, after, too_big):
            await r.done.wait()
        nursery.cancel_scope.cancel()
    # 300 + 1,200 + 300 fit in one flush; 2,400 more would not, and that batch is larger
    # than any flush: it goes alone, never split.
    assert [rows for _, rows in store.flushes] == [10, 1800, 2400]
    assert (big.accepted, too_big.accepted) == (1200, 2400)


async def test_a_batch_larger_than_batch_max_is_never_split(autojump_clock):
    store = FakeStore()
    async with trio.open_nursery() as nursery:
        h = await open_writer(nursery, store, batch_max=100, flush_s=0.2, backlog_max=200)
        receipt = await h.send(part("A", 150), part("B", 150))
        await receipt.done.wait()
        nursery.cancel_scope.cancel()
    assert [rows for _, rows in store.flushes] == [300]
    assert receipt.accepted == 300


async def test_no_row_waits_longer_than_batch_flush_ms(autojump_clock):
    """With a second flush slot, waiting rows get their own flush after BATCH_FLUSH_MS even
    though the first flush is still running."""
    store = FakeStore(delay=5.0)
    async with trio.open_nursery() as nursery:
        h = await open_writer(nursery, store, batch_max=500, flush_s=0.2, concurrency=2)
        await h.send(part("A", 10, "a"))
        await trio.sleep(0.05)
        second = await h.send(part("B", 10, "b"))
        await second.done.wait()
        nursery.cancel_scope.cancel()
    starts = [t for t, _ in store.flushes]
    assert starts == pytest.approx([0.0, 0.25])  # arrived at 0.05, flushed 200 ms later


async def test_batch_max_rows_start_an_overlapping_flush_at_once(autojump_clock):
    store = FakeStore(delay=5.0)
    async with trio.open_nursery() as nursery:
        h = await open_writer(nursery, store, batch_max=100, flush_s=0.2, concurrency=2)
        await h.send(part("A", 10, "a"))
        await trio.sleep(0.05)
        full = await h.send(part("B", 100, "b"))
        await full.done.wait()
        nursery.cancel_scope.cancel()
    assert [t for t, _ in store.flushes] == pytest.approx([0.0, 0.05])


async def test_a_failed_flush_fails_its_batches_and_the_writer_carries_on(autojump_clock):
    store = FakeStore(down=True)
    async with trio.open_nursery() as nursery:
        h = await open_writer(nursery, store)
        failed = await h.send(part("A", 5))
        await failed.done.wait()
        assert failed.failed and isinstance(failed.error, ConnectionError)
        store.down = False
        ok = await h.send(part("A", 5))
        await ok.done.wait()
        assert not ok.failed and ok.accepted == 5
        nursery.cancel_scope.cancel()


async def test_duplicates_are_counted_per_batch(autojump_clock):
    store = FakeStore()
    async with trio.open_nursery() as nursery:
        h = await open_writer(nursery, store)
        first = await h.send(part("A", 5))
        await first.done.wait()
        again = await h.send(part("A", 7))  # keys 0-4 already stored, 5-6 new
        await again.done.wait()
        nursery.cancel_scope.cancel()
    assert (again.accepted, again.duplicates) == (2, 5)


async def test_closing_the_mailbox_flushes_everything_then_stops(autojump_clock):
    store = FakeStore(delay=0.5)
    async with trio.open_nursery() as nursery:
        h = await open_writer(nursery, store)
        receipts = [await h.send(part("A", 3, f"{i}-")) for i in range(5)]
        await h.tx.aclose()
    assert all(r.done.is_set() and not r.failed for r in receipts)
    assert sum(rows for _, rows in store.flushes) == 15


async def test_a_refused_batch_fails_alone_and_its_flush_mates_are_stored(autojump_clock):
    store = FakeStore(delay=1.0, refuse={"BAD"})
    async with trio.open_nursery() as nursery:
        h = await open_writer(nursery, store, batch_max=500, flush_s=0.2)
        first = await h.send(part("A", 1, "first"))  # the idle flush; the rest gather
        await trio.sleep(0.1)
        honest = [await h.send(part("A", 1, f"h{i}-")) for i in range(3)]
        poison = await h.send(part("BAD", 1), part("A", 1, "with-bad"))
        more = [await h.send(part("B", 1, f"m{i}-")) for i in range(3)]
        for receipt in [first, *honest, poison, *more]:
            await receipt.done.wait()
        nursery.cancel_scope.cancel()
    assert isinstance(poison.error, Rejected)
    assert all(not r.failed and r.accepted == 1 for r in [first, *honest, *more])
    assert ("A", "with-bad0") not in store.seen  # nothing of the refused batch
    # The first alone; the seven that gathered behind it were refused together, then each
    # was flushed alone: six stored, the refused one failed.
    assert [rows for _, rows in store.flushes] == [1, 1, 1, 1, 1, 1, 1]


async def test_a_batch_past_its_deadline_is_dropped_unflushed(autojump_clock):
    store = FakeStore(delay=1.0)
    async with trio.open_nursery() as nursery:
        h = await open_writer(nursery, store)
        first = await h.send(part("A", 1, "a"))
        await trio.sleep(0.1)  # the first flush is running
        late = await h.send(part("A", 1, "b"), deadline=0.5)  # waits behind it
        await late.done.wait()
        await first.done.wait()
        nursery.cancel_scope.cancel()
    assert isinstance(late.error, Expired) and not first.failed
    assert store.flushes == [(0.0, 1)]


async def test_a_flush_ending_after_its_cutoff_rolls_back(autojump_clock):
    store = FakeStore(delay=0.6)
    async with trio.open_nursery() as nursery:
        h = await open_writer(nursery, store)
        receipt = await h.send(part("A", 1), deadline=0.5)
        await receipt.done.wait()
        nursery.cancel_scope.cancel()
    assert isinstance(receipt.error, Expired)
    assert store.seen == set()  # rolled back: nothing stored behind the webhook's back
    assert trio.current_time() == pytest.approx(0.6)


async def test_a_store_that_stops_answering_is_given_up_just_after_the_cutoff(autojump_clock):
    store = FakeStore(delay=1000)
    async with trio.open_nursery() as nursery:
        h = await open_writer(nursery, store, timeout_s=5)
        late = await h.send(part("A", 1), deadline=0.5)
        await late.done.wait()
        assert isinstance(late.error, trio.TooSlowError)
        assert trio.current_time() == pytest.approx(0.5 + COMMIT_ANSWER_S)
        unbounded = await h.send(part("A", 1, "b"))  # no deadline: the store's timeout
        await unbounded.done.wait()
        assert isinstance(unbounded.error, trio.TooSlowError)
        assert trio.current_time() == pytest.approx(0.5 + 5 + 2 * COMMIT_ANSWER_S)
        nursery.cancel_scope.cancel()


async def test_every_aggregator_gets_an_answer_for_each_flush(autojump_clock):
    """Also when the flush failed or held only duplicates: an aggregator counts what it has
    in flight by these answers (it may only be retired with none)."""
    store = FakeStore(refuse={"BAD"})
    async with trio.open_nursery() as nursery:
        h = await open_writer(nursery, store)
        # One flush each: the second holds only duplicates, the third is refused.
        for parts in (part("A", 2), part("A", 2), part("BAD", 1)):
            receipt = await h.send(parts)
            await receipt.done.wait()
        nursery.cancel_scope.cancel()
    answers = drained(h.reply_rx)
    assert [(len(a.ticks), a.answered) for a in answers] == [(2, 1), (0, 1), (0, 1)]


async def test_a_symbol_nobody_watches_gets_its_counts_but_no_live_data(autojump_clock):
    """A part sent not live comes back as keys only: its webhook's answer is as exact, its
    aggregator learns how many new ticks went unpublished, and a live symbol of the same
    flush still gets its candles."""
    store = FakeStore(delay=1.0)
    async with trio.open_nursery() as nursery:
        h = await open_writer(nursery, store)
        first = await h.send(part("A", 1, "first"))
        await trio.sleep(0.01)
        quiet = await h.send(part("Q", 3, "q"), live=False)
        again = await h.send(part("Q", 4, "q"), live=False)  # 3 of its 4 keys are repeats
        watched = await h.send(part("W", 2, "w"))
        for r in (first, quiet, again, watched):
            await r.done.wait()
        nursery.cancel_scope.cancel()
    assert [rows for _, rows in store.flushes] == [1, 9]
    assert [(r.accepted, r.duplicates) for r in (quiet, again, watched)] == [
        (3, 0),
        (1, 3),
        (2, 0),
    ]
    answers = drained(h.reply_rx)
    by_symbol = {a.ticks[0].symbol if a.ticks else "Q": a for a in answers[1:]}
    assert (by_symbol["Q"].ticks, by_symbol["Q"].unpublished, by_symbol["Q"].answered) == (
        [],
        4,
        2,
    )
    assert (len(by_symbol["W"].ticks), by_symbol["W"].unpublished) == (2, 0)
