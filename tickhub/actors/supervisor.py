"""The supervisor: the root nursery of a process, which starts actors, restarts the ones that
may be restarted, and keeps a health record for each.

An actor is an attrs object with `async def run(self, *, task_status)`. The supervisor builds
a fresh incarnation from a factory on every (re)start, so state that must survive a restart
lives outside the actor (its mailbox, owned by whoever created the channel, or Postgres).
Restarts back off exponentially; more than `max_restarts` crashes inside `window_s` means
the actor is crash-looping, and the supervisor fails the whole process rather than spin.

Actors that come and go (one per symbol) are *transient*: their health record is dropped
when they stop, so the table stays as large as what runs now. The ops endpoints show a
bounded view of it (`view()`): every permanent actor, the transient ones that are not simply
running, and counts by state.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import structlog
import trio

from tickhub.backoff import backoff_delay
from tickhub.clock import wall_s

log = structlog.get_logger(actor="supervisor")


class Actor(Protocol):
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None: ...


# Rows of the actor table readiness shows at most.
VIEW_LIMIT = 50


class RestartBudgetExceeded(RuntimeError):
    """An actor crashed more often than its restart budget allows."""


@attrs.define
class ActorHealth:
    """What the ops endpoints report about one actor."""

    name: str
    restartable: bool
    mailbox: Any = None  # a trio receive channel, for its depth
    clock: Callable[[], float] = wall_s
    transient: bool = False
    state: str = "starting"  # starting | running | restarting | stopped | failed
    restarts: int = 0
    last_error: str | None = None
    last_activity: float | None = None
    finished: trio.Event = attrs.field(factory=trio.Event)  # set once it stopped or failed

    def touch(self) -> None:
        self.last_activity = self.clock()

    @property
    def mailbox_depth(self) -> int:
        if self.mailbox is None:
            return 0
        return self.mailbox.statistics().current_buffer_used

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "restarts": self.restarts,
            "lastError": self.last_error,
            "mailboxDepth": self.mailbox_depth,
            "lastActivity": self.last_activity,
        }


@attrs.frozen
class RestartPolicy:
    max_restarts: int = 5
    window_s: float = 60.0
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 10.0

    def backoff(self, recent_crashes: int) -> float:
        return backoff_delay(max(recent_crashes - 1, 0), self.backoff_initial_s, self.backoff_max_s)


@attrs.define
class Supervisor:
    nursery: trio.Nursery
    policy: RestartPolicy = attrs.field(factory=RestartPolicy)
    actors: dict[str, ActorHealth] = attrs.field(factory=dict)
    on_restart: Callable[[str], None] = lambda name: None
    _live: dict[str, Any] = attrs.field(factory=dict)  # the incarnation of each name

    async def start(
        self,
        name: str,
        factory: Callable[[ActorHealth], Actor],
        *,
        restart: bool = False,
        mailbox: Any = None,
        transient: bool = False,
    ) -> Any:
        """Start an actor in the supervisor's nursery; return what it passed to `started()`.
        A transient actor's record is dropped once it stops."""
        health = ActorHealth(name, restart, mailbox, transient=transient)
        self.actors[name] = health
        return await self.nursery.start(self._supervise, factory, health)

    def current(self, name: str) -> Any:
        """The incarnation of actor `name` running now (None when there is none)."""
        return self._live.get(name)

    def table(self) -> list[dict[str, Any]]:
        return [h.snapshot() for h in self.actors.values()]

    def view(self, limit: int = VIEW_LIMIT) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """What readiness shows, bounded whatever the number of actors: at most `limit` rows
        — the permanent actors and the transient ones in trouble first, then running
        transient ones while there is room — and the count of actors in each state."""
        counts: dict[str, int] = {}
        first, then = [], []
        for health in self.actors.values():
            counts[health.state] = counts.get(health.state, 0) + 1
            quiet = health.transient and health.state == "running"
            (then if quiet else first).append(health)
        return [h.snapshot() for h in (first + then)[:limit]], counts

    @property
    def healthy(self) -> bool:
        return not any(h.state == "failed" for h in self.actors.values())

    async def _supervise(
        self,
        factory: Callable[[ActorHealth], Actor],
        health: ActorHealth,
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await self._incarnations(factory, health, task_status)
        finally:
            health.finished.set()
            # An actor that ended has no incarnation; a transient one that stopped is forgotten.
            if self.actors.get(health.name) is health:  # not already a successor's
                self._live.pop(health.name, None)
                if health.transient and health.state == "stopped":
                    del self.actors[health.name]

    async def _incarnations(
        self, factory: Callable[[ActorHealth], Actor], health: ActorHealth, task_status: Any
    ) -> None:
        actor_log = log.bind(actor=health.name)
        crashes: deque[float] = deque()
        status = _TrackedStatus(task_status)
        while True:
            actor = factory(health)
            self._live[health.name] = actor
            health.state = "running"
            try:
                await actor.run(task_status=status)
            except Exception as exc:
                if not status.called:
                    health.state = "failed"
                    raise  # an actor that cannot start is a start-up failure, not a crash
                health.last_error = describe(exc)
                now = trio.current_time()
                crashes.append(now)
                while crashes and crashes[0] < now - self.policy.window_s:
                    crashes.popleft()
                if not health.restartable or len(crashes) > self.policy.max_restarts:
                    health.state = "failed"
                    actor_log.error(
                        "actor failed", error=health.last_error, restarts=health.restarts
                    )
                    raise RestartBudgetExceeded(
                        f"actor {health.name} failed: {health.last_error}"
                    ) from exc
                delay = self.policy.backoff(len(crashes))
                health.state = "restarting"
                health.restarts += 1
                self.on_restart(health.name)
                actor_log.warning(
                    "actor crashed; restarting", error=health.last_error, delay_s=delay
                )
                await trio.sleep(delay)
            else:
                health.state = "stopped"
                return
            status = _TrackedStatus(trio.TASK_STATUS_IGNORED, called=True)


def describe(exc: BaseException) -> str:
    """`Type: message` of the error itself, looking through single-error nursery groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


@attrs.define
class _TrackedStatus:
    """A task status that remembers whether the actor reported itself started."""

    inner: Any
    called: bool = False

    def started(self, value: Any = None) -> None:
        self.called = True
        self.inner.started(value)
