"""The process's HTTP server: one port for REST, the dashboard and the live stream.

Connections are accepted here and sorted by their first read. One that opens with a request
of the hot routes — the webhook, the live stream — goes to the lean loop (`http.owned`:
h11 and the same app, without hypercorn's per-request cost; an accepted stream then keeps
its socket, `http.stream`). Every other connection is served by hypercorn's HTTP/1.1
connection handler as it would be by hypercorn itself, with what was read replayed to it —
and so is an owned connection as soon as a request comes on it that is not one of ours.

hypercorn's `serve()` owns its accept loop, so this module runs hypercorn's own pieces the
way `hypercorn.trio.run.worker_serve` does (its lifespan, worker context and per-connection
`TCPServer`): internals of hypercorn 0.18, pinned in pyproject.toml and exercised by every
HTTP test.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from tickhub.http.app_hooks import run_request_end
from tickhub.http.owned import Owned, Routes


def hypercorn_config(host: str, port: int, idle_timeout_s: float) -> Config:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 5
    # Idle and header-reading connections are closed after this: a slow-loris client that
    # trickles its request head never holds a connection longer. (No read timeout: an SSE
    # client sends nothing while it listens.)
    config.keep_alive_timeout = idle_timeout_s
    config.h11_max_incomplete_size = 16 * 1024  # request line + headers; beyond it: 431
    return config


class FinishResponses:
    """ASGI wrapper: the last message of a response is sent shielded from cancellation, and
    the request's end hooks (`app_hooks.on_request_end`) run when its call ends.

    hypercorn closes a connection that must close (for instance after answering a request
    whose body never arrived) from inside that send, in the request's task; quart-trio
    cancels that task as soon as the client side ends, which interrupted the close half-way
    and left the socket open for as long as a slow client liked. The send itself cannot hang:
    hypercorn writes with its own shield and the close does not wait for the peer."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        async def send_last_shielded(message: dict) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send_last_shielded)
        finally:
            run_request_end(scope)


class _Replayed(trio.abc.Stream):
    """A connection whose first bytes were already read: they come first again."""

    def __init__(self, stream: trio.SocketStream, first: bytes) -> None:
        self._stream = stream
        self._first = first
        self.socket = stream.socket  # what hypercorn reads the addresses from

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._first:
            data, self._first = self._first, b""
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


class _Door:
    """Sorts each accepted connection: the hot routes to the lean loop, the rest to hypercorn."""

    def __init__(
        self,
        app: Any,
        wrapped: Any,
        config: Config,
        context: WorkerContext,
        state: dict,
        routes: Routes,
    ) -> None:
        self.app = app  # the ASGI app (the lean loop calls it)
        self.wrapped = wrapped  # the same as hypercorn calls it
        self.config, self.context, self.state, self.routes = config, context, state, routes

    async def __call__(self, stream: trio.SocketStream) -> None:
        with trio.move_on_after(self.config.keep_alive_timeout):
            try:
                first = await stream.receive_some(MAX_RECV)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                first = b""
        if not first:  # nothing within the idle timeout, or gone: as hypercorn would
            await stream.aclose()
            return
        if not self.routes.ours(first):
            await self._hypercorn(stream, first)
            return
        owned = Owned(
            self.app,
            stream,
            self.routes,
            self.state,
            self.config.keep_alive_timeout,
            partial(self._hypercorn, stream),
            first,
        )
        try:
            await owned.serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await stream.aclose()

    async def _hypercorn(self, stream: trio.SocketStream, first: bytes) -> None:
        replayed = _Replayed(stream, first)
        state = ConnectionState(self.state.copy())
        await TCPServer(self.wrapped, self.config, self.context, state, replayed).run()


async def serve(
    app: Any,
    config: Config,
    stop: trio.Event,
    routes: Routes,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI app until `stop` is set (then finish in-flight requests within the
    graceful timeout); `routes` go on the lean loop. Reports the bound address(es)."""
    asgi = FinishResponses(app)
    wrapped = wrap_app(asgi, config.wsgi_max_body_size, "asgi")
    state: dict = {}
    lifespan = Lifespan(wrapped, config, state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            sockets = config.create_sockets()
            listeners = []
            for sock in sockets.insecure_sockets:
                sock.listen(config.backlog)
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
            binds = [
                "http://" + repr_socket_addr(s.family, s.getsockname())
                for s in sockets.insecure_sockets
            ]
            task_status.started(binds)
            door = _Door(asgi, wrapped, config, context, state, routes)
            async with trio.open_nursery() as accepting:
                accepting.start_soon(
                    partial(trio.serve_listeners, door, listeners, handler_nursery=connections)
                )
                await stop.wait()
                accepting.cancel_scope.cancel()
            await context.terminated.set()  # idle keep-alive connections close now
            connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
