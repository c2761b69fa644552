"""The live stream on sockets of its own: after the handshake, its bytes are written below the
HTTP framework.

A `GET /realtime/ticks` whose request head arrives whole in the connection's first read is
taken here (`http.server` decides). Its head is parsed with h11 and the handshake — auth,
limits, CORS, errors, the subscription — runs through the same ASGI app as every other
request (`http.sse`). A refusal is written back as the app answered, and the connection
closes. An accepted stream keeps the socket: the response head goes out with chunked
framing, and from then on the subscriber's `SocketSink` writes straight to the socket.

- `flush()` (called by the hub, once per flush) sends the subscriber's buffer as one chunk
  at once while the kernel has room; only when it has none are the bytes kept, and a drain
  task is started for this connection alone, which writes them as room appears. Meanwhile
  new frames wait in the subscriber's bounded buffer (its overflow policy applies).
- One task per connection watches the socket: the client going away (EOF, reset) ends the
  stream at once; a quiet stream gets a keepalive ping every SSE_KEEPALIVE_MS.
- `end()` (graceful stop) writes the last chunk and shuts the socket for writing.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import attrs
import h11
import structlog
import trio

from tickhub import clock
from tickhub.actors.subscriber import Subscriber
from tickhub.wire import keepalive_frame

log = structlog.get_logger(actor="stream")

# Marks a request whose connection the server owns (the ASGI scope's extensions): the SSE
# handler then hands its subscription back in the scope instead of streaming through ASGI.
OWN_SOCKET = "tickhub.own_socket"
SCOPE_KEY = "tickhub.stream"
# Bytes a client may send on an open stream (it has nothing to say) before it is closed.
MAX_CLIENT_BYTES = 64 * 1024
LAST_CHUNK = b"0\r\n\r\n"
_FRAMING = (b"content-length", b"transfer-encoding", b"connection")


@attrs.define(eq=False)
class Accepted:
    """What the SSE handler hands back for an owned connection (in the ASGI scope)."""

    subscriber: Subscriber
    hello: bytes
    keepalive_s: float
    release: Callable[[], None]  # unsubscribe and uncount, once the connection ends


def parse_head(data: bytes) -> tuple[h11.Connection, h11.Request] | None:
    """The request of a head that arrived whole, with the h11 connection that will write the
    answer; None when h11 finds it invalid (the framework then answers it)."""
    conn = h11.Connection(h11.SERVER)
    try:
        conn.receive_data(data)
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    return (conn, event) if isinstance(event, h11.Request) else None


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
        "extensions": {OWN_SOCKET: {}},
    }


async def serve_stream(asgi_app: Any, stream: trio.SocketStream, data: bytes, state: dict) -> bool:
    """Run the handshake of the stream request in `data` and serve it; False when the head
    is not a valid request (the caller hands the connection to the framework)."""
    parsed = parse_head(data)
    if parsed is None:
        return False
    conn, request = parsed
    scope = asgi_scope(request, stream.socket, state)
    answer = _Answer()
    await asgi_app(scope, answer.receive, answer.send)
    accepted: Accepted | None = scope.get(SCOPE_KEY)
    if accepted is not None and answer.status != 200:
        accepted.release()  # the app failed after subscribing (an after-request hook)
        accepted = None
    if accepted is None:
        await _answer_and_close(stream, conn, answer)
        return True
    # The body is ours from here: of unknown length (chunked, or until close for HTTP/1.0).
    headers = [(k, v) for k, v in answer.headers if k.lower() not in _FRAMING]
    head = conn.send(h11.Response(status_code=200, headers=headers))
    chunked = b"transfer-encoding: chunked" in head.lower()
    sock = socket.socket(fileno=stream.socket.detach())  # ours now: trio's stream is done
    await _own(sock, accepted, head, chunked)
    return True


@attrs.define
class _Answer:
    """The ASGI side of the handshake: the request has no body; the answer is recorded."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = attrs.field(factory=list)
    body: bytearray = attrs.field(factory=bytearray)
    _received: bool = False

    async def receive(self) -> dict:
        if not self._received:
            self._received = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await trio.sleep_forever()  # the app is done with us before this matters
        raise AssertionError("unreachable")

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")


