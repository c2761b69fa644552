"""The pipeline's actors wired with an in-memory store under the mock clock: an aggregator
that crashes is restarted and loses no acknowledged tick; overload is backpressure, then a
clear refusal; a graceful close flushes everything admitted; idle aggregators stop, and no
more than the cap run at once, however many symbols come."""

from __future__ import annotations

import attrs
import pytest
import trio

from tests.sim.test_hub import ids
from tests.sim.test_writer import FakeStore, part
from tickhub.actors.hub import Hub, HubPublisher
from tickhub.actors.pipeline import Admission, Overloaded, Pipeline
from tickhub.actors.supervisor import RestartPolicy, Supervisor


@attrs.define
class FlakyHub:
    """Publishes into a list; raises on the calls listed in `fail_on` (1-based)."""

    fail_on: set[int] = attrs.field(factory=set)
    calls: int = 0
    events: list = attrs.field(factory=list)

    def wants(self, symbol):
        return True

    def skipped(self, symbol):
        raise AssertionError("every symbol is wanted here")

    async def publish(self, symbol, payloads):
        self.calls += 1
        if self.calls in self.fail_on:
            raise RuntimeError("hub exploded")
        self.events.extend((symbol, p) for p in payloads)


async def open_pipeline(nursery, store, hub, **kw) -> Pipeline:
    supervisor = Supervisor(nursery, RestartPolicy(max_restarts=5, backoff_initial_s=0.1))
    pipeline = Pipeline(supervisor, store, hub, **kw)
    await pipeline.start()
    return pipeline


async def test_a_crashed_aggregator_is_restarted_and_no_acked_tick_is_lost(autojump_clock):
    store = FakeStore()
    hub = FlakyHub(fail_on={2})
    async with trio.open_nursery() as nursery:
        pipeline = await open_pipeline(nursery, store, hub)
        receipts = []
        for i in range(5):
            receipt = await pipeline.submit([part("BTC", 10, f"{i}-")], 10)
            await receipt.done.wait()
            receipts.append(receipt)
            await trio.sleep(1)
        health = pipeline.supervisor.actors["aggregator:BTC"]
        assert health.restarts == 1 and health.state == "running"
        assert "hub exploded" in health.last_error
        nursery.cancel_scope.cancel()
    assert all(not r.failed and r.accepted == 10 for r in receipts)
    assert len(store.seen) == 50  # every acknowledged tick was stored
    # The crash cost the live events of one flush, never a stored tick; later ones flow.
    assert len(hub.events) == 40


async def test_overload_waits_then_refuses_and_stores_nothing_of_the_refused(autojump_clock):
    store = FakeStore(delay=100)
    async with trio.open_nursery() as nursery:
        pipeline = await open_pipeline(
            nursery, store, FlakyHub(), ingest_timeout_s=2.0, admission=Admission(100)
        )
        first = await pipeline.submit([part("BTC", 100, "a")], 100)  # fills the gate
        start = trio.current_time()
        with pytest.raises(Overloaded):
            await pipeline.submit([part("BTC", 10, "b")], 10)
        assert trio.current_time() - start == pytest.approx(2.0)
        await first.done.wait()
        assert first.accepted == 100
        later = await pipeline.submit([part("BTC", 10, "c")], 10)  # room again
        await later.done.wait()
        nursery.cancel_scope.cancel()
    assert not any(k.startswith("b") for _, k in store.seen)


async def test_close_flushes_everything_admitted(autojump_clock):
    store = FakeStore(delay=0.3)
    hub = FlakyHub()
    async with trio.open_nursery() as nursery:
        pipeline = await open_pipeline(nursery, store, hub)
        receipts = [
            await pipeline.submit([part(sym, 5, f"{i}-")], 5)
            for i in range(4)
            for sym in ("BTC", "ETH")
        ]
        await pipeline.close()
        assert all(r.done.is_set() and not r.failed for r in receipts)
        assert pipeline.supervisor.actors["writer"].state == "stopped"
        nursery.cancel_scope.cancel()
    assert len(store.seen) == 40
    assert len(hub.events) == 40


