"""The gateway role's live stream, `GET /realtime/ticks`: the handshake (credentials,
limits, the query, connection caps) and one subscriber per connection.

Two ways out, the same stream on either:
- The usual one: the connection is the server's own (`http.stream`, marked in the scope's
  extensions). The handler hands the subscription back in the scope and answers with the
  stream's head only; the server then writes the body straight to the socket and releases
  the subscription when the connection ends.
- A stream request that came some other way (a keep-alive connection that served other
  requests first): the body is streamed through ASGI. When the client goes away the
  response task is cancelled and the `finally` below removes its subscriber at once; a
  client gone before the body even started is released when its request ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from quart import Blueprint, Response, request
from quart_schema import document, tag

from tickhub import clock
from tickhub.http import auth
from tickhub.http import openapi as doc
from tickhub.http.app_hooks import on_request_end
from tickhub.http.errors import ApiError
from tickhub.http.limits import admit, client_id
from tickhub.http.services import services
from tickhub.http.stream import OWN_SOCKET, SCOPE_KEY, Accepted
from tickhub.symbols import SYMBOL
from tickhub.wire import CONFLATE_MS, hello_frame


def _symbols() -> frozenset[str] | None:
    raw = request.args.get("symbols") or request.args.get("symbol")
    if not raw:
        return None
    symbols = frozenset(s.strip().upper() for s in raw.split(",") if s.strip())
    bad = [s for s in symbols if not SYMBOL.fullmatch(s)]
    if bad or len(symbols) > 100:
        raise ApiError(400, "symbols must be up to 100 valid symbols, comma-separated")
    return symbols or None


def _conflate_ms() -> int:
    raw = request.args.get("conflate")
    if raw is None or raw == "0":
        return 0
    # Plain decimal digits only (int() would also take " 50", "+50" and "5_0").
    value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 6 else -1
    low, high = CONFLATE_MS
    if not low <= value <= high:
        raise ApiError(400, f"conflate must be 0 or milliseconds from {low} to {high}")
    return value


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
        conflate_ms = _conflate_ms()
        svc.streams[client] = svc.streams.get(client, 0) + 1
        # Subscribed before the head goes out: nothing published from then on is missed.
        subscriber = hub.subscribe(
            symbols, _last_event_id(), conflate_ms / 1000 if conflate_ms else None
        )
        keepalive_s = svc.settings.sse_keepalive_ms / 1000
        hello = hello_frame(clock.wall_ms(), symbols, conflate_ms)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                hub.unsubscribe(subscriber)
                svc.streams[client] -= 1
                if not svc.streams[client]:
                    del svc.streams[client]

        if OWN_SOCKET in request.scope.get("extensions", {}):
            request.scope[SCOPE_KEY] = Accepted(subscriber, hello, keepalive_s, release)
            body: Any = b""
        else:
            # Also when the client is gone before quart starts the body (then it never runs).
            on_request_end(release)

            async def streamed() -> AsyncIterator[bytes]:
                try:
                    async for chunk in subscriber.frames(hello, keepalive_s):
                        yield chunk
                finally:
                    release()

            body = streamed()
        response = Response(body, content_type="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        response.timeout = None
        return response

    return bp
