"""Fixtures for the browser tests: Debian's chromium driven by Playwright's sync API, and a real
tickhub process (`python -m tickhub run --role all`) on a free port over a clean database.

The tests are plain sync functions: Playwright's sync API runs its own event loop and cannot
run inside trio (pytest-trio's `trio_mode` only touches async tests).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import API_KEY, TABLES, tickhub_command
from tickhub.dev import wait_ready
from tickhub.sql.embedded import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}

# Network failures the page logs while the server is down (failed fetches, the EventSource's
# failed reconnects). Only the kill/restart test tolerates them.
NETWORK_ERRORS = ("net::ERR_", "Failed to load resource", "Failed to fetch")


class Server:
    """One tickhub process at a fixed port; `kill` + `start` is a crash and a restart on the
    same port and database."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "PORT": str(self.port)}
        self.logs = logs
        self.proc: subprocess.Popen | None = None
        self.runs = 0
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def start(self) -> None:
        log = self.logs / f"tickhub-{self.runs}.log"
        self.runs += 1
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [*tickhub_command(), "run", "--role", "all"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_ready(self.url, self.proc)
        except AssertionError as err:
            tail = log.read_text()[-2000:]
            raise AssertionError(f"{err}; its log ends:\n{tail}") from None

    def kill(self) -> None:
        """SIGKILL: no graceful stop, streams are cut mid-flight."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.client.close()

    def post_ticks(self, items: list[dict[str, Any]], source: str = "e2e") -> dict[str, Any]:
        response = self.client.post(
            "/api/v1/webhooks/ticks",
            json={"source": source, "items": items},
            headers={"x-api-key": API_KEY},
        )
        assert response.status_code == 202, response.text
        return response.json()

    def candles(self, symbol: str, interval: str = "1m", limit: int = 500) -> list[dict]:
        """REST candles, oldest first, as the page asks for them."""
        response = self.client.get(
            f"/api/v1/ticks/{symbol}/history",
            params={"view": "ohlc", "interval": interval, "limit": limit},
        )
        assert response.status_code == 200, response.text
        return response.json()["items"]


def reset_database(pg_url: str) -> None:
    from tickhub.bridge import open_bridge
    from tickhub.sql.db import open_database
    from tickhub.sql.migrate import migrate_up

    async def reset() -> None:
        async with open_bridge(), open_database(pg_url) as db:
            await migrate_up(db)
            await db.execute(f"TRUNCATE {TABLES}")

    # In a thread of its own: between calls, Playwright's sync API leaves its asyncio loop
    # marked as running in this thread, where trio_asyncio would pick it up.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(trio.run, reset).result()


@pytest.fixture
def server(process_env: dict[str, str], pg_url: str, tmp_path: Path) -> Iterator[Server]:
    """A running tickhub over an empty database (its logs in the test's tmp_path)."""
    reset_database(pg_url)
    running = Server(process_env, tmp_path)
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one test module. Not for the session: between calls Playwright's sync API
    leaves its asyncio loop marked as running in the main thread, which would break the trio
    tests (trio_asyncio) that run after this module; stopping Playwright clears the mark."""
    from playwright.sync_api import sync_playwright

    # trio_asyncio (imported by tickhub.sql) makes asyncio.new_event_loop() outside trio return
    # its own loop, which Playwright's dispatcher cannot drive; give Playwright a plain one.
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    try:
        pw = sync_playwright().start()
    finally:
        asyncio.set_event_loop_policy(None)
    try:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()
    finally:
        pw.stop()


class Console:
    """Errors the page reported: console.error messages and uncaught exceptions."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def on_console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text} ({message.location.get('url')})")

    def on_pageerror(self, error: Any) -> None:
        self.errors.append(f"pageerror: {error}")

    def unexpected(self, *, allow_network: bool = False) -> list[str]:
        if not allow_network:
            return list(self.errors)
        return [e for e in self.errors if not any(n in e for n in NETWORK_ERRORS)]


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def page(browser: Any, console: Console) -> Iterator[Any]:
    """A fresh browser context (no stored preferences) at a desktop viewport, dark scheme,
    en-US numbers, with its console errors collected in `console`."""
    context = browser.new_context(viewport=DESKTOP, color_scheme="dark", locale="en-US")
    context.set_default_timeout(10_000)
    tab = context.new_page()
    tab.on("console", console.on_console)
    tab.on("pageerror", console.on_pageerror)
    try:
        yield tab
    finally:
        context.close()
