"""The process's one bridge to asyncio: asyncpg and redis-py's asyncio client run on a
trio-asyncio loop opened once at the top of the process, and every call crosses it here.

Every call has a deadline. When it passes (or the trio side is cancelled), the asyncio task
is cancelled and left to unwind on its own instead of being waited for: a server that stopped
answering (SIGSTOP, a dead host) keeps its client's cleanup waiting too — asyncpg sends a
cancel request that is never answered — and waiting for that would hang the caller for as
long as the server is away. The abandoned task ends once the server answers or its socket
times out; the pool's size bounds how many there can be.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio
import trio_asyncio

T = TypeVar("T")


class BridgeTimeout(TimeoutError):
    """The asyncio call did not finish within its deadline (the server is slow or away)."""


@asynccontextmanager
async def open_bridge() -> AsyncIterator[None]:
    """The process's one trio-asyncio loop: opened here, or the one already open above us."""
    if trio_asyncio.current_loop.get() is not None:
        yield
        return
    async with trio_asyncio.open_loop():
        yield


def retrieve(future: asyncio.Future) -> None:
    """For a task nobody awaits (abandoned, or left to finish on its own): fetching its
    outcome keeps asyncio from logging "exception was never retrieved"."""
    if not future.cancelled():
        future.exception()


async def call_aio(
    fn: Callable[..., Awaitable[T]],
    *args: Any,
    timeout_s: float,
    extend: Callable[[], Awaitable[float]] | None = None,
) -> T:
    """`await fn(*args)` on the bridge's loop, for at most `timeout_s` seconds — and then, with
    `extend`, for as many seconds more as `await extend()` says (0: none): a caller whose
    call's outcome matters can check that the server is still there before giving up."""
    loop = trio_asyncio.current_loop.get()
    if loop is None:
        raise RuntimeError("no asyncio bridge: call inside open_bridge()")
    future = asyncio.ensure_future(fn(*args), loop=loop)
    done = trio.Event()
    future.add_done_callback(lambda _: done.set())
    try:
        with trio.move_on_after(timeout_s):
            await done.wait()
        if not future.done() and extend is not None:
            more = await extend()
            with trio.move_on_after(more):
                await done.wait()
    finally:
        if not future.done():
            future.cancel()
            future.add_done_callback(retrieve)
    if not done.is_set():
        raise BridgeTimeout(f"no answer within {timeout_s:g} s")
    return future.result()


async def call_as(
    fn: Callable[..., Awaitable[T]],
    *args: Any,
    timeout_s: float,
    failures: tuple[type[BaseException], ...],
    raise_as: Callable[[str], Exception],
    extend: Callable[[], Awaitable[float]] | None = None,
) -> T:
    """`call_aio`, with a client library's failures (`failures`, a missed deadline among them
    if listed) raised as one error of ours (`raise_as`), so callers catch one outcome."""
    try:
        return await call_aio(fn, *args, timeout_s=timeout_s, extend=extend)
    except failures as exc:
        raise raise_as(f"{type(exc).__name__}: {exc}") from exc
