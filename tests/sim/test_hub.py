"""The hub and its subscribers: fan-out that never waits, overflow drops the oldest for the
slow client only, resume from the retained window, reset when the window has moved on."""

from __future__ import annotations

import trio

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
