"""The feeder actor: synthetic ticks at RPS, posted to the api in batches, with bounded memory.

Two tasks joined by one bounded channel:

- The generator schedules by deadlines, never by sleeping per tick: it sleeps until the next
  tick is due (at most 200/s; above that, the next 5 ms worth of ticks), then makes
  `round(elapsed * RPS) - sent` ticks in one columnar batch. The count depends only on the
  clock, so wake-up latency never changes the rate.
- The poster sends batches of at most BATCH_SIZE ticks: a full batch at once, and whatever is
  pending when the flush timer fires. The timer runs FLUSH_MS from the previous batch,
  shortened by a random fraction of at most JITTER (so several feeders drift apart rather
  than post in step); no tick therefore waits longer than FLUSH_MS to be sent.

While the api is down the poster keeps its batch and retries it with capped backoff. Ticks
pile up in the channel up to FEEDER_BUFFER_MAX; then the generator's send blocks: generation
pauses, is logged, and counted in `tickhub_feeder_backpressure_seconds_total`. Ticks that fell
due during a pause are skipped, not sent in a burst afterwards. A batch the api rejects (4xx)
is logged and dropped, except 401/403/404: a wrong key or URL fails every batch, so the actor
fails and the supervisor sees it.

Generation starts once the symbols are upserted (retried until the api answers). `stop()`, or
cancelling `run`, ends generation and delivers what was generated within `stop_flush_s`.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import attrs
import structlog
import trio

from tickhub.clock import wall_s
from tickhub.config import FeederSettings
from tickhub.feeder import metrics
from tickhub.feeder.client import (
    DeliveryError,
    RejectedError,
    RetryPolicy,
    TickPoster,
    open_webhook_client,
)
from tickhub.feeder.synthetic import TickGenerator

log = structlog.get_logger("feeder", actor="feeder")

# Above 200 ticks/s the generator wakes every 5 ms rather than per tick: fewer, larger batches
# for the columnar generator, and 5 ms is far below any useful FLUSH_MS.
_WAKE_S = 0.005
# Statuses that mean the feeder is misconfigured (key, URL), not that one batch is bad.
_FATAL_STATUSES = frozenset({401, 403, 404})

Tick = dict[str, Any]


class Health(Protocol):
    """The supervisor's health record of this actor."""

    def touch(self) -> None: ...


