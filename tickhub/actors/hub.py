"""The broadcast hub: a topic per symbol, a retained window of recent events for resume, and
the subscribers (one per SSE connection) it feeds without ever waiting on them.

Each event is encoded once, as its SSE frame, and shared by every subscriber. Event ids grow
monotonically; in one process they start from the wall clock in microseconds, so ids issued
after a restart are larger than any issued before it, and a `Last-Event-ID` from a previous
run falls outside the window and gets `event: reset` instead of a silent gap.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

import attrs
import orjson

from tickhub import metrics
from tickhub.actors.subscriber import RESET_FRAME, Subscriber


@attrs.frozen
class Event:
    id: int
    symbol: str
    frame: bytes


def sse_frame(event_id: int, data: bytes) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (event_id, data)


@attrs.define(eq=False)
class Hub:
    retain: int = 10_000
    client_buffer: int = 256
    next_id: int = attrs.field(factory=lambda: int(time.time() * 1_000_000))
    # How far ahead of our newest id a resume id may be: a gateway a moment behind another
    # serves what comes after it. 0 in one process, where a future id is from another run.
    future_tolerance: int = 0
    # Events kept for resume; the oldest falls out when the window is full.
    _window: deque[Event] = attrs.field(init=False)
    _evicted_upto: int = attrs.field(init=False)
    _by_symbol: dict[str, set[Subscriber]] = attrs.field(factory=dict)
    _everything: set[Subscriber] = attrs.field(factory=set)
    closed: bool = False

    def __attrs_post_init__(self) -> None:
        self._window = deque(maxlen=self.retain)
        self._evicted_upto = self.next_id - 1

    @property
    def clients(self) -> int:
        return len(self._everything) + sum(len(s) for s in self._by_symbol.values())

    @property
    def last_id(self) -> int:
        return self.next_id - 1

    def publish(self, symbol: str, payloads: Iterable[bytes]) -> None:
        """Publish already-encoded event data for one symbol, in order."""
        for data in payloads:
            self.publish_event(self.next_id, symbol, data)

    def publish_event(self, event_id: int, symbol: str, data: bytes) -> None:
        """Publish with an id given by the producer (ids must grow)."""
        event = Event(event_id, symbol, sse_frame(event_id, data))
        self.next_id = event_id + 1
        if len(self._window) == self._window.maxlen:
            self._evicted_upto = self._window[0].id
        self._window.append(event)
        metrics.HUB_EVENTS.inc()
        for sub in self._everything:
            if event_id > sub.after:
                sub.deliver(event.frame)
        for sub in self._by_symbol.get(symbol, ()):
            if event_id > sub.after:
                sub.deliver(event.frame)

    def subscribe(self, symbols: frozenset[str] | None, last_id: int | None = None) -> Subscriber:
        """A new subscriber; with `last_id`, preloaded with every retained event after it, or
        marked for reset when events after it were already evicted."""
        sub = Subscriber(symbols, self.client_buffer)
        if last_id is not None:
            if last_id < self._evicted_upto or last_id > self.last_id + self.future_tolerance:
                sub.reset = True
            elif last_id > self.last_id:
                sub.after = last_id  # we have not seen it yet: serve what comes after it
            else:
                sub.preload(
                    e.frame
                    for e in self._window
                    if e.id > last_id and (symbols is None or e.symbol in symbols)
                )
        if symbols is None:
            self._everything.add(sub)
        else:
            for symbol in symbols:
                self._by_symbol.setdefault(symbol, set()).add(sub)
        metrics.SSE_CLIENTS.inc()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub.symbols is None:
            self._everything.discard(sub)
        else:
            for symbol in sub.symbols:
                subs = self._by_symbol.get(symbol)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del self._by_symbol[symbol]
        metrics.SSE_CLIENTS.dec()

    def mark_start(self, evicted_upto: int) -> None:
        """Ids up to `evicted_upto` are not in the window (a gateway's view of the stream)."""
        self._evicted_upto = evicted_upto

    def reset_all(self) -> None:
        """Events may have been missed (the updates stream moved on while we were away):
        every client reloads, and no resume reaches back across the gap."""
        self._evicted_upto = self.last_id
        self._window.clear()
        for sub in [*self._everything, *(s for subs in self._by_symbol.values() for s in subs)]:
            sub.deliver(RESET_FRAME)

    def close(self) -> None:
        """End every stream (graceful stop): subscribers finish what they have and return."""
        self.closed = True
        for sub in [*self._everything, *(s for subs in self._by_symbol.values() for s in subs)]:
            sub.close()


@attrs.frozen
class HubPublisher:
    """The aggregators' publisher in one process: straight into the hub."""

    hub: Hub

    async def publish(self, symbol: str, payloads: list[bytes]) -> None:
        self.hub.publish(symbol, payloads)


class NullPublisher:
    """Where live events go in a process without a gateway or Redis link."""

    async def publish(self, symbol: str, payloads: list[bytes]) -> None:
        return None


def hello_frame(connected_ms: int, symbols: frozenset[str] | None) -> bytes:
    filt = None if symbols is None else ",".join(sorted(symbols))
    data = orjson.dumps({"ok": True, "connectedAt": connected_ms, "filterSymbol": filt})
    return b"retry: 3000\nevent: hello\ndata: %s\n\n" % data
