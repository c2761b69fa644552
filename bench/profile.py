"""Profiles of the server's hot paths, ingest and fan-out, taken with py-spy while load runs.

tickhub runs as its own process (`python -m tickhub run --role all`, embedded PostgreSQL,
fsync off). Two phases, each sampled by py-spy attached to that process (`--nonblocking`,
so the sampler does not pause the server; py-spy needs ptrace rights, e.g. root):

- ingest: `--posters` concurrent posters send batches of `--size` unique ticks, back to
  back, for `--seconds` (the shape of `bench/ingest.py`);
- fanout: `--clients` SSE subscribers (the fan-out bench's reader process) while ticks are
  posted at `--rate` ticks/s in batches of `--batch`.

For each phase it writes bench/results/profile-<phase>.svg (flame graph), .txt (collapsed
stacks) and -top.txt (the summary: CPU share by package, top functions by own and by
inclusive time), then prints one JSON line and appends a row per phase to
bench/results/profile.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import trio

from bench.cpu import CpuMeter, background_busy
from bench.load import post_paced
from bench.machine import raise_fd_limit
from bench.report import RESULTS_DIR, append_row, now_stamp, run_bench
from bench.scrape import scrape, server_side
from bench.sse_clients import SseClients
from bench.stack import API_KEY, SYMBOLS, Stack

RESULTS = RESULTS_DIR / "profile.md"
COLUMNS = [
    "date", "phase", "load", "samples", "server cores", "work/s", "top packages (own time)",
    "top functions (own time)",
]  # fmt: skip


def py_spy() -> str:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else "py-spy"


def start_sampler(pid: int, phase: str, seconds: float, rate: int) -> list[subprocess.Popen]:
    """Two samplers side by side: a flame graph and the raw collapsed stacks."""
    out = []
    for fmt, suffix in (("flamegraph", "svg"), ("raw", "txt")):
        command = [
            py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds)),
            "--rate", str(rate), "--nonblocking", "--function", "--format", fmt,
            "--output", str(RESULTS_DIR / f"profile-{phase}.{suffix}"),
        ]  # fmt: skip
        out.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    return out


def wait_sampler(procs: list[subprocess.Popen], timeout: float) -> None:
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")


def package(frame: str) -> str:
    """`func (trio/_core/_run.py:123)` → `trio`; tickhub keeps its module (`tickhub.http`)."""
    if "(" not in frame:
        return frame
    path = frame.rsplit("(", 1)[1].split(":", 1)[0]
    parts = path.split("/")
    if parts[0] == "tickhub" and len(parts) > 2:
        return f"tickhub.{parts[1]}"
    if parts[0] == "tickhub":
        return "tickhub"
    if len(parts) == 1:
        return parts[0].removesuffix(".py") + " (stdlib)"
    return parts[0]


# Leaf frames that are waiting, not working (py-spy counts a thread blocked in a C call as
# active): the event loop's epoll_wait and idle worker threads.
IDLE = ("EpollIOManager.get_events", "WorkerThread._work", "Condition.wait", "Event.wait")


def summarize(phase: str, top: int = 25) -> dict:
    stacks: Counter[str] = Counter()
    for line in (RESULTS_DIR / f"profile-{phase}.txt").read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    idle = sum(n for st, n in stacks.items() if st.rsplit(";", 1)[-1].startswith(IDLE))
    busy = {st: n for st, n in stacks.items() if not st.rsplit(";", 1)[-1].startswith(IDLE)}
    total = sum(busy.values()) or 1
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    for stack, count in busy.items():
        frames = stack.split(";")
        own[frames[-1]] += count
        packages[package(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    # frames on (nearly) every stack are the program's entry (cli, trio.run): not informative
    inclusive = Counter({f: n for f, n in inclusive.items() if n < 0.75 * total})

    def pct(n: int) -> float:
        return round(100 * n / total, 1)

    lines = [
        f"{phase}: {total} busy samples ({idle} more idle in epoll_wait or a parked worker "
        "thread, left out); percentages are of the busy samples.",
        "",
        "Own time by package:",
    ]
    lines += [f"  {pct(n):5.1f}%  {name}" for name, n in packages.most_common(15)]
    lines += ["", "Top functions by own time:"]
    lines += [f"  {pct(n):5.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["", "Top functions by inclusive time (below the entry frames):"]
    lines += [f"  {pct(n):5.1f}%  {name}" for name, n in inclusive.most_common(top + 15)]
    (RESULTS_DIR / f"profile-{phase}-top.txt").write_text("\n".join(lines) + "\n")
    return {
        "samples": total,
        "idle_samples": idle,
        "packages": {name: pct(n) for name, n in packages.most_common(8)},
        "own": {name: pct(n) for name, n in own.most_common(10)},
        "inclusive": {name: pct(n) for name, n in inclusive.most_common(15)},
    }


async def ingest_load(url: str, posters: int, size: int, seconds: float) -> int:
    """Back-to-back batches of unique ticks from `posters` tasks until `seconds` pass."""
    acked = 0
    base = time.time() - 3000

    async def poster(k: int, client: httpx.AsyncClient) -> None:
        nonlocal acked
        n = 0
        with trio.move_on_after(seconds):
            while True:
                items = [
                    {
                        "symbol": SYMBOLS[i % len(SYMBOLS)],
                        "price": 100 + (i % 97) / 100,
                        "ts": base + n + i / 1000,
                        "volume": 1 + i % 3,
                        "idempotencyKey": f"p{k}-{n}-{i}",
                    }
                    for i in range(size)
                ]
                response = await client.post(
                    "/api/v1/webhooks/ticks", json={"source": "bench", "items": items}
                )
                response.raise_for_status()
                acked += response.json()["accepted"]
                n += 1

    limits = httpx.Limits(max_connections=posters)
    async with (
        httpx.AsyncClient(
            base_url=url, headers={"x-api-key": API_KEY}, timeout=60, limits=limits
        ) as client,
        trio.open_nursery() as nursery,
    ):
        for k in range(posters):
            nursery.start_soon(poster, k, client)
    return acked


async def phase_ingest(args, stack: Stack) -> dict:
    pid = stack.pids("all")["all"]
    ports = stack.ports("all")
    background = await trio.to_thread.run_sync(background_busy)
    before = await trio.to_thread.run_sync(scrape, ports)
    meter = CpuMeter({"server": pid})
    samplers = start_sampler(pid, "ingest", args.seconds, args.rate_hz)
    meter.start()
    acked = await ingest_load(stack.api_url, args.posters, args.size, args.seconds)
    cpu = meter.stop()
    await trio.to_thread.run_sync(wait_sampler, samplers, 60)
    after = await trio.to_thread.run_sync(scrape, ports)
    return {
        "phase": "ingest",
        "load": f"{args.posters} posters x {args.size} ticks, back to back",
        "ticks_per_s": round(acked / args.seconds),
        "server_cores": cpu["server_cores"],
        "machine_busy": cpu["machine_busy"],
        "background_busy": background,
        "server": server_side(before, after),
        **summarize("ingest"),
    }


async def phase_fanout(args, stack: Stack, clients: SseClients, t_base: int) -> dict:
    pid = stack.pids("all")["all"]
    ports = stack.ports("all")
    conn = await trio.to_thread.run_sync(
        lambda: clients.connect(args.clients, stack.sse_targets, 5000)
    )
    background = await trio.to_thread.run_sync(background_busy)
    before = await trio.to_thread.run_sync(scrape, ports)
    await trio.to_thread.run_sync(clients.call, "start")
    meter = CpuMeter({"server": pid})
    samplers = start_sampler(pid, "fanout", args.seconds, args.rate_hz)
    meter.start()
    posted = await post_paced(
        stack.api_url,
        rate=args.fan_rate,
        batch=args.fan_batch,
        seconds=args.seconds,
        t_base_ns=t_base,
        run=f"prof-{t_base}",
    )
    cpu = meter.stop()
    await trio.to_thread.run_sync(wait_sampler, samplers, 60)
    stats = await trio.to_thread.run_sync(clients.call, "stop")
    after = await trio.to_thread.run_sync(scrape, ports)
    await trio.to_thread.run_sync(clients.call, "close")
    return {
        "phase": "fanout",
        "load": f"{conn['ready']} clients, {args.fan_rate:g} ticks/s in batches of "
        f"{args.fan_batch}",
        "ticks_per_s": posted.summary()["ticks_per_s"],
        "events_per_s": round(stats["events"] / args.seconds),
        "server_cores": cpu["server_cores"],
        "machine_busy": cpu["machine_busy"],
        "background_busy": background,
        "server": server_side(before, after),
        **summarize("fanout"),
    }


async def main(args: argparse.Namespace) -> dict:
    raise_fd_limit()
    t_base = time.monotonic_ns()
    phases = []
    with Stack("all") as stack, SseClients(t_base) as clients, trio.fail_after(args.timeout):
        if "ingest" in args.phases:
            phases.append(await phase_ingest(args, stack))
        if "fanout" in args.phases:
            phases.append(await phase_fanout(args, stack, clients, t_base))
    return {"bench": "profile", "sampler": f"py-spy {args.rate_hz} Hz", "phases": phases}


def record(result: dict) -> None:
    for p in result["phases"]:
        work = (
            f"{p['ticks_per_s']} ticks/s"
            if p["phase"] == "ingest"
            else f"{p['events_per_s']} events/s"
        )
        append_row(
            RESULTS,
            COLUMNS,
            [
                now_stamp(), p["phase"], p["load"], p["samples"], p["server_cores"], work,
                ", ".join(f"{k} {v}%" for k, v in list(p["packages"].items())[:5]),
                ", ".join(f"{k.split(' (')[0]} {v}%" for k, v in list(p["own"].items())[:5]),
            ],
        )  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", default="ingest,fanout")
    parser.add_argument("--seconds", type=float, default=10.0, help="sampling time per phase")
    parser.add_argument("--rate-hz", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--posters", type=int, default=4)
    parser.add_argument("--size", type=int, default=500, help="ticks per batch (ingest)")
    parser.add_argument("--clients", type=int, default=1000, help="SSE clients (fanout)")
    parser.add_argument("--fan-rate", type=float, default=20.0, help="ticks/s (fanout)")
    parser.add_argument("--fan-batch", type=int, default=2, help="ticks per POST (fanout)")
    parser.add_argument("--timeout", type=float, default=240.0, help="whole run's limit (s)")
    return parser.parse_args()


if __name__ == "__main__":
    run_bench(main, parse_args(), record)
