"""The live stream on sockets of its own: after the handshake, its bytes are written below the
HTTP framework.

The handshake — auth, limits, CORS, errors, the subscription — runs through the app like any
request on the server's own connections (`http.owned`, `http.sse`). An accepted stream keeps
the socket (`keep`): the response head goes out with chunked framing, and from then on the
subscriber's `SocketSink` writes straight to the socket.

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


async def keep(
    stream: trio.SocketStream,
    conn: h11.Connection,
    headers: list[tuple[bytes, bytes]],
    accepted: Accepted,
) -> None:
    """Serve an accepted stream on its socket until the client goes away: the head (the
    app's headers; the body of unknown length: chunked, or until close for HTTP/1.0), then
    the subscriber's frames."""
    headers = [(k, v) for k, v in headers if k.lower() not in _FRAMING]
    head = conn.send(h11.Response(status_code=200, headers=headers))
    chunked = b"transfer-encoding: chunked" in head.lower()
    sock = socket.socket(fileno=stream.socket.detach())  # ours now: trio's stream is done
    await _own(sock, accepted, head, chunked)


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
