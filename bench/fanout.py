"""SSE fan-out per gateway process: concurrent clients, delivered events/s, delivery ratio,
and the number of clients at which p99 latency passes 100 ms.

tickhub runs as its own processes: `--mode all` (default: one process, `run --role all`,
which is api + consumer + gateway; at the bench's tick rates the api and consumer work is
small beside the fan-out) or `--mode split` (api, consumer and `--gateways` gateway
processes over an embedded Redis; clients are spread evenly over the gateways). Embedded
PostgreSQL, fsync off.

Steps through `--clients` (default 100, 500, 1,000, 2,000, 5,000, 10,000): connect that many
subscribers (raw sockets on one epoll loop in a separate process; each source address
127.0.0.N takes at most `--per-addr` of them, so the ephemeral port range never runs out),
post `--rate` ticks/s in batches of `--batch` for `--seconds`, wait for the stragglers, and
measure: delivered events/s (what the subscribers received ÷ the measured window), the
delivery ratio (delivered ÷ ticks acked * clients) and p50/p99/max webhook → event latency
over every (client, event). Stops after the step whose p99 passes `--p99-limit-ms`, whose
delivery ratio falls below 0.99, or where the machine or a gateway saturates (≥ 0.95 of
the machine, or ≥ 0.95 of a core for a gateway process).

Conflated streams (`--conflate MS`): the load goes round `--symbols` symbols (SYM000, …),
each client subscribes to `--client-symbols` of them (`?symbols=…&conflate=MS`, client i to
the next ones in turn), and the delivery check becomes freshness: the share of (client,
symbol) pairs whose last event carries the newest tick posted for that symbol. The latency
of a conflated event is the age of the tick it carries when it arrives; the conflation
bound (at most ⌈window / interval⌉ + 1 events per symbol per client) is checked too.

Per step it also reports the gateways' memory per idle client (RSS after connecting the
step's clients, before any load, minus RSS before, per client) and the webhook's answer
time under the fan-out (`ack p50/p99`).

Prints one JSON line and appends a row per step to bench/results/fanout.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import trio

from bench.bare import bare_floor
from bench.cpu import CpuMeter, background_busy
from bench.load import post_paced
from bench.machine import port_range, process_usage, raise_fd_limit
from bench.report import RESULTS_DIR, append_row, load_parser, now_stamp, run_bench
from bench.scrape import scrape, server_side, wait_clients_gone
from bench.sse_clients import SseClients, drain, latency_summary
from bench.stack import SYMBOLS, Stack

RESULTS = RESULTS_DIR / "fanout.md"
COLUMNS = [
    "date", "mode", "gateways", "conflate ms", "symbols", "clients", "clients/gateway",
    "ticks/s", "batch", "delivered ev/s", "ev/s per gateway", "delivery", "p50 ms", "p99 ms",
    "max ms", "spread p99 ms", "ack p50 ms", "ack p99 ms", "gateway cores", "events/write",
    "µs CPU/event", "µs CPU/write", "KiB/idle client", "loadgen cores", "machine busy",
    "bg busy", "stop",
]  # fmt: skip
TARGET_CLIENTS = 10_000  # conflated (250 ms) on one gateway
TARGET_US_PER_WRITE = 20.0  # tick by tick, one event per write


def symbols_of(args: argparse.Namespace) -> tuple[str, ...]:
    if args.symbols <= len(SYMBOLS):
        return SYMBOLS[: args.symbols]
    return tuple(f"SYM{i:03d}" for i in range(args.symbols))


def stream_paths(args: argparse.Namespace, n: int) -> list[str]:
    """Client i's stream: every tick of every symbol, or its share of the symbols."""
    symbols = symbols_of(args)
    query = f"conflate={args.conflate}" if args.conflate else ""
    if not args.client_symbols:
        return [f"/realtime/ticks?{query}" if query else "/realtime/ticks"]
    k = args.client_symbols
    paths = []
    for i in range(min(n, len(symbols))):
        mine = ",".join(symbols[(i * k + j) % len(symbols)] for j in range(k))
        paths.append(f"/realtime/ticks?symbols={mine}" + (f"&{query}" if query else ""))
    return paths


def share(args: argparse.Namespace) -> float:
    """The share of the ticks each client subscribes to."""
    return min(1.0, args.client_symbols / args.symbols) if args.client_symbols else 1.0


def rss_mib(pids: dict[str, int]) -> float:
    return sum(process_usage(pid)[0] for pid in pids.values())


