"""The SSE handler's bookkeeping when a client goes away at any moment: the hub and the
per-client stream counts hold exactly the connections still open (no leaked subscriber
keeps receiving events and memory after its socket is gone)."""

from __future__ import annotations

import trio

from tickhub.actors.hub import Hub
from tickhub.actors.supervisor import Supervisor
from tickhub.config import load_settings
from tickhub.http.app import create_app
from tickhub.http.server import FinishResponses
from tickhub.http.services import Services


def _scope(path: str = "/realtime/ticks") -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
        "extensions": {},
    }


async def _services(nursery: trio.Nursery) -> Services:
    settings = load_settings({"API_KEY": "k"})
    return Services(settings, Supervisor(nursery), hub=Hub())


async def _connect_and_vanish(app, started_sends: int) -> None:
    """A client whose connection dies after `started_sends` response messages were sent:
    the next send never completes and the request task is cancelled."""
    sent = 0
    gone = trio.Event()

    async def receive() -> dict:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        nonlocal sent
        if sent >= started_sends:
            gone.set()
            await trio.sleep_forever()
        sent += 1

    with trio.move_on_after(1):
        await app(_scope(), receive, send)


async def test_a_client_gone_before_the_response_starts_leaves_no_subscriber():
    async with trio.open_nursery() as nursery:
        svc = await _services(nursery)
        app = FinishResponses(create_app(svc, frozenset({"gateway"})))
        for started in (0, 1, 2):  # gone before the head, after it, after the hello
            await _connect_and_vanish(app, started)
            assert svc.hub.clients == 0, started
            assert svc.streams == {}, started
        nursery.cancel_scope.cancel()


async def test_an_event_published_as_the_head_goes_out_reaches_the_client():
    """A browser treats the stream as open once the head arrives: what is published from
    then on must reach it, even before the body has begun."""
    async with trio.open_nursery() as nursery:
        svc = await _services(nursery)
        app = FinishResponses(create_app(svc, frozenset({"gateway"})))
        body = bytearray()
        got_it = trio.Event()

        async def receive() -> dict:
            await trio.sleep_forever()

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                svc.hub.publish("BTCUSDT", [b'{"marker":1}'])
            else:
                body.extend(message.get("body", b""))
                if b'"marker":1' in body:
                    got_it.set()

        with trio.move_on_after(2):
            async with trio.open_nursery() as inner:
                inner.start_soon(app, _scope(), receive, send)
                await got_it.wait()
                inner.cancel_scope.cancel()
        assert got_it.is_set()
        assert svc.hub.clients == 0
        nursery.cancel_scope.cancel()
