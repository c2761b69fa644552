"""A subscriber: one SSE connection's bounded buffer and the loop that writes it out.

The hub calls `deliver()` (synchronous, never blocks). When the buffer is full the oldest
frame is dropped and counted: a slow client loses old events (its ids show the gap) instead
of slowing the hub, the pipeline or the other clients. After a
drop the next chunk starts with `event: reset` (reason "overflow") so the client reloads.
`frames()` yields everything buffered as one chunk per wake-up, so a busy stream costs one
socket write per batch, not per event.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Iterable

import attrs
import trio

from tickhub import metrics

RESET_FRAME = b'event: reset\ndata: {"reason":"stale"}\n\n'
# After an overflow the client missed events it cannot see under a symbol filter: it reloads.
OVERFLOW_FRAME = b'event: reset\ndata: {"reason":"overflow"}\n\n'


def keepalive_frame(now_ms: int) -> bytes:
    """The `: ping` comment of the contract, plus an `event: ping` that a browser's
    EventSource can observe (it never sees comments) to tell a quiet stream from a dead one."""
    return b": ping %d\nevent: ping\ndata: %d\n\n" % (now_ms, now_ms)


@attrs.define(eq=False)
class Subscriber:
    symbols: frozenset[str] | None
    capacity: int
    buffer: deque[bytes] = attrs.field(init=False)
    after: int = -1  # deliver only events with a larger id (resume ahead of this hub)
    dropped: int = 0
    reported_drops: int = 0
    sent: int = 0
    reset: bool = False
    closed: bool = False
    _wake: trio.Event = attrs.field(factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        self.buffer = deque(maxlen=self.capacity)

    def deliver(self, frame: bytes) -> None:
        if len(self.buffer) == self.capacity:
            self.dropped += 1
            metrics.SSE_EVENTS_DROPPED.inc()
        self.buffer.append(frame)
        self._wake.set()

    def preload(self, frames: Iterable[bytes]) -> None:
        for frame in frames:
            self.deliver(frame)

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def frames(self, hello: bytes, keepalive_s: float) -> AsyncIterator[bytes]:
        """The byte chunks of this connection: hello, (reset), events, keepalive pings."""
        yield hello + (RESET_FRAME if self.reset else b"")
        while True:
            if not self.buffer:
                if self.closed:
                    return
                with trio.move_on_after(keepalive_s) as idle:
                    await self._wake.wait()
                self._wake = trio.Event()
                if idle.cancelled_caught:
                    yield keepalive_frame(int(time.time() * 1000))
                    continue
            if self.buffer:
                chunk = b"".join(self.buffer)
                if self.dropped > self.reported_drops:
                    self.reported_drops = self.dropped
                    chunk = OVERFLOW_FRAME + chunk
                count = len(self.buffer)
                self.buffer.clear()
                self.sent += count
                metrics.SSE_EVENTS_SENT.inc(count)
                yield chunk