async def one_step(args, stack: Stack, clients: SseClients, n: int, t_base: int) -> dict:
    gateways = stack.pids("all", "gateway")
    rss_before = rss_mib(gateways)
    conn = await trio.to_thread.run_sync(
        lambda: clients.connect(
            n,
            stack.sse_targets,
            args.per_addr,
            args.connect_timeout,
            paths=stream_paths(args, n),
            track=bool(args.conflate),
        )
    )
    await trio.sleep(1.0)  # the handshakes' garbage settles before RSS is read
    rss_idle = rss_mib(gateways)
    others = stack.pids("api", "consumer")
    meter = CpuMeter({**gateways, **others, "readers": clients.process.pid, "poster": os.getpid()})
    ports = stack.ports("all", "api", "consumer", "gateway")
    background = await trio.to_thread.run_sync(background_busy)
    before = await trio.to_thread.run_sync(scrape, ports)
    await trio.to_thread.run_sync(clients.call, "start")
    started = time.monotonic()
    meter.start()
    posted = await post_paced(
        stack.api_url,
        rate=args.rate,
        batch=args.batch,
        seconds=args.seconds,
        t_base_ns=t_base,
        run=f"fan{n}-{t_base}",
        symbols=symbols_of(args),
    )
    # Tick by tick every client gets every tick; conflated, the drain ends when all is quiet.
    expected = math.inf if args.conflate else posted.acked * conn["ready"] * share(args)
    await drain(clients, expected, cap_s=args.drain_cap)
    cpu = meter.stop()
    stats = await trio.to_thread.run_sync(clients.call, "stop", posted.last_marks)
    window = time.monotonic() - started
    after = await trio.to_thread.run_sync(scrape, ports)
    await trio.to_thread.run_sync(clients.call, "close")
    left = await wait_clients_gone(ports)
    lat = latency_summary(stats)
    if args.conflate:
        delivery = stats["fresh"] / stats["tracked"] if stats["tracked"] else 0.0
        # at most ⌈window / interval⌉ + 1 events per symbol for each client
        per_symbol_cap = math.ceil(window / (args.conflate / 1000)) + 1
        bound = (args.client_symbols or args.symbols) * per_symbol_cap
        bound_held = stats["max_client_events"] <= bound
    else:
        expected = posted.acked * conn["ready"] * share(args)
        delivery = stats["events"] / expected if expected else 0.0
        bound, bound_held = None, True
    gw_cores = [cpu[f"{k}_cores"] for k in gateways]
    gw_cpu_s = sum(gw_cores) * window
    delivered_per_s = stats["events"] / window
    step = {
        "clients": n,
        "connected": conn["ready"],
        "connect_failed": conn["failed"],
        "connect_s": conn["seconds"],
        "connect_errors": conn.get("errors", {}),
        "clients_per_gateway": round(conn["ready"] / len(gateways)),
        **posted.summary(),
        "events": stats["events"],
        "window_s": round(window, 2),
        "delivered_per_s": round(delivered_per_s),
        "per_gateway_per_s": round(delivered_per_s / len(gateways)),
        "delivery": round(delivery, 4),
        "min_client_events": stats["min_client_events"],
        "max_client_events": stats["max_client_events"],
        "conflation_bound": bound,
        "idle_kib_per_client": round((rss_idle - rss_before) * 1024 / conn["ready"], 1)
        if conn["ready"]
        else None,
        **lat,
        "events_per_write": round(stats["events"] / stats["chunks"], 2) if stats["chunks"] else 0,
        "overflow_resets": stats["resets"],
        "disconnects": stats["disconnects"],
        "gateway_cores": gw_cores,
        "gateway_us_per_event": round(1e6 * gw_cpu_s / stats["events"], 2)
        if stats["events"]
        else None,
        "gateway_us_per_write": round(1e6 * gw_cpu_s / stats["chunks"], 2)
        if stats["chunks"]
        else None,
        "loadgen_cores": round(cpu["readers_cores"] + cpu["poster_cores"], 2),
        "machine_busy": cpu["machine_busy"],
        "background_busy": background,
        "server": server_side(before, after),
        "clients_left_after_close": left,
        "cpu": cpu,
    }
    reasons = []
    if conn["ready"] < n:
        reasons.append("connect failures")
    if not lat["p99_ms"] <= args.p99_limit_ms:  # NaN counts as a pass of the limit
        reasons.append(f"p99>{args.p99_limit_ms:g}ms")
    if step["delivery"] < 0.99:
        reasons.append("fresh<0.99" if args.conflate else "delivery<0.99")
    if not bound_held:
        reasons.append("conflation bound exceeded")
    if cpu["machine_busy"] >= 0.95:
        reasons.append("machine saturated")
    if max(gw_cores) >= 0.95:
        reasons.append("gateway saturated")
    step["stop"] = ", ".join(reasons)
    return step


