"""The load: webhook batches on a fixed schedule. Each tick's price is a unique marker that
encodes the CLOCK_MONOTONIC time just before its POST, so a subscriber in any process on
this machine computes the latency of each event it receives without a lookup."""

from __future__ import annotations

import time
from typing import Any

import attrs
import httpx
import trio

from bench.stack import API_KEY, SYMBOLS

# A marker is rel_us * MARK + i: the POST's start (µs after the run's base time) and the
# tick's index in its batch. Prices stay below 1e15 (tickhub refuses larger ones).
MARK = 1000


@attrs.define
class PostStats:
    posts: int = 0
    failed: int = 0
    acked: int = 0
    seconds: float = 0.0
    ack_ms: list[float] = attrs.field(factory=list)
    # The newest marker acked per symbol: what a conflated stream's last event must carry.
    last_marks: dict[str, int] = attrs.field(factory=dict)

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
    symbols: tuple[str, ...] = SYMBOLS,
) -> PostStats:
    """POST `batch` ticks every `batch / rate` s for `seconds` (without waiting for the previous
    answer; at most `concurrency` in flight), the symbols taken in turn across posts. Each
    price is a marker: (µs from `t_base_ns` to just before the POST) * MARK + index in the
    batch."""
    stats = PostStats()
    interval = batch / rate
    count = max(1, round(seconds / interval))
    limiter = trio.CapacityLimiter(concurrency)
    last_rel = -1
    turn = 0

    async def post_one(client: httpx.AsyncClient) -> None:
        nonlocal last_rel, turn
        async with limiter:
            t0 = time.monotonic_ns()
            rel_us = max((t0 - t_base_ns) // 1000, last_rel + 1)
            last_rel = rel_us
            wall = time.time()
            first, turn = turn, turn + batch
            items = [
                {
                    "symbol": symbols[(first + i) % len(symbols)],
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
            for item in items:
                mark = int(item["price"])
                if mark > stats.last_marks.get(item["symbol"], -1):
                    stats.last_marks[item["symbol"]] = mark

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
