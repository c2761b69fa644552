"""Cheap SSE subscribers in a child process: raw non-blocking sockets on one
level-triggered epoll loop, a minimal reader (no HTTP client library, no task per client),
optionally bound to 127.0.0.N source addresses so that more clients fit than one
address's ephemeral port range."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import select
import signal
import socket
import time
from collections import deque
from typing import Any

import trio

from bench.load import MARK
from bench.machine import raise_fd_limit

HIST_BIN_US = 100  # latency histogram resolution
HIST_BINS = 300_000  # up to 30 s

PRICE = re.compile(rb'"price":(\d+)')
# A tracked client (one of a conflated run) notes the newest marker it got per symbol.
SYMBOL_PRICE = re.compile(rb'"symbol":"([^"]*)","price":(\d+)')
STREAM_PATH = "/realtime/ticks"
REQUEST = (
    b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n\r\n"
)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_CONNECTING, _HEADERS, _STREAM = 0, 1, 2


class _Client:
    __slots__ = ("buf", "events", "last", "path", "sock", "state")

    def __init__(self, sock: socket.socket, path: str, track: bool) -> None:
        self.sock = sock
        self.path = path
        self.state = _CONNECTING
        self.buf = b""
        self.events = 0
        self.last: dict[bytes, int] | None = {} if track else None


def receive(sock: socket.socket, size: int) -> bytes | None:
    """What the socket has (b"" once it is closed or reset), or None when it has nothing yet."""
    try:
        return sock.recv(size)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def path_symbols(path: str) -> list[bytes]:
    """The symbols a stream path subscribes to (`?symbols=A,B` or `?symbol=A`)."""
    query = path.partition("?")[2]
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name in ("symbols", "symbol") and value:
            return [v.encode() for v in value.split(",")]
    return []


def source_address(i: int, per_addr: int) -> str:
    """Client i's source address: 127.0.0.1 for the first `per_addr`, then 127.0.0.2, …"""
    n = 1 + i // per_addr
    if n > 254:
        raise ValueError("more clients than 254 source addresses * per_addr")
    return f"127.0.0.{n}"


