"""The actors at the Redis edges when roles run in separate processes.

- `StreamConsumer` (consumer role): reads the ticks stream through the consumer group into
  the same pipeline as one process, and acknowledges an entry only once the flush holding it
  committed. Entries whose flush failed stay pending and are retried; entries pending on a
  consumer that died are claimed after `claim_idle_s`. Redelivery never double counts: the
  writer's insert is idempotent. An entry whose data the store refuses is retried at once
  (with a short backoff) and, refused `dead_letter_after` times, moved to the dead letters
  and acknowledged: it fails alone and never holds the stream back. An entry that is not a
  ticks batch at all goes there on first sight.
- `RedisPublisher` (consumer role): the aggregators' live events onto the updates stream,
  every symbol waiting in one round trip.
- `UpdatesRelay` (gateway role): the updates stream into the local hub, with the stream's
  global ids. It reconnects with backoff and reads on from the last id it saw; if Redis
  trimmed past that id meanwhile, its clients get `event: reset` instead of a silent gap.
"""

from __future__ import annotations

from typing import Any

import attrs
import structlog
import trio

from tickhub import metrics
from tickhub.actors.hub import Hub
from tickhub.actors.pipeline import Overloaded, Pipeline
from tickhub.actors.supervisor import ActorHealth
from tickhub.backoff import Backoff
from tickhub.messages import Rejected
from tickhub.redis.link import RedisLink, RedisUnavailable, decode_batch, stream_id

log = structlog.get_logger(actor="relay")

# Entries read per XREADGROUP; the pipeline's admission bounds what is in flight.
READ_COUNT = 50
# Entries handed to the pipeline and waiting for their commit before the ack.
ACK_BUFFER = 256
BLOCK_MS = 1000
# Pause before an entry whose data was refused is tried again, times its refusals so far.
REFUSED_RETRY_S = 0.5


