"""The server's own HTTP loop (the webhook and the live stream, `http.owned`) as independent
clients see it: h11 reads the framing, the browser's rules hold for the stream, keep-alive
and hand-over to hypercorn work on one connection, and clients that stop reading or vanish
in the middle of a write cost nothing to the others."""

from __future__ import annotations

import math
import socket
import struct
import time

import h11
import httpx
import orjson
import trio

from tests.conftest import API_KEY
from tests.integration.test_pipeline import ticks
from tests.integration.test_split import wait_until
from tests.sse import events

NOW = int(time.time()) - 120


def hostport(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def webhook(body: bytes, *extra: tuple[bytes, bytes]) -> h11.Request:
    return h11.Request(
        method="POST",
        target="/api/v1/webhooks/ticks",
        headers=[
            (b"host", b"test"),
            (b"x-api-key", API_KEY.encode()),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            *extra,
        ],
    )


def tick_body(key: str, price: float = 100.0, symbol: str = "OWNED") -> bytes:
    item = {"symbol": symbol, "price": price, "ts": NOW, "volume": 1, "idempotencyKey": key}
    return orjson.dumps({"items": [item]})


async def read_response(stream: trio.SocketStream, conn: h11.Connection) -> tuple[int, bytes]:
    """The next whole response on a client connection (status, body)."""
    status, body = 0, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.InformationalResponse):
            continue
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, body


async def test_webhooks_keep_alive_then_another_request_goes_to_hypercorn(tickhub, db):
    stream = await trio.open_tcp_stream(*hostport(tickhub.url))
    conn = h11.Connection(h11.CLIENT)
    for n in range(3):  # three webhooks on the lean loop, one connection
        body = tick_body(f"ka-{n}")
        await stream.send_all(conn.send(webhook(body)) + conn.send(h11.Data(data=body)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        status, answer = await read_response(stream, conn)
        assert status == 202 and orjson.loads(answer)["accepted"] == 1
        conn.start_next_cycle()
    # Then a request of hypercorn's, on the same connection: served all the same.
    await stream.send_all(
        conn.send(h11.Request(method="GET", target="/api/v1/symbols", headers=[("host", "t")]))
        + conn.send(h11.EndOfMessage())
    )
    status, answer = await read_response(stream, conn)
    assert status == 200 and {s["symbol"] for s in orjson.loads(answer)} == {"OWNED"}
    await stream.aclose()
    assert await db.fetchval("SELECT count(*) FROM ticks_history") == 3


async def test_expect_100_continue_gets_its_interim_answer(tickhub, db):
    stream = await trio.open_tcp_stream(*hostport(tickhub.url))
    conn = h11.Connection(h11.CLIENT)
    body = tick_body("continue")
    await stream.send_all(conn.send(webhook(body, (b"expect", b"100-continue"))))
    with trio.fail_after(5):  # without the interim answer a client waits a second or more
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            assert isinstance(event, h11.InformationalResponse)
            assert event.status_code == 100
            break
    await stream.send_all(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
    status, _ = await read_response(stream, conn)
    assert status == 202
    await stream.aclose()


async def test_a_request_that_arrives_in_pieces_is_served(tickhub, db):
    """A head split across reads (the first read cannot tell what it is) is still ours."""
    stream = await trio.open_tcp_stream(*hostport(tickhub.url))
    conn = h11.Connection(h11.CLIENT)
    body = tick_body("pieces")
    raw = conn.send(webhook(body)) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
    for i in range(0, len(raw), 7):
        await stream.send_all(raw[i : i + 7])
        await trio.sleep(0.005)
    status, _ = await read_response(stream, conn)
    assert status == 202
    await stream.aclose()


async def stream_head_and_first_events(url: str, target: str, version: bytes, n: int):
    """(status, headers, framing, SSE text) of a stream read with h11 as the client."""
    stream = await trio.open_tcp_stream(*hostport(url))
    conn = h11.Connection(h11.CLIENT)
    # h11 only sends HTTP/1.1, so the client's state advances with a 1.1 request while the
    # bytes on the wire say `version`; the answer is parsed by h11 either way.
    conn.send(h11.Request(method="GET", target=target, headers=[("host", "t")]))
    conn.send(h11.EndOfMessage())
    await stream.send_all(b"GET %s HTTP/%s\r\nHost: t\r\n\r\n" % (target.encode(), version))
    head, text = None, b""
    with trio.fail_after(10):
        while text.count(b"\n\n") < n:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                text += event.data
    await stream.aclose()
    return head, text


async def test_the_stream_is_well_framed_for_an_independent_client(tickhub, db):
    async def listen(version: bytes, into: list) -> None:
        into.append(await stream_head_and_first_events(tickhub.url, "/realtime/ticks", version, 2))

    got11, got10 = [], []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listen, b"1.1", got11)
        nursery.start_soon(listen, b"1.0", got10)
        await trio.sleep(0.5)
        assert (await tickhub.post_ticks(ticks("FRAMED", 1, start=NOW))).status_code == 202
    for (head, text), chunked in ((got11[0], True), (got10[0], False)):
        headers = dict(head.headers)
        assert head.status_code == 200 and headers[b"content-type"].startswith(b"text/event-stream")
        assert headers[b"cache-control"] == b"no-cache" and b"x-request-id" in headers
        # HTTP/1.1: chunked; HTTP/1.0: the body ends with the connection (no length either way).
        assert (headers.get(b"transfer-encoding") == b"chunked") is chunked
        assert b"content-length" not in headers
        hello, event = text.split(b"\n\n")[:2]
        assert hello.startswith(b"retry: 3000\nevent: hello\ndata: {")
        assert event.startswith(b"id: ") and b'"symbol":"FRAMED"' in event


async def test_a_stream_on_a_connection_that_served_a_request_first_still_streams(tickhub, db):
    """Browsers reuse keep-alive connections: the stream then goes through the framework."""
    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=tickhub.url, limits=one, timeout=10) as client:
        assert (await client.get("/api/v1/symbols")).status_code == 200
        async with client.stream("GET", "/realtime/ticks?symbol=REUSED") as response:
            assert response.status_code == 200
            async for event in events(response):
                if event.event == "hello":
                    assert (await tickhub.post_ticks(ticks("REUSED", 1))).status_code == 202
                if event.event == "message":
                    assert event.json()["symbol"] == "REUSED"
                    break


async def sse_clients(tickhub) -> float:
    text = (await tickhub.get("/ops/metrics")).text
    return float(
        next(
            line.split()[1] for line in text.splitlines() if line.startswith("tickhub_sse_clients ")
        )
    )


async def test_clients_that_stop_reading_then_vanish_cost_the_others_nothing(tickhub, db):
    host, port = hostport(tickhub.url)
    baseline = await sse_clients(tickhub)
    stuck = []
    for _ in range(5):  # they connect, say hello, and never read again
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect((host, port))
        await sock.send(b"GET /realtime/ticks HTTP/1.1\r\nHost: t\r\n\r\n")
        stuck.append(sock)
    healthy: list = []
    started = trio.Event()

    async def listen() -> None:
        async with tickhub.client.stream("GET", "/realtime/ticks?symbol=BUSY") as response:
            async for event in events(response):
                if event.event == "hello":
                    started.set()
                elif event.event == "message":
                    healthy.append(event)
                    if len(healthy) == 2000:
                        return

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen)
            await started.wait()
            for n in range(20):  # ~1 MB of events: far more than the stuck clients' buffers
                items = [
                    {**t, "idempotencyKey": f"busy-{n}-{i}"}
                    for i, t in enumerate(ticks("BUSY", 100, start=NOW, step=0.001, seed=n))
                ]
                assert (await tickhub.post_ticks(items)).status_code == 202
                if n == 10:  # mid-write: they vanish with a reset, their buffers still full
                    for sock in stuck:
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        sock.close()
    assert len(healthy) == 2000  # every event, in order
    ids = [int(e.id) for e in healthy]
    assert ids == sorted(ids)

    async def all_gone() -> bool:
        return await sse_clients(tickhub) <= baseline

    await wait_until(all_gone, within=10)


