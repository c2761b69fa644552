"""Work that must run when a request's ASGI call ends, however it ends: registered by a
handler, run by `server.FinishResponses` (quart runs nothing of a response body whose client
went away before the body started)."""

from __future__ import annotations

from collections.abc import Callable

from quart import request

_KEY = "tickhub.on_request_end"


def on_request_end(callback: Callable[[], None]) -> None:
    request.scope.setdefault(_KEY, []).append(callback)


def run_request_end(scope: dict) -> None:
    for callback in scope.pop(_KEY, ()):
        callback()
