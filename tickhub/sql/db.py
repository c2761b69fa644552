"""The PostgreSQL adapter: an asyncpg pool driven from trio through the process's one
trio-asyncio loop.

Every method crosses the trio → asyncio bridge once. Work that needs several statements (a
flush, a migration) is an asyncio coroutine function handed to `run()` or `transaction()`,
which run it on one pooled connection inside a single bridged call. `sslmode` in
DATABASE_URL is honoured by asyncpg itself (Render's external URLs need `sslmode=require`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
import attrs
import structlog
import trio
import trio_asyncio

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
    TimeoutError,
)


class DatabaseUnavailable(RuntimeError):
    """Postgres could not be reached; the caller answers 503 and the client retries."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    # numeric → float at the edge: JSON carries floats, and text decoding is exact for them.
    await conn.set_type_codec(
        "numeric", encoder=str, decoder=float, schema="pg_catalog", format="text"
    )


@attrs.define
class Database:
    pool: asyncpg.Pool

    async def run(self, work: Work[T], *args: Any) -> T:
        """Run `work(conn, *args)` (an asyncio coroutine function) on one pooled connection."""

        async def unit() -> T:
            async with self.pool.acquire() as conn:
                return await work(conn, *args)

        return await self._bridge(unit)

    async def transaction(self, work: Work[T], *args: Any) -> T:
        """Like `run()`, inside one transaction."""

        async def unit() -> T:
            async with self.pool.acquire() as conn, conn.transaction():
                return await work(conn, *args)

        return await self._bridge(unit)

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self._bridge(self.pool.fetch, sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        return await self._bridge(self.pool.fetchrow, sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._bridge(self.pool.fetchval, sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        return await self._bridge(self.pool.execute, sql, *args)

    async def copy_records(self, table: str, records: list[tuple], columns: list[str]) -> None:
        async def unit(conn: asyncpg.Connection) -> None:
            await conn.copy_records_to_table(table, records=records, columns=columns)

        await self.run(unit)

    async def ping(self, timeout_s: float = 2.0) -> bool:
        with trio.move_on_after(timeout_s):
            try:
                return await self.fetchval("SELECT 1") == 1
            except DatabaseUnavailable:
                return False
        return False

    async def _bridge(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            return await trio_asyncio.aio_as_trio(fn)(*args)
        except UNAVAILABLE as exc:
            raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from exc


@asynccontextmanager
async def open_bridge() -> AsyncIterator[None]:
    """The process's one trio-asyncio loop: opened here, or the one already open above us."""
    if trio_asyncio.current_loop.get() is not None:
        yield
        return
    async with trio_asyncio.open_loop():
        yield


@asynccontextmanager
async def open_database(
    url: str, *, max_size: int = 8, connect_timeout_s: float = 30.0
) -> AsyncIterator[Database]:
    """Open a pool (inside `trio_asyncio.open_loop()`), waiting for Postgres to come up."""
    deadline = trio.current_time() + connect_timeout_s
    delay = 0.1
    while True:
        try:
            pool = await trio_asyncio.aio_as_trio(asyncpg.create_pool)(
                url,
                min_size=1,
                max_size=max_size,
                init=_init_connection,
                command_timeout=60,
                max_inactive_connection_lifetime=300,
            )
            break
        except UNAVAILABLE as exc:
            if trio.current_time() + delay > deadline:
                raise DatabaseUnavailable(f"cannot reach PostgreSQL: {exc}") from exc
            log.warning("waiting for postgres", error=str(exc), retry_in_s=delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 2.0)
    try:
        yield Database(pool)
    finally:
        with trio.move_on_after(5) as cleanup:
            cleanup.shield = True
            await trio_asyncio.aio_as_trio(pool.close)()
