"""Soak: a tickhub `run --role all` process under steady ingest and SSE clients that come and
go, watched for leaks. Not part of `make test`.

    python -m bench.soak [--minutes 10] [--clients 1000] [--rate 2000]

- Starts an embedded PostgreSQL (temporary directory) and `python -m tickhub run --role all`
  on 127.0.0.1 with rate limits and per-client stream caps off (this measures leaks, not
  limits).
- Warm-up: ingest only, then the baseline sample. Load, for `--minutes`: `--rate` ticks/s in
  batches of `--batch` over `--symbols` symbols, and `--clients` SSE clients, each one
  connecting (from 127.0.0.x, x in 1..`--source-ips`), reading one symbol's stream for a random
  `--stay` seconds, leaving, and coming back. Drain: clients and ingest stop; the server gets
  up to `--settle` seconds to close everything.
- Every `--sample` seconds: the server's RSS (/proc/PID/status VmRSS), open fds and sockets
  (/proc/PID/fd), TCP connections on its port (established, CLOSE_WAIT; /proc/net/tcp), its
  `tickhub_sse_clients` gauge, and the client-side counts; a table over time, then one JSON
  summary. Both are appended to bench/results/soak.md.
- Exit 1 when RSS grew by more than `--max-rss-growth-mb` during the second half of the load;
  when, after the clients left, the fds are not back within `--fd-slack` of the baseline
  (the database pool may have grown meanwhile), connections on the port are above the
  baseline or in CLOSE_WAIT, or the server still counts SSE clients; or when the server died.

All traffic goes to 127.0.0.0/8; client count, rate and duration are bounded.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from bench.machine import process_usage
from bench.stack import API_KEY, Stack
from tickhub.dev import wait_ready
from tickhub.logs import configure_logging

RESULTS = Path(__file__).resolve().parent / "results" / "soak.md"
HOST = "127.0.0.1"

LIMITS = {"minutes": 120, "clients": 5000, "rate": 20_000, "source_ips": 250}
COLUMNS = (
    ("t_s", 6),
    ("phase", 7),
    ("rss_mb", 8),
    ("fds", 6),
    ("sockets", 8),
    ("conns", 6),
    ("close_wait", 10),
    ("srv_sse", 8),
    ("sse_open", 9),
    ("sse_made", 9),
    ("acked", 9),
    ("errors", 7),
)


@attrs.define
class Counters:
    acked: int = 0
    posted: int = 0
    sse_made: int = 0
    sse_open: int = 0
    sse_bytes: int = 0
    sse_events: int = 0
    errors: dict[str, int] = attrs.field(factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


# --- the server process -------------------------------------------------------------------


def server_connections(port: int) -> tuple[int, int]:
    """TCP connections on the server's port (IPv4 loopback): established, and CLOSE_WAIT
    (the client left and the server has not closed its end: a leak if it stays)."""
    established = close_wait = 0
    suffix = f":{port:04X}"
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1].endswith(suffix):
                established += fields[3] == "01"
                close_wait += fields[3] == "08"
    return established, close_wait


async def server_sse_clients(client: httpx.AsyncClient) -> int | None:
    try:
        text = (await client.get("/ops/metrics", timeout=5)).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("tickhub_sse_clients "):
            return int(float(line.split()[1]))
    return None


# --- load ---------------------------------------------------------------------------------


def symbol_name(n: int) -> str:
    return f"S{n:03d}USDT"


async def ingest(url: str, args: argparse.Namespace, counters: Counters, stop: trio.Event) -> None:
    """`args.rate` ticks/s in batches on a fixed schedule, at most 8 batches in flight."""
    prices = [100.0] * args.symbols
    interval = args.batch / args.rate
    in_flight = trio.Semaphore(8)  # 8 connections; a slow server makes the schedule slip

    async def post(client: httpx.AsyncClient, items: list[dict]) -> None:
        try:
            response = await client.post(
                "/api/v1/webhooks/ticks", json={"source": "soak", "items": items}
            )
            if response.status_code == 202:
                counters.acked += response.json()["accepted"]
            else:
                counters.error(f"ingest {response.status_code}")
        except httpx.HTTPError as exc:
            counters.error(f"ingest {type(exc).__name__}")
        finally:
            in_flight.release()

    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    async with (
        httpx.AsyncClient(
            base_url=url, headers={"x-api-key": API_KEY}, timeout=30, limits=limits
        ) as client,
        trio.open_nursery() as nursery,
    ):
        seq = 0
        next_at = trio.current_time()
        while not stop.is_set():
            now = time.time()
            items = []
            for i in range(args.batch):
                n = (seq * args.batch + i) % args.symbols
                prices[n] = round(max(prices[n] * random.gauss(1, 0.0005), 0.01), 4)
                items.append(
                    {
                        "symbol": symbol_name(n),
                        "price": prices[n],
                        "ts": now,
                        "volume": round(random.random(), 3),
                        "idempotencyKey": f"soak-{seq}-{i}",
                    }
                )
            seq += 1
            await in_flight.acquire()
            counters.posted += len(items)
            nursery.start_soon(post, client, items)
            next_at += interval
            with trio.move_on_at(next_at):
                await stop.wait()


async def visit(port: int, local: str, symbol: str, stay: float, counters: Counters) -> None:
    """One SSE connection: request one symbol's stream, read it for `stay` seconds, leave."""
    stream = await trio.open_tcp_stream(HOST, port, local_address=local)
    async with stream:
        request = (
            f"GET /realtime/ticks?symbol={symbol} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            "Accept: text/event-stream\r\n\r\n"
        )
        await stream.send_all(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("closed before the response head")
            head += chunk
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if status.split(" ")[1:2] != ["200"]:
            counters.error(f"sse {status[9:12]}")
            return
        counters.sse_made += 1
        counters.sse_open += 1
        try:
            with trio.move_on_after(stay):
                while chunk := await stream.receive_some(65536):
                    counters.sse_bytes += len(chunk)
                    counters.sse_events += chunk.count(b"\nid: ") + chunk.startswith(b"id: ")
                counters.error("sse closed by server")
        finally:
            counters.sse_open -= 1


async def sse_client(k: int, port: int, args: argparse.Namespace, counters: Counters) -> None:
    """Come and go until cancelled: each visit a random symbol for a random few seconds."""
    rng = random.Random(k)
    local = f"127.0.0.{1 + k % args.source_ips}"
    await trio.sleep(rng.uniform(0, args.stay[1]))  # spread the first connects
    while True:
        pause = rng.uniform(0, 0.5)
        try:
            with trio.fail_after(args.stay[1] + 10):
                await visit(
                    port,
                    local,
                    symbol_name(rng.randrange(args.symbols)),
                    rng.uniform(*args.stay),
                    counters,
                )
        except trio.TooSlowError:
            counters.error("sse timeout")
            pause = 1.0
        except (OSError, trio.BrokenResourceError) as exc:  # ConnectionError is an OSError
            counters.error(f"sse {type(exc).__name__}")
            pause = 1.0
        await trio.sleep(pause)


# --- the run ------------------------------------------------------------------------------


@attrs.define
class Soak:
    args: argparse.Namespace
    proc: subprocess.Popen
    url: str
    port: int
    counters: Counters = attrs.field(factory=Counters)
    rows: list[dict[str, Any]] = attrs.field(factory=list)
    started: float = 0.0
    failures: list[str] = attrs.field(factory=list)

    async def sample(self, ops: httpx.AsyncClient, phase: str, *, quiet: bool = False) -> dict:
        if self.proc.poll() is not None:
            raise ServerDied(f"tickhub exited with {self.proc.returncode}")
        rss, fds, sockets = process_usage(self.proc.pid)
        conns, close_wait = server_connections(self.port)
        c = self.counters
        row = {
            "t_s": round(trio.current_time() - self.started),
            "phase": phase,
            "rss_mb": round(rss, 1),
            "fds": fds,
            "sockets": sockets,
            "conns": conns,
            "close_wait": close_wait,
            "srv_sse": await server_sse_clients(ops),
            "sse_open": c.sse_open,
            "sse_made": c.sse_made,
            "acked": c.acked,
            "errors": c.error_count,
        }
        if not quiet:
            self.rows.append(row)
            print(format_row(row), flush=True)
        return row

    async def run(self) -> None:
        args = self.args
        self.started = trio.current_time()
        print(format_header(), flush=True)
        async with httpx.AsyncClient(base_url=self.url) as ops:
            stop_ingest = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ingest, self.url, args, self.counters, stop_ingest)
                await trio.sleep(args.warmup)
                await self.sample(ops, "base")
                load_end = trio.current_time() + args.minutes * 60
                async with trio.open_nursery() as clients:
                    for k in range(args.clients):
                        clients.start_soon(sse_client, k, self.port, args, self.counters)
                    while (now := trio.current_time()) < load_end:
                        await trio.sleep(min(args.sample, load_end - now))
                        await self.sample(ops, "load")
                    clients.cancel_scope.cancel()  # every client leaves at once
                stop_ingest.set()
            # Drain: the server closes the streams, the hub forgets the subscribers.
            base = self.rows[0]
            deadline = trio.current_time() + args.settle
            while trio.current_time() < deadline:
                await trio.sleep(1)
                row = await self.sample(ops, "drain", quiet=True)
                settled = (
                    row["fds"] <= base["fds"] + args.fd_slack and row["conns"] <= base["conns"]
                )
                if settled and not row["srv_sse"] and not row["close_wait"]:
                    break
            await self.sample(ops, "end")

    def summary(self) -> dict[str, Any]:
        args, c, rows = self.args, self.counters, self.rows
        base, end = rows[0], rows[-1]
        load = [r for r in rows if r["phase"] == "load"]
        half = base["t_s"] + args.minutes * 30
        second = [r for r in load if r["t_s"] >= half]
        growth = round(max(r["rss_mb"] for r in second) - second[0]["rss_mb"], 1) if second else 0
        failures = list(self.failures)
        if growth > args.max_rss_growth_mb:
            failures.append(
                f"RSS grew {growth} MiB in the second half (bound {args.max_rss_growth_mb})"
            )
        if end["fds"] > base["fds"] + args.fd_slack:
            failures.append(
                f"fds {end['fds']} after the clients left, baseline {base['fds']} "
                f"(+{args.fd_slack} allowed)"
            )
        if end["conns"] > base["conns"] or end["close_wait"]:
            failures.append(
                f"{end['conns']} connections ({end['close_wait']} in CLOSE_WAIT) on the server's "
                f"port after the clients left, baseline {base['conns']}"
            )
        if end["srv_sse"]:
            failures.append(f"server still counts {end['srv_sse']} SSE clients")
        load_s = args.minutes * 60
        return {
            "bench": "soak",
            "minutes": args.minutes,
            "clients": args.clients,
            "rate": args.rate,
            "symbols": args.symbols,
            "rss_mb": {
                "start": base["rss_mb"],
                "end": end["rss_mb"],
                "max": max(r["rss_mb"] for r in rows),
                "second_half_growth": growth,
            },
            "fds": {"start": base["fds"], "end": end["fds"], "max": max(r["fds"] for r in rows)},
            "sockets": {
                "start": base["sockets"],
                "end": end["sockets"],
                "max": max(r["sockets"] for r in rows),
            },
            "http_connections": {
                "start": base["conns"],
                "end": end["conns"],
                "max": max(r["conns"] for r in rows),
                "close_wait_end": end["close_wait"],
            },
            "ticks_posted": c.posted,
            "ticks_acked": c.acked,
            "acked_per_s": round(c.acked / (load_s + args.warmup)),
            "sse_connections": c.sse_made,
            "sse_events": c.sse_events,
            "sse_mbytes": round(c.sse_bytes / 1e6, 1),
            "errors": c.errors,
            "passed": not failures,
            "failures": failures,
        }


