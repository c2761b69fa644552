"""The Redis adapter (beside it, `redis.limiter`): the durable ticks stream between api and
consumers, and the capped updates stream between consumers and gateways. redis-py's asyncio
client through the process's trio-asyncio loop; every method is one bridged call and one
round trip (commands of a unit are pipelined).

Every call has a deadline (REDIS_TIMEOUT_MS; a blocking read adds its block time), and every
error Redis can give — unreachable, timed out, out of memory (`OOM command not allowed`),
a read-only replica, a script error — is one `RedisUnavailable`: each caller has a single
outcome for a sick Redis (503, fail open, retry later), never a 500 and never a hang.

Ticks stream `{QUEUE_PREFIX}:{TICKS_QUEUE}`: one entry per accepted webhook batch (the
validated columns), read by the consumer group `tickhub`. An entry is acknowledged only
after its rows are committed, and the stream is trimmed only below the oldest entry that is
not yet acknowledged. An entry whose data the store keeps refusing (counted in the hash
`:refusals`) is moved, with its error, to the dead-letter stream
`{QUEUE_PREFIX}:{TICKS_QUEUE}:dead` and acknowledged, so it no longer holds the stream back;
`tickhub dead-letters` lists and replays them. Counters beside it (`:enqueued`,
`:completed`, `:failed` — batches given up as dead letters) feed `/stats`.

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

from tickhub.bridge import BridgeTimeout, call_aio, call_as
from tickhub.clock import wall_ms
from tickhub.config import Settings
from tickhub.messages import TickColumns

T = TypeVar("T")
GROUP = "tickhub"
# Every error of a sick or misused Redis: connection loss, timeouts, and the error replies
# (OOM, READONLY, LOADING, BUSY, script errors) that redis-py raises as ResponseError.
UNAVAILABLE = (redis.exceptions.RedisError, OSError, BridgeTimeout)
# The readiness probe's key: a write, so that a Redis refusing writes (out of memory with
# noeviction, a read-only replica) is not ready, though it still answers PING.
PROBE_TTL_MS = 10_000


class RedisUnavailable(RuntimeError):
    """Redis could not be reached or refused the command; the caller answers 503, fails open
    or retries with backoff."""


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
    """The batch of an entry; ValueError when the entry is not one of ours (nothing retries
    that into shape: the consumer dead-letters it)."""
    try:
        doc = orjson.loads(payload)
        source, received = doc["source"], doc["received_us"]
        parts = [TickColumns(s, source, received, k, t, p, v) for s, k, t, p, v in doc["parts"]]
        even = all(len(p.keys) == len(p.ts_us) == len(p.price) == len(p.volume) for p in parts)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a ticks batch: {type(exc).__name__}: {exc}") from None
    if not parts or not even:
        raise ValueError("not a ticks batch: columns of unequal length")
    return parts, sum(len(p) for p in parts)


@attrs.frozen
class StreamNames:
    ticks: str
    updates: str

    @classmethod
    def of(cls, settings: Settings) -> StreamNames:
        return cls(f"{settings.queue_prefix}:{settings.ticks_queue}", settings.pubsub_channel)

    @property
    def enqueued(self) -> str:
        return self.ticks + ":enqueued"

    @property
    def completed(self) -> str:
        return self.ticks + ":completed"

    @property
    def failed(self) -> str:
        return self.ticks + ":failed"

    @property
    def dead(self) -> str:
        return self.ticks + ":dead"

    @property
    def refusals(self) -> str:
        return self.ticks + ":refusals"

    @property
    def probe(self) -> str:
        return self.ticks + ":probe"


@attrs.define
class RedisLink:
    client: aioredis.Redis
    names: StreamNames
    timeout_s: float = 2.0  # the deadline of a call that names none
    _dead_letter: Any = None

    async def _bridge(
        self, fn: Callable[..., Awaitable[T]], *args: Any, timeout_s: float | None = None
    ) -> T:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        return await call_as(
            fn, *args, timeout_s=timeout, failures=UNAVAILABLE, raise_as=RedisUnavailable
        )

    async def writable(self, timeout_s: float = 2.0) -> bool:
        """Whether Redis takes a write now (readiness): a tiny key with a short TTL."""
        try:
            await self._bridge(
                self.client.set, self.names.probe, wall_ms(), None, PROBE_TTL_MS,
                timeout_s=timeout_s,
            )  # fmt: skip
        except RedisUnavailable:
            return False
        return True

    # --- the ticks stream -----------------------------------------------------------------

    async def enqueue(self, payload: bytes, timeout_s: float | None = None) -> str:
        """Append one batch; durable (in Redis) when this returns."""

        async def unit() -> Any:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.xadd(self.names.ticks, {"b": payload})
                pipe.incr(self.names.enqueued)
                return await pipe.execute()

        entry_id, _ = await self._bridge(unit, timeout_s=timeout_s)
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
            self.client.xreadgroup,
            GROUP,
            consumer,
            {self.names.ticks: start},
            count,
            block_ms,
            timeout_s=self.timeout_s + (block_ms or 0) / 1000,
        )
        return [(i.decode(), f[b"b"]) for _, entries in reply or [] for i, f in entries if f]

    async def claim(self, consumer: str, min_idle_ms: int, count: int) -> list[tuple[str, bytes]]:
        """Take over entries pending longer than `min_idle_ms` on any consumer (a dead one)."""
        reply = await self._bridge(
            self.client.xautoclaim, self.names.ticks, GROUP, consumer, min_idle_ms, "0-0", count
        )
        entries = reply[1]
        return [(i.decode(), f[b"b"]) for i, f in entries if f]

    async def ack(self, ids: list[str]) -> None:
        """Acknowledge committed entries (and forget their refusals, if any)."""

        async def unit() -> Any:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.xack(self.names.ticks, GROUP, *ids)
                pipe.incrby(self.names.completed, len(ids))
                pipe.hdel(self.names.refusals, *ids)
                return await pipe.execute()

        if ids:
            await self._bridge(unit)

    async def refused(self, entry_id: str) -> int:
        """Count one more refusal of this entry's data by the store; the count so far."""
        return int(await self._bridge(self.client.hincrby, self.names.refusals, entry_id, 1))

    async def dead_letter(self, entry_id: str, payload: bytes, error: str, refusals: int) -> bool:
        """Move a pending entry whose data keeps being refused to the dead-letter stream and
        acknowledge it, atomically and once: False when it was no longer pending (another
        delivery of it got there first)."""
        if self._dead_letter is None:
            self._dead_letter = self.client.register_script(DEAD_LETTER_SCRIPT)
        keys = [self.names.ticks, self.names.dead, self.names.refusals, self.names.failed]
        at = wall_ms()
        moved = await self._bridge(
            self._dead_letter, keys, [GROUP, entry_id, payload, error, refusals, at]
        )
        return bool(moved)

    async def dead_letters(self, count: int) -> list[dict[str, Any]]:
        """The oldest `count` dead letters: id, original entry, error, refusals, items."""
        entries = await self._bridge(self.client.xrange, self.names.dead, "-", "+", count)
        out = []
        for dead_id, fields in entries:
            try:
                _, items = decode_batch(fields[b"b"])
            except ValueError:
                items = None
            out.append(
                {
                    "id": dead_id.decode(),
                    "entry": fields.get(b"entry", b"").decode(),
                    "error": fields.get(b"error", b"").decode(errors="replace"),
                    "refusals": int(fields.get(b"refusals", 0)),
                    "at": int(fields.get(b"at", 0)),
                    "items": items,
                }
            )
        return out

    async def replay_dead(self, dead_ids: list[str]) -> list[str]:
        """Put dead letters back on the ticks stream as new entries (same batch), each in
        one transaction with its removal; the new entry ids, in order."""

        async def unit() -> list[str]:
            replayed = []
            for dead_id in dead_ids:
                entries = await self.client.xrange(self.names.dead, dead_id, dead_id, 1)
                if not entries:
                    continue
                async with self.client.pipeline(transaction=True) as pipe:
                    pipe.xadd(self.names.ticks, {"b": entries[0][1][b"b"]})
                    pipe.incr(self.names.enqueued)
                    pipe.xdel(self.names.dead, dead_id)
                    new_id, _, _ = await pipe.execute()
                replayed.append(new_id.decode())
            return replayed

        return await self._bridge(unit)

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
                pipe.xlen(self.names.dead)
                enq, done, failed, pending, dead = await pipe.execute(raise_on_error=False)
            in_flight = pending["pending"] if isinstance(pending, dict) else 0
            enq, done = int(enq or 0), int(done or 0)
            dead = dead if isinstance(dead, int) else 0
            return {
                "pending": max(enq - done - in_flight - dead, 0),
                "inFlight": in_flight,
                "completed": done,
                "failed": int(failed or 0),
                "dead": dead,
            }

        return await self._bridge(unit)

    async def run_script(
        self, script: Any, keys: list[str], args: list[Any], *, timeout_s: float | None = None
    ) -> Any:
        """Run a Lua script registered with `self.client.register_script`."""
        return await self._bridge(script, keys, args, timeout_s=timeout_s)

    # --- the updates stream ---------------------------------------------------------------

    async def publish_updates(self, batch: list[tuple[str, list[bytes]]], maxlen: int) -> None:
        """Every (symbol, event data) of `batch` onto the updates stream, in order, in one
        round trip."""

        async def unit() -> Any:
            async with self.client.pipeline(transaction=False) as pipe:
                for symbol, payloads in batch:
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
        reply = await self._bridge(
            self.client.xread,
            {self.names.updates: after},
            count,
            block_ms,
            timeout_s=self.timeout_s + block_ms / 1000,
        )
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


