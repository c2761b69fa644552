"""The one Redis adapter: the durable ticks stream between api and consumers, and the capped
updates stream between consumers and gateways. redis-py's asyncio client through the
process's trio-asyncio loop; every method is one bridged call and one round trip (commands
of a unit are pipelined).

Ticks stream `{QUEUE_PREFIX}:{TICKS_QUEUE}`: one entry per accepted webhook batch (the
validated columns), read by the consumer group `tickhub`. An entry is acknowledged only
after its rows are committed, and the stream is trimmed only below the oldest entry that is
not yet acknowledged. Counters beside it (`:enqueued`, `:completed`, `:failed`, in batches)
feed `/stats`.

Updates stream `PUBSUB_CHANNEL` (default `ch:ticks`): one entry per live event, capped at
about SSE_RETAIN_EVENTS. A stream rather than Pub/Sub because its ids are global (every
gateway serves the same id for the same event, so a browser resumes on any gateway) and a
gateway that reconnects reads on from the last id it saw instead of losing what was
published meanwhile.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import orjson
import redis.asyncio as aioredis
import redis.exceptions
import trio
import trio_asyncio

from tickhub.actors.messages import TickColumns

T = TypeVar("T")
GROUP = "tickhub"
UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class RedisUnavailable(RuntimeError):
    """Redis could not be reached; the caller answers 503 or retries with backoff."""


def event_id(stream_id: str | bytes) -> int:
    """A stream id `ms-seq` as the integer SSE id used everywhere (ms·10⁶ + seq)."""
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    ms, _, seq = text.partition("-")
    return int(ms) * 1_000_000 + int(seq or 0)


def stream_id(event: int) -> str:
    return f"{event // 1_000_000}-{event % 1_000_000}"


def encode_batch(source: str, received_us: int, parts: list[TickColumns]) -> bytes:
    return orjson.dumps(
        {
            "source": source,
            "received_us": received_us,
            "parts": [[p.symbol, p.keys, p.ts_us, p.price, p.volume] for p in parts],
        }
    )


def decode_batch(payload: bytes) -> tuple[list[TickColumns], int]:
    doc = orjson.loads(payload)
    source, received = doc["source"], doc["received_us"]
    parts = [TickColumns(s, source, received, k, t, p, v) for s, k, t, p, v in doc["parts"]]
    return parts, sum(len(p) for p in parts)


@attrs.frozen
class StreamNames:
    ticks: str
    updates: str

    @property
    def enqueued(self) -> str:
        return self.ticks + ":enqueued"

    @property
    def completed(self) -> str:
        return self.ticks + ":completed"

    @property
    def failed(self) -> str:
        return self.ticks + ":failed"


# GCRA in one atomic step (see tickhub.ratelimit): the TAT of a key moves forward by one
# interval per allowed request; floats go back as strings (Redis truncates Lua numbers).
GCRA_SCRIPT = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local new_tat = tat + interval
if now < new_tat - period then
  return {0, tostring(new_tat), tostring(tat)}
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return {1, tostring(new_tat), tostring(tat)}
"""


