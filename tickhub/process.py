"""The roof: the one role table, and the start-up and stop of a process running any mix.

Roles are data. `ROLE_TABLE` says what each role brings — its HTTP routes, the database, the
pipeline (aggregators and writer), the hub, the feeder — and a process runs the union of
its roles' rows. `all` is api + gateway + consumer in one process, joined by memory
channels. Any other mix of those three is *linked*: the missing peers run in other
processes and Redis joins them (api → ticks stream → consumer → updates stream → gateway).
The feeder is a role of its own (`tickhub up` adds it) so that a production `all` never
invents ticks.

Start-up order: asyncio bridge → database (+ migrations) and Redis → supervisor nursery →
hub → pipeline → Redis relays → HTTP server → feeder. A graceful stop (SIGTERM/SIGINT) runs
the other way within STOP_TIMEOUT_S: the feeder stops producing, SSE streams end, the HTTP
server stops taking requests and finishes the ones in flight (their batches still commit),
the stream consumer stops reading and acknowledges what committed, the pipeline drains and
flushes, and only then is whatever is left cancelled.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import structlog
import trio

from tickhub import metrics
from tickhub.actors.hub import Hub, HubPublisher, NullPublisher
from tickhub.actors.ingest import Ingest, LocalIngest, StreamIngest
from tickhub.actors.partitions import PartitionKeeper
from tickhub.actors.pipeline import Admission, Pipeline
from tickhub.actors.relay import RedisPublisher, StreamConsumer, StreamKeeper, UpdatesRelay
from tickhub.actors.retention import RetentionSweeper
from tickhub.actors.supervisor import RestartPolicy, Supervisor
from tickhub.bridge import open_bridge
from tickhub.config import ROLES, Settings, SettingsError
from tickhub.feeder.feeder import Feeder
from tickhub.http import server
from tickhub.http.app import create_app
from tickhub.http.owned import Routes
from tickhub.http.services import Services
from tickhub.ratelimit import MemoryLimiter
from tickhub.redis.limiter import RedisLimiter
from tickhub.redis.link import RedisLink, StreamNames, open_redis
from tickhub.sql.db import Database, open_database
from tickhub.sql.migrate import migrate_up
from tickhub.sql.retention import TickRetention
from tickhub.sql.store import TickStore

log = structlog.get_logger(actor="process")

# In a gateway, how far (in id units: ms·10⁶) a resume id may run ahead of the local hub.
GATEWAY_ID_TOLERANCE = 60_000 * 1_000_000


@attrs.frozen
class RoleSpec:
    """What a role brings to its process."""

    port: int = 9090  # where it listens unless PORT says otherwise (the lowest of a mix)
    routes: frozenset[str] = frozenset()  # HTTP route groups: api, ui, gateway
    database: bool = False
    pipeline: bool = False  # aggregators and the writer
    hub: bool = False  # the live stream's fan-out
    feeder: bool = False

    def __or__(self, other: RoleSpec) -> RoleSpec:
        return RoleSpec(
            min(self.port, other.port),
            self.routes | other.routes,
            self.database or other.database,
            self.pipeline or other.pipeline,
            self.hub or other.hub,
            self.feeder or other.feeder,
        )


ROLE_TABLE: dict[str, RoleSpec] = {
    "api": RoleSpec(3030, routes=frozenset({"api", "ui"}), database=True),
    "gateway": RoleSpec(4000, routes=frozenset({"gateway"}), hub=True),
    "consumer": RoleSpec(9090, database=True, pipeline=True),
    "feeder": RoleSpec(9090, feeder=True),
}
ALL_PORT = 8080  # `all` listens here
# The roles `all` stands for; joined in memory when they share a process.
PLATFORM = ("api", "gateway", "consumer")
assert set(ROLE_TABLE) | {"all"} == set(ROLES), "config.ROLES names the table's roles"


def expand(roles: tuple[str, ...]) -> tuple[str, ...]:
    expanded: list[str] = []
    for role in roles:
        for r in PLATFORM if role == "all" else (role,):
            if r not in expanded:
                expanded.append(r)
    return tuple(expanded)


def spec_of(roles: tuple[str, ...]) -> RoleSpec:
    """What these roles bring together (`all` expanded)."""
    spec = RoleSpec()
    for role in expand(roles):
        spec |= ROLE_TABLE[role]
    return spec


def port_of(settings: Settings) -> int:
    """Where a process with these settings listens: PORT, else its roles' default."""
    if settings.port is not None:
        return settings.port
    return ALL_PORT if "all" in settings.roles else spec_of(settings.roles).port


