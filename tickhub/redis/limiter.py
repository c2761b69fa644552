"""The rate limiter shared by every api process: the TATs of `tickhub.ratelimit`'s GCRA in
Redis, read and stored in one atomic script call per request.

A Redis that fails a check (down, paused, out of memory, read-only) is not asked again for
`retry_s`: meanwhile every check fails open at once (LimiterUnavailable) instead of waiting
for a timeout on every request.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import trio

from tickhub.clock import wall_us
from tickhub.ratelimit import Decision, LimiterUnavailable, Rate, gcra
from tickhub.redis.link import RedisLink, RedisUnavailable

# The atomic step of GCRA (`tickhub.ratelimit.gcra` decides): read the key's TAT and, when
# charging, store the next one if the request is allowed — the same comparison as `gcra`, on
# the same whole microseconds (exact in Lua's doubles). Returns the TAT it read.
GCRA_SCRIPT = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local new_tat = tat + interval
if ARGV[4] == '1' and now >= new_tat - period then
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
             'PX', math.ceil((new_tat - now) / 1000) + 1000)
end
return string.format('%.0f', tat)
"""


@attrs.define
class RedisLimiter:
    """`ratelimit.Limiter` over Redis (see the module's first lines)."""

    link: RedisLink
    prefix: str = "ratelimit"
    timeout_s: float = 0.25  # a healthy Redis answers in well under a millisecond
    retry_s: float = 5.0
    clock: Callable[[], int] = wall_us  # shared by every process: the wall clock
    _script: Any = None
    _skip_until: float = -math.inf

    async def check(self, group: str, client: str, rate: Rate, *, charge: bool = True) -> Decision:
        if trio.current_time() < self._skip_until:
            raise LimiterUnavailable("redis failed recently")
        if self._script is None:
            self._script = self.link.client.register_script(GCRA_SCRIPT)
        now = self.clock()
        args = [now, rate.interval_us, rate.period_us, "1" if charge else "0"]
        try:
            tat = await self.link.run_script(
                self._script, [f"{self.prefix}:{group}:{client}"], args, timeout_s=self.timeout_s
            )
        except RedisUnavailable as exc:
            self._skip_until = trio.current_time() + self.retry_s
            raise LimiterUnavailable(str(exc)) from exc
        return gcra(int(tat), now, rate)[0]
