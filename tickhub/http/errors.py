"""The error envelope of API.md, request ids, and the handlers that make every failure a
clear answer: `{"error": {"code", "message", "details"?}}`, never a stack trace.
"""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from quart import Quart, Response, g, request
from werkzeug.exceptions import HTTPException

log = structlog.get_logger(actor="http")

CODES = {
    400: "BAD_REQUEST",
    401: "AUTH_REQUIRED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    408: "BAD_REQUEST",
    415: "UNSUPPORTED_MEDIA_TYPE",
    431: "BAD_REQUEST",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    503: "UNAVAILABLE",
}
RETRY_AFTER_S = 1
# Request line and headers together; beyond it: 431 (hypercorn only limits a head that
# arrives in pieces; one that arrives whole is parsed whatever its size).
MAX_HEADER_BYTES = 16 * 1024


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        details: list[Any] | None = None,
        headers: dict[str, str] | None = None,
        details_total: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.headers = headers or {}
        # When `details` lists only the first problems: how many there were in all.
        self.details_total = details_total


def unavailable(message: str) -> ApiError:
    return ApiError(503, message, headers={"Retry-After": str(RETRY_AFTER_S)})


def error_response(
    status: int,
    message: str,
    details: list[Any] | None = None,
    headers: dict | None = None,
    details_total: int | None = None,
) -> Response:
    body: dict[str, Any] = {"code": CODES.get(status, "ERROR"), "message": message}
    if details is not None:
        body["details"] = details
    if details_total is not None:
        body["detailsTotal"] = details_total
    response = _json({"error": body}, status)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    if status in (429, 503) and "Retry-After" not in response.headers:
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def _json(payload: Any, status: int) -> Response:
    import orjson

    return Response(orjson.dumps(payload), status=status, content_type="application/json")


def install(app: Quart) -> None:
    """Request ids on every response, and the envelope for every error."""

    @app.before_request
    async def limit_header_size() -> None:
        scope = request.scope
        line = len(request.method) + len(scope["raw_path"]) + len(scope["query_string"]) + 12
        size = line + sum(len(k) + len(v) + 4 for k, v in request.headers.items())
        if size > MAX_HEADER_BYTES:
            raise ApiError(431, f"request line and headers larger than {MAX_HEADER_BYTES} bytes")

    @app.before_request
    async def assign_request_id() -> None:
        incoming = request.headers.get("x-request-id", "")
        g.request_id = (
            incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else (uuid.uuid4().hex)
        )

    @app.after_request
    async def echo_request_id(response: Response) -> Response:
        response.headers["x-request-id"] = getattr(g, "request_id", None) or uuid.uuid4().hex
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.errorhandler(ApiError)
    async def api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, exc.details, exc.headers, exc.details_total)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        return error_response(status, exc.description or CODES.get(status, "error"))

    @app.errorhandler(Exception)
    async def internal_error(exc: Exception) -> Response:
        log.exception("unhandled error", path=request.path)
        return error_response(500, "internal error")
