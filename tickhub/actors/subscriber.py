"""A subscriber: one SSE connection's bounded buffer of frames, and how its bytes leave.

The hub calls `deliver()` (synchronous, never blocks). When the buffer is full the oldest
frame is dropped and counted: a slow client loses old events (its ids show the gap) instead
of slowing the hub, the pipeline or the other clients. After a drop the next chunk starts
with `event: reset` (reason "overflow") so the client reloads.

How the frames leave depends on the connection:
- A connection whose socket the server owns has a `Sink` (`http.stream`): the hub's flush
  hands it the whole buffer as one chunk (`take()`), which it writes at once while the
  kernel has room — no task wakes per client — and drains later only when it had none.
- Otherwise (a request served by the HTTP framework) `frames()` yields the buffer as one
  chunk per wake-up for the framework to write.
Either way a busy stream costs one write per flush, not one per event.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Protocol

import attrs
import trio

from tickhub import clock, metrics
from tickhub.wire import OVERFLOW_FRAME, RESET_FRAME, keepalive_frame


class Sink(Protocol):
    """Where an owned connection's bytes go (`http.stream.SocketSink`)."""

    def flush(self, subscriber: Subscriber) -> None:
        """Write out what the subscriber holds, now if the socket has room, else later."""
        ...

    def end(self) -> None:
        """The stream is over (graceful stop): finish the response and close."""
        ...


@attrs.define(eq=False)
class Subscriber:
    symbols: frozenset[str] | None
    capacity: int
    # Conflated stream: at most one event per symbol per this many seconds (the hub's
    # conflator for that interval feeds it); None: every event.
    conflate_s: float | None = None
    buffer: deque[bytes] = attrs.field(init=False)
    after: int = -1  # deliver only events with a larger id (resume ahead of this hub)
    dropped: int = 0
    reported_drops: int = 0
    reset: bool = False
    closed: bool = False
    sink: Sink | None = None
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

    def take(self) -> bytes:
        """Everything buffered as one chunk (an overflow reset first, after drops); empty
        when there is nothing."""
        if not self.buffer:
            return b""
        count = len(self.buffer)
        chunk = self.buffer[0] if count == 1 else b"".join(self.buffer)
        self.buffer.clear()
        if self.dropped > self.reported_drops:
            self.reported_drops = self.dropped
            chunk = OVERFLOW_FRAME + chunk
        metrics.SSE_EVENTS_SENT.inc(count)
        return chunk

    def first_chunk(self, hello: bytes) -> bytes:
        """The stream's opening: hello (and the reset of a stale resume)."""
        return hello + (RESET_FRAME if self.reset else b"")

    def close(self) -> None:
        self.closed = True
        self._wake.set()
        if self.sink is not None:
            self.sink.end()

    async def frames(self, hello: bytes, keepalive_s: float) -> AsyncIterator[bytes]:
        """The byte chunks of a connection served by the HTTP framework: hello, (reset),
        events, keepalive pings."""
        yield self.first_chunk(hello)
        while True:
            if not self.buffer:
                if self.closed:
                    return
                with trio.move_on_after(keepalive_s) as idle:
                    await self._wake.wait()
                self._wake = trio.Event()
                if idle.cancelled_caught:
                    yield keepalive_frame(clock.wall_ms())
                    continue
            chunk = self.take()
            if chunk:
                yield chunk