def linked(roles: tuple[str, ...]) -> bool:
    """Whether this process's platform roles need peers in other processes (via Redis)."""
    platform = set(PLATFORM) & set(roles)
    return bool(platform) and platform != set(PLATFORM)


def check_roles(settings: Settings, roles: tuple[str, ...]) -> None:
    if linked(roles) and not settings.redis_url:
        alone = ",".join(r for r in roles if r in PLATFORM)
        raise SettingsError(
            f"REDIS_URL: required for --role {alone} (roles in separate processes are joined "
            "by Redis); or run --role all"
        )
    if any(ROLE_TABLE[r].database for r in roles) and not settings.database_url:
        raise SettingsError("DATABASE_URL: required for roles api and consumer")


async def run_process(
    settings: Settings,
    *,
    on_serving: Callable[[str], None] | None = None,
    stop: trio.Event | None = None,
) -> None:
    """Run the roles of `settings` until SIGTERM/SIGINT (or `stop`), then stop gracefully."""
    roles = expand(settings.roles)
    check_roles(settings, roles)
    need = spec_of(roles)
    watch_signals = stop is None  # a caller that brings its own stop event owns the stop
    stop = trio.Event() if stop is None else stop
    async with open_bridge(), AsyncExitStack() as stack:
        db = await stack.enter_async_context(_open_db(settings)) if need.database else None
        link = None
        if linked(roles):
            names = StreamNames.of(settings)
            timeout_s = settings.redis_timeout_ms / 1000
            link = await stack.enter_async_context(
                open_redis(settings.redis_url, names, timeout_s=timeout_s)
            )
        async with trio.open_nursery() as nursery:
            if watch_signals:
                nursery.start_soon(_watch_signals, stop)
            await _Process(settings, roles, need, db, link, nursery).run(stop, on_serving)
            nursery.cancel_scope.cancel()
    log.info("stopped")


@asynccontextmanager
async def _open_db(settings: Settings) -> AsyncIterator[Database]:
    async with open_database(
        settings.database_url,
        max_size=settings.db_pool_size,
        timeout_s=settings.db_timeout_ms / 1000,
    ) as db:
        if settings.migrate_on_start:
            applied = await migrate_up(db)
            if applied:
                log.info("migrations applied", migrations=applied)
        yield db


