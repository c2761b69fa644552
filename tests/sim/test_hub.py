"""The hub and its subscribers: fan-out that never waits, overflow drops the oldest for the
slow client only, resume from the retained window, reset when the window has moved on."""

from __future__ import annotations

import itertools
import math
import time

import trio

import tickhub.actors.hub as hub_module
from tickhub.actors.hub import Hub

HELLO = b"hello\n\n"


def publish(hub: Hub, symbol: str, n: int) -> None:
    hub.publish(symbol, [b'{"n":%d}' % i for i in range(n)])


async def _take(sub, count_events: int) -> bytes:
    out = b""
    frames = sub.frames(HELLO, keepalive_s=60)
    async for chunk in frames:
        out += chunk
        if out.count(b"\nid: ") + out.startswith(b"id: ") >= count_events:
            break
    await frames.aclose()
    return out


def ids(chunk: bytes) -> list[int]:
    return [int(line[4:]) for line in chunk.split(b"\n") if line.startswith(b"id: ")]


async def test_slow_client_loses_oldest_while_fast_client_gets_everything(autojump_clock):
    hub = Hub(retain=1000, client_buffer=5, next_id=1)
    fast = hub.subscribe(None)
    slow = hub.subscribe(frozenset({"BTC"}))
    got_fast: list[int] = []
    for _ in range(4):
        publish(hub, "BTC", 5)
        got_fast += ids(b"".join(fast.buffer))  # the fast client drains after every burst
        fast.buffer.clear()
    assert got_fast == list(range(1, 21))
    assert fast.dropped == 0
    assert slow.dropped == 15
    chunk = await _take(slow, 5)
    assert b'event: reset\ndata: {"reason":"overflow"}' in chunk
    assert ids(chunk) == [16, 17, 18, 19, 20]


async def test_filters_deliver_only_their_symbols(autojump_clock):
    hub = Hub(retain=100, client_buffer=100, next_id=1)
    eth = hub.subscribe(frozenset({"ETH"}))
    both = hub.subscribe(frozenset({"ETH", "BTC"}))
    publish(hub, "BTC", 2)
    publish(hub, "ETH", 3)
    publish(hub, "SOL", 1)
    assert ids(b"".join(eth.buffer)) == [3, 4, 5]
    assert ids(b"".join(both.buffer)) == [1, 2, 3, 4, 5]


async def test_resume_replays_retained_events_after_the_id(autojump_clock):
    hub = Hub(retain=10, client_buffer=100, next_id=100)
    publish(hub, "BTC", 8)  # ids 100..107
    sub = hub.subscribe(None, last_id=103)
    assert not sub.reset
    assert ids(b"".join(sub.buffer)) == [104, 105, 106, 107]
    publish(hub, "BTC", 1)
    assert ids(b"".join(sub.buffer))[-1] == 108


async def test_resume_from_an_evicted_id_is_a_reset(autojump_clock):
    hub = Hub(retain=5, client_buffer=100, next_id=1)
    publish(hub, "BTC", 20)  # window holds 16..20
    assert hub.subscribe(None, last_id=15).reset is False  # 16.. all still retained
    assert hub.subscribe(None, last_id=14).reset is True  # 15 is gone
    assert hub.subscribe(None, last_id=999).reset is True  # from another run
    chunk = await _take(hub.subscribe(None, last_id=3), 0)
    assert chunk.startswith(HELLO + b'event: reset\ndata: {"reason":"stale"}')


