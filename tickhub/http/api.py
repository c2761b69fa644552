"""The api role's routes: webhooks (ingest with a durable ack), queries, and its health paths.

`POST /webhooks/ticks` answers 202 only once the whole batch is committed; a batch that finds
no room within INGEST_TIMEOUT_MS, or whose flush fails, gets 503 with Retry-After and nothing
of it is stored (the writer commits a batch whole or not at all).
"""

from __future__ import annotations

from typing import Any

import orjson
import structlog
import trio
from quart import Blueprint, Response, request
from quart_schema import document, security_scheme, tag

from tickhub import metrics
from tickhub.actors.ingest import IngestRejected, IngestUnavailable
from tickhub.clock import wall_us
from tickhub.http import auth
from tickhub.http import openapi as doc
from tickhub.http.auth import Caller
from tickhub.http.errors import ApiError, unavailable
from tickhub.http.limits import admit
from tickhub.http.services import services
from tickhub.http.validation import (
    BadRequest,
    Invalid,
    load_json,
    normal_symbol,
    parse_symbols,
    parse_ticks,
)
from tickhub.redis.link import RedisUnavailable
from tickhub.sql.db import DatabaseUnavailable
from tickhub.sql.queries import INTERVALS, WINDOWS

log = structlog.get_logger(actor="api")

CANDLE_VIEWS = {"ohlc1m", "ohlc"}
HISTORY_LIMIT_MAX = 2000
CANDLE_LIMIT_MAX = 2000


def path_symbol(raw: str) -> str:
    """The symbol of a path; one that cannot exist (bad characters, NUL) is a 404 at once."""
    symbol = normal_symbol(raw)
    if symbol is None:
        raise ApiError(404, "no such symbol")
    return symbol


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status=status, content_type="application/json")


async def ingest_access() -> Caller:
    """The webhook's caller: an API key or an `ingest` token, within its rate limit."""
    return await admit(services(), "webhooks", auth.INGEST, required=True)


async def read_access() -> Caller | None:
    """Queries are open unless READ_AUTH=1; either way they count against the query limit."""
    svc = services()
    return await admit(svc, "queries", auth.READ, required=svc.settings.read_auth)


async def read_json_body() -> Any:
    settings = services().settings
    mimetype = request.mimetype
    if mimetype != "application/json":
        raise ApiError(415, "expected Content-Type: application/json")
    length = request.content_length
    if length is not None and length > settings.max_body_bytes:
        raise ApiError(413, f"body larger than {settings.max_body_bytes} bytes")
    # quart's own BODY_TIMEOUT relies on asyncio; under trio the deadline is ours.
    with trio.move_on_after(settings.http_body_timeout_s) as slow:
        body = await request.get_data(cache=False)
    if slow.cancelled_caught:
        raise ApiError(
            408, "the request body did not arrive in time", headers={"Connection": "close"}
        )
    if len(body) > settings.max_body_bytes:
        raise ApiError(413, f"body larger than {settings.max_body_bytes} bytes")
    try:
        return load_json(body)
    except BadRequest as exc:
        raise ApiError(400, str(exc)) from None


