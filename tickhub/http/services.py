"""What the HTTP handlers of a process can reach: settings, supervisor, and whichever of the
database, pipeline, hub, ingest and Redis link this process's roles run (None when they do
not). The live actors (the feeder) are the supervisor's to hand out, incarnation by
incarnation.
"""

from __future__ import annotations

from typing import Any

import attrs
from quart import current_app

from tickhub.actors.hub import Hub
from tickhub.actors.ingest import Ingest
from tickhub.actors.pipeline import Pipeline
from tickhub.actors.supervisor import Supervisor
from tickhub.config import Settings
from tickhub.ratelimit import Limiter, MemoryLimiter
from tickhub.redis.link import RedisLink
from tickhub.sql.db import Database
from tickhub.sql.queries import Queries


@attrs.define
class Services:
    settings: Settings
    supervisor: Supervisor
    db: Database | None = None
    pipeline: Pipeline | None = None
    hub: Hub | None = None
    ingest: Ingest | None = None  # the api role's way to durability
    link: RedisLink | None = None  # when roles run in separate processes
    limiter: Limiter = attrs.field(factory=MemoryLimiter)  # shared through Redis when linked
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
        feeder = self.supervisor.current("feeder")
        if feeder is not None:
            checks["feeder"] = "ok" if feeder.ready() else "not posting"
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
