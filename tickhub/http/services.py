"""What the HTTP handlers of a process can reach: settings, supervisor, and whichever of the
database, pipeline, hub and feeder this process's roles run (None when they do not).
"""

from __future__ import annotations

from typing import Any

import attrs
from quart import current_app

from tickhub.actors.hub import Hub
from tickhub.actors.pipeline import Pipeline
from tickhub.actors.supervisor import Supervisor
from tickhub.config import Settings
from tickhub.ratelimit import MemoryLimiter
from tickhub.sql.db import Database
from tickhub.sql.queries import Queries


@attrs.define
class Services:
    settings: Settings
    supervisor: Supervisor
    db: Database | None = None
    pipeline: Pipeline | None = None
    hub: Hub | None = None
    feeder: Any = None
    enabled_roles: tuple[str, ...] = ("api", "gateway", "consumer")
    ingest: Any = None  # LocalIngest or StreamIngest (api role)
    link: Any = None  # the Redis link, when roles run in separate processes
    limiter: Any = attrs.field(factory=MemoryLimiter)  # RedisLimiter when linked
    # Failed authentications per IP, in this process whatever the mode (http.limits.admit).
    auth_failures: MemoryLimiter = attrs.field(factory=MemoryLimiter)
    streams: dict[str, int] = attrs.field(factory=dict)  # open SSE connections per client
    # "ok" or "missing": the dashboard's vendored chart library (processes serving the page).
    dashboard: str | None = None
    queries: Queries | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        if self.db is not None:
            self.queries = Queries(self.db)

    async def queue_stats(self) -> dict[str, int]:
        """Waiting (`pending`), being stored (`inFlight`), stored, failed, dead letters:
        batches of the Redis stream when split, ticks of the pipeline in one process."""
        if self.link is not None:
            return await self.link.queue_stats()
        if self.pipeline is None:
            return {"pending": 0, "inFlight": 0, "completed": 0, "failed": 0, "dead": 0}
        return {**self.pipeline.stats(), "dead": 0}

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, str] = {}
        if self.db is not None:
            checks["db"] = "ok" if await self.db.ping() else "unreachable"
        if self.link is not None:
            checks["redis"] = "ok" if await self.link.writable() else "unreachable"
        else:
            checks["redis"] = "n/a"
        if self.feeder is not None:
            checks["feeder"] = "ok" if self.feeder.ready() else "not posting"
        actors_ok = self.supervisor.healthy
        ok = actors_ok and all(v in ("ok", "n/a") for v in checks.values())
        if self.dashboard is not None:
            # Reported, not failed: without its chart library the process still ingests,
            # answers the API and streams, and an orchestrator acting on a 503 would take all
            # of that away to "fix" a page. The start-up log says how to build the files.
            checks["dashboard"] = self.dashboard
        actors, states = self.supervisor.view()
        body = {
            "status": "ready" if ok else "not_ready",
            "checks": checks,
            "actors": actors,
            "actorStates": states,
        }
        return ok, body


def services() -> Services:
    return current_app.extensions["tickhub"]