@attrs.define
class RedisLink:
    client: aioredis.Redis
    names: StreamNames
    _gcra: Any = None

    async def _bridge(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            return await trio_asyncio.aio_as_trio(fn)(*args)
        except UNAVAILABLE as exc:
            raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def ping(self, timeout_s: float = 2.0) -> bool:
        with trio.move_on_after(timeout_s):
            try:
                return bool(await self._bridge(self.client.ping))
            except RedisUnavailable:
                return False
        return False

    # --- the ticks stream -----------------------------------------------------------------

    async def enqueue(self, payload: bytes) -> str:
        """Append one batch; durable (in Redis) when this returns."""

        async def unit() -> Any:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.xadd(self.names.ticks, {"b": payload})
                pipe.incr(self.names.enqueued)
                return await pipe.execute()

        entry_id, _ = await self._bridge(unit)
        return entry_id.decode()

    async def ensure_group(self) -> None:
        async def unit() -> None:
            try:
                await self.client.xgroup_create(self.names.ticks, GROUP, id="0", mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

        await self._bridge(unit)

    async def read_group(
        self, consumer: str, start: str, count: int, block_ms: int | None
    ) -> list[tuple[str, bytes]]:
        """Entries for `consumer`: `>` for new ones, `0` for its own still pending."""
        reply = await self._bridge(
            self.client.xreadgroup, GROUP, consumer, {self.names.ticks: start}, count, block_ms
        )
        return [(i.decode(), f[b"b"]) for _, entries in reply or [] for i, f in entries if f]

    async def claim(self, consumer: str, min_idle_ms: int, count: int) -> list[tuple[str, bytes]]:
        """Take over entries pending longer than `min_idle_ms` on any consumer (a dead one)."""
        reply = await self._bridge(
            self.client.xautoclaim, self.names.ticks, GROUP, consumer, min_idle_ms, "0-0", count
        )
        entries = reply[1]
        return [(i.decode(), f[b"b"]) for i, f in entries if f]

    async def ack(self, ids: list[str], failed: int = 0) -> None:
        async def unit() -> Any:
            async with self.client.pipeline(transaction=False) as pipe:
                if ids:
                    pipe.xack(self.names.ticks, GROUP, *ids)
                    pipe.incrby(self.names.completed, len(ids))
                if failed:
                    pipe.incrby(self.names.failed, failed)
                return await pipe.execute()

        await self._bridge(unit)

    async def trim_acknowledged(self) -> int:
        """Drop entries below the oldest one not yet acknowledged (never an unacked one)."""

        async def unit() -> int:
            groups = await self.client.xinfo_groups(self.names.ticks)
            group = next((g for g in groups if g["name"] in (GROUP, GROUP.encode())), None)
            if group is None:
                return 0
            pending = await self.client.xpending(self.names.ticks, GROUP)
            floor = pending["min"] if pending["pending"] else None
            delivered = group["last-delivered-id"]
            delivered = delivered.decode() if isinstance(delivered, bytes) else delivered
            if floor is None:
                # Everything delivered is acknowledged: keep what is not delivered yet.
                ms, _, seq = delivered.partition("-")
                floor = f"{ms}-{int(seq) + 1}"
            floor = floor.decode() if isinstance(floor, bytes) else floor
            return await self.client.xtrim(self.names.ticks, minid=floor, approximate=False)

        return await self._bridge(unit)

    async def queue_stats(self) -> dict[str, int]:
        async def unit() -> dict[str, int]:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.get(self.names.enqueued)
                pipe.get(self.names.completed)
                pipe.get(self.names.failed)
                pipe.xpending(self.names.ticks, GROUP)
                enq, done, failed, pending = await pipe.execute(raise_on_error=False)
            in_flight = pending["pending"] if isinstance(pending, dict) else 0
            enq, done = int(enq or 0), int(done or 0)
            return {
                "pending": max(enq - done - in_flight, 0),
                "inFlight": in_flight,
                "completed": done,
                "failed": int(failed or 0),
            }

        return await self._bridge(unit)

    async def gcra(
        self, key: str, now_ms: float, interval_ms: float, period_ms: float
    ) -> tuple[bool, float, float]:
        """One rate-limit step for `key`: (allowed, new TAT, TAT) in milliseconds."""
        if self._gcra is None:
            self._gcra = self.client.register_script(GCRA_SCRIPT)
        allowed, new_tat, tat = await self._bridge(
            self._gcra, [key], [repr(now_ms), repr(interval_ms), repr(period_ms)]
        )
        return bool(allowed), float(new_tat), float(tat)

    # --- the updates stream ---------------------------------------------------------------

    async def publish_updates(self, symbol: str, payloads: list[bytes], maxlen: int) -> None:
        async def unit() -> Any:
            async with self.client.pipeline(transaction=False) as pipe:
                for data in payloads:
                    pipe.xadd(
                        self.names.updates,
                        {"s": symbol, "d": data},
                        maxlen=maxlen,
                        approximate=True,
                    )
                return await pipe.execute()

        await self._bridge(unit)

    async def read_updates(
        self, after: str, count: int, block_ms: int
    ) -> list[tuple[int, str, bytes]]:
        reply = await self._bridge(self.client.xread, {self.names.updates: after}, count, block_ms)
        return [
            (event_id(i), f[b"s"].decode(), f[b"d"])
            for _, entries in reply or []
            for i, f in entries
        ]

    async def recent_updates(self, count: int) -> list[tuple[int, str, bytes]]:
        """The newest `count` updates, oldest first (a gateway's window after a restart)."""
        entries = await self._bridge(self.client.xrevrange, self.names.updates, "+", "-", count)
        return [(event_id(i), f[b"s"].decode(), f[b"d"]) for i, f in reversed(entries)]

    async def oldest_update(self) -> int | None:
        entries = await self._bridge(self.client.xrange, self.names.updates, "-", "+", 1)
        return event_id(entries[0][0]) if entries else None


@asynccontextmanager
async def open_redis(url: str, names: StreamNames) -> AsyncIterator[RedisLink]:
    """A client (inside the process's trio-asyncio loop); connections are made on use."""
    client = aioredis.Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=None,
        health_check_interval=15,
        retry_on_timeout=False,
    )
    try:
        yield RedisLink(client, names)
    finally:
        with trio.move_on_after(2) as cleanup:
            cleanup.shield = True
            await trio_asyncio.aio_as_trio(client.aclose)()
