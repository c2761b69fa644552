"""Health and metrics routes: `/ops/*` on every server, plus each role's own health paths
(api: `{prefix}/health/*`, gateway: `/health/*`). Readiness is 503 while a dependency is
unreachable or an actor has failed, with the failing check and the actor table.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, Response
from quart_schema import document, operation_id, tag

from tickhub.http import openapi as doc
from tickhub.http.api import json_response
from tickhub.http.services import services


@tag(["health"])
@document(responses={200: (doc.Liveness, None)})
async def liveness() -> Response:
    """The process is alive."""
    return json_response({"ok": True})


@tag(["health"])
@document(responses={200: (doc.Readiness, None), 503: (doc.Readiness, None)})
async def readiness() -> Response:
    """Ready to serve: dependencies reachable, no failed actor; with the actor table."""
    ok, body = await services().readiness()
    return json_response(body, 200 if ok else 503)


@tag(["health"])
async def prometheus() -> Response:
    """Prometheus metrics (text format)."""
    return Response(generate_latest(), content_type=CONTENT_TYPE_LATEST)


def _named(view: Callable[[], Awaitable[Response]], name: str) -> Callable:
    """`view` under an operationId of its own: the same health routes are mounted by several
    roles, and an OpenAPI document's operation ids must be unique (client generators name
    their methods after them)."""

    @functools.wraps(view)  # keeps the OpenAPI annotations of `view`
    async def route() -> Response:
        return await view()

    return operation_id(name)(route)


def make_health_blueprint(name: str, prefix: str) -> Blueprint:
    bp = Blueprint(name, __name__, url_prefix=prefix)
    bp.add_url_rule(
        "/health/liveness", "liveness", _named(liveness, f"{name}_liveness"), methods=["GET"]
    )
    bp.add_url_rule(
        "/health/readiness", "readiness", _named(readiness, f"{name}_readiness"), methods=["GET"]
    )
    return bp


def make_ops_blueprint() -> Blueprint:
    bp = make_health_blueprint("ops", "/ops")
    bp.add_url_rule("/metrics", "metrics", prometheus, methods=["GET"])
    return bp