def make_blueprint(prefix: str) -> Blueprint:
    bp = Blueprint("api", __name__, url_prefix=prefix)

    @bp.post("/webhooks/ticks")
    @tag(["ingest"])
    @security_scheme([{"ApiKey": []}, {"Bearer": []}])
    @document(
        request=doc.TicksIn,
        responses=_errors(doc.IngestAccepted, 202, 400, 401, 403, 413, 415, 429, 422, 503),
    )
    async def ingest_ticks() -> Response:
        """Ingest a batch of ticks; 202 once the whole batch is committed."""
        try:
            return await _ingest_ticks()
        except ApiError as exc:
            metrics.INGEST_REQUESTS.labels(str(exc.status)).inc()
            raise

    @bp.post("/webhooks/symbols")
    @tag(["ingest"])
    @security_scheme([{"ApiKey": []}, {"Bearer": []}])
    @document(
        request=doc.SymbolsIn,
        responses=_errors(doc.Upserted, 202, 400, 401, 403, 413, 415, 422, 429, 503),
    )
    async def upsert_symbols() -> Response:
        """Create or update symbols (base, quote, active)."""
        await ingest_access()
        svc = services()
        doc = await read_json_body()
        try:
            rows = parse_symbols(doc, max_items=svc.settings.max_batch_items)
        except Invalid as exc:
            raise _invalid("invalid symbols", exc) from None
        count = await _db(svc.queries.upsert_symbols(rows))
        return json_response({"upserted": count, "skipped": 0}, 202)

    @bp.post("/auth/stream-token")
    @tag(["auth"])
    @security_scheme([{"ApiKey": []}, {"Bearer": []}])
    @document(responses=_errors(doc.StreamToken, 200, 401, 403, 404, 429))
    async def stream_token() -> Response:
        """A short-lived token for `GET /realtime/ticks?token=` (EventSource sends no headers)."""
        svc = services()
        if not svc.settings.jwt_secret:
            raise ApiError(404, "stream tokens are not enabled (JWT_SECRET)")
        caller = await admit(svc, "queries", auth.READ, required=True)
        token, expires = auth.issue_stream_token(svc.settings, caller)
        return json_response({"token": token, "expiresAt": expires})

    @bp.get("/symbols")
    @tag(["queries"])
    @document(responses=_errors(doc.SymbolList, 200, 401, 403, 429, 503))
    async def list_symbols() -> Response:
        """Active symbols, by symbol."""
        await read_access()
        return json_response(await _db(services().queries.symbols()))

    @bp.get("/ticks/<path:symbol>")
    @tag(["queries"])
    @document(responses=_errors(doc.Tick, 200, 401, 403, 404, 429, 503))
    async def latest_tick(symbol: str) -> Response:
        """The latest tick of a symbol."""
        await read_access()
        symbol = path_symbol(symbol)
        tick = await _db(services().queries.latest_tick(symbol))
        if tick is None:
            raise ApiError(404, f"no ticks for {symbol}")
        return json_response(tick)

    @bp.get("/ticks/<path:symbol>/history")
    @tag(["queries"])
    @document(
        querystring=doc.HistoryQuery,
        responses=_errors(doc.HistoryPage, 200, 400, 401, 403, 404, 429, 503),
    )
    async def history(symbol: str) -> Response:
        """Raw ticks (newest first) or candles with VWAP and SMA10 (`view=ohlc1m|ohlc`)."""
        await read_access()
        queries = services().queries
        symbol = path_symbol(symbol)
        args = request.args
        view = args.get("view")
        if args.get("agg") == "1m" or args.get("shape") == "candle":
            view = view or "ohlc1m"
        before_us = _before(args.get("before"))
        if view is None or view == "raw":
            limit = _int_arg("limit", 200, 1, HISTORY_LIMIT_MAX)
            return json_response(await _db(queries.history(symbol, limit, before_us)))
        if view not in CANDLE_VIEWS:
            raise ApiError(400, "view must be raw, ohlc1m or ohlc")
        interval = args.get("interval", "1m") if view == "ohlc" else "1m"
        if interval not in INTERVALS:
            raise ApiError(400, f"interval must be one of {', '.join(INTERVALS)}")
        limit = _int_arg("limit", 200, 1, CANDLE_LIMIT_MAX)
        fill = _bool_arg("fill")
        page = await _db(queries.candles(symbol, INTERVALS[interval], limit, before_us, fill))
        return json_response(page)

    @bp.get("/metrics/<path:symbol>")
    @tag(["queries"])
    @document(
        querystring=doc.MetricsQuery,
        responses=_errors(doc.Metrics, 200, 400, 401, 403, 404, 429, 503),
    )
    async def symbol_metrics(symbol: str) -> Response:
        """Count, open, min, max, avg, VWAP, volume and last of the latest window with ticks."""
        await read_access()
        window = request.args.get("window", "1m")
        if window not in WINDOWS:
            raise ApiError(400, f"window must be one of {', '.join(WINDOWS)}")
        symbol = path_symbol(symbol)
        result = await _db(services().queries.metrics(symbol, WINDOWS[window]))
        if result is None:
            raise ApiError(404, f"no ticks for {symbol}")
        return json_response(result)

    @bp.get("/stats")
    @tag(["queries"])
    @document(responses=_errors(doc.Stats, 200, 401, 403, 429, 503))
    async def stats() -> Response:
        """Stored tick counts per source and the ingest queue."""
        await read_access()
        svc = services()
        body = await _db(svc.queries.stats())
        body["queue"] = await _redis(svc.queue_stats())
        return json_response(body)

    return bp


