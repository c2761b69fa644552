"""Rate limits by GCRA (the generic cell rate algorithm): per client and route group, a
"theoretical arrival time" (TAT) that each allowed request pushes forward by one emission
interval; a request is refused while the TAT is more than a whole period ahead. One number
per client, no timers, bursts up to the limit.

`MemoryLimiter` keeps the TATs in this process (one process: `all`);
`redis.limiter.RedisLimiter` keeps them in Redis (one atomic script call per request) so
every api instance shares the limit. Both decide with the one `gcra()` below; Redis only
reads and stores the TAT.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from typing import Protocol

import attrs

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(s|m|h)\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600}
# Clients whose TATs one process keeps (bounded memory under many clients).
MEMORY_CAPACITY = 100_000


@attrs.frozen
class Rate:
    count: int
    period_s: float

    @property
    def period_us(self) -> int:
        return round(self.period_s * 1_000_000)

    @property
    def interval_us(self) -> int:
        return max(1, round(self.period_s * 1_000_000 / self.count))


def parse_rate(text: str) -> Rate | None:
    """`"200/s"`, `"60/m"`, `"1000/10m"`; `"0"` means no limit (None)."""
    if text.strip() in ("0", "off", ""):
        return None
    match = _RATE.match(text)
    if not match or int(match[1]) < 1:
        raise ValueError('expected a rate like "200/s", "60/m" or "0" for none')
    return Rate(int(match[1]), int(match[2] or 1) * _UNIT_S[match[3]])


@attrs.frozen
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: float  # until the limit is whole again
    retry_after_s: float  # 0 when allowed

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_s)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers


def gcra(tat: int | None, now: int, rate: Rate) -> tuple[Decision, int | None]:
    """The decision for a request at `now`, and the new TAT (None: unchanged). Times are
    whole microseconds: exact in Python and in Redis's Lua doubles alike (below 2**53),
    where seconds as floats let `(now + period) - period` come out a hair above `now` and
    refuse a first request."""
    tat = now if tat is None or tat < now else tat
    new_tat = tat + rate.interval_us
    allow_at = new_tat - rate.period_us
    if now < allow_at:
        return Decision(False, rate.count, 0, (tat - now) / 1e6, (allow_at - now) / 1e6), None
    remaining = (rate.period_us - (new_tat - now)) // rate.interval_us
    return Decision(True, rate.count, remaining, (new_tat - now) / 1e6, 0.0), new_tat


class LimiterUnavailable(RuntimeError):
    """The shared counters are out of reach; the caller lets the request through (fail open)."""


class Limiter(Protocol):
    async def check(self, group: str, client: str, rate: Rate, *, charge: bool = True) -> Decision:
        """The decision for one request of `client` in `group`; with `charge=False` only
        whether it would be allowed (nothing is counted). Raises LimiterUnavailable."""
        ...


@attrs.define
class MemoryLimiter:
    """TATs in this process. At most `capacity` clients are kept: expired entries are swept
    when the table is full (at most once a second), and if it is still full the entry used
    least recently goes — that client may burst once more, memory stays bounded."""

    clock: Callable[[], int] = lambda: time.monotonic_ns() // 1000  # microseconds
    capacity: int = MEMORY_CAPACITY
    _tats: dict[tuple[str, str], int] = attrs.field(factory=dict)
    _swept_at: int = -(2**63)

    def __len__(self) -> int:
        return len(self._tats)

    async def check(self, group: str, client: str, rate: Rate, *, charge: bool = True) -> Decision:
        now = self.clock()
        key = (group, client)
        decision, new_tat = gcra(self._tats.get(key), now, rate)
        if charge and new_tat is not None:
            self._tats.pop(key, None)  # re-inserted last: the dict's order is use order
            self._tats[key] = new_tat
            if len(self._tats) > self.capacity:
                self._shrink(now)
        return decision

    def _shrink(self, now: int) -> None:
        if now - self._swept_at >= 1_000_000:
            self._swept_at = now
            self._tats = {k: t for k, t in self._tats.items() if t > now}
        while len(self._tats) > self.capacity:
            del self._tats[next(iter(self._tats))]