@attrs.define
class _Process:
    """The parts one process runs, started and stopped in order."""

    settings: Settings
    roles: tuple[str, ...]
    need: RoleSpec
    db: Database | None
    link: RedisLink | None
    nursery: trio.Nursery
    supervisor: Supervisor = attrs.field(init=False)
    hub: Hub | None = None
    pipeline: Pipeline | None = None
    # Set to stop the stream consumer reading (graceful stop), if one runs.
    stop_reading: trio.Event = attrs.field(factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        self.supervisor = Supervisor(
            self.nursery,
            RestartPolicy(self.settings.restart_max, self.settings.restart_window_s),
            on_restart=lambda name: metrics.ACTOR_RESTARTS.labels(name.split(":")[0]).inc(),
        )

    async def run(self, stop: trio.Event, on_serving: Callable[[str], None] | None) -> None:
        settings, need, supervisor = self.settings, self.need, self.supervisor
        if need.hub:
            await self._start_hub()
        if need.pipeline:
            await self._start_pipeline()
        if self.link is not None:
            await self._start_relays()
        svc = Services(
            settings,
            supervisor,
            self.db,
            self.pipeline,
            self.hub,
            ingest=self._ingest(),
            link=self.link,
            limiter=RedisLimiter(self.link) if self.link is not None else MemoryLimiter(),
        )
        app = create_app(svc, need.routes)
        http_stop, http_done = trio.Event(), trio.Event()

        async def serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            config = server.hypercorn_config(
                settings.host, port_of(settings), settings.http_idle_timeout_s
            )
            routes = Routes.for_prefix(
                settings.api_prefix, api="api" in need.routes, gateway="gateway" in need.routes
            )
            try:
                await server.serve(app, config, http_stop, routes, task_status=task_status)
            finally:
                http_done.set()

        binds = await self.nursery.start(serve)
        url = binds[0] if binds else f"http://{settings.host}:{port_of(settings)}"
        if need.feeder:
            await supervisor.start(
                "feeder", lambda h: Feeder(settings.feeder, health=h), restart=True
            )
        log.info("serving", url=url, roles=",".join(self.roles), linked=self.link is not None)
        if on_serving is not None:
            on_serving(url)
        await stop.wait()
        log.info("stopping", timeout_s=settings.stop_timeout_s)
        with trio.move_on_after(settings.stop_timeout_s) as deadline:
            await self._stop(http_stop, http_done)
        if deadline.cancelled_caught:
            log.warning("graceful stop timed out; cancelling the rest")

    async def _stop(self, http_stop: trio.Event, http_done: trio.Event) -> None:
        supervisor = self.supervisor
        feeder = supervisor.current("feeder")
        if feeder is not None:  # producers first: it delivers what it already generated
            feeder.stop()
            await supervisor.actors["feeder"].finished.wait()
        if self.hub is not None:
            self.hub.close()
        http_stop.set()
        await http_done.wait()
        if "stream-consumer" in supervisor.actors:
            self.stop_reading.set()
            await supervisor.actors["stream-consumer"].finished.wait()
        if self.pipeline is not None:
            await self.pipeline.close()

    async def _start_hub(self) -> None:
        settings = self.settings
        hub = Hub(
            settings.sse_retain_events,
            settings.sse_client_buffer,
            future_tolerance=GATEWAY_ID_TOLERANCE if self.link is not None else 0,
        )
        self.hub = hub
        # The hub's state outlives an incarnation of its flush loop.
        await self.supervisor.start("hub", lambda _: hub, restart=True)

    async def _start_pipeline(self) -> None:
        settings, db = self.settings, self.db
        assert db is not None
        if self.link is not None:
            publisher: Any = RedisPublisher(self.link, settings.sse_retain_events)
            await self.supervisor.start("publisher", lambda _: publisher, restart=True)
        elif self.hub is not None:
            publisher = HubPublisher(self.hub)
        else:
            publisher = NullPublisher()
        store = TickStore(db, settings.raw_audit)
        # Wherever the writer runs: the days ahead made before their ticks come, and known
        # to the store from then on (one set of days for both).
        await self.supervisor.start(
            "partitions", lambda h: PartitionKeeper(store.partitions, h), restart=True
        )
        self.pipeline = Pipeline(
            self.supervisor,
            store,
            publisher,
            batch_max=settings.batch_max,
            flush_s=settings.batch_flush_ms / 1000,
            concurrency=settings.worker_concurrency,
            backlog_max=settings.batch_backlog_max,
            ingest_timeout_s=settings.ingest_timeout_ms / 1000,
            flush_timeout_s=settings.db_timeout_ms / 1000,
            admission=Admission(settings.ingest_max_pending),
            aggregator_idle_s=settings.aggregator_idle_s,
            max_aggregators=settings.aggregators_max,
        )
        await self.pipeline.start()
        if settings.retention_days > 0:
            sweeper = TickRetention(db)
            await self.supervisor.start(
                "retention",
                lambda h: RetentionSweeper(sweeper, settings.retention_days, h),
                restart=True,
            )

    def _ingest(self) -> Ingest | None:
        """The api's way to durability: its own pipeline, else the ticks stream."""
        if "api" not in self.need.routes:
            return None
        if self.pipeline is not None:
            return LocalIngest(self.pipeline)
        assert self.link is not None
        return StreamIngest(self.link)

    async def _start_relays(self) -> None:
        """The Redis edges of a linked process: a pipeline without a local api reads the
        ticks stream; a hub follows the updates stream."""
        settings, link, supervisor = self.settings, self.link, self.supervisor
        assert link is not None
        pipeline = self.pipeline
        if pipeline is not None and "api" not in self.need.routes:
            name = settings.consumer_name or f"{socket.gethostname()}-{os.getpid()}"

            def make_consumer(health: Any) -> StreamConsumer:
                return StreamConsumer(
                    link,
                    pipeline,
                    health,
                    name,
                    self.stop_reading,
                    claim_idle_s=settings.claim_idle_ms / 1000,
                    dead_letter_after=settings.dead_letter_after,
                )

            await supervisor.start("stream-consumer", make_consumer, restart=True)
            await supervisor.start("stream-keeper", lambda h: StreamKeeper(link, h), restart=True)
        hub = self.hub
        if hub is not None:
            await supervisor.start(
                "updates-relay", lambda h: UpdatesRelay(link, hub, h), restart=True
            )


async def _watch_signals(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("signal received", signal=signal.Signals(signum).name)
            stop.set()
            return
