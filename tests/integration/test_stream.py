"""The live stream against a running tickhub: one truth with REST (§4.4), resume and reset,
slow clients, and cleanup when a client goes away."""

from __future__ import annotations

import time
from functools import partial

import httpx
import trio

from tests.integration.test_pipeline import ticks
from tests.sse import events

NOW = int(time.time()) - 120


async def _collect(client, url, n, into, *, headers=None, started=None):
    async with client.stream("GET", url, headers=headers or {}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for event in events(response):
            into.append(event)
            if event.event == "hello" and started is not None:
                started.set()
            if sum(e.event == "message" for e in into) >= n:
                return


async def _listen_while_posting(tickhub, url: str, n: int, items: list[dict]) -> list:
    """Connect to `url`, post `items` once the stream said hello, and return what it sent
    up to the `n`th message event."""
    received: list = []
    started = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(_collect, tickhub.client, url, n, received, started=started))
            await started.wait()
            assert (await tickhub.post_ticks(items)).status_code == 202
    return received


async def test_event_carries_the_stored_candle_and_sma10(tickhub):
    # 12 minutes of ticks so that SMA10 exists; the last batch is the live one.
    history = [
        {"symbol": "BTCUSDT", "price": 100 + m, "ts": NOW - (12 - m) * 60, "volume": 1}
        for m in range(12)
    ]
    assert (await tickhub.post_ticks(history)).status_code == 202
    live = [
        {
            "symbol": "BTCUSDT",
            "price": 150.5,
            "ts": NOW + 1,
            "volume": 2,
            "idempotencyKey": "live-1",
        }
    ]
    received = await _listen_while_posting(tickhub, "/realtime/ticks?symbol=BTCUSDT", 1, live)
    hello, event = received[0], received[-1]
    assert hello.event == "hello" and hello.json()["filterSymbol"] == "BTCUSDT"
    data = event.json()
    assert (data["symbol"], data["price"], data["volume"]) == ("BTCUSDT", 150.5, 2)
    assert data["ts"] == NOW + 1
    candles = (
        await tickhub.get("/api/v1/ticks/BTCUSDT/history", params={"view": "ohlc1m", "limit": 50})
    ).json()["items"]
    rest = next(c for c in candles if c["ts"] == data["candle1m"]["bucket_start"])
    for field in ("open", "high", "low", "close", "volume", "count"):
        assert data["candle1m"][field] == rest[field], field
    assert data["sma10"] is not None
    assert data["sma10"] == rest["sma10"]


async def test_sma10_of_a_flush_over_two_minutes_uses_the_close_it_just_changed(tickhub):
    """One batch moves the close of minute 11 and opens minute 12: the event of minute 12
    averages the new close of minute 11, as REST does, not the one stored before."""
    base = (int(time.time()) // 60 - 30) * 60
    history = [
        {"symbol": "SMAUSDT", "price": 100 + m, "ts": base + m * 60 + 10, "volume": 1}
        for m in range(12)
    ]
    assert (await tickhub.post_ticks(history)).status_code == 202
    live = [
        {"symbol": "SMAUSDT", "price": 500, "ts": base + 11 * 60 + 50, "volume": 1},
        {"symbol": "SMAUSDT", "price": 150, "ts": base + 12 * 60 + 5, "volume": 1},
    ]
    received = await _listen_while_posting(tickhub, "/realtime/ticks?symbol=SMAUSDT", 2, live)
    last = [e.json() for e in received if e.event == "message"][-1]
    assert last["candle1m"]["bucket_start"] == base + 12 * 60
    closes = [100 + m for m in range(3, 11)] + [500, 150]
    assert last["sma10"] == sum(closes) / 10
    candles = (
        await tickhub.get("/api/v1/ticks/SMAUSDT/history", params={"view": "ohlc1m", "limit": 50})
    ).json()["items"]
    assert candles[-1]["sma10"] == last["sma10"]


async def test_resume_after_last_event_id_has_no_gap_and_no_repeat(tickhub):
    first = await _listen_while_posting(
        tickhub, "/realtime/ticks", 10, ticks("BTCUSDT", 10, start=NOW)
    )
    seen = [e for e in first if e.event == "message"]
    assert len(seen) == 10
    # While disconnected, more events happen.
    await tickhub.post_ticks(ticks("BTCUSDT", 7, start=NOW + 10, seed=2))
    resumed = []
    with trio.fail_after(10):
        await _collect(
            tickhub.client, "/realtime/ticks", 7, resumed, headers={"Last-Event-ID": seen[4].id}
        )
    got = [e.id for e in resumed if e.event == "message"]
    # Everything after event 5: the last five of the first run and the seven new ones.
    assert got[:5] == [e.id for e in seen[5:]]
    assert len(got) == len(set(got))
    ids = [int(i) for i in got]
    assert ids == sorted(ids) and ids == list(range(ids[0], ids[0] + len(ids)))


async def test_stale_last_event_id_gets_reset(tickhub):
    out = []
    with trio.fail_after(10):
        async with tickhub.client.stream(
            "GET", "/realtime/ticks", params={"lastEventId": "12345"}
        ) as response:
            async for event in events(response):
                out.append(event)
                if event.event == "reset":
                    break
    assert [e.event for e in out] == ["hello", "reset"]
    assert out[1].json() == {"reason": "stale"}


async def test_symbol_filter_only_delivers_that_symbol(tickhub):
    items = ticks("BTCUSDT", 5, start=NOW) + ticks("ETHUSDT", 3, start=NOW)
    received = await _listen_while_posting(tickhub, "/realtime/ticks?symbols=ETHUSDT", 3, items)
    assert {e.json()["symbol"] for e in received if e.event == "message"} == {"ETHUSDT"}


async def test_disconnect_removes_the_subscriber(tickhub):
    async def clients() -> float:
        text = (await tickhub.get("/ops/metrics")).text
        line = next(x for x in text.splitlines() if x.startswith("tickhub_sse_clients "))
        return float(line.split()[1])

    before = await clients()
    async with httpx.AsyncClient(base_url=tickhub.url) as other:
        with trio.fail_after(5):
            async with other.stream("GET", "/realtime/ticks") as response:
                async for event in events(response):
                    assert event.event == "hello"
                    break
                assert await clients() == before + 1
    for _ in range(100):  # the server notices the disconnect on its next write or read
        if await clients() == before:
            break
        await trio.sleep(0.05)
    assert await clients() == before