@attrs.define
class StreamConsumer:
    link: RedisLink
    pipeline: Pipeline
    health: ActorHealth
    name: str
    # Set to stop reading (graceful stop); shared by every incarnation. What was read is
    # still committed and acknowledged before the consumer returns.
    stopping: trio.Event
    claim_idle_s: float = 30.0
    dead_letter_after: int = 5
    # Entries handed to the pipeline (or waiting to be tried again) and not yet settled: a
    # claim or re-read that delivers one of them again is skipped, not stored twice over.
    _in_flight: set[str] = attrs.field(factory=set)
    # Refused entries waiting to be tried again: (due at, entry id, payload).
    _retries: list[tuple[float, str, bytes]] = attrs.field(factory=list)
    _backoff: Backoff = attrs.field(factory=Backoff)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await self.link.ensure_group()
        acks_tx, acks_rx = trio.open_memory_channel(ACK_BUFFER)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._acker, acks_rx)
            task_status.started()
            async with acks_tx:
                with trio.CancelScope() as reading:
                    nursery.start_soon(self._cancel_on_stop, reading)
                    await self._read_through_outages(acks_tx)

    async def _cancel_on_stop(self, scope: trio.CancelScope) -> None:
        await self.stopping.wait()
        scope.cancel()

    async def _read_through_outages(self, acks_tx: trio.MemorySendChannel) -> None:
        """Read; while Redis is unreachable, wait with backoff (an outage is not a crash)."""
        while True:
            try:
                await self._read(acks_tx)
            except RedisUnavailable as exc:
                delay = self._backoff.next()
                log.warning("ticks stream unreachable; retrying", error=str(exc), retry_in_s=delay)
                await trio.sleep(delay)

    async def _read(self, acks_tx: trio.MemorySendChannel) -> None:
        # Our own pending entries first (we restarted mid-batch), then new ones; now and then
        # take over entries a dead consumer left pending.
        for entry in await self.link.read_group(self.name, "0", 10_000, None):
            await self._submit(entry, acks_tx)
        next_claim = trio.current_time() + self.claim_idle_s / 2
        while True:
            if trio.current_time() >= next_claim:
                await self._claim(acks_tx)
                next_claim = trio.current_time() + self.claim_idle_s / 2
            block = BLOCK_MS if not self._retries else min(BLOCK_MS, 100)
            entries = await self.link.read_group(self.name, ">", READ_COUNT, block)
            for entry in entries:
                await self._submit(entry, acks_tx)
            await self._retry_due(acks_tx)
            self._backoff.reset()
            self.health.touch()

    async def _retry_due(self, acks_tx: trio.MemorySendChannel) -> None:
        now = trio.current_time()
        due = [(eid, payload) for at, eid, payload in self._retries if at <= now]
        self._retries = [r for r in self._retries if r[0] > now]
        for entry in due:
            self._in_flight.discard(entry[0])
            await self._submit(entry, acks_tx)

    async def _claim(self, acks_tx: trio.MemorySendChannel) -> None:
        """Take over idle pending entries (a dead consumer's, or ours whose flush failed),
        page after page, so a backlog after an outage drains at once."""
        idle_ms = int(self.claim_idle_s * 1000)
        while True:
            claimed = await self.link.claim(self.name, idle_ms, READ_COUNT)
            for entry in claimed:
                await self._submit(entry, acks_tx)
            if len(claimed) < READ_COUNT:
                return

    async def _submit(self, entry: tuple[str, bytes], acks_tx: trio.MemorySendChannel) -> None:
        entry_id, payload = entry
        if entry_id in self._in_flight:
            return  # delivered again while we still hold it
        try:
            parts, items = decode_batch(payload)
        except ValueError as exc:
            await self._dead_letter(entry_id, payload, str(exc), 1)
            return
        self._in_flight.add(entry_id)
        while True:
            try:
                receipt = await self.pipeline.submit(parts, items)
                break
            except Overloaded:
                continue  # the pipeline is full: keep waiting, the entry stays unacknowledged
            except BaseException:
                self._in_flight.discard(entry_id)
                raise
        await acks_tx.send((entry_id, payload, receipt))

    async def _acker(self, acks_rx: trio.MemoryReceiveChannel) -> None:
        async with acks_rx:
            async for first in acks_rx:
                ids = []
                batch = [first]
                while True:  # acknowledge everything already committed in one round trip
                    try:
                        batch.append(acks_rx.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                for eid, payload, rec in batch:
                    await rec.done.wait()
                    if isinstance(rec.error, Rejected):
                        await self._refused(eid, payload, rec.error)
                        continue  # held for its retry, or gone to the dead letters
                    self._in_flight.discard(eid)
                    if not rec.failed:
                        ids.append(eid)
                    # Otherwise it stays pending: claimed again after claim_idle_s.
                await self._ack(ids)

    async def _refused(self, entry_id: str, payload: bytes, error: Exception) -> None:
        """The store refused this entry's data: try again soon, or give it up."""
        try:
            refusals = await self.link.refused(entry_id)
        except RedisUnavailable:
            self._in_flight.discard(entry_id)
            return  # still pending: it comes back through a claim
        if refusals >= self.dead_letter_after:
            self._in_flight.discard(entry_id)
            await self._dead_letter(entry_id, payload, str(error), refusals)
        else:
            due = trio.current_time() + REFUSED_RETRY_S * refusals
            self._retries.append((due, entry_id, payload))

    async def _dead_letter(self, entry_id: str, payload: bytes, error: str, refusals: int) -> None:
        try:
            moved = await self.link.dead_letter(entry_id, payload, error, refusals)
        except RedisUnavailable as exc:
            log.warning("dead letter not written; the entry stays pending", error=str(exc))
            return
        if moved:
            metrics.DEAD_LETTERS.inc()
            log.error("entry moved to the dead letters", entry=entry_id, error=error)

    async def _ack(self, ids: list[str]) -> None:
        backoff = Backoff()
        while True:
            try:
                await self.link.ack(ids)
                return
            except RedisUnavailable as exc:
                # Not acknowledging is safe (redelivery is idempotent); keep trying a while.
                log.warning("ack failed; retrying", error=str(exc), entries=len(ids))
                await trio.sleep(backoff.next())


@attrs.define
class StreamKeeper:
    """Now and then: trims the ticks stream below its oldest unacknowledged entry, and
    reports the queue (batches waiting, in flight, done, failed) as a metric."""

    link: RedisLink
    health: ActorHealth
    every_s: float = 5.0

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await self.link.trim_acknowledged()
                for state, value in (await self.link.queue_stats()).items():
                    metrics.QUEUE_BATCHES.labels(state).set(value)
                self.health.touch()
            except RedisUnavailable as exc:
                log.warning("queue upkeep skipped", error=str(exc))
            await trio.sleep(self.every_s)


@attrs.define(eq=False)
class RedisPublisher:
    """Where the consumer's aggregators publish: the updates stream. The aggregators of one
    flush publish within moments of each other, so whatever is waiting goes out together,
    one pipeline for every symbol (group commit, for Redis): a flush of 100 symbols costs one
    round trip, not 100. Each publish returns once its events are on the stream, so a
    symbol's events keep their order. The state outlives an incarnation of `run`: what was
    waiting when it failed goes out first when it restarts."""

    link: RedisLink
    maxlen: int
    _waiting: list[tuple[str, list[bytes], trio.Event]] = attrs.field(factory=list)
    _kick: trio.Event = attrs.field(factory=trio.Event)

    def wants(self, symbol: str) -> bool:
        return True  # the gateways' subscribers are theirs to know, not the consumer's

    def skipped(self, symbol: str) -> None:
        return None  # never: every symbol is wanted

    async def publish(self, symbol: str, payloads: list[bytes]) -> None:
        if not payloads:
            return
        landed = trio.Event()
        self._waiting.append((symbol, payloads, landed))
        self._kick.set()
        await landed.wait()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        backoff = Backoff()
        while True:
            if not self._waiting:
                await self._kick.wait()
            self._kick = trio.Event()
            batch, self._waiting = self._waiting, []
            try:
                # Retried until it lands: dropping them would be a silent gap for every
                # gateway. Meanwhile the aggregators wait; backpressure reaches ingest.
                while True:
                    try:
                        await self.link.publish_updates([(s, p) for s, p, _ in batch], self.maxlen)
                        break
                    except RedisUnavailable as exc:
                        log.warning("updates stream unreachable; retrying", error=str(exc))
                        await trio.sleep(backoff.next())
            except BaseException:
                self._waiting[:0] = batch  # for the next incarnation, in order
                raise
            backoff.reset()
            for _, _, landed in batch:
                landed.set()


@attrs.define
class UpdatesRelay:
    link: RedisLink
    hub: Hub
    health: ActorHealth
    last_id: int | None = None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await self._preload()
        task_status.started()
        backoff = Backoff()
        while True:
            try:
                await self._follow(backoff)
            except RedisUnavailable as exc:
                delay = backoff.next()
                log.warning(
                    "updates stream unreachable; reconnecting", error=str(exc), retry_in_s=delay
                )
                await trio.sleep(delay)
                if await self._missed_some():
                    self.hub.reset_all()

    async def _preload(self) -> None:
        """Fill the resume window from the stream, so a restarted gateway can resume too."""
        try:
            recent = await self.link.recent_updates(self.hub.retain)
        except RedisUnavailable:
            recent = []
        self.hub.next_id = recent[0][0] if recent else 0
        self.hub.mark_start(self.hub.next_id - 1)
        for eid, symbol, data in recent:
            self.hub.publish_event(eid, symbol, data)
            self.last_id = eid

    async def _follow(self, backoff: Backoff) -> None:
        after = "$" if self.last_id is None else stream_id(self.last_id)
        while True:
            events = await self.link.read_updates(after, 1000, BLOCK_MS)
            backoff.reset()
            for eid, symbol, data in events:
                self.hub.publish_event(eid, symbol, data)
                self.last_id = eid
            if events:
                after = stream_id(self.last_id)
            elif self.last_id is None:
                after = "$"
            self.health.touch()

    async def _missed_some(self) -> bool:
        """True when updates after our last id were trimmed while we were away."""
        try:
            oldest = await self.link.oldest_update()
        except RedisUnavailable:
            return False
        # Ids are not contiguous: only an oldest entry newer than ours proves nothing was lost.
        return self.last_id is not None and oldest is not None and oldest > self.last_id