async def main(args: argparse.Namespace) -> dict:
    fd_limit = raise_fd_limit()  # the tickhub processes inherit it
    lo, hi = port_range()
    t_base = time.monotonic_ns()
    steps: list[dict] = []
    gateways = 1 if args.mode == "all" else args.gateways
    with (
        Stack(args.mode, gateways=gateways) as stack,
        SseClients(t_base) as clients,
        trio.move_on_after(args.timeout) as overall,
    ):
        floor = None
        if args.floor_clients:
            floor = await trio.to_thread.run_sync(
                bare_floor, t_base, clients, args.floor_clients, args.rate, args.batch, args.seconds
            )
            print(json.dumps({"floor": floor}), file=sys.stderr)
        for n in args.clients:
            if n + 100 > fd_limit[0]:
                steps.append({"clients": n, "stop": f"skipped: fd limit {fd_limit[0]}"})
                break
            step = await one_step(args, stack, clients, n, t_base)
            if floor and floor["us_per_write"] and step["gateway_us_per_write"]:
                step["us_per_write_vs_floor"] = round(
                    step["gateway_us_per_write"] / floor["us_per_write"], 1
                )
            steps.append(step)
            print(json.dumps({k: v for k, v in step.items() if k != "cpu"}), file=sys.stderr)
            if step["stop"]:
                break
    measured = [s for s in steps if "p99_ms" in s]
    ok = [s for s in measured if s["p99_ms"] <= args.p99_limit_ms and s["delivery"] >= 0.99]
    passed = next((s for s in measured if s not in ok), None)
    best = max(ok, key=lambda s: s["clients_per_gateway"], default=None)
    return {
        "bench": "fanout",
        "mode": args.mode,
        "gateways": gateways,
        "rate": args.rate,
        "batch": args.batch,
        "seconds": args.seconds,
        "conflate": args.conflate,
        "symbols": args.symbols,
        "client_symbols": args.client_symbols,
        "fd_limit": list(fd_limit),
        "ephemeral_ports": [lo, hi],
        "per_addr": args.per_addr,
        "timed_out": overall.cancelled_caught,
        "max_clients_per_gateway_p99_ok": best["clients_per_gateway"] if best else 0,
        "p99_passed_limit_at_clients_per_gateway": passed["clients_per_gateway"]
        if passed
        else None,
        "peak_delivered_per_gateway_per_s": max(
            (s["per_gateway_per_s"] for s in measured), default=0
        ),
        # Targets: ≤ 20 µs of gateway CPU per write at one event per write; conflated,
        # 10,000 clients on one gateway within the p99 limit (run with --p99-limit-ms 250).
        "best_us_per_write_single_event": min(
            (
                s["gateway_us_per_write"]
                for s in measured
                if s["gateway_us_per_write"] and s["events_per_write"] <= 1.05
            ),
            default=None,
        ),
        "target_met": bool(best and best["clients_per_gateway"] >= TARGET_CLIENTS)
        if args.conflate
        else any(
            s["gateway_us_per_write"]
            and s["events_per_write"] <= 1.05
            and s["gateway_us_per_write"] <= TARGET_US_PER_WRITE
            for s in ok
        ),
        "floor": floor,
        "steps": steps,
    }


def record(result: dict) -> None:
    f = result.get("floor")
    conflate = result["conflate"] or "-"
    if f:
        append_row(
            RESULTS,
            COLUMNS,
            [
                now_stamp(), "bare trio (floor)", 1, "-", len(SYMBOLS), f["clients"],
                f["clients"], result["rate"], result["batch"], f["delivered_per_s"],
                f["delivered_per_s"], "-", f["p50_ms"], f["p99_ms"], f["max_ms"],
                f["spread_p99_ms"], "-", "-", f["cores"], f["events_per_write"],
                f["us_per_event"], f["us_per_write"], "-", "-", "-", "-", "-",
            ],
        )  # fmt: skip
    for s in result["steps"]:
        if "p99_ms" not in s:
            continue
        append_row(
            RESULTS,
            COLUMNS,
            [
                now_stamp(), result["mode"], result["gateways"], conflate,
                f"{result['client_symbols'] or 'all'}/{result['symbols']}", s["connected"],
                s["clients_per_gateway"], s["ticks_per_s"], result["batch"],
                s["delivered_per_s"], s["per_gateway_per_s"], s["delivery"], s["p50_ms"],
                s["p99_ms"], s["max_ms"], s["spread_p99_ms"], s["ack_p50_ms"], s["ack_p99_ms"],
                "+".join(str(c) for c in s["gateway_cores"]), s["events_per_write"],
                s["gateway_us_per_event"], s["gateway_us_per_write"], s["idle_kib_per_client"],
                s["loadgen_cores"], s["machine_busy"], s["background_busy"], s["stop"] or "-",
            ],
        )  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = load_parser(__doc__, rate=10.0, batch=1, timeout=420.0)
    parser.add_argument(
        "--clients",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[100, 500, 1000, 2000, 5000, 10000],
    )
    parser.add_argument("--gateways", type=int, default=1, help="gateway processes (split)")
    parser.add_argument("--conflate", type=int, default=0, help="conflated streams (ms)")
    parser.add_argument("--symbols", type=int, default=len(SYMBOLS), help="symbols posted")
    parser.add_argument(
        "--client-symbols", type=int, default=0, help="symbols per client (0: all, no filter)"
    )
    parser.add_argument("--p99-limit-ms", type=float, default=100.0)
    parser.add_argument(
        "--floor-clients", type=int, default=1000, help="clients of the bare trio run (0: skip)"
    )
    parser.add_argument("--connect-timeout", type=float, default=90.0)
    parser.add_argument("--drain-cap", type=float, default=10.0, help="longest wait after posts")
    return parser.parse_args()


if __name__ == "__main__":
    run_bench(main, parse_args(), record)