async def test_unsubscribe_and_close(autojump_clock):
    hub = Hub(retain=5, client_buffer=5, next_id=1)
    sub = hub.subscribe(frozenset({"BTC"}))
    assert hub.clients == 1
    hub.unsubscribe(sub)
    assert hub.clients == 0
    publish(hub, "BTC", 1)
    assert not sub.buffer
    live = hub.subscribe(None)
    done = []

    async def consume():
        async for chunk in live.frames(HELLO, keepalive_s=60):
            done.append(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.sleep(1)
        hub.close()  # graceful stop: the stream ends on its own
    assert done == [HELLO]


async def test_keepalive_pings_when_quiet(autojump_clock):
    hub = Hub(retain=5, client_buffer=5, next_id=1)
    sub = hub.subscribe(None)
    frames = sub.frames(HELLO, keepalive_s=15)
    assert await frames.__anext__() == HELLO
    start = trio.current_time()
    ping = await frames.__anext__()
    assert trio.current_time() - start == 15
    assert ping.startswith(b": ping ") and b"event: ping" in ping
    await frames.aclose()


# --- conflation -----------------------------------------------------------------------------


def conflated(sub) -> list[tuple[int, dict]]:
    """(id, data) of every event in a subscriber's buffer, drained."""
    import orjson

    out = []
    for frame in sub.buffer:
        lines = dict(line.split(": ", 1) for line in frame.decode().strip().split("\n"))
        out.append((int(lines["id"]), orjson.loads(lines["data"])))
    sub.buffer.clear()
    return out


def tick(n: int) -> bytes:
    return b'{"n":%d}' % n


async def test_a_conflated_stream_sends_the_first_event_at_once_then_the_latest_per_interval(
    autojump_clock,
):
    hub = Hub(retain=1000, client_buffer=100, next_id=1)
    sub = hub.subscribe(frozenset({"BTC"}), conflate_s=0.25)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        hub.publish("BTC", [tick(0)])  # after a quiet spell: at once
        assert conflated(sub) == [(1, {"n": 0, "conflated": 1})]
        for n in range(1, 11):  # ten more within the interval: held, the latest kept
            await trio.sleep(0.02)
            hub.publish("BTC", [tick(n)])
        assert conflated(sub) == []
        await trio.sleep(0.25 - 0.2 + 0.001)  # the interval is up
        assert conflated(sub) == [(11, {"n": 10, "conflated": 10})]
        await trio.sleep(1)  # quiet: nothing, and the next tick goes at once again
        assert conflated(sub) == []
        hub.publish("BTC", [tick(11)])
        assert conflated(sub) == [(12, {"n": 11, "conflated": 1})]
        nursery.cancel_scope.cancel()


async def test_a_conflated_client_never_gets_more_than_one_event_per_symbol_per_interval(
    autojump_clock,
):
    hub = Hub(retain=10_000, client_buffer=1000, next_id=1)
    sub = hub.subscribe(None, conflate_s=0.25)
    plain = hub.subscribe(None)
    got: dict[str, list[float]] = {"BTC": [], "ETH": []}
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        start = trio.current_time()
        for n in range(200):  # both symbols tick every 10 ms for 2 s
            for symbol in got:
                hub.publish(symbol, [b'{"s":"%s","n":%d}' % (symbol.encode(), n)])
            for _, data in conflated(sub):
                got[data["s"]].append(trio.current_time())
            await trio.sleep(0.01)
        await trio.sleep(0.3)
        for _, data in conflated(sub):
            got[data["s"]].append(trio.current_time())
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    for symbol, times in got.items():
        assert len(times) <= math.ceil(elapsed / 0.25) + 1, symbol
        assert all(b - a >= 0.25 - 1e-9 for a, b in itertools.pairwise(times)), symbol
    assert len(plain.buffer) == 400 - plain.dropped  # tick by tick alongside, unchanged
    last = [frame for frame in plain.buffer][-2:]
    assert all(b'"n":199' in f for f in last)


async def test_conflated_frames_are_encoded_once_for_every_client_of_an_interval(autojump_clock):
    hub = Hub(retain=100, client_buffer=100, next_id=1)
    a = hub.subscribe(frozenset({"BTC"}), conflate_s=0.5)
    b = hub.subscribe(None, conflate_s=0.5)
    hub.publish("BTC", [tick(1)])
    assert a.buffer[0] is b.buffer[0]


async def test_resume_on_a_conflated_stream_sends_each_symbols_latest_then_goes_on(
    autojump_clock,
):
    hub = Hub(retain=100, client_buffer=100, next_id=1)
    for n in range(6):  # ids 1..6: BTC, ETH alternating
        hub.publish("BTC" if n % 2 == 0 else "ETH", [tick(n)])
    sub = hub.subscribe(None, last_id=2, conflate_s=0.25)
    # After id 2: BTC had 3 and 5 (latest n=4), ETH had 4 and 6 (latest n=5).
    assert conflated(sub) == [(5, {"n": 4, "conflated": 2}), (6, {"n": 5, "conflated": 2})]
    stale = hub.subscribe(None, last_id=999_999, conflate_s=0.25)
    assert stale.reset


async def test_an_idle_conflator_keeps_no_state(autojump_clock):
    hub = Hub(retain=100, client_buffer=100, next_id=1)
    sub = hub.subscribe(None, conflate_s=0.25)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        for n in range(100):
            hub.publish(f"S{n}", [tick(n)])
        await trio.sleep(1)
        (conflator,) = hub._conflators.values()
        assert conflator._latest == {} and conflator._due == []
        hub.unsubscribe(sub)
        assert hub._conflators == {}
        nursery.cancel_scope.cancel()


class CountingSink:
    """An owned connection that counts its writes and the events in them."""

    def __init__(self, writes: list[int]) -> None:
        self.writes = writes

    def flush(self, sub) -> None:
        self.writes.append(sub.take().count(b"\nid: ") + 1)

    def end(self) -> None:
        pass


async def test_symbols_due_together_are_handed_out_a_slice_of_writes_per_pass(
    autojump_clock, monkeypatch
):
    """100 symbols that one batch moved together come due together; each pass of the hub
    hands out the events of only about CONFLATED_PASS_WRITES of their clients, so no pass
    writes to all 1,000 at once (the later ones go a pass later, and drift apart). Each
    client still gets its symbol's latest once per interval, and a client of every symbol
    gets each pass's events in one write."""
    monkeypatch.setattr(hub_module, "CONFLATED_PASS_WRITES", 50)
    hub = Hub(retain=10_000, client_buffer=100, next_id=1)
    passes: list[int] = []  # the connections each pass writes to
    flush_in_slices = Hub._flush_in_slices

    async def counted(self) -> None:
        passes.append(len(self._dirty))
        await flush_in_slices(self)

    monkeypatch.setattr(Hub, "_flush_in_slices", counted)
    writes: dict[str, list[int]] = {}
    for n in range(100):
        for k in range(10):
            sub = hub.subscribe(frozenset({f"S{n}"}), conflate_s=0.25)
            sub.sink = CountingSink(writes.setdefault(f"S{n}/{k}", []))
    everything = hub.subscribe(None, conflate_s=0.25)
    everything.sink = CountingSink(all_writes := [])
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        for step in range(10):  # every symbol ticks every 100 ms, in one batch, for 1 s
            for n in range(100):
                hub.publish(f"S{n}", [tick(step)])
            await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    passes = [p for p in passes if p]
    due_passes = passes[1:]  # the first: every symbol's first tick, at once (none was due)
    assert passes[0] == 1001 and max(due_passes) <= 50 + 10 + 1
    assert all(len(w) == 4 for w in writes.values())  # at 0 s, then once per interval
    assert sum(all_writes) == 400  # every symbol's four, to the client of every symbol
    assert len(all_writes) == len(passes)  # one write per pass that had events for it


class SlowSink:
    """An owned connection whose every write takes 100 µs of CPU."""

    def __init__(self, log: list[str], first: trio.Event, done: trio.Event, of: int) -> None:
        self.log, self.first, self.done, self.of = log, first, done, of

    def flush(self, sub) -> None:
        until = time.perf_counter() + 0.0001
        while time.perf_counter() < until:
            pass
        sub.take()
        self.log.append("write")
        self.first.set()
        if self.log.count("write") == self.of:
            self.done.set()


async def test_a_flush_to_many_clients_lets_the_other_tasks_run_between_slices():
    """A webhook waiting while the hub writes to 200 slow sockets (20 ms in all) runs after
    one slice of them, not after all."""
    hub = Hub(next_id=1)
    log: list[str] = []
    first, done = trio.Event(), trio.Event()
    for _ in range(200):
        hub.subscribe(None).sink = SlowSink(log, first, done, 200)

    async def webhook() -> None:
        await first.wait()
        log.append("webhook")

    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        nursery.start_soon(webhook)
        publish(hub, "BTC", 1)
        with trio.fail_after(5):
            await done.wait()
        nursery.cancel_scope.cancel()
    assert log.index("webhook") < 60, log.index("webhook")  # a slice is ~20 writes


async def test_a_resume_across_unpublished_ticks_is_a_reset_for_their_symbol(autojump_clock):
    """Ticks of a symbol nobody watched were stored without events (`skipped`): a resume from
    before that cannot be served for the symbol, only for the others; a subscriber of it
    that came meanwhile reloads."""
    hub = Hub(retain=100, client_buffer=100, next_id=1)
    publish(hub, "BTC", 3)  # ids 1..3
    hub.skipped("ETH")  # ETH's ticks would have come after id 3
    publish(hub, "BTC", 2)  # ids 4..5
    assert hub.subscribe(frozenset({"BTC"}), last_id=2).reset is False
    assert ids(b"".join(hub.subscribe(frozenset({"BTC"}), last_id=2).buffer)) == [3, 4, 5]
    assert hub.subscribe(frozenset({"ETH"}), last_id=3).reset is True
    assert hub.subscribe(None, last_id=3).reset is True  # every symbol includes ETH
    assert hub.subscribe(frozenset({"ETH"}), last_id=4).reset is False  # saw what followed
    newcomer = hub.subscribe(frozenset({"ETH"}))
    hub.skipped("ETH")
    assert b'event: reset\ndata: {"reason":"stale"}' in b"".join(newcomer.buffer)


async def test_the_symbols_without_events_the_hub_remembers_are_bounded(
    autojump_clock, monkeypatch
):
    monkeypatch.setattr("tickhub.actors.hub.MAX_GAPS", 3)
    hub = Hub(retain=100, client_buffer=100, next_id=1)
    for symbol in ["A", "B", "C", "D"]:
        publish(hub, "BTC", 1)  # ids 1, 2, 3, 4
        hub.skipped(symbol)  # A's gap starts at id 2, B's at 3 …
    assert len(hub._gaps) == 3  # A was forgotten ...
    assert hub.subscribe(frozenset({"BTC"}), last_id=1).reset is True  # ... conservatively
    assert hub.subscribe(frozenset({"BTC"}), last_id=2).reset is False
    assert hub.subscribe(frozenset({"A"}), last_id=2).reset is False  # nothing missed after 2


async def test_a_symbol_stays_wanted_while_a_subscriber_that_left_can_resume(autojump_clock):
    hub = Hub(retain=3, client_buffer=100, next_id=1)
    assert not hub.wants("BTC")
    sub = hub.subscribe(frozenset({"BTC"}))
    assert hub.wants("BTC") and not hub.wants("ETH")
    publish(hub, "BTC", 2)  # ids 1..2
    hub.unsubscribe(sub)
    assert hub.wants("BTC")  # it may come back with Last-Event-ID 2
    publish(hub, "ETH", 3)  # ids 3..5: the window (3..5) holds all that came after 2
    assert hub.wants("BTC")
    publish(hub, "ETH", 1)  # id 6: 3 is gone, so a resume from 2 is a reset anyway
    assert not hub.wants("BTC")
    everything = hub.subscribe(None)
    assert hub.wants("SOL")
    hub.unsubscribe(everything)
    assert hub.wants("SOL")
