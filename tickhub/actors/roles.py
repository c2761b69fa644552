"""Roles are data: what each role runs, and the one `run_process()` that starts any mix.

`all` is api + gateway + consumer in one process, joined by memory channels. The feeder is a
role of its own (`tickhub up` adds it) so that a production `all` never invents ticks.

Start-up order: asyncio bridge → database (+ migrations) → supervisor nursery → hub →
pipeline → HTTP server → feeder. A graceful stop (SIGTERM/SIGINT) runs the other way within
STOP_TIMEOUT_S: the feeder stops producing, SSE streams end, the HTTP server stops taking
requests and finishes the ones in flight (their batches still commit), the pipeline drains
and flushes, and only then is whatever is left cancelled.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import attrs
import structlog
import trio

from tickhub import metrics
from tickhub.actors.hub import Hub
from tickhub.actors.pipeline import Admission, Pipeline
from tickhub.actors.supervisor import RestartPolicy, Supervisor
from tickhub.config import Settings, SettingsError
from tickhub.sql.db import open_bridge

log = structlog.get_logger(actor="process")


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
ALL = ("api", "gateway", "consumer")


def expand(roles: tuple[str, ...]) -> tuple[str, ...]:
    expanded: list[str] = []
    for role in roles:
        for r in ALL if role == "all" else (role,):
            if r not in expanded:
                expanded.append(r)
    return tuple(expanded)


def check_roles(settings: Settings, roles: tuple[str, ...]) -> None:
    """Roles that are not all in this process must be joined by Redis."""
    platform = {"api", "gateway", "consumer"} & set(roles)
    if platform and platform != set(ALL):
        raise SettingsError(
            f"roles {','.join(sorted(platform))} without "
            f"{','.join(sorted(set(ALL) - platform))} in the same process need the Redis "
            "link between processes, which this version does not have yet: run --role all"
        )


class NullPublisher:
    """Where live events go in a process without a gateway."""

    def publish(self, symbol: str, payloads: list[bytes]) -> None:
        pass


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
        db = None
        if need.database:
            db = await stack.enter_async_context(_open_db(settings))
        async with trio.open_nursery() as nursery:
            if watch_signals:
                nursery.start_soon(_watch_signals, stop)
            await _run_roles(settings, roles, need, db, nursery, stop, on_serving)
            nursery.cancel_scope.cancel()
    log.info("stopped")


def _open_db(settings: Settings) -> Any:
    from tickhub.sql.db import open_database

    if not settings.database_url:
        raise SettingsError("DATABASE_URL: required for roles api and consumer")

    class _WithMigrations:
        async def __aenter__(self) -> Any:
            from tickhub.sql.migrate import migrate_up

            self._cm = open_database(settings.database_url, max_size=settings.db_pool_size)
            db = await self._cm.__aenter__()
            if settings.migrate_on_start:
                applied = await migrate_up(db)
                if applied:
                    log.info("migrations applied", migrations=applied)
            return db

        async def __aexit__(self, *exc: Any) -> Any:
            return await self._cm.__aexit__(*exc)

    return _WithMigrations()


async def _run_roles(
    settings: Settings,
    roles: tuple[str, ...],
    need: RoleSpec,
    db: Any,
    nursery: trio.Nursery,
    stop: trio.Event,
    on_serving: Callable[[str], None] | None,
) -> None:
    from tickhub.http.app import create_app, serve_app
    from tickhub.http.services import Services
    from tickhub.sql.store import TickStore

    supervisor = Supervisor(
        nursery,
        RestartPolicy(settings.restart_max, settings.restart_window_s),
        on_restart=lambda name: metrics.ACTOR_RESTARTS.labels(name.split(":")[0]).inc(),
    )
    hub = Hub(settings.sse_retain_events, settings.sse_client_buffer) if need.hub else None
    pipeline = None
    if need.pipeline:
        pipeline = Pipeline(
            supervisor,
            TickStore(db, settings.raw_audit),
            hub if hub is not None else NullPublisher(),
            batch_max=settings.batch_max,
            flush_s=settings.batch_flush_ms / 1000,
            concurrency=settings.worker_concurrency,
            ingest_timeout_s=settings.ingest_timeout_ms / 1000,
            admission=Admission(settings.ingest_max_pending),
        )
        await pipeline.start()
    svc = Services(settings, supervisor, db, pipeline, hub, enabled_roles=roles)
    app = create_app(svc)
    http_stop = trio.Event()
    http_done = trio.Event()

    async def serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve_app(
                app, settings.host, settings.default_port, http_stop, task_status=task_status
            )
        finally:
            http_done.set()

    binds = await nursery.start(serve)
    url = binds[0] if binds else f"http://{settings.host}:{settings.default_port}"
    if need.feeder:
        await _start_feeder(settings, supervisor, svc)
    log.info("serving", url=url, roles=",".join(roles))
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
        if pipeline is not None:
            await pipeline.close()
    if deadline.cancelled_caught:
        log.warning("graceful stop timed out; cancelling the rest")


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
