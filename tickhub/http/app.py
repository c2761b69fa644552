"""One quart-trio app per process, assembled from the blueprints of its roles (served by
`http.server` inside the supervisor's nursery).
"""

from __future__ import annotations

import structlog
from quart import Response, request
from quart_trio import QuartTrio

from tickhub.http import api, docs, errors, limits, openapi, ops, sse, ui
from tickhub.http.services import Services
from tickhub.ui import assets

log = structlog.get_logger(actor="http")


def create_app(svc: Services, routes: frozenset[str]) -> QuartTrio:
    """The app of a process whose roles bring these route groups (`process.ROLE_TABLE`):
    api, ui, gateway; every app serves the ops routes and the API's documentation."""
    app = QuartTrio("tickhub")
    app.extensions["tickhub"] = svc
    settings = svc.settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["BODY_TIMEOUT"] = settings.http_body_timeout_s
    errors.install(app)
    openapi.install(app)
    app.register_blueprint(ops.make_ops_blueprint())
    app.register_blueprint(docs.make_blueprint())
    if "api" in routes:
        app.register_blueprint(api.make_blueprint(settings.api_prefix))
        app.register_blueprint(ops.make_health_blueprint("api_health", settings.api_prefix))
    if "gateway" in routes:
        app.register_blueprint(sse.make_blueprint())
        app.register_blueprint(ops.make_health_blueprint("gateway_health", ""))
    if "ui" in routes:
        app.register_blueprint(
            ui.make_blueprint(settings.ui_api_base_url, settings.ui_realtime_url)
        )
    _check_assets(svc, serves_dashboard="ui" in routes)
    _install_cors(app, settings.cors_allow_origins, settings.allow_origins)
    app.after_request(limits.add_headers)
    return app


def _check_assets(svc: Services, *, serves_dashboard: bool) -> None:
    """Say at start-up, and in readiness, when the vendored front-end files are missing (an
    install from a tree where neither `make ui` nor the wheel's build hook ran): otherwise the
    only sign is a dashboard without a chart and a blank /docs."""
    absent = assets.missing()
    if absent:
        log.warning(
            "front-end files missing: the dashboard cannot draw its chart and /docs cannot "
            "render; run `make ui`, or install tickhub from a wheel built with npm",
            missing=absent,
            directory=str(assets.UI_DIR),
        )
    if serves_dashboard:
        svc.dashboard = "missing" if assets.missing(files=assets.DASHBOARD) else "ok"


def _install_cors(
    app: QuartTrio, api_origins: tuple[str, ...], stream_origins: tuple[str, ...]
) -> None:
    """CORS pinned to configured origins: CORS_ALLOW_ORIGINS for REST, ALLOW_ORIGINS for SSE."""

    def allowed(origin: str) -> bool:
        origins = stream_origins if request.path.startswith("/realtime/") else api_origins
        return "*" in origins or origin in origins

    @app.after_request
    async def add_cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin and allowed(origin):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
                response.headers["Access-Control-Allow-Headers"] = (
                    "Content-Type, x-api-key, Authorization, Last-Event-ID, x-request-id"
                )
                response.headers["Access-Control-Max-Age"] = "600"
            response.headers["Access-Control-Expose-Headers"] = "x-request-id, Retry-After"
        return response
