"""Shared pieces of the latency, fan-out and profile benchmarks.

- `Stack`: a tickhub under test in processes of its own (`python -m tickhub run --role …`),
  on an embedded PostgreSQL (fsync off) and, in split mode, an embedded Redis; all on
  127.0.0.1, stopped (SIGTERM, then SIGKILL) on exit.
- `SseClients`: cheap SSE subscribers in a child process: raw non-blocking sockets on one
  level-triggered epoll loop, a minimal reader (no HTTP client library, no task per client),
  optionally bound to 127.0.0.N source addresses so that more clients fit than one
  address's ephemeral port range.
- `post_paced`: webhook batches on a fixed schedule, each tick's price a unique marker that
  encodes the CLOCK_MONOTONIC time just before its POST, so a subscriber in any process on
  this machine computes the latency of each event it receives without a lookup.
- CPU accounting from /proc (server, load generator, whole machine) and the markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT")
API_KEY = "bench"
# A marker is rel_us * MARK + i: the POST's start (µs after the run's base time) and the
# tick's index in its batch. Prices stay below 1e15 (float8 → numeric keeps 15 digits).
MARK = 1000
HIST_BIN_US = 100  # latency histogram resolution
HIST_BINS = 300_000  # up to 30 s
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Every client of a benchmark comes from 127.0.0.x: the per-client caps and rate limits
# would measure themselves, not the pipeline. (Unknown names are ignored by tickhub.)
UNLIMITED = {
    "RATE_LIMIT_WEBHOOKS": "0",
    "RATE_LIMIT_QUERIES": "0",
    "RATE_LIMIT_STREAM": "0",
    "SSE_MAX_PER_CLIENT": "1000000",
    "SSE_MAX_CLIENTS": "1000000",
}


# --- results -------------------------------------------------------------------------------


def append_row(path: Path, columns: list[str], values: list[Any]) -> None:
    """Append one row to a markdown table, writing its header first if the file is new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(
            "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n", encoding="utf-8"
        )
    with path.open("a", encoding="utf-8") as f:
        f.write("| " + " | ".join(str(v) for v in values) + " |\n")


def load_parser(doc: str, *, rate: float, batch: int, timeout: float) -> argparse.ArgumentParser:
    """The options of the benches that post paced load at SSE clients (latency, fan-out)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rate", type=float, default=rate, help="ticks per second")
    parser.add_argument("--batch", type=int, default=batch, help="ticks per POST")
    parser.add_argument("--seconds", type=float, default=5.0, help="load per step")
    parser.add_argument("--mode", choices=["all", "split"], default="all")
    parser.add_argument("--per-addr", type=int, default=5000, help="clients per source address")
    parser.add_argument("--timeout", type=float, default=timeout, help="whole run's limit (s)")
    return parser


def run_bench(main: Any, args: argparse.Namespace, record: Any) -> None:
    """Run a bench's trio `main`, print its JSON line and append its rows."""
    result = trio.run(main, args)
    print(json.dumps(result))
    record(result)


def now_stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M")


def machine() -> dict[str, Any]:
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "mem_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "postgres": postgres_version(),
    }


