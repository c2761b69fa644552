"""The gateway role's live stream, `GET /realtime/ticks`: one subscriber per connection.

The response never times out while the client is connected; when the client goes away the
response task is cancelled and the `finally` below removes its subscriber at once; a client
gone before the body even started is released when its request ends (`on_request_end`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from quart import Blueprint, Response, request
from quart_schema import document, tag

from tickhub.actors.hub import hello_frame
from tickhub.http import auth
from tickhub.http import openapi as doc
from tickhub.http.app_hooks import on_request_end
from tickhub.http.errors import ApiError
from tickhub.http.limits import admit, client_id
from tickhub.http.services import services
from tickhub.http.validation import SYMBOL


def _symbols() -> frozenset[str] | None:
    raw = request.args.get("symbols") or request.args.get("symbol")
    if not raw:
        return None
    symbols = frozenset(s.strip().upper() for s in raw.split(",") if s.strip())
    bad = [s for s in symbols if not SYMBOL.fullmatch(s)]
    if bad or len(symbols) > 100:
        raise ApiError(400, "symbols must be up to 100 valid symbols, comma-separated")
    return symbols or None


def _last_event_id() -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.args.get("lastEventId")
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        return -1  # not one of ours: the client gets a reset and reloads


def make_blueprint() -> Blueprint:
    bp = Blueprint("gateway", __name__)

    @bp.get("/realtime/ticks")
    @tag(["stream"])
    @document(
        querystring=doc.StreamQuery,
        responses={code: (doc.Error, None) for code in (400, 401, 403, 429)},
    )
    async def stream() -> Response:
        """Live ticks with their 1-minute candle and SMA10 (Server-Sent Events)."""
        svc = services()
        settings = svc.settings
        caller = await admit(
            svc, "stream", auth.STREAM, required=settings.read_auth, allow_query_token=True
        )
        hub = svc.hub
        symbols = _symbols()
        client = client_id(svc, caller)
        if hub.clients >= settings.sse_max_clients:
            raise ApiError(429, "too many stream connections", headers={"Retry-After": "5"})
        if svc.streams.get(client, 0) >= settings.sse_max_per_client:
            raise ApiError(
                429, "too many stream connections from this client", headers={"Retry-After": "5"}
            )
        svc.streams[client] = svc.streams.get(client, 0) + 1
        subscriber = hub.subscribe(symbols, _last_event_id())  # before the head: no gap
        keepalive_s = svc.settings.sse_keepalive_ms / 1000
        hello = hello_frame(int(time.time() * 1000), symbols)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                hub.unsubscribe(subscriber)
                svc.streams[client] -= 1
                if not svc.streams[client]:
                    del svc.streams[client]

        # Also when the client is gone before quart starts the body (then it never runs).
        on_request_end(release)

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in subscriber.frames(hello, keepalive_s):
                    yield chunk
            finally:
                release()

        response = Response(body(), content_type="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        response.timeout = None
        return response

    return bp