class ServerDied(RuntimeError):
    pass


def format_header() -> str:
    return " ".join(name.rjust(width) for name, width in COLUMNS)


def format_row(row: dict) -> str:
    return " ".join(
        str(row[name] if row[name] is not None else "-").rjust(w) for name, w in COLUMNS
    )


def record(summary: dict, rows: list[dict], args: argparse.Namespace) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    names = [name for name, _ in COLUMNS]
    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M')} — {args.minutes} min, {args.clients} clients, "
        f"{args.rate} ticks/s: {'PASS' if summary['passed'] else 'FAIL'}",
        "",
        "| " + " | ".join(names) + " |",
        "|" + "---|" * len(names),
        *("| " + " | ".join(str(r[n]) for n in names) + " |" for r in rows),
        "",
        "```json",
        json.dumps(summary, indent=1),
        "```",
        "",
    ]
    if not RESULTS.exists():
        RESULTS.write_text("# Soak runs (`python -m bench.soak`)\n\n")
    with RESULTS.open("a") as f:
        f.write("\n".join(lines) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10, help="length of the load phase")
    parser.add_argument("--clients", type=int, default=1000, help="concurrent SSE clients")
    parser.add_argument("--rate", type=int, default=2000, help="ticks per second")
    parser.add_argument("--batch", type=int, default=100, help="ticks per webhook batch")
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument(
        "--stay",
        type=float,
        nargs=2,
        default=(1.0, 5.0),
        metavar=("MIN", "MAX"),
        help="seconds a client stays connected",
    )
    parser.add_argument("--source-ips", type=int, default=8, help="client addresses 127.0.0.x")
    parser.add_argument("--sample", type=float, default=10, help="seconds between samples")
    parser.add_argument(
        "--warmup", type=float, default=10, help="seconds of ingest before the baseline"
    )
    parser.add_argument("--settle", type=float, default=30, help="seconds allowed to drain")
    parser.add_argument("--max-rss-growth-mb", type=float, default=64)
    parser.add_argument(
        "--fd-slack", type=int, default=16, help="fds above the baseline allowed at the end"
    )
    args = parser.parse_args(argv)
    for name, bound in LIMITS.items():
        if not 0 < getattr(args, name) <= bound:
            parser.error(f"--{name.replace('_', '-')} must be above 0 and at most {bound}")
    if not 0 < args.stay[0] <= args.stay[1] or not 0 < args.batch <= 5000:
        parser.error("--stay needs 0 < MIN <= MAX; --batch 1..5000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("warning")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the server inherits it too
    caps = {
        "SSE_MAX_CLIENTS": str(max(20_000, 2 * args.clients)),
        "SSE_MAX_PER_CLIENT": str(max(50, 2 * args.clients)),
    }
    with Stack("all", env_extra=caps) as stack:
        _, port, proc = stack.procs[0]
        soak = Soak(args, proc, f"http://{HOST}:{port}", port)
        wait_ready(soak.url, proc)
        try:
            trio.run(soak.run)
        except* ServerDied as died:
            soak.failures.append(str(died.exceptions[0]))
        if not soak.rows:
            print(stack.log_tail(), file=sys.stderr)
            return 1
        summary = soak.summary()
        if not summary["passed"]:
            print(stack.log_tail(), file=sys.stderr)
    print(json.dumps(summary))
    record(summary, soak.rows, args)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