async def _answer_and_close(
    stream: trio.SocketStream, conn: h11.Connection, answer: _Answer
) -> None:
    headers = [(k, v) for k, v in answer.headers if k.lower() not in _FRAMING]
    headers += [(b"content-length", b"%d" % len(answer.body)), (b"connection", b"close")]
    out = conn.send(h11.Response(status_code=answer.status or 500, headers=headers))
    out += conn.send(h11.Data(data=bytes(answer.body))) + conn.send(h11.EndOfMessage())
    with trio.move_on_after(5):
        try:
            await stream.send_all(out)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await stream.aclose()


async def _own(sock: socket.socket, accepted: Accepted, head: bytes, chunked: bool) -> None:
    sub = accepted.subscriber
    try:
        async with trio.open_nursery() as nursery:
            sink = SocketSink(sock, sub, chunked, nursery)
            sink.send(head + sink.frame(sub.first_chunk(accepted.hello)))
            sub.sink = sink
            if sub.closed:  # the server began to stop meanwhile
                sink.end()
            sink.flush(sub)  # what arrived between the subscription and now
            await sink.watch(accepted.keepalive_s)
            nursery.cancel_scope.cancel()
    finally:
        sub.sink = None
        accepted.release()
        trio.lowlevel.notify_closing(sock)
        sock.close()


@attrs.define(eq=False)
class SocketSink:
    """An owned stream connection's writer (the `Sink` of `actors.subscriber`)."""

    sock: socket.socket
    subscriber: Subscriber
    chunked: bool
    nursery: trio.Nursery
    stalled: bytes = b""  # framed bytes the kernel had no room for, written first
    draining: bool = False
    ended: bool = False
    gone: bool = False
    last_write: float = -math.inf

    def frame(self, data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data

    def flush(self, subscriber: Subscriber) -> None:
        if self.stalled or self.gone:
            return  # the drain task takes the buffer when the socket has room
        data = subscriber.take()
        if data:
            self.send(self.frame(data))

    def send(self, data: bytes) -> None:
        """Write now what the kernel takes; keep the rest for the drain task."""
        if self.stalled:
            self.stalled += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._lost()
            return
        self.last_write = trio.current_time()
        if sent < len(data):
            self.stalled = data[sent:]
            if not self.draining:
                self.draining = True
                self.nursery.start_soon(self._drain)

    async def _drain(self) -> None:
        try:
            while not self.gone:
                if not self.stalled:
                    data = self.subscriber.take()
                    if not data:
                        break
                    self.stalled = self.frame(data)
                await trio.lowlevel.wait_writable(self.sock)
                try:
                    sent = self.sock.send(self.stalled)
                except BlockingIOError:
                    continue
                except OSError:
                    self._lost()
                    return
                self.last_write = trio.current_time()
                self.stalled = self.stalled[sent:]
        finally:
            self.draining = False
        if self.ended:
            self._finish()

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.flush(self.subscriber)
        if not self.stalled:
            self._finish()  # else the drain task finishes once it has written the rest

    def _finish(self) -> None:
        """The last chunk, then no more writes: the client sees the response end."""
        if self.chunked and not self.gone:
            try:
                self.sock.send(LAST_CHUNK)
            except OSError:
                pass
        self._shutdown(socket.SHUT_WR)

    def _lost(self) -> None:
        """The client is gone: wake the watcher (EOF) so the connection ends now."""
        self.gone = True
        self._shutdown(socket.SHUT_RDWR)

    def _shutdown(self, how: int) -> None:
        try:
            self.sock.shutdown(how)
        except OSError:
            pass

    async def watch(self, keepalive_s: float) -> None:
        """Until the client goes away: its EOF or reset ends the stream; a quiet stream is
        pinged every `keepalive_s`."""
        received = 0
        while True:
            with trio.move_on_after(keepalive_s) as quiet:
                await trio.lowlevel.wait_readable(self.sock)
            if quiet.cancelled_caught:
                idle = trio.current_time() - self.last_write >= keepalive_s * 0.9
                if idle and not self.stalled and not self.ended:
                    self.send(self.frame(keepalive_frame(clock.wall_ms())))
                continue
            try:
                data = self.sock.recv(MAX_CLIENT_BYTES)
            except BlockingIOError:
                continue
            except OSError:
                return
            received += len(data)
            if not data or received > MAX_CLIENT_BYTES:
                return
