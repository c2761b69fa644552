"""The broadcast hub: a topic per symbol, a retained window of recent events for resume, and
the subscribers (one per SSE connection) it feeds without ever waiting on them.

Each event is encoded once, as its SSE frame, and shared by every subscriber. Publishing is
synchronous: frames go into the subscribers' bounded buffers, and the connections whose
socket the server owns are marked for the hub's flush. The hub's one task (`run`) then
writes each of them once — a whole flush of the writer, every symbol of it, in one write —
straight to its socket while the kernel has room (Centrifuge's enqueue-then-batch and
uWebSockets' corking work the same way). No task wakes per client.

Conflated subscribers (`conflate=MS`) get at most one event per symbol per interval: the
latest tick with its candle and SMA10, counting the ticks it stands for. One conflator per
interval keeps, per symbol, the latest event not yet sent and when the last one went; the
first event after a quiet interval goes at once, later ones when the interval is up. Its
frames are encoded once and shared by every subscriber of that interval and symbol.

Event ids grow monotonically; in one process they start from the wall clock in
microseconds, so ids issued after a restart are larger than any issued before it, and a
`Last-Event-ID` from a previous run falls outside the window and gets `event: reset`
instead of a silent gap.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import trio

from tickhub import clock, metrics
from tickhub.actors.subscriber import Subscriber
from tickhub.wire import RESET_FRAME, conflated_frame, event_frame

# The longest the hub writes to sockets before it lets the other tasks run (one write is
# ~10 µs, so ~200 clients a slice).
FLUSH_SLICE_S = 0.002
# Conflated events handed out per pass of the hub: about as many connections as one slice
# writes (the rest of the symbols due go a pass later; see `Hub._send_due`).
CONFLATED_PASS_WRITES = 200
# Symbols whose unpublished ticks (`Hub.skipped`), or whose departed subscribers, the hub
# remembers for resume; beyond it the oldest is forgotten (soundly: see each), so memory stays
# bounded.
MAX_GAPS = 4096


@attrs.frozen
class Event:
    id: int
    symbol: str
    data: bytes
    frame: bytes


@attrs.define(eq=False)
class _Latest:
    """A symbol's state in one conflator."""

    event: Event | None = None  # the latest event not yet sent
    count: int = 0  # ticks since the last one sent
    scheduled: bool = False  # the end of its interval is in the heap


@attrs.define(eq=False)
class Conflator:
    """The conflated subscribers of one interval, and the per-symbol state they share."""

    interval_s: float
    by_symbol: dict[str, set[Subscriber]] = attrs.field(factory=dict)
    everything: set[Subscriber] = attrs.field(factory=set)
    _latest: dict[str, _Latest] = attrs.field(factory=dict)
    _due: list[tuple[float, str]] = attrs.field(factory=list)  # a heap of (due time, symbol)

    @property
    def clients(self) -> int:
        return len(self.everything) + sum(len(s) for s in self.by_symbol.values())

    def targets(self, symbol: str) -> Iterable[Subscriber]:
        yield from self.everything
        yield from self.by_symbol.get(symbol, ())

    def wants(self, symbol: str) -> bool:
        return bool(self.everything) or symbol in self.by_symbol

    def offer(self, event: Event, now: float) -> bytes | None:
        """Take an event; the frame to send at once (the first after a quiet interval, with
        the event's id), or None when it waits for its symbol's interval to end."""
        latest = self._latest.get(event.symbol)
        if latest is None:
            latest = self._latest[event.symbol] = _Latest()
        latest.event, latest.count = event, latest.count + 1
        if latest.scheduled:
            return None  # its interval is not over, or the hub is about to send it
        return self._emit(event.symbol, latest, now)

    def _emit(self, symbol: str, latest: _Latest, now: float) -> bytes:
        """The frame of the symbol's latest event; its next one goes an interval from now
        (then what came meanwhile is sent, or the symbol forgotten)."""
        event, count = latest.event, latest.count
        assert event is not None
        latest.event, latest.count = None, 0
        heapq.heappush(self._due, (now + self.interval_s, symbol))
        latest.scheduled = True
        return conflated_frame(event.id, event.data, count)

    @property
    def next_due(self) -> float:
        return self._due[0][0] if self._due else math.inf

    def next_waiting(self, now: float) -> str | None:
        """The symbol whose interval ends first, if it has ended and an event waits for it
        (a symbol due with none waiting is forgotten here: it was quiet a whole interval,
        and state is kept only for those trading lately)."""
        while self._due and self._due[0][0] <= now:
            symbol = self._due[0][1]
            latest = self._latest[symbol]
            if latest.event is not None:
                return symbol
            heapq.heappop(self._due)
            del self._latest[symbol]
        return None

    def pop_waiting(self, now: float) -> tuple[Event, bytes]:
        """The frame of `next_waiting`'s symbol, with the event it stands for."""
        _, symbol = heapq.heappop(self._due)
        latest = self._latest[symbol]
        event = latest.event
        assert event is not None
        return event, self._emit(symbol, latest, now)


