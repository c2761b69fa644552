"""The floor: a bare trio SSE server writing the same frames, for ratios (what tickhub's
fan-out costs beyond the socket writes themselves)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from typing import Any

import trio

from bench.load import MARK
from bench.machine import raise_fd_limit
from bench.sse_clients import SseClients, latency_summary

_BARE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_BARE_HELLO = b'retry: 3000\nevent: hello\ndata: {"ok":true}\n\n'
# the size and shape of a real event (tickhub.actors.aggregator.live_events)
_BARE_EVENT = (
    b'id: %d\ndata: {"symbol":"BTCUSDT","price":%d.0,"ts":1763890000.123456,"volume":1.0,'
    b'"sma10":68010.12345,"candle1m":{"bucket_start":1763889960,"open":68001.23,'
    b'"high":68020.5,"low":67990.25,"close":68011.75,"volume":123.5,"count":4567}}\n\n'
)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _bare_main(conn: Any, t_base_ns: int, rate: float, batch: int, seconds: float) -> None:
    """A minimal SSE server on raw trio sockets: one task per connection that waits for its
    buffer and writes it in one `send_all`, as tickhub's subscribers do, and a publisher that
    fills every buffer `batch` events at a time at `rate` events/s; no HTTP framework."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_fd_limit()

    class Sub:
        __slots__ = ("buf", "wake")

        def __init__(self) -> None:
            self.buf: list[bytes] = []
            self.wake = trio.Event()

    subs: set[Sub] = set()

    async def handler(stream: trio.SocketStream) -> None:
        request = b""
        with trio.move_on_after(10):
            while b"\r\n\r\n" not in request:
                data = await stream.receive_some(4096)
                if not data:
                    return
                request += data
        sub = Sub()
        subs.add(sub)
        try:
            await stream.send_all(_BARE_HEAD + _chunk(_BARE_HELLO))
            while True:
                await sub.wake.wait()
                sub.wake = trio.Event()
                data = b"".join(sub.buf)
                sub.buf.clear()
                await stream.send_all(_chunk(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            subs.discard(sub)

    async def main() -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=1024)
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handler, listeners)
            conn.send(("port", port))
            await trio.to_thread.run_sync(conn.recv)  # "go"
            cpu0 = os.times()
            interval = batch / rate
            started = trio.current_time()
            next_id = 1
            for k in range(max(1, round(seconds / interval))):
                await trio.sleep_until(started + k * interval)
                rel_us = (time.monotonic_ns() - t_base_ns) // 1000
                frames = [_BARE_EVENT % (next_id + i, rel_us * MARK + i) for i in range(batch)]
                next_id += batch
                for sub in subs:
                    sub.buf.extend(frames)
                    sub.wake.set()
            await trio.sleep(1.0)  # the last writes
            cpu1 = os.times()
            conn.send(("done", cpu1.user + cpu1.system - cpu0.user - cpu0.system))
            await trio.to_thread.run_sync(conn.recv)  # "exit"
            nursery.cancel_scope.cancel()

    trio.run(main)


def bare_floor(
    t_base_ns: int, clients: SseClients, n: int, rate: float, batch: int, seconds: float
) -> dict[str, Any]:
    """The same subscribers and load against the bare trio server: CPU per write and event
    with no HTTP framework in the way (the floor for trio on this machine). Blocking."""
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(
        target=_bare_main, args=(theirs, t_base_ns, rate, batch, seconds), daemon=True
    )
    proc.start()
    try:
        if not mine.poll(30):
            raise TimeoutError("the bare server did not start")
        port = mine.recv()[1]
        conn = clients.connect(n, [("127.0.0.1", port)], 5000)
        clients.call("start")
        mine.send("go")
        if not mine.poll(seconds + 60):
            raise TimeoutError("the bare server did not finish")
        cpu_s = mine.recv()[1]
        stats = clients.call("stop")
        clients.call("close")
        mine.send("exit")
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    window = seconds + 1.0
    return {
        "clients": conn["ready"],
        "events": stats["events"],
        "delivered_per_s": round(stats["events"] / window),
        "events_per_write": round(stats["events"] / stats["chunks"], 2) if stats["chunks"] else 0,
        "cores": round(cpu_s / window, 2),
        "us_per_event": round(1e6 * cpu_s / stats["events"], 2) if stats["events"] else None,
        "us_per_write": round(1e6 * cpu_s / stats["chunks"], 2) if stats["chunks"] else None,
        **latency_summary(stats),
    }