async def test_an_idle_aggregator_stops_and_its_symbol_starts_a_new_one(autojump_clock):
    store, hub = FakeStore(), FlakyHub()
    async with trio.open_nursery() as nursery:
        pipeline = await open_pipeline(nursery, store, hub, aggregator_idle_s=60)
        receipt = await pipeline.submit([part("BTC", 3, "a")], 3)
        await receipt.done.wait()
        assert "aggregator:BTC" in pipeline.supervisor.actors
        await trio.sleep(61)
        assert pipeline.symbols == [] and "aggregator:BTC" not in pipeline.supervisor.actors
        again = await pipeline.submit([part("BTC", 3, "b")], 3)
        await again.done.wait()
        assert pipeline.symbols == ["BTC"]
        nursery.cancel_scope.cancel()
    assert again.accepted == 3 and len(hub.events) == 6


async def test_a_busy_aggregator_is_not_stopped_however_long_its_flush(autojump_clock):
    store, hub = FakeStore(delay=300), FlakyHub()
    async with trio.open_nursery() as nursery:
        pipeline = await open_pipeline(nursery, store, hub, aggregator_idle_s=60)
        receipt = await pipeline.submit([part("BTC", 3)], 3)
        await trio.sleep(200)
        assert pipeline.symbols == ["BTC"]  # its write is in flight: it waits for it
        await receipt.done.wait()
        await trio.sleep(1)  # the live events follow the commit
        nursery.cancel_scope.cancel()
    assert receipt.accepted == 3 and len(hub.events) == 3  # the events were published


async def test_new_symbols_beyond_the_cap_retire_the_least_recently_busy(autojump_clock):
    store, hub = FakeStore(), FlakyHub()
    async with trio.open_nursery() as nursery:
        pipeline = await open_pipeline(nursery, store, hub, max_aggregators=3)
        for symbol in ("A", "B", "C", "A", "D", "E"):
            receipt = await pipeline.submit([part(symbol, 1, symbol + str(trio.current_time()))], 1)
            await receipt.done.wait()
            await trio.sleep(1)
            assert len(pipeline.symbols) <= 3
            running = [n for n in pipeline.supervisor.actors if n.startswith("aggregator:")]
            assert len(running) <= 3
        assert pipeline.symbols == ["A", "D", "E"]  # B then C went, A was used again
        nursery.cancel_scope.cancel()
    assert len(hub.events) == 6


async def test_a_symbol_nobody_subscribes_to_costs_no_live_work(autojump_clock):
    """In one process the hub knows who subscribes: the flush of an unwatched symbol asks
    the store for keys only and publishes nothing, a watched one gets its events, and a
    resume from before the unpublished ticks is a reset, not a silent gap."""
    store = FakeStore()
    hub = Hub(retain=100, client_buffer=100, next_id=1)
    watcher = hub.subscribe(frozenset({"BTC"}))
    async with trio.open_nursery() as nursery:
        pipeline = await open_pipeline(nursery, store, HubPublisher(hub))
        for symbol in ("BTC", "ETH"):
            receipt = await pipeline.submit([part(symbol, 3, symbol)], 3)
            await receipt.done.wait()
            assert receipt.accepted == 3
        await trio.sleep(0.1)  # the aggregators publish
        nursery.cancel_scope.cancel()
    assert store.live == [frozenset({"BTC"}), frozenset()]
    assert ids(b"".join(watcher.buffer)) == [1, 2, 3]  # BTC's three events
    assert hub.last_id == 3  # none for ETH
    assert hub.subscribe(frozenset({"ETH"}), last_id=3).reset is True
    assert hub.subscribe(frozenset({"BTC"}), last_id=3).reset is False


@attrs.define
class RecordingSink:
    """An owned connection's sink that keeps what the hub writes."""

    written: list[bytes] = attrs.field(factory=list)

    def flush(self, subscriber):
        self.written.append(subscriber.take())

    def end(self):
        pass


async def test_a_flush_s_live_events_are_written_before_its_webhooks_are_answered():
    """The event is the product's latency: when a webhook learns its batch is stored, the
    hub has already written that batch's event to the subscriber's socket. (trio runs a
    pass's tasks in either order, so without the writer's `_events_first` about half of
    these twenty would find nothing written yet.)"""
    store = FakeStore()
    hub = Hub(retain=100, client_buffer=100, next_id=1)
    watcher = hub.subscribe(frozenset({"BTC"}))
    watcher.sink = sink = RecordingSink()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        pipeline = await open_pipeline(nursery, store, HubPublisher(hub))
        for n in range(20):
            receipt = await pipeline.submit([part("BTC", 1, f"{n}-")], 1)
            await receipt.done.wait()
            assert ids(b"".join(sink.written)) == list(range(1, n + 2))
        nursery.cancel_scope.cancel()
