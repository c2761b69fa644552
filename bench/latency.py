"""Webhook → SSE latency, with 1, 100 and 1,000 subscribers, in one run.

tickhub runs as its own process (`python -m tickhub run --role all`, server defaults for
BATCH_FLUSH_MS and the writer policy; or `--mode split`: api, consumer and gateway processes
over an embedded Redis) on an embedded PostgreSQL with fsync off. The load generator posts
`--batch` ticks every `--batch / --rate` s (default 50 ticks every 50 ms = 1,000 ticks/s) on
a fixed schedule; every price is a unique marker holding the time just before its POST. The
subscribers (a separate process: raw sockets, one epoll loop) all follow the unfiltered
stream, so each receives every tick; latency = receipt of the event carrying a marker - the
time just before its POST, over every (subscriber, event) pair.

Beside the absolute figures, measured in the same run: the webhook's own answer time (ack,
= commit in `all` mode) and the delivery ratio (events received ÷ ticks acked * subscribers).

Prints one JSON line and appends a row per subscriber count to bench/results/latency.md.
"""

from __future__ import annotations

import argparse
import os
import time

import trio

from bench.cpu import CpuMeter, background_busy
from bench.load import post_paced
from bench.machine import raise_fd_limit
from bench.report import RESULTS_DIR, append_row, load_parser, now_stamp, run_bench
from bench.scrape import scrape, server_side, wait_clients_gone
from bench.sse_clients import SseClients, drain, latency_summary
from bench.stack import Stack

RESULTS = RESULTS_DIR / "latency.md"
COLUMNS = [
    "date", "mode", "subscribers", "ticks/s", "batch", "p50 ms", "p90 ms", "p99 ms", "max ms",
    "spread p99 ms", "ack p50 ms", "p50 ÷ ack p50", "delivery", "events/write", "server cores",
    "loadgen cores", "machine busy", "bg busy",
]  # fmt: skip
TARGET_SUBSCRIBERS = 100
TARGET_P50_MS, TARGET_P99_MS = 10.0, 50.0


async def one_step(args, stack: Stack, clients: SseClients, subscribers: int, t_base: int):
    conn = await trio.to_thread.run_sync(
        lambda: clients.connect(subscribers, stack.sse_targets, args.per_addr)
    )
    server_pids = stack.pids("all", "gateway", "consumer", "api")
    meter = CpuMeter({**server_pids, "readers": clients.process.pid, "poster": os.getpid()})
    ports = stack.ports("all", "api", "consumer", "gateway")
    background = await trio.to_thread.run_sync(background_busy)
    before = await trio.to_thread.run_sync(scrape, ports)
    await trio.to_thread.run_sync(clients.call, "start")
    meter.start()
    posted = await post_paced(
        stack.api_url,
        rate=args.rate,
        batch=args.batch,
        seconds=args.seconds,
        t_base_ns=t_base,
        run=f"lat{subscribers}-{t_base}",
    )
    await drain(clients, posted.acked * conn["ready"])
    cpu = meter.stop()
    stats = await trio.to_thread.run_sync(clients.call, "stop")
    after = await trio.to_thread.run_sync(scrape, ports)
    await trio.to_thread.run_sync(clients.call, "close")
    await wait_clients_gone(ports)
    post = posted.summary()
    lat = latency_summary(stats)
    expected = posted.acked * conn["ready"]
    server_cores = round(sum(v for k, v in cpu.items() if k[:-6] in server_pids), 2)
    return {
        "subscribers": subscribers,
        "connected": conn["ready"],
        "connect_failed": conn["failed"],
        **lat,
        **post,
        "events": stats["events"],
        "delivery": round(stats["events"] / expected, 4) if expected else 0.0,
        "p50_over_ack_p50": round(lat["p50_ms"] / post["ack_p50_ms"], 2),
        "events_per_write": round(stats["events"] / stats["chunks"], 2) if stats["chunks"] else 0,
        "overflow_resets": stats["resets"],
        "disconnects": stats["disconnects"],
        "server_cores": server_cores,
        "loadgen_cores": round(cpu["readers_cores"] + cpu["poster_cores"], 2),
        "machine_busy": cpu["machine_busy"],
        "background_busy": background,
        "server": server_side(before, after),
        "cpu": cpu,
    }


async def main(args: argparse.Namespace) -> dict:
    fd_limit = raise_fd_limit()
    t_base = time.monotonic_ns()
    steps = []
    with (
        Stack(args.mode, gateways=1) as stack,
        SseClients(t_base) as clients,
    ):
        with trio.fail_after(args.timeout):
            for subscribers in args.subscribers:
                steps.append(await one_step(args, stack, clients, subscribers, t_base))
    at_target = next((s for s in steps if s["subscribers"] == TARGET_SUBSCRIBERS), None)
    verdict = None
    if at_target is not None:
        verdict = (
            at_target["p50_ms"] <= TARGET_P50_MS
            and at_target["p99_ms"] <= TARGET_P99_MS
            and at_target["delivery"] >= 0.999
        )
    return {
        "bench": "latency",
        "mode": args.mode,
        "rate": args.rate,
        "batch": args.batch,
        "seconds": args.seconds,
        "fd_limit": list(fd_limit),
        "target_met": verdict,
        "steps": steps,
    }


def record(result: dict) -> None:
    for s in result["steps"]:
        append_row(
            RESULTS,
            COLUMNS,
            [
                now_stamp(), result["mode"], s["connected"], s["ticks_per_s"], result["batch"],
                s["p50_ms"], s["p90_ms"], s["p99_ms"], s["max_ms"], s["spread_p99_ms"],
                s["ack_p50_ms"], s["p50_over_ack_p50"], s["delivery"], s["events_per_write"],
                s["server_cores"],
                s["loadgen_cores"], s["machine_busy"], s["background_busy"],
            ],
        )  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = load_parser(__doc__, rate=1000.0, batch=50, timeout=300.0)
    parser.add_argument(
        "--subscribers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 100, 1000]
    )
    return parser.parse_args()


if __name__ == "__main__":
    run_bench(main, parse_args(), record)
