"""The wall clock, read in one place. Data timestamps (a webhook's arrival, a stream's
`connectedAt`, keepalive pings, first event ids) come from here; scheduling uses trio's
clock, so that simulation tests run on a mock clock."""

from __future__ import annotations

import time


def wall_us() -> int:
    """Epoch microseconds."""
    return time.time_ns() // 1000


def wall_ms() -> int:
    """Epoch milliseconds."""
    return time.time_ns() // 1_000_000


def wall_s() -> float:
    """Epoch seconds."""
    return time.time()
