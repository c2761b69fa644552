"""Roles are data: what each role runs, and the one `run_process()` that starts any mix.

`all` is api + gateway + consumer in one process, joined by memory channels. Any other mix
of those three is *linked*: the missing peers run in other processes and Redis joins them
(api → ticks stream → consumer → updates stream → gateway). The feeder is a role of its own
(`tickhub up` adds it) so that a production `all` never invents ticks.

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
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import attrs
import structlog
import trio

from tickhub import metrics
from tickhub.actors.hub import Hub, HubPublisher, NullPublisher
from tickhub.actors.pipeline import Admission, Pipeline
from tickhub.actors.supervisor import RestartPolicy, Supervisor
from tickhub.bridge import open_bridge
from tickhub.config import Settings, SettingsError

log = structlog.get_logger(actor="process")

PLATFORM = ("api", "gateway", "consumer")
# In a gateway, how far (in id units: ms·10⁶) a resume id may run ahead of the local hub.
GATEWAY_ID_TOLERANCE = 60_000 * 1_000_000


@attrs.frozen
class RoleSpec:
    routes: tuple[str, ...] = ()
    database: bool = False
    pipeline: bool = False
    hub: bool = False
    feeder: bool = False


ROLE_TABLE: dict[str, RoleSpec] = {
    "api": RoleSpec(routes=("api",), database=True),
    "gateway": RoleSpec(routes=("gateway",), hub=True),
    "consumer": RoleSpec(database=True, pipeline=True),
    "feeder": RoleSpec(feeder=True),
}


def expand(roles: tuple[str, ...]) -> tuple[str, ...]:
    expanded: list[str] = []
    for role in roles:
        for r in PLATFORM if role == "all" else (role,):
            if r not in expanded:
                expanded.append(r)
    return tuple(expanded)


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


async def run_process(
    settings: Settings,
    *,
    on_serving: Callable[[str], None] | None = None,
    stop: trio.Event | None = None,
) -> None:
    """Run the roles of `settings` until SIGTERM/SIGINT (or `stop`), then stop gracefully."""
    roles = expand(settings.roles)
    check_roles(settings, roles)
    specs = [ROLE_TABLE[r] for r in roles]
    need = RoleSpec(
        routes=tuple(r for s in specs for r in s.routes),
        database=any(s.database for s in specs),
        pipeline=any(s.pipeline for s in specs),
        hub=any(s.hub for s in specs),
        feeder=any(s.feeder for s in specs),
    )
    watch_signals = stop is None  # a caller that brings its own stop event owns the stop
    stop = trio.Event() if stop is None else stop
    async with open_bridge(), AsyncExitStack() as stack:
        db = await stack.enter_async_context(_open_db(settings)) if need.database else None
        link = None
        if linked(roles):
            from tickhub.streams import StreamNames, open_redis

            link = await stack.enter_async_context(
                open_redis(
                    settings.redis_url,
                    StreamNames.of(settings),
                    timeout_s=settings.redis_timeout_ms / 1000,
                )
            )
        async with trio.open_nursery() as nursery:
            if watch_signals:
                nursery.start_soon(_watch_signals, stop)
            await _run_roles(settings, roles, need, db, link, nursery, stop, on_serving)
            nursery.cancel_scope.cancel()
    log.info("stopped")


def _open_db(settings: Settings) -> Any:
    from contextlib import asynccontextmanager

    from tickhub.sql.db import open_database
    from tickhub.sql.migrate import migrate_up

    if not settings.database_url:
        raise SettingsError("DATABASE_URL: required for roles api and consumer")

    @asynccontextmanager
    async def opened() -> Any:
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

    return opened()


async def _run_roles(
    settings: Settings,
    roles: tuple[str, ...],
    need: RoleSpec,
    db: Any,
    link: Any,
    nursery: trio.Nursery,
    stop: trio.Event,
    on_serving: Callable[[str], None] | None,
) -> None:
    from tickhub.actors.ingest import LocalIngest, StreamIngest
    from tickhub.http import server
    from tickhub.http.app import create_app
    from tickhub.http.services import Services

    supervisor = Supervisor(
        nursery,
        RestartPolicy(settings.restart_max, settings.restart_window_s),
        on_restart=lambda name: metrics.ACTOR_RESTARTS.labels(name.split(":")[0]).inc(),
    )
    hub = None
    if need.hub:
        hub = Hub(
            settings.sse_retain_events,
            settings.sse_client_buffer,
            future_tolerance=GATEWAY_ID_TOLERANCE if link else 0,
        )
        live_hub = hub  # its state outlives an incarnation of its flush loop
        await supervisor.start("hub", lambda _: live_hub, restart=True)
    pipeline = await _start_pipeline(settings, supervisor, db, hub, link) if need.pipeline else None
    if pipeline is not None and settings.retention_days > 0:
        from tickhub.actors.retention import RetentionSweeper

        await supervisor.start(
            "retention",
            lambda h: RetentionSweeper(db, settings.retention_days, h),
            restart=True,
        )
    stop_reading = trio.Event()  # graceful stop of the stream consumer, if one runs
    if link is not None:
        await _start_relays(settings, roles, supervisor, pipeline, hub, link, stop_reading)

    ingest = None
    if "api" in roles:
        ingest = LocalIngest(pipeline) if pipeline is not None else StreamIngest(link)
    from tickhub.ratelimit import MemoryLimiter
    from tickhub.streams import RedisLimiter

    svc = Services(
        settings,
        supervisor,
        db,
        pipeline,
        hub,
        enabled_roles=roles,
        ingest=ingest,
        link=link,
        limiter=RedisLimiter(link) if link is not None else MemoryLimiter(),
    )
    app = create_app(svc)
    http_stop = trio.Event()
    http_done = trio.Event()

    async def serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            config = server.hypercorn_config(
                settings.host, settings.default_port, settings.http_idle_timeout_s
            )
            await server.serve(app, config, http_stop, task_status=task_status)
        finally:
            http_done.set()

    binds = await nursery.start(serve)
    url = binds[0] if binds else f"http://{settings.host}:{settings.default_port}"
    if need.feeder:
        await _start_feeder(settings, supervisor, svc)
    log.info("serving", url=url, roles=",".join(roles), linked=link is not None)
    if on_serving is not None:
        on_serving(url)

    await stop.wait()
    log.info("stopping", timeout_s=settings.stop_timeout_s)
    with trio.move_on_after(settings.stop_timeout_s) as deadline:
        if svc.feeder is not None:  # producers first: it delivers what it already generated
            svc.feeder.stop()
            await supervisor.actors["feeder"].finished.wait()
        if hub is not None:
            hub.close()
        http_stop.set()
        await http_done.wait()
        if "stream-consumer" in supervisor.actors:
            stop_reading.set()
            await supervisor.actors["stream-consumer"].finished.wait()
        if pipeline is not None:
            await pipeline.close()
    if deadline.cancelled_caught:
        log.warning("graceful stop timed out; cancelling the rest")


async def _start_pipeline(
    settings: Settings, supervisor: Supervisor, db: Any, hub: Hub | None, link: Any
) -> Pipeline:
    from tickhub.actors.relay import RedisPublisher
    from tickhub.sql.store import TickStore

    if link is not None:
        publisher: Any = RedisPublisher(link, settings.sse_retain_events)
    elif hub is not None:
        publisher = HubPublisher(hub)
    else:
        publisher = NullPublisher()
    pipeline = Pipeline(
        supervisor,
        TickStore(db, settings.raw_audit),
        publisher,
        batch_max=settings.batch_max,
        flush_s=settings.batch_flush_ms / 1000,
        concurrency=settings.worker_concurrency,
        ingest_timeout_s=settings.ingest_timeout_ms / 1000,
        flush_timeout_s=settings.db_timeout_ms / 1000,
        admission=Admission(settings.ingest_max_pending),
        aggregator_idle_s=settings.aggregator_idle_s,
        max_aggregators=settings.aggregators_max,
    )
    await pipeline.start()
    return pipeline


async def _start_relays(
    settings: Settings,
    roles: tuple[str, ...],
    supervisor: Supervisor,
    pipeline: Pipeline | None,
    hub: Hub | None,
    link: Any,
    stop_reading: trio.Event,
) -> None:
    """The Redis edges this linked process needs."""
    from tickhub.actors.relay import StreamConsumer, StreamKeeper, UpdatesRelay

    if pipeline is not None and "api" not in roles:
        name = settings.consumer_name or f"{socket.gethostname()}-{os.getpid()}"

        def make_consumer(health: Any) -> StreamConsumer:
            return StreamConsumer(
                link,
                pipeline,
                health,
                name,
                stop_reading,
                claim_idle_s=settings.claim_idle_ms / 1000,
                dead_letter_after=settings.dead_letter_after,
            )

        await supervisor.start("stream-consumer", make_consumer, restart=True)
        await supervisor.start("stream-keeper", lambda h: StreamKeeper(link, h), restart=True)
    if hub is not None:
        await supervisor.start("updates-relay", lambda h: UpdatesRelay(link, hub, h), restart=True)


async def _start_feeder(settings: Settings, supervisor: Supervisor, svc: Any) -> None:
    from tickhub.feeder.feeder import Feeder
    from tickhub.feeder.synthetic import VolumeModel

    feeder_settings = settings.feeder

    def make(health: Any) -> Any:
        svc.feeder = Feeder(
            feeder_settings,
            health=health,
            tick_size=feeder_settings.tick_size,
            volume=VolumeModel.parse(feeder_settings.volume),
        )
        return svc.feeder

    await supervisor.start("feeder", make, restart=True)


async def _watch_signals(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("signal received", signal=signal.Signals(signum).name)
            stop.set()
            return