@attrs.define(eq=False)
class Hub:
    retain: int = 10_000
    client_buffer: int = 256
    next_id: int = attrs.field(factory=clock.wall_us)
    # How far ahead of our newest id a resume id may be: a gateway a moment behind another
    # serves what comes after it. 0 in one process, where a future id is from another run.
    future_tolerance: int = 0
    clock: Callable[[], float] = trio.current_time  # conflation intervals
    # Events kept for resume; the oldest falls out when the window is full.
    _window: deque[Event] = attrs.field(init=False)
    _evicted_upto: int = attrs.field(init=False)
    _by_symbol: dict[str, set[Subscriber]] = attrs.field(factory=dict)
    _everything: set[Subscriber] = attrs.field(factory=set)
    _conflators: dict[float, Conflator] = attrs.field(factory=dict)
    # Owned-socket subscribers with frames to write at the next flush.
    _dirty: set[Subscriber] = attrs.field(factory=set)
    _kick: trio.Event = attrs.field(factory=trio.Event)
    _sleeping_until: float = math.inf  # when the flush loop wakes next, lacking a kick
    # Per symbol, the id from which its events were not all published (`skipped`): a resume
    # from before it cannot be served for that symbol. At most MAX_GAPS symbols.
    _gaps: dict[str, int] = attrs.field(factory=dict)
    # Per symbol (None: every symbol), the next id when its last subscriber left: while the
    # window still reaches back to it, that subscriber may resume, so `wants` holds. At most
    # MAX_GAPS entries (forgetting one is safe: its symbol's resume becomes a reset).
    _left: dict[str | None, int] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        self._window = deque(maxlen=self.retain)
        self._evicted_upto = self.next_id - 1

    @property
    def clients(self) -> int:
        plain = len(self._everything) + sum(len(s) for s in self._by_symbol.values())
        return plain + sum(c.clients for c in self._conflators.values())

    @property
    def last_id(self) -> int:
        return self.next_id - 1

    def wants(self, symbol: str) -> bool:
        """Whether an event of this symbol may be wanted: a subscriber would get it now, or
        one that left could still resume to it from the window (a browser reconnecting
        after a blip resumes without a gap)."""
        return (
            bool(self._everything)
            or symbol in self._by_symbol
            or any(c.wants(symbol) for c in self._conflators.values())
            or self._may_resume(symbol)
            or self._may_resume(None)
        )

    def _may_resume(self, symbol: str | None) -> bool:
        left = self._left.get(symbol)
        if left is None:
            return False
        if left <= self._evicted_upto:  # the window has moved past it: a resume is a reset
            del self._left[symbol]
            return False
        return True

    def skipped(self, symbol: str) -> None:
        """Ticks of `symbol` were stored without live events (nobody wanted it when they
        went to the writer). A resume from an id before now gets a reset for that symbol
        instead of a silent gap, and a subscriber of it that came meanwhile reloads now."""
        self._gaps.pop(symbol, None)
        self._gaps[symbol] = self.next_id
        if len(self._gaps) > MAX_GAPS:
            # Forget the oldest gap by moving the window's start up to it: a resume from
            # before it gets a reset whatever its symbols (conservative, never a silent gap).
            oldest = self._gaps.pop(next(iter(self._gaps)))
            self._evicted_upto = max(self._evicted_upto, oldest)
        targets = [*self._everything, *self._by_symbol.get(symbol, ())]
        for conflator in self._conflators.values():
            targets += conflator.targets(symbol)
        for sub in targets:
            self._deliver(sub, RESET_FRAME)

    def _gap_after(self, symbols: frozenset[str] | None, last_id: int) -> bool:
        if symbols is None:
            return any(gap > last_id for gap in self._gaps.values())
        return any(self._gaps.get(symbol, -1) > last_id for symbol in symbols)

    def publish(self, symbol: str, payloads: Iterable[bytes]) -> None:
        """Publish already-encoded event data for one symbol, in order."""
        for data in payloads:
            self.publish_event(self.next_id, symbol, data)

    def publish_event(self, event_id: int, symbol: str, data: bytes) -> None:
        """Publish with an id given by the producer (ids must grow)."""
        event = Event(event_id, symbol, data, event_frame(event_id, data))
        self.next_id = event_id + 1
        if len(self._window) == self._window.maxlen:
            self._evicted_upto = self._window[0].id
        self._window.append(event)
        metrics.HUB_EVENTS.inc()
        for sub in self._everything:
            if event_id > sub.after:
                self._deliver(sub, event.frame)
        for sub in self._by_symbol.get(symbol, ()):
            if event_id > sub.after:
                self._deliver(sub, event.frame)
        if self._conflators:
            now = self.clock()
            for conflator in self._conflators.values():
                if conflator.wants(symbol):
                    frame = conflator.offer(event, now)
                    if frame is not None:
                        self._deliver_conflated(conflator, event, frame)
                    if conflator.next_due < self._sleeping_until:
                        self._kick.set()  # a symbol's interval now ends sooner

    def _deliver(self, sub: Subscriber, frame: bytes) -> None:
        sub.deliver(frame)
        if sub.sink is not None:
            self._dirty.add(sub)
            self._kick.set()

    def _deliver_conflated(self, conflator: Conflator, event: Event, frame: bytes) -> None:
        for sub in conflator.targets(event.symbol):
            if event.id > sub.after:
                self._deliver(sub, frame)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The hub's flush: write out every owned connection that got frames, once, and
        send the conflated events whose interval is up."""
        task_status.started()
        while True:
            due = min((c.next_due for c in self._conflators.values()), default=math.inf)
            self._sleeping_until = due
            with trio.move_on_at(due):
                await self._kick.wait()
            self._kick = trio.Event()
            self._sleeping_until = -math.inf  # awake: a kick meanwhile is not lost
            self._send_due()
            await self._flush_in_slices()

    async def _flush_in_slices(self) -> None:
        """`flush`, letting the other tasks run after every FLUSH_SLICE_S of writing: a
        flush to thousands of clients never keeps the next webhook waiting for long."""
        dirty, self._dirty = self._dirty, set()
        until = time.perf_counter() + FLUSH_SLICE_S
        for sub in dirty:
            if sub.sink is not None and not sub.closed:  # (it may have ended meanwhile)
                sub.sink.flush(sub)
                if time.perf_counter() >= until:
                    await trio.lowlevel.checkpoint()
                    until = time.perf_counter() + FLUSH_SLICE_S

    def _send_due(self) -> None:
        """Hand out the conflated events whose interval is up — about one slice of writes
        per pass: the symbols due are taken until CONFLATED_PASS_WRITES of their own clients
        (not yet due a write) have an event. The rest go a pass later, and so their next
        intervals end later too: symbols that one batch made due together drift apart
        instead of coming due in one burst every interval, which would hold the last of
        their clients for the whole burst (10,000 clients of 100 symbols: ~150 ms). A
        client of every symbol is not counted: it gets whatever a pass hands out in one
        write, as when symbols trade at different times anyway."""
        now = self.clock()
        budget = CONFLATED_PASS_WRITES
        for conflator in list(self._conflators.values()):
            while (symbol := conflator.next_waiting(now)) is not None:
                own = conflator.by_symbol.get(symbol, ())
                fresh = sum(1 for sub in own if sub not in self._dirty)
                if fresh and budget <= 0:
                    return
                budget -= fresh
                event, frame = conflator.pop_waiting(now)
                self._deliver_conflated(conflator, event, frame)

    def flush(self) -> None:
        """Hand every owned connection with frames to its sink (synchronous)."""
        dirty, self._dirty = self._dirty, set()
        for sub in dirty:
            if sub.sink is not None and not sub.closed:
                sub.sink.flush(sub)

    def subscribe(
        self,
        symbols: frozenset[str] | None,
        last_id: int | None = None,
        conflate_s: float | None = None,
    ) -> Subscriber:
        """A new subscriber; with `last_id`, preloaded with every retained event after it
        (a conflated one with each symbol's latest), or marked for reset when events after
        it were already evicted."""
        sub = Subscriber(symbols, self.client_buffer, conflate_s)
        if last_id is not None:
            if (
                last_id < self._evicted_upto
                or last_id > self.last_id + self.future_tolerance
                or self._gap_after(symbols, last_id)
            ):
                sub.reset = True
            elif last_id > self.last_id:
                sub.after = last_id  # we have not seen it yet: serve what comes after it
            else:
                sub.preload(self._missed(sub, last_id))
        by_symbol, everything = self._registry(conflate_s, create=True)
        if symbols is None:
            everything.add(sub)
        else:
            for symbol in symbols:
                by_symbol.setdefault(symbol, set()).add(sub)
        metrics.SSE_CLIENTS.inc()
        return sub

    def _missed(self, sub: Subscriber, last_id: int) -> list[bytes]:
        """What a resuming subscriber missed: every retained event after `last_id`, or for a
        conflated one each symbol's latest of them, counted."""
        missed = [
            e
            for e in self._window
            if e.id > last_id and (sub.symbols is None or e.symbol in sub.symbols)
        ]
        if sub.conflate_s is None:
            return [e.frame for e in missed]
        latest: dict[str, tuple[Event, int]] = {}
        for e in missed:
            latest[e.symbol] = (e, latest.get(e.symbol, (e, 0))[1] + 1)
        ordered = sorted(latest.values(), key=lambda pair: pair[0].id)
        return [conflated_frame(e.id, e.data, n) for e, n in ordered]

    def _registry(
        self, conflate_s: float | None, *, create: bool = False
    ) -> tuple[dict[str, set[Subscriber]], set[Subscriber]]:
        if conflate_s is None:
            return self._by_symbol, self._everything
        conflator = self._conflators.get(conflate_s)
        if conflator is None:
            conflator = Conflator(conflate_s)
            if create:
                self._conflators[conflate_s] = conflator
        return conflator.by_symbol, conflator.everything

    def unsubscribe(self, sub: Subscriber) -> None:
        by_symbol, everything = self._registry(sub.conflate_s)
        for key in (None,) if sub.symbols is None else sub.symbols:
            self._left.pop(key, None)
            self._left[key] = self.next_id
        while len(self._left) > MAX_GAPS:
            del self._left[next(iter(self._left))]
        if sub.symbols is None:
            everything.discard(sub)
        else:
            for symbol in sub.symbols:
                subs = by_symbol.get(symbol)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del by_symbol[symbol]
        conflator = self._conflators.get(sub.conflate_s) if sub.conflate_s else None
        if conflator is not None and not conflator.clients:
            del self._conflators[sub.conflate_s]
        self._dirty.discard(sub)
        metrics.SSE_CLIENTS.dec()

    def _all_subscribers(self) -> list[Subscriber]:
        subs = [*self._everything, *(s for subs in self._by_symbol.values() for s in subs)]
        for conflator in self._conflators.values():
            subs += [*conflator.everything, *(s for g in conflator.by_symbol.values() for s in g)]
        return subs

    def mark_start(self, evicted_upto: int) -> None:
        """Ids up to `evicted_upto` are not in the window (a gateway's view of the stream)."""
        self._evicted_upto = evicted_upto

    def reset_all(self) -> None:
        """Events may have been missed (the updates stream moved on while we were away):
        every client reloads, and no resume reaches back across the gap."""
        self._evicted_upto = self.last_id
        self._window.clear()
        self._gaps.clear()  # older than any resume still served
        self._left.clear()
        for sub in self._all_subscribers():
            self._deliver(sub, RESET_FRAME)

    def close(self) -> None:
        """End every stream (graceful stop): subscribers finish what they have and return."""
        self.flush()
        for sub in self._all_subscribers():
            sub.close()


@attrs.frozen
class HubPublisher:
    """The aggregators' publisher in one process: straight into the hub."""

    hub: Hub

    async def publish(self, symbol: str, payloads: list[bytes]) -> None:
        self.hub.publish(symbol, payloads)

    def wants(self, symbol: str) -> bool:
        return self.hub.wants(symbol)

    def skipped(self, symbol: str) -> None:
        self.hub.skipped(symbol)


class NullPublisher:
    """Where live events go in a process without a gateway or Redis link: nowhere."""

    async def publish(self, symbol: str, payloads: list[bytes]) -> None:
        return None

    def wants(self, symbol: str) -> bool:
        return False

    def skipped(self, symbol: str) -> None:
        return None
