"""The PostgreSQL adapter: an asyncpg pool driven from trio through the process's one
trio-asyncio loop (`tickhub.bridge`).

Every method crosses the trio → asyncio bridge once, with a deadline (`timeout_s`, DB_TIMEOUT_MS
by default): a database that stopped answering turns into `DatabaseUnavailable` in bounded
time, never a hang. Work that needs several statements (a migration) is an asyncio coroutine
function handed to `run()`, which runs it on one pooled connection inside a single bridged
call. `sslmode` in DATABASE_URL is honoured by asyncpg itself
(Render's external URLs need `sslmode=require`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import asyncpg
import attrs
import structlog
import trio

from tickhub.backoff import Backoff
from tickhub.bridge import BridgeTimeout, call_aio, call_as, retrieve

log = structlog.get_logger(actor="db")

T = TypeVar("T")
Work = Callable[..., Awaitable[T]]

# asyncpg errors that mean "the database is not reachable right now" rather than a bug.
UNAVAILABLE = (
    OSError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    ConnectionError,
    TimeoutError,  # BridgeTimeout included: no answer within the deadline
)
# Errors where the database refused the data itself (class 22 data exception, class 23
# integrity violation): retrying the same rows cannot succeed.
DATA_FAULTS = (asyncpg.exceptions.DataError, asyncpg.exceptions.IntegrityConstraintViolationError)


class DatabaseUnavailable(RuntimeError):
    """Postgres could not be reached; the caller answers 503 and the client retries."""


class CommitRefused(RuntimeError):
    """A statement was rolled back because it ended after its cutoff (`sql.guard`)."""


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What the pool does to a connection handed back, beyond rolling back an open
    transaction (asyncpg does that itself): nothing. Its default runs a RESET query — a
    round trip on every release, a third of a one-tick flush's — for session state tickhub
    never leaves behind (no LISTEN, no SET, advisory locks released where taken)."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    # numeric → float at the edge: JSON carries floats, and text decoding is exact for them.
    await conn.set_type_codec(
        "numeric", encoder=str, decoder=float, schema="pg_catalog", format="text"
    )


@attrs.define
class Database:
    pool: asyncpg.Pool
    timeout_s: float = 5.0  # the deadline of a call that names none
    # Releases under way (`_one`): asyncio keeps only weak references to its tasks.
    _releases: set[asyncio.Task] = attrs.field(factory=set, init=False)

    async def run(self, work: Work[T], *args: Any, timeout_s: float | None = None) -> T:
        """Run `work(conn, *args)` (an asyncio coroutine function) on one pooled connection."""

        async def unit() -> T:
            async with self.pool.acquire() as conn:
                return await work(conn, *args)

        return await self._bridge(unit, timeout_s=timeout_s)

    async def fetch(
        self, sql: str, *args: Any, timeout_s: float | None = None
    ) -> list[asyncpg.Record]:
        return await self._bridge(self._one, "fetch", sql, *args, timeout_s=timeout_s)

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        return await self._bridge(self._one, "fetchrow", sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._bridge(self._one, "fetchval", sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        return await self._bridge(self._one, "execute", sql, *args)

    async def _one(self, method: str, sql: str, *args: Any) -> Any:
        """(asyncio side) One statement on a pooled connection. Its answer goes back as soon
        as it is in; the connection returns to the pool in a task of its own, since the
        pool's release (a shielded task, its idle timer re-armed) costs a one-tick flush
        ~0.2 ms more before the caller could see the rows."""
        conn = await self.pool.acquire()
        try:
            return await getattr(conn, method)(sql, *args)
        finally:
            release = asyncio.ensure_future(self.pool.release(conn))
            self._releases.add(release)
            release.add_done_callback(self._released)

    def _released(self, release: asyncio.Task) -> None:
        self._releases.discard(release)
        retrieve(release)

    async def fetch_outcome(
        self, sql: str, *args: Any, answer_s: float, probe_s: float, patience_s: float
    ) -> list[asyncpg.Record]:
        """`fetch` for a statement whose outcome must be known (a flush: committed or not).
        Its answer is awaited `answer_s`; past that, when the server still answers a probe on
        another connection (within `probe_s`), for `patience_s` more: the statement's own
        answer is on its way (this process, not the server, is behind). Only a server that
        stopped answering leaves the outcome unknown: DatabaseUnavailable."""

        async def alive() -> float:
            return patience_s if await self.ping(probe_s) else 0.0

        return await self._bridge(self._one, "fetch", sql, *args, timeout_s=answer_s, extend=alive)

    async def ping(self, timeout_s: float = 2.0) -> bool:
        try:
            answer = await self._bridge(self._one, "fetchval", "SELECT 1", timeout_s=timeout_s)
            return answer == 1
        except DatabaseUnavailable:
            return False

    async def _bridge(
        self,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        timeout_s: float | None = None,
        extend: Callable[[], Awaitable[float]] | None = None,
    ) -> T:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        return await call_as(
            fn,
            *args,
            timeout_s=timeout,
            failures=UNAVAILABLE,
            raise_as=DatabaseUnavailable,
            extend=extend,
        )


@asynccontextmanager
async def open_database(
    url: str, *, max_size: int = 8, connect_timeout_s: float = 30.0, timeout_s: float = 5.0
) -> AsyncIterator[Database]:
    """Open a pool (inside `bridge.open_bridge()`), waiting for Postgres to come up; every
    call then has a deadline of `timeout_s` unless it names its own."""
    deadline = trio.current_time() + connect_timeout_s
    backoff = Backoff(initial_s=0.1, max_s=2.0)
    while True:
        try:
            pool = await call_aio(
                partial(
                    asyncpg.create_pool,
                    url,
                    min_size=1,
                    max_size=max_size,
                    init=_init_connection,
                    reset=_keep_session,
                    # Deadlines are the bridge's (DB_TIMEOUT_MS, the migrations' own): a
                    # second timer per statement would cost every flush an asyncio timer
                    # and cut a long migration off at its 60 s.
                    command_timeout=None,
                    max_inactive_connection_lifetime=300,
                ),
                timeout_s=connect_timeout_s,
            )
            break
        except UNAVAILABLE as exc:
            delay = backoff.next()
            if trio.current_time() + delay > deadline:
                raise DatabaseUnavailable(f"cannot reach PostgreSQL: {exc}") from exc
            log.warning("waiting for postgres", error=str(exc), retry_in_s=delay)
            await trio.sleep(delay)
    try:
        yield Database(pool, timeout_s)
    finally:
        with trio.CancelScope(shield=True):
            try:
                await call_aio(pool.close, timeout_s=5)
            except BridgeTimeout:
                pool.terminate()  # a server that does not answer is not waited for