# Acknowledge a pending entry and, only if it was pending, append it to the dead letters
# (and count it): one atomic step, so two deliveries of the same entry move it once.
DEAD_LETTER_SCRIPT = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'b', ARGV[3], 'entry', ARGV[2], 'error', ARGV[4],
           'refusals', ARGV[5], 'at', ARGV[6])
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('INCR', KEYS[4])
return 1
"""

# The longest a blocking read (XREAD/XREADGROUP BLOCK) waits on the server; the client's
# socket timeout must exceed it.
MAX_BLOCK_S = 1.0


@asynccontextmanager
async def open_redis(
    url: str, names: StreamNames, *, timeout_s: float = 2.0
) -> AsyncIterator[RedisLink]:
    """A client (inside the process's trio-asyncio loop); connections are made on use. Every
    call has a deadline of `timeout_s` (plus its block time); the socket timeout behind it
    frees a connection whose server went silent."""
    client = aioredis.Redis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s + MAX_BLOCK_S,
        health_check_interval=15,
        retry_on_timeout=False,
    )
    try:
        yield RedisLink(client, names, timeout_s)
    finally:
        with trio.CancelScope(shield=True):
            try:
                await call_aio(client.aclose, timeout_s=2)
            except (BridgeTimeout, *UNAVAILABLE):
                pass  # a Redis that does not answer is not waited for
