"""`tickhub up` as a new user first runs it, on a plain machine (no XDG_RUNTIME_DIR, a data
directory of its own): what it prints is its own, and the demo feeder prices each default
symbol near that symbol's level."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.conftest import tickhub_command
from tickhub.sql.embedded import free_port


def latest_price(url: str, symbol: str, timeout: float = 20) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/api/v1/ticks/{symbol}", timeout=2)
            if response.status_code == 200:
                return response.json()["price"]
        except httpx.TransportError:  # still starting
            pass
        time.sleep(0.2)
    raise AssertionError(f"no {symbol} tick from the demo feeder within {timeout} s")


def test_up_prints_no_library_warnings_and_prices_symbols_apart(tmp_path: Path) -> None:
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST", "TICKHUB", "XDG_RUNTIME_DIR"))
    }
    env.update(TICKHUB_DATA_DIR=str(tmp_path / "data"), LOG_LEVEL="warning")
    log = tmp_path / "up.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*tickhub_command(), "up", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        btc = latest_price(url, "BTCUSDT")
        eth = latest_price(url, "ETHUSDT")
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: also stops the embedded PostgreSQL
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    printed = log.read_text()

    assert "tickhub is up" in printed, printed
    assert "Warning" not in printed and "XDG_RUNTIME_DIR" not in printed, printed
    assert 40_000 < btc < 120_000
    assert 1_000 < eth < 6_000