async def test_a_conflated_stream_sends_at_most_one_event_per_interval_and_the_last_is_rest(
    tickhub, db
):
    received: list = []
    started = trio.Event()
    posted = 0

    async def listen() -> None:
        url = "/realtime/ticks?symbols=CONF1,CONF2&conflate=250"
        async with tickhub.client.stream("GET", url) as response:
            assert response.status_code == 200
            async for event in events(response):
                if event.event == "hello":
                    assert event.json()["conflateMs"] == 250
                    started.set()
                elif event.event == "message":
                    received.append((trio.current_time(), event.json(), event.id))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen)
            await started.wait()
            t0 = trio.current_time()
            for n in range(60):  # both symbols, a tick every 20 ms for 1.2 s
                for s, symbol in enumerate(("CONF1", "CONF2")):
                    item = {**ticks(symbol, 1, start=NOW + n, seed=n)[0], "price": 100 + n + s}
                    item["idempotencyKey"] = f"{symbol}-{n}"
                    assert (await tickhub.post_ticks([item])).status_code == 202
                    posted += 1
                await trio.sleep(0.02)
            await trio.sleep(0.6)  # the last intervals end
            elapsed = trio.current_time() - t0
            nursery.cancel_scope.cancel()
    for symbol in ("CONF1", "CONF2"):
        mine = [(t, d) for t, d, _ in received if d["symbol"] == symbol]
        assert len(mine) <= math.ceil(elapsed / 0.25) + 1
        assert sum(d["conflated"] for _, d in mine) == 60  # every tick accounted for
        last = mine[-1][1]
        rest = (await tickhub.get(f"/api/v1/ticks/{symbol}")).json()
        assert (last["price"], last["ts"]) == (rest["price"], rest["ts"])
        candles = (await tickhub.get(f"/api/v1/ticks/{symbol}/history?view=ohlc1m")).json()
        candle = next(c for c in candles["items"] if c["ts"] == last["candle1m"]["bucket_start"])
        for field in ("open", "high", "low", "close", "volume", "count"):
            assert last["candle1m"][field] == candle[field]
    assert posted == 120


async def test_a_conflation_interval_out_of_range_is_a_400(tickhub):
    for value in ("10", "60001", "fast", "-1", "+250", "2_50", "%20250", "250.0", "0250000"):
        response = await tickhub.get(f"/realtime/ticks?conflate={value}")
        assert response.status_code == 400, value
        assert response.json()["error"]["code"] == "BAD_REQUEST"