def postgres_version() -> str:
    from tickhub.sql.embedded import _bin_dir

    try:
        out = subprocess.run(
            [str(_bin_dir() / "postgres"), "--version"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip().rsplit(" ", 1)[-1]
    except Exception as exc:  # pragma: no cover - informative only
        return f"unknown ({exc})"


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (soft, hard) now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def port_range() -> tuple[int, int]:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        lo, hi = f.read().split()
    return int(lo), int(hi)


# --- CPU accounting ------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies over all cores since boot."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    total = sum(parts[:8])
    return total - idle, total


def background_busy(seconds: float = 1.0) -> float:
    """Share of the machine busy over `seconds` while the bench itself idles: other work on
    this shared machine, which the figures of the step that follows compete with."""
    b0, t0 = machine_cpu()
    time.sleep(seconds)
    b1, t1 = machine_cpu()
    return round((b1 - b0) / max(1.0, t1 - t0), 2)


@attrs.define
class CpuMeter:
    """CPU used between `start()` and `stop()`: per named pid (in cores) and the machine."""

    pids: dict[str, int]
    _t0: float = 0.0
    _cpu0: dict[str, float] = attrs.field(factory=dict)
    _m0: tuple[float, float] = (0.0, 0.0)
    result: dict[str, float] = attrs.field(factory=dict)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._cpu0 = {k: proc_cpu_s(p) for k, p in self.pids.items()}
        self._m0 = machine_cpu()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._t0
        busy, total = machine_cpu()
        self.result = {
            f"{k}_cores": round((proc_cpu_s(p) - self._cpu0[k]) / wall, 2)
            for k, p in self.pids.items()
        }
        self.result["machine_busy"] = round((busy - self._m0[0]) / max(1.0, total - self._m0[1]), 2)
        return self.result


# --- the system under test -----------------------------------------------------------------


@attrs.define
class Stack:
    """tickhub in its own processes: `all` (one process) or split (api, consumers, gateways
    joined by an embedded Redis). Use as a context manager (blocking start and stop)."""

    mode: str = "all"
    consumers: int = 1
    gateways: int = 1
    env_extra: dict[str, str] = attrs.field(factory=dict)
    procs: list[tuple[str, int, subprocess.Popen]] = attrs.field(factory=list)
    database_url: str = ""
    _tmp: Any = None
    _pg: Any = None
    _redis: Any = None

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        from tickhub.dev import EmbeddedRedis, _wait_ready
        from tickhub.sql.embedded import EmbeddedPostgres, free_port

        self._tmp = tempfile.TemporaryDirectory(prefix="tickhub-bench-")
        self._pg = EmbeddedPostgres(Path(self._tmp.name) / "pg", fsync=False)
        self.database_url = self._pg.start()
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "API_KEY": API_KEY,
            "HOST": "127.0.0.1",
            "LOG_LEVEL": "warning",
            **UNLIMITED,
            **self.env_extra,
        }
        if self.mode == "all":
            roles = [("all", free_port())]
        else:
            self._redis = EmbeddedRedis(Path(self._tmp.name) / "redis")
            env["REDIS_URL"] = self._redis.start()
            roles = (
                [("api", free_port())]
                + [("consumer", free_port()) for _ in range(self.consumers)]
                + [("gateway", free_port()) for _ in range(self.gateways)]
            )
        for role, port in roles:  # one at a time: the first one applies the migrations
            proc = subprocess.Popen(
                [sys.executable, "-m", "tickhub", "run", "--role", role],
                env={**env, "PORT": str(port), "CONSUMER_NAME": f"bench-{port}"},
            )
            self.procs.append((role, port, proc))
            _wait_ready(port, proc)

    def stop(self) -> None:
        for _, _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, _, proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()
        if self._redis is not None:
            self._redis.stop()
            self._redis = None
        if self._pg is not None:
            self._pg.stop()
            self._pg = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def ports(self, *roles: str) -> list[int]:
        return [port for role, port, _ in self.procs if role in roles]

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports('all', 'api')[0]}"

    @property
    def sse_targets(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", p) for p in self.ports("all", "gateway")]

    def pids(self, *roles: str) -> dict[str, int]:
        """{'gateway0': pid, …} for the given roles (all roles when none given)."""
        named: dict[str, int] = {}
        counts: dict[str, int] = {}
        for role, _, proc in self.procs:
            if roles and role not in roles:
                continue
            n = counts.get(role, 0)
            counts[role] = n + 1
            named[role if role == "all" or role == "api" else f"{role}{n}"] = proc.pid
        return named


# --- /ops/metrics ---------------------------------------------------------------------------

METRICS = {
    "tickhub_flush_seconds_sum": "flush_s",
    "tickhub_flush_seconds_count": "flushes",
    "tickhub_flush_rows_sum": "flush_rows",
    "tickhub_hub_events_total": "hub_events",
    "tickhub_sse_events_sent_total": "sse_sent",
    "tickhub_sse_events_dropped_total": "sse_dropped",
    "tickhub_sse_clients": "sse_clients",
}


def scrape(ports: list[int]) -> dict[str, float]:
    """The counters above, summed over the processes on `ports` (missing ones count 0)."""
    out = dict.fromkeys(METRICS.values(), 0.0)
    for port in ports:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/ops/metrics", timeout=10).text
        except httpx.HTTPError:
            continue
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in METRICS:
                out[METRICS[name]] += float(value)
    return out


def server_side(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    d = {k: after[k] - before[k] for k in before}
    return {
        "flushes": int(d["flushes"]),
        "flush_mean_ms": round(1000 * d["flush_s"] / d["flushes"], 2) if d["flushes"] else 0.0,
        "flush_mean_rows": round(d["flush_rows"] / d["flushes"], 1) if d["flushes"] else 0.0,
        "hub_events": int(d["hub_events"]),
        "sse_sent": int(d["sse_sent"]),
        "sse_dropped": int(d["sse_dropped"]),
    }


async def wait_clients_gone(ports: list[int], cap_s: float = 15.0) -> float:
    """Wait until the servers report no SSE client; return what is left."""
    deadline = trio.current_time() + cap_s
    left = 0.0
    while trio.current_time() < deadline:
        left = (await trio.to_thread.run_sync(scrape, ports))["sse_clients"]
        if left <= 0:
            break
        await trio.sleep(0.2)
    return left


# --- the poster ----------------------------------------------------------------------------


@attrs.define
class PostStats:
    posts: int = 0
    failed: int = 0
    acked: int = 0
    seconds: float = 0.0
    ack_ms: list[float] = attrs.field(factory=list)

    def summary(self) -> dict[str, Any]:
        ack = sorted(self.ack_ms)
        return {
            "posts": self.posts,
            "failed_posts": self.failed,
            "ticks": self.acked,
            "ticks_per_s": round(self.acked / self.seconds) if self.seconds else 0,
            "ack_p50_ms": round(pick(ack, 0.50), 2),
            "ack_p99_ms": round(pick(ack, 0.99), 2),
        }


def pick(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


async def post_paced(
    api_url: str,
    *,
    rate: float,
    batch: int,
    seconds: float,
    t_base_ns: int,
    run: str,
    concurrency: int = 32,
) -> PostStats:
    """POST `batch` ticks every `batch / rate` s for `seconds` (without waiting for the previous
    answer; at most `concurrency` in flight). Each price is a marker: (µs from `t_base_ns` to
    just before the POST) * MARK + index in the batch."""
    stats = PostStats()
    interval = batch / rate
    count = max(1, round(seconds / interval))
    limiter = trio.CapacityLimiter(concurrency)
    last_rel = -1

    async def post_one(client: httpx.AsyncClient) -> None:
        nonlocal last_rel
        async with limiter:
            t0 = time.monotonic_ns()
            rel_us = max((t0 - t_base_ns) // 1000, last_rel + 1)
            last_rel = rel_us
            wall = time.time()
            items = [
                {
                    "symbol": SYMBOLS[i % len(SYMBOLS)],
                    "price": float(rel_us * MARK + i),
                    "ts": round(wall + i * 1e-6, 6),
                    "volume": 1.0,
                    "idempotencyKey": f"{run}-{rel_us}-{i}",
                }
                for i in range(batch)
            ]
            stats.posts += 1
            try:
                response = await client.post(
                    "/api/v1/webhooks/ticks", json={"source": "bench", "items": items}
                )
                response.raise_for_status()
            except httpx.HTTPError:
                stats.failed += 1
                return
            stats.ack_ms.append((time.monotonic_ns() - t0) / 1e6)
            stats.acked += response.json()["accepted"]

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=api_url, headers={"x-api-key": API_KEY}, timeout=30, limits=limits
    ) as client:
        await client.get("/ops/health/liveness")  # open a connection before the clock starts
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for k in range(count):
                await trio.sleep_until(started + k * interval)
                nursery.start_soon(post_one, client)
        stats.seconds = trio.current_time() - started
    return stats


# --- SSE subscribers (a child process) -----------------------------------------------------


PRICE = re.compile(rb'"price":(\d+)')
REQUEST = (
    b"GET /realtime/ticks HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n\r\n"
)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_CONNECTING, _HEADERS, _STREAM = 0, 1, 2


class _Client:
    __slots__ = ("buf", "events", "sock", "state")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.state = _CONNECTING
        self.buf = b""
        self.events = 0


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
    todo: deque[tuple[str, int, str]] = deque()  # (host, port, source address) to connect
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
            host, port, src = todo.popleft()
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
            clients[sock.fileno()] = _Client(sock)
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
        if kind == "connect":  # ("connect", n, [(host, port)], per_addr, first_index, timeout)
            _, n, targets, per_addr, first, timeout = msg
            failed = 0
            reasons.clear()
            for i in range(n):
                host, port = targets[i % len(targets)]
                todo.append((host, port, source_address(first + i, per_addr)))
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
            measuring = True
            conn.send(("started", ready_clients()))
        elif kind == "count":
            conn.send(("count", stats["events"]))
        elif kind == "stop":
            measuring = False
            per_client = sorted(c.events for c in clients.values() if c.state == _STREAM)
            cpu = os.times()
            conn.send(
                (
                    "stats",
                    {
                        **stats,
                        "clients": len(per_client),
                        "min_client_events": per_client[0] if per_client else 0,
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
                try:
                    data = client.sock.recv(262144)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
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
                    marks = findall(region)
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
                client.sock.send(REQUEST)
                client.state = _HEADERS
                ep.modify(fd, select.EPOLLIN)
            else:  # _HEADERS: wait for the status line, the headers and the hello event
                try:
                    data = client.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
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
        self, n: int, targets: list[tuple[str, int]], per_addr: int, timeout: float = 120
    ) -> dict[str, Any]:
        first = self.next_index
        # each step starts on a fresh source address
        self.next_index = (first + n + per_addr - 1) // per_addr * per_addr
        return self.call("connect", n, targets, per_addr, first, timeout, timeout=timeout + 10)

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


# --- the floor: a bare trio SSE server (for ratios) ----------------------------------------

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
