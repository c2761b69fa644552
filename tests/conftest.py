"""Fixtures with real parts: one embedded PostgreSQL for the session (its own data directory,
a free port), a clean migrated database per test, and a whole tickhub process (the same
`run_process` production runs) inside the test's trio run, on a free port.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from tickhub.bridge import open_bridge
from tickhub.config import Settings, load_settings
from tickhub.logs import configure_logging
from tickhub.sql.db import Database, open_database
from tickhub.sql.embedded import EmbeddedPostgres
from tickhub.sql.migrate import migrate_up

API_KEY = "test-key"
TABLES = "ticks_raw, ticks_history, ohlc_1m, metrics_1m, candles_1h, symbols, source_stats"

configure_logging("warning")


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data", fsync=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_url(pg: EmbeddedPostgres) -> str:
    return pg.url


def make_settings(pg_url: str | None, **overrides: Any) -> Settings:
    base = load_settings(
        {
            "TICKHUB_ROLE": "all",
            "HOST": "127.0.0.1",
            "PORT": "0",
            "API_KEY": API_KEY,
            "LOG_LEVEL": "warning",
            "SSE_KEEPALIVE_MS": "1000",
            "STOP_TIMEOUT_S": "5",
        }
    )
    if pg_url:
        base = attrs.evolve(base, database_url=pg_url)
    return attrs.evolve(base, **overrides)


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[Database]:
    """A migrated, empty database (tables truncated before the test)."""
    async with open_bridge(), open_database(pg_url) as database:
        await migrate_up(database)
        await database.execute(f"TRUNCATE {TABLES}")
        yield database


@attrs.define
class Running:
    """A tickhub process running inside the test."""

    url: str
    settings: Settings
    stop: trio.Event
    done: trio.Event
    client: httpx.AsyncClient

    async def post_ticks(
        self, items: list[dict], source: str = "test", **kw: Any
    ) -> httpx.Response:
        return await self.client.post(
            self.settings.api_prefix + "/webhooks/ticks",
            json={"source": source, "items": items},
            headers={"x-api-key": API_KEY},
            **kw,
        )

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.client.get(path, **kw)

    async def shutdown(self) -> None:
        self.stop.set()
        await self.done.wait()


async def start_tickhub(nursery: trio.Nursery, settings: Settings) -> Running:
    from tickhub.process import run_process

    stop, done, served = trio.Event(), trio.Event(), trio.Event()
    box: list[str] = []

    def on_serving(url: str) -> None:
        box.append(url)
        served.set()

    async def run() -> None:
        try:
            await run_process(settings, on_serving=on_serving, stop=stop)
        finally:
            done.set()
            served.set()

    nursery.start_soon(run)
    await served.wait()
    if not box:
        raise RuntimeError("tickhub did not start")
    client = httpx.AsyncClient(base_url=box[0], timeout=10)
    return Running(box[0], settings, stop, done, client)


@pytest.fixture
async def tickhub(db: Database, pg_url: str, nursery: trio.Nursery) -> AsyncIterator[Running]:
    running = await start_tickhub(nursery, make_settings(pg_url))
    yield running
    await running.client.aclose()
    await running.shutdown()


# --- processes ---------------------------------------------------------------------------


def tickhub_command() -> list[str]:
    return [sys.executable, "-m", "tickhub"]


@pytest.fixture
def process_env(pg_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "TICKHUB"))}
    env.update(
        DATABASE_URL=pg_url,
        API_KEY=API_KEY,
        HOST="127.0.0.1",
        LOG_LEVEL="info",
        STOP_TIMEOUT_S="5",
    )
    return env


def artifacts_dir(name: str) -> Path:
    """Where tests leave what a person may want to look at (screenshots, logs)."""
    path = Path(__file__).resolve().parent.parent / "test-artifacts" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def psql(pg: EmbeddedPostgres, sql: str) -> str:
    from tickhub.sql.embedded import bin_dir

    out = subprocess.run(
        [
            str(bin_dir() / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(pg.port),
            "-U",
            "postgres",
            "-d",
            "tickhub",
            "-tAc",
            sql,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tickhub.dev import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    """The session Redis, emptied for this test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


pytest_plugins = ["tests.processes"]