def _invalid(what: str, exc: Invalid) -> ApiError:
    total = exc.total if exc.total > len(exc.details) else None
    return ApiError(422, f"{what}: {exc}", exc.details, details_total=total)


def _errors(model: Any, status: int, *errors: int) -> dict[int, tuple[Any, None]]:
    """The success model plus the error envelope for each error status the route can give."""
    return {status: (model, None), **{code: (doc.Error, None) for code in errors}}


async def _ingest_ticks() -> Response:
    svc = services()
    settings = svc.settings
    deadline = trio.current_time() + settings.ingest_timeout_ms / 1000
    caller = await ingest_access()
    doc = await read_json_body()
    now_us = wall_us()
    try:
        batch = parse_ticks(
            doc,
            now_us=now_us,
            max_items=settings.max_batch_items,
            max_skew_s=settings.max_future_skew_s,
        )
    except Invalid as exc:
        items = doc.get("items") if isinstance(doc, dict) else None
        metrics.INGEST_TICKS.labels("rejected").inc(len(items) if isinstance(items, list) else 0)
        raise _invalid("invalid ticks", exc) from None
    try:
        result = await svc.ingest.ingest(batch, deadline)
    except IngestUnavailable as exc:
        log.warning("batch not taken", items=batch.items, error=str(exc), caller=caller.subject)
        raise unavailable(str(exc)) from None
    except IngestRejected as exc:
        metrics.INGEST_TICKS.labels("rejected").inc(batch.items)
        log.warning("batch refused by the store", items=batch.items, error=str(exc))
        detail = {"index": None, "field": "items", "message": "the store cannot hold these values"}
        raise ApiError(422, "invalid ticks", [detail]) from None
    metrics.INGEST_TICKS.labels("accepted").inc(result.accepted)
    metrics.INGEST_TICKS.labels("duplicate").inc(result.duplicates)
    metrics.INGEST_REQUESTS.labels("202").inc()
    log.debug("batch accepted", caller=caller.subject, items=batch.items, new=result.accepted)
    return json_response(
        {
            "accepted": result.accepted,
            "duplicates": result.duplicates,
            "queued": batch.items,
            "rejected": 0,
            "skipped": 0,
        },
        202,
    )


async def _redis(awaitable: Any) -> Any:
    try:
        return await awaitable
    except RedisUnavailable:
        raise unavailable("queue unavailable") from None


async def _db(awaitable: Any) -> Any:
    try:
        return await awaitable
    except DatabaseUnavailable:
        raise unavailable("database unavailable") from None


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be from {low} to {high}")
    return value


def _bool_arg(name: str) -> bool:
    raw = request.args.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise ApiError(400, f"{name} must be true or false")
    return raw in ("true", "1")


def _before(raw: str | None) -> int:
    """`before` as epoch microseconds (exclusive); default: after everything stored."""
    if raw is None:
        return wall_us() + 10**12  # far future: newest first from the top
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, "before must be epoch seconds") from None
    if not 0 <= value < 1e11:
        raise ApiError(400, "before must be epoch seconds")
    return round(value * 1_000_000)
