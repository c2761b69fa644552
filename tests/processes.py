"""Real tickhub processes for tests: spawn a role on a free port and wait until it is ready;
synchronous access to the test database from sync (process) tests."""

from __future__ import annotations

import subprocess
import time

import pytest
import trio

from tests.conftest import TABLES, tickhub_command
from tests.consistency import differences
from tickhub.dev import wait_ready
from tickhub.sql.embedded import free_port


def wait_for(check, within: float = 30, every: float = 0.1) -> None:
    """Poll `check()` (an outside state: a server, a database) until it is true."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within} s: {check.__name__}")
        time.sleep(every)


@pytest.fixture
def spawn(process_env, tmp_path):
    procs = []

    def start(*args: str, port: int | None = None, wait: bool = True, **env: str):
        port = port or free_port()
        log = open(tmp_path / f"tickhub-{len(procs)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [*tickhub_command(), *args],
            env={**process_env, "PORT": str(port), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        if wait:
            wait_ready(url, proc)
        return proc, url

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def db_sync(pg_url):
    """Synchronous access to the test database for process tests (own trio run per call)."""
    from tickhub.bridge import open_bridge
    from tickhub.sql.db import open_database
    from tickhub.sql.migrate import migrate_up

    async def run(work):
        async with open_bridge(), open_database(pg_url) as db:
            return await work(db)

    async def reset(db):
        await migrate_up(db)
        await db.execute(f"TRUNCATE {TABLES}")

    trio.run(run, reset)

    class Access:
        def __call__(self, sql: str) -> list:
            async def q(db):
                return [r[0] for r in await db.fetch(sql)]

            return trio.run(run, q)

        def execute(self, sql: str) -> None:
            async def q(db):
                await db.execute(sql)

            trio.run(run, q)

        def differences(self) -> list[str]:
            return trio.run(run, differences)

    return Access()
