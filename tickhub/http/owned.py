"""The connections the server keeps for itself: the hot routes — the webhook
(`POST {prefix}/webhooks/ticks`) and the live stream (`GET /realtime/ticks`) — served on a
lean HTTP/1.1 loop instead of hypercorn's per-request machinery.

hypercorn costs about half a millisecond of CPU per request on this stack (a task group and
tasks per request, its idle-timer task restarted each time, a send lock and shielded cancel
scopes around every write): as much as the rest of a one-tick webhook's ack path. Here each
request is parsed and answered with h11 — what hypercorn itself parses with — and handed
to the same ASGI app as every other request, so authentication, limits, validation, CORS,
request ids and the error envelope are the app's, unchanged. Only the transport is leaner:
one task per connection, the body passed on as it arrives (`Expect: 100-continue`
honoured), keep-alive between requests.

A request that is not one of these (or a head that does not arrive within the idle timeout,
or that h11 refuses) hands the connection, with every byte read so far, to hypercorn, which
then serves it for the rest of its life. An accepted stream keeps the socket
(`http.stream`): its response is written below the app from then on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import attrs
import h11
import trio

from tickhub.http import stream as live

# The most a request head may take before it is refused (431, like hypercorn's setting).
MAX_HEAD = 16 * 1024
# Bytes of a body handed to the app per message.
CHUNK = 64 * 1024


@attrs.frozen
class Routes:
    """Which requests the lean loop serves: the webhook under the API prefix, the stream."""

    webhook: bytes  # e.g. b"POST /api/v1/webhooks/ticks"
    stream: bytes = b"GET /realtime/ticks"

    @classmethod
    def for_prefix(cls, prefix: str, *, api: bool, gateway: bool) -> Routes:
        webhook = f"POST {prefix}/webhooks/ticks".encode() if api else b"\0"
        return cls(webhook, b"GET /realtime/ticks" if gateway else b"\0")

    def ours(self, head: bytes) -> bool:
        """Whether a request line (or the start of a head) is one of ours."""
        for start in (self.webhook, self.stream):
            if head.startswith(start) and head[len(start) : len(start) + 1] in (b" ", b"?"):
                return True
        return False


Handover = Callable[[bytes], Awaitable[None]]


@attrs.define
class Owned:
    """One connection on the lean loop. `serve()` returns when it is done with it, or after
    handing it to hypercorn (`handover`, with the bytes read and not yet served)."""

    app: Any  # the ASGI app
    stream: trio.SocketStream
    routes: Routes
    state: dict  # the lifespan state, copied into each scope
    idle_timeout_s: float
    handover: Handover
    buffer: bytes = b""

    async def serve(self) -> None:
        while True:
            if not await self._read_head():
                return  # gone, idle too long, or handed over
            raw, self.buffer = self.buffer, b""
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
            conn.receive_data(raw)
            try:
                request = conn.next_event()
            except h11.RemoteProtocolError:
                return await self.handover(raw)  # a malformed head: hypercorn answers it
            assert isinstance(request, h11.Request)
            if not await self._answer(conn, request):
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return await self._close()
            self.buffer = bytes(conn.trailing_data[0])

    async def _read_head(self) -> bool:
        """Until the buffer holds a whole request head of ours; hands the connection over
        as soon as what arrived is not one of ours."""
        with trio.move_on_after(self.idle_timeout_s):
            while True:
                line_known = b"\r\n" in self.buffer or len(self.buffer) >= MAX_HEAD
                if line_known and not self.routes.ours(self.buffer):
                    await self.handover(self.buffer)
                    return False
                if b"\r\n\r\n" in self.buffer:
                    return True
                if len(self.buffer) > MAX_HEAD:  # ours, but too large: the app says 431
                    await self.handover(self.buffer)
                    return False
                data = await self.stream.receive_some(CHUNK)
                if not data:
                    await self._close()
                    return False
                self.buffer += data
        await self._close()  # no whole head within the idle timeout (slow loris)
        return False

    async def _answer(self, conn: h11.Connection, request: h11.Request) -> bool:
        """Run the request through the app and write its answer; False when the connection
        is no longer ours (a stream kept the socket, or the client went away)."""
        scope = asgi_scope(request, self.stream.socket, self.state)
        exchange = _Exchange(conn, self.stream)
        await self.app(scope, exchange.receive, exchange.send)
        accepted: live.Accepted | None = scope.get(live.SCOPE_KEY)
        if accepted is not None:
            if exchange.status == 200:
                await live.keep(self.stream, conn, exchange.headers, accepted)
                return False
            accepted.release()  # the app failed after subscribing (an after-request hook)
        return await exchange.finish()

    async def _close(self) -> None:
        await self.stream.aclose()


def asgi_scope(request: h11.Request, sock: Any, state: dict) -> dict[str, Any]:
    """The ASGI scope of a request, built as hypercorn builds it."""
    path, _, query = request.target.partition(b"?")
    peer, here = sock.getpeername(), sock.getsockname()
    return {
        "type": "http",
        "http_version": request.http_version.decode(),
        "asgi": {"spec_version": "2.1", "version": "3.0"},
        "method": request.method.decode(),
        "scheme": "http",
        "path": unquote(path.decode("ascii")),
        "raw_path": path,
        "query_string": query,
        "root_path": "",
        "headers": list(request.headers),
        "client": (peer[0], peer[1]),
        "server": (here[0], here[1]),
        "state": dict(state),
        "extensions": {live.OWN_SOCKET: {}},
    }


@attrs.define
class _Exchange:
    """The ASGI side of one request on the lean loop: the body from h11 as it arrives, the
    answer collected and written with h11."""

    conn: h11.Connection
    stream: trio.SocketStream
    status: int = 0
    headers: list[tuple[bytes, bytes]] = attrs.field(factory=list)
    body: list[bytes] = attrs.field(factory=list)
    _ended: bool = False

    async def receive(self) -> dict:
        if self._ended:
            await trio.sleep_forever()  # the app is done with the body; it never waits here
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                if self.conn.they_are_waiting_for_100_continue:
                    await self._write(
                        self.conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                    )
                data = await self.stream.receive_some(CHUNK)
                if not data:
                    return {"type": "http.disconnect"}
                self.conn.receive_data(data)
            elif isinstance(event, h11.Data):
                return {"type": "http.request", "body": bytes(event.data), "more_body": True}
            elif isinstance(event, h11.EndOfMessage):
                self._ended = True
                return {"type": "http.request", "body": b"", "more_body": False}
            else:  # ConnectionClosed, or a protocol error surfaced as PAUSED
                return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
        elif message["type"] == "http.response.body":
            self.body.append(bytes(message.get("body", b"")))

    async def finish(self) -> bool:
        """Write the answer; whether the connection can serve another request."""
        body = b"".join(self.body)
        headers = [(k, v) for k, v in self.headers if k.lower() not in (b"transfer-encoding",)]
        if not any(k.lower() == b"content-length" for k, _ in headers):
            headers.append((b"content-length", b"%d" % len(body)))
        if self.conn.their_state is not h11.DONE:  # the app answered before the body ended
            headers.append((b"connection", b"close"))
        out = self.conn.send(h11.Response(status_code=self.status or 500, headers=headers))
        out += self.conn.send(h11.Data(data=body)) if body else b""
        out += self.conn.send(h11.EndOfMessage())
        return await self._write(out)

    async def _write(self, data: bytes) -> bool:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True
