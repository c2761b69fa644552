"""What tickhub says of itself: its /ops/metrics counters before and after a run."""

from __future__ import annotations

import httpx
import trio

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