@attrs.define
class Feeder:
    """The synthetic feeder actor. `client=None` opens a WebhookClient on ORCHESTRATOR_BASE_URL."""

    settings: FeederSettings
    health: Health | None = None
    client: TickPoster | None = None
    # Wall-clock time for the ticks' `ts`; scheduling uses trio's clock.
    clock: Callable[[], float] = wall_s
    run_id: str | None = None
    # How long a stopping feeder may spend delivering the ticks it holds (one round of the
    # client's retries; the api may be stopping too).
    stop_flush_s: float = 2.0
    _retry: RetryPolicy = attrs.field(init=False)
    _jitter_rng: random.Random = attrs.field(init=False)
    _last_ok: float | None = attrs.field(init=False, default=None)
    _failing: bool = attrs.field(init=False, default=False)
    _generated: int = attrs.field(init=False, default=0)
    _settled: int = attrs.field(init=False, default=0)
    _generating: trio.CancelScope = attrs.field(init=False, factory=trio.CancelScope)
    _posting: trio.CancelScope = attrs.field(init=False, factory=trio.CancelScope)
    _log: Any = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._log = log.bind(source=self.settings.source)
        self._retry = RetryPolicy.from_settings(self.settings)
        seed = self.settings.seed
        self._jitter_rng = random.Random(f"{seed}:jitter") if seed is not None else random.Random()

    @property
    def ready_window_s(self) -> float:
        """How recent the last acknowledged post must be: a few flush periods (or tick
        intervals, at very low RPS), and never under 10 s."""
        return max(10.0, 3 * (self.settings.flush_ms / 1000 + 1 / self.settings.rps))

    @property
    def _step(self) -> int:
        """Ticks per generator wake-up."""
        return max(1, round(self.settings.rps * _WAKE_S))

    @property
    def generated(self) -> int:
        """Ticks handed to the poster so far."""
        return self._generated

    @property
    def buffered(self) -> int:
        """Ticks handed to the poster and not yet acknowledged (or dropped)."""
        return self._generated - self._settled

    def stop(self) -> None:
        """Stop generating; `run` returns once the ticks already made are delivered, or after
        `stop_flush_s` if the api does not take them. Cancelling `run` does the same."""
        self._generating.cancel()
        self._posting.deadline = trio.current_time() + self.stop_flush_s

    def ready(self) -> bool:
        """Ready when the last post succeeded, within `ready_window_s` (ops readiness)."""
        return (
            not self._failing
            and self._last_ok is not None
            and trio.current_time() - self._last_ok <= self.ready_window_s
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        generator = TickGenerator.from_settings(self.settings, run_id=self.run_id)
        # Between generator and poster. The generator sends messages of at most `chunk` ticks,
        # and in steady state of exactly that (one wake's worth, or BATCH_SIZE if smaller), so
        # this many messages hold FEEDER_BUFFER_MAX ticks and never more: the outage a feeder
        # rides out before it pauses generation (backpressure) instead of growing memory.
        chunk = min(self.settings.batch_size, self._step)
        capacity = max(1, self.settings.buffer_max // chunk)
        tx, rx = trio.open_memory_channel[list[Tick]](capacity)
        async with self._open_client() as client, tx, rx:
            task_status.started()
            self._log.info("feeder.start", symbols=generator.symbols, rps=self.settings.rps)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._run_poster, rx, client)
                nursery.start_soon(self._run_generator, tx, client, generator, chunk)

    @asynccontextmanager
    async def _open_client(self) -> AsyncIterator[TickPoster]:
        if self.client is not None:
            yield self.client
            return
        async with open_webhook_client(
            self.settings.base_url, self.settings.api_key, retry=self._retry
        ) as client:
            yield client

    async def _upsert_symbols(self, client: TickPoster, symbols: tuple[str, ...]) -> None:
        retry = 0
        while True:
            try:
                await client.upsert_symbols(symbols)
            except DeliveryError as exc:
                wait = self._retry.delay(retry)
                retry += 1
                self._log.warning(
                    "feeder.api_unavailable", error=str(exc), retry_in_s=round(wait, 3)
                )
                await trio.sleep(wait)
                continue
            except RejectedError as exc:
                if exc.status in _FATAL_STATUSES:
                    raise
                # The api registers a symbol on its first tick anyway; ticks can go ahead.
                self._log.error("feeder.symbols_rejected", status=exc.status)
            else:
                self._log.info("feeder.symbols_upserted", symbols=symbols)
            return

    async def _run_generator(
        self,
        tx: trio.MemorySendChannel[list[Tick]],
        client: TickPoster,
        generator: TickGenerator,
        chunk: int,
    ) -> None:
        rps, step = self.settings.rps, self._step
        sent = 0
        # stop() cancels generation; closing tx then tells the poster to flush and finish.
        with tx, self._generating:
            await self._upsert_symbols(client, generator.symbols)
            start = trio.current_time()
            while True:
                want = sent + step
                await trio.sleep_until(start + (want - 0.5) / rps)
                # We slept until `want` ticks were due, so at least that many are, whatever
                # float rounding says; more if we woke late.
                due = max(want, math.floor((trio.current_time() - start) * rps + 0.5))
                items = generator.batch(due - sent, self.clock(), 1 / rps)
                sent = due
                # Ticks that fell due while generation was blocked are skipped, not made up.
                start += await self._hand_over(tx, items, chunk)

    async def _hand_over(
        self, tx: trio.MemorySendChannel[list[Tick]], items: list[Tick], chunk: int
    ) -> float:
        """Send `items` to the poster in messages of at most `chunk`; the seconds blocked."""
        metrics.TICKS_GENERATED.inc(len(items))
        if self.health is not None:
            self.health.touch()
        blocked_at: float | None = None
        for i in range(0, len(items), chunk):
            message = items[i : i + chunk]
            try:
                tx.send_nowait(message)
            except trio.WouldBlock:
                if blocked_at is None:
                    blocked_at = trio.current_time()
                    self._log.warning("feeder.backpressure", buffered=self.buffered)
                await tx.send(message)
            self._generated += len(message)
        metrics.BUFFERED_TICKS.set(self.buffered)
        if blocked_at is None:
            return 0.0
        paused = trio.current_time() - blocked_at
        metrics.BACKPRESSURE_SECONDS.inc(paused)
        self._log.info("feeder.backpressure_end", paused_s=round(paused, 3))
        return paused

    def _flush_interval(self) -> float:
        return (
            self.settings.flush_ms / 1000 * (1 - self.settings.jitter * self._jitter_rng.random())
        )

    async def _run_poster(
        self, rx: trio.MemoryReceiveChannel[list[Tick]], client: TickPoster
    ) -> None:
        pending: list[Tick] = []
        size = self.settings.batch_size
        try:
            with self._posting:  # stop() leaves it stop_flush_s to finish
                try:
                    await self._post_loop(rx, client, pending)
                except trio.EndOfChannel:  # stopped: the generator is done
                    while pending:
                        await self._deliver(client, pending, size)
        except trio.Cancelled:
            # Cancelled: deliver what was generated all the same, within a bound.
            with trio.move_on_after(self.stop_flush_s, shield=True):
                pending.extend(_drain(rx))
                while pending:
                    await self._deliver(client, pending, size)
            raise
        finally:
            # Synthetic ticks the api did not take in time are given up, not kept.
            pending.extend(_drain(rx))
            if pending:
                self._log.warning("feeder.stop_undelivered", ticks=len(pending))

    async def _post_loop(
        self, rx: trio.MemoryReceiveChannel[list[Tick]], client: TickPoster, pending: list[Tick]
    ) -> None:
        size = self.settings.batch_size
        deadline = trio.current_time() + self._flush_interval()
        while True:
            with trio.move_on_at(deadline):
                while len(pending) < size:
                    pending.extend(await rx.receive())
            while len(pending) >= size:
                await self._deliver(client, pending, size)
                deadline = trio.current_time() + self._flush_interval()
            if trio.current_time() >= deadline:
                if pending:
                    await self._deliver(client, pending, size)
                deadline = trio.current_time() + self._flush_interval()

    async def _deliver(self, client: TickPoster, pending: list[Tick], size: int) -> None:
        """Post the first `size` pending ticks until the api takes them, then drop them from
        `pending`; a cancelled delivery leaves them there for the stop flush."""
        batch = pending[:size]
        retry = 0
        while True:
            try:
                await client.post_ticks(self.settings.source, batch)
            except DeliveryError as exc:
                self._failing = True
                wait = self._retry.delay(retry)
                retry += 1
                self._log.warning(
                    "feeder.undelivered",
                    error=str(exc),
                    ticks=len(batch),
                    buffered=self.buffered,
                    retry_in_s=round(wait, 3),
                )
                await trio.sleep(wait)
                continue
            except RejectedError as exc:
                self._failing = True
                if exc.status in _FATAL_STATUSES:
                    raise
                self._log.error("feeder.batch_dropped", status=exc.status, ticks=len(batch))
            else:
                self._failing = False
                self._last_ok = trio.current_time()
                if self.health is not None:
                    self.health.touch()
            break
        del pending[: len(batch)]
        self._settled += len(batch)
        metrics.BUFFERED_TICKS.set(self.buffered)


def _drain(rx: trio.MemoryReceiveChannel[list[Tick]]) -> list[Tick]:
    """The ticks left in the channel, without waiting."""
    out: list[Tick] = []
    while True:
        try:
            out.extend(rx.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return out