def _reader_main(conn: Any, t_base_ns: int) -> None:
    """The subscribers' process: serves commands from `conn` and every client socket on one
    level-triggered epoll loop until told to exit (or its parent goes away)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    raise_fd_limit()
    ep = select.epoll()
    cmd_fd = conn.fileno()
    ep.register(cmd_fd, select.EPOLLIN)
    clients: dict[int, _Client] = {}
    # (host, port, source address, path, tracked) of the clients still to connect
    todo: deque[tuple[str, int, str, str, bool]] = deque()
    inflight = 0
    concurrency = 64
    connect_reply: dict[str, Any] | None = None
    connect_started = 0.0
    connect_deadline = 0.0
    failed = 0
    measuring = False
    hist = [0] * HIST_BINS
    spread = [0] * HIST_BINS
    first_seen: dict[bytes, int] = {}
    stats = {"events": 0, "chunks": 0, "marked": 0, "max_us": 0, "resets": 0, "disconnects": 0}
    base_us = t_base_ns // 1000
    bin_us = HIST_BIN_US
    last = HIST_BINS - 1
    findall = PRICE.findall

    def open_next() -> None:
        nonlocal inflight, failed
        while todo and inflight < concurrency:
            host, port, src, path, track = todo.popleft()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if src != "127.0.0.1":
                    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                    sock.bind((src, 0))
                err = sock.connect_ex((host, port))
                if err not in (0, 115):  # EINPROGRESS
                    raise OSError(err, os.strerror(err))
            except OSError:
                sock.close()
                failed += 1
                continue
            clients[sock.fileno()] = _Client(sock, path, track)
            ep.register(sock.fileno(), select.EPOLLOUT)
            inflight += 1

    reasons: dict[str, int] = {}

    def drop(fd: int, client: _Client, *, count: bool, why: str = "closed") -> None:
        nonlocal inflight, failed
        with contextlib.suppress(OSError):
            ep.unregister(fd)
        client.sock.close()
        del clients[fd]
        if client.state != _STREAM:
            inflight -= 1
            failed += 1
            reasons[why] = reasons.get(why, 0) + 1
        elif count:
            stats["disconnects"] += 1

    def close_all() -> None:
        for fd, client in list(clients.items()):
            with contextlib.suppress(OSError):
                ep.unregister(fd)
            with contextlib.suppress(OSError):  # RST: no TIME_WAIT left on our ports
                client.sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            client.sock.close()
        clients.clear()

    def ready_clients() -> int:
        return sum(1 for c in clients.values() if c.state == _STREAM)

    def handle_command() -> bool:
        nonlocal measuring, connect_reply, connect_started, connect_deadline, failed, concurrency
        try:
            msg = conn.recv()
        except EOFError:
            return False
        kind = msg[0]
        if (
            kind == "connect"
        ):  # ("connect", n, [(host, port)], per_addr, first, timeout, paths, track)
            _, n, targets, per_addr, first, timeout, paths, track = msg
            failed = 0
            reasons.clear()
            for i in range(n):
                host, port = targets[i % len(targets)]
                path = paths[i % len(paths)]
                todo.append((host, port, source_address(first + i, per_addr), path, track))
            connect_started = time.monotonic()
            connect_deadline = connect_started + timeout
            connect_reply = {}
            open_next()
        elif kind == "start":
            for key in stats:
                stats[key] = 0
            for i in range(len(hist)):
                hist[i] = 0
                spread[i] = 0
            first_seen.clear()
            for c in clients.values():
                c.events = 0
                if c.last is not None:
                    c.last.clear()
            measuring = True
            conn.send(("started", ready_clients()))
        elif kind == "count":
            conn.send(("count", stats["events"]))
        elif kind == "stop":  # ("stop", {symbol: newest marker posted}) for tracked clients
            measuring = False
            final = {k.encode(): v for k, v in msg[1].items()} if len(msg) > 1 else {}
            streaming = [c for c in clients.values() if c.state == _STREAM]
            per_client = sorted(c.events for c in streaming)
            tracked = fresh = 0
            for c in streaming:
                if c.last is None:
                    continue
                for symbol in path_symbols(c.path):
                    if symbol in final:
                        tracked += 1
                        fresh += c.last.get(symbol) == final[symbol]
            cpu = os.times()
            conn.send(
                (
                    "stats",
                    {
                        **stats,
                        "clients": len(per_client),
                        "min_client_events": per_client[0] if per_client else 0,
                        "tracked": tracked,
                        "fresh": fresh,
                        "max_client_events": per_client[-1] if per_client else 0,
                        "hist": {i: v for i, v in enumerate(hist) if v},
                        "spread": {i: v for i, v in enumerate(spread) if v},
                        "cpu_s": cpu.user + cpu.system,
                    },
                )
            )
        elif kind == "close":
            close_all()
            conn.send(("closed", 0))
        elif kind == "exit":
            close_all()
            return False
        return True

    running = True
    while running:
        timeout = 0.2 if connect_reply is not None else 1.0
        for fd, mask in ep.poll(timeout, 4096):
            if fd == cmd_fd:
                running = handle_command()
                if not running:
                    break
                continue
            client = clients.get(fd)
            if client is None:
                continue
            state = client.state
            if state == _STREAM:
                data = receive(client.sock, 262144)
                if data is None:
                    continue
                if not data:
                    drop(fd, client, count=True)
                    continue
                if not measuring:
                    continue
                buf = client.buf + data
                cut = buf.rfind(b"\n\n")
                if cut < 0:
                    client.buf = buf
                    continue
                region = buf[: cut + 1]
                client.buf = buf[cut + 1 :]
                n = region.count(b"\nid: ")
                if n:
                    client.events += n
                    stats["events"] += n
                    # a chunk (one write by the server) that carries events starts with one
                    stats["chunks"] += region.count(b"\r\nid: ")
                    now_us = time.monotonic_ns() // 1000 - base_us
                    if client.last is None:
                        marks = findall(region)
                    else:
                        pairs = SYMBOL_PRICE.findall(region)
                        marks = [m for _, m in pairs]
                        for symbol, m in pairs:
                            client.last[symbol] = int(m)
                    stats["marked"] += len(marks)
                    for m in marks:
                        lat = now_us - int(m) // MARK
                        b = lat // bin_us
                        hist[b if b < last else last] += 1
                        if lat > stats["max_us"]:
                            stats["max_us"] = lat
                        # spread: after the first subscriber had this event (fan-out alone)
                        first = first_seen.setdefault(m, now_us)
                        b = (now_us - first) // bin_us
                        spread[b if b < last else last] += 1
                if b"event: reset" in region:
                    stats["resets"] += region.count(b"event: reset")
            elif state == _CONNECTING:
                err = client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err or mask & (select.EPOLLERR | select.EPOLLHUP):
                    drop(fd, client, count=False, why=f"connect: {os.strerror(err)}")
                    open_next()
                    continue
                client.sock.send(REQUEST % client.path.encode())
                client.state = _HEADERS
                ep.modify(fd, select.EPOLLIN)
            else:  # _HEADERS: wait for the status line, the headers and the hello event
                data = receive(client.sock, 65536)
                if data is None:
                    continue
                if not data:
                    drop(fd, client, count=False)
                    open_next()
                    continue
                client.buf += data
                if not client.buf.startswith(b"HTTP/1.1 200"):
                    if len(client.buf) >= 12:
                        drop(fd, client, count=False, why=client.buf[:12].decode("latin-1"))
                        open_next()
                    continue
                if b"event: hello" in client.buf:
                    cut = client.buf.rfind(b"\n\n")
                    client.buf = client.buf[cut + 1 :] if cut >= 0 else b""
                    client.state = _STREAM
                    inflight -= 1
                    open_next()
        if connect_reply is not None and (
            (not todo and inflight == 0) or time.monotonic() > connect_deadline
        ):
            while todo:  # out of time: the rest count as failed
                todo.popleft()
                failed += 1
            conn.send(
                (
                    "connected",
                    {
                        "ready": ready_clients(),
                        "failed": failed + inflight,
                        "seconds": round(time.monotonic() - connect_started, 2),
                        "errors": dict(reasons),
                    },
                )
            )
            connect_reply = None
        if os.getppid() == 1:  # orphaned
            break
    close_all()


class SseClients:
    """The subscribers' process, driven from the benchmark (blocking calls; wrap them in
    `trio.to_thread.run_sync` from async code)."""

    def __init__(self, t_base_ns: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_reader_main, args=(child, t_base_ns), daemon=True)
        self.process.start()
        child.close()
        self.next_index = 0  # source addresses are not reused within a run

    def call(self, *msg: Any, timeout: float = 30) -> Any:
        self._conn.send(msg)
        if msg[0] == "exit":
            return None
        if not self._conn.poll(timeout):
            raise TimeoutError(f"subscribers did not answer {msg[0]!r} within {timeout} s")
        return self._conn.recv()[1]

    def connect(
        self,
        n: int,
        targets: list[tuple[str, int]],
        per_addr: int,
        timeout: float = 120,
        paths: list[str] | None = None,
        track: bool = False,
    ) -> dict[str, Any]:
        """Connect `n` clients over `targets`, client i on `paths[i % len(paths)]` (default:
        every tick of every symbol); `track`: note each one's newest marker per symbol."""
        first = self.next_index
        # each step starts on a fresh source address
        self.next_index = (first + n + per_addr - 1) // per_addr * per_addr
        return self.call(
            "connect", n, targets, per_addr, first, timeout, paths or [STREAM_PATH], track,
            timeout=timeout + 10,
        )  # fmt: skip

    def close(self) -> None:
        try:
            self.call("exit")
        except (OSError, EOFError):
            pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)

    def __enter__(self) -> SseClients:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def percentiles(hist: dict[int, int], prefix: str = "") -> dict[str, float]:
    """p50/p90/p99 in ms from a histogram of HIST_BIN_US bins (bin midpoints)."""
    total = sum(hist.values())
    out: dict[str, float] = {}
    for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99)):
        out[f"{prefix}{name}_ms"] = float("nan")
        seen = 0
        for b in sorted(hist):
            seen += hist[b]
            if seen >= q * total:
                out[f"{prefix}{name}_ms"] = round((b + 0.5) * HIST_BIN_US / 1000, 2)
                break
    return out


def latency_summary(stats: dict[str, Any]) -> dict[str, float]:
    """Webhook → event latency (p50/p90/p99/max, ms) over every (subscriber, event), and the
    spread: how long after the first subscriber got an event the others got it."""
    return {
        **percentiles(stats["hist"]),
        "max_ms": round(stats["max_us"] / 1000, 2),
        **percentiles(stats["spread"], "spread_"),
    }


async def drain(clients: SseClients, expected: int, quiet_s: float = 1.0, cap_s: float = 10.0):
    """Wait until the subscribers have `expected` events, or nothing came for `quiet_s`."""
    deadline = trio.current_time() + cap_s
    last, last_change = -1, trio.current_time()
    while trio.current_time() < deadline:
        count = await trio.to_thread.run_sync(clients.call, "count")
        if count >= expected:
            return
        if count != last:
            last, last_change = count, trio.current_time()
        elif trio.current_time() - last_change > quiet_s:
            return
        await trio.sleep(0.1)
