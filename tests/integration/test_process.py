"""tickhub as a real process: serves readiness, stops cleanly on SIGTERM, and a SIGKILL after
202 answers loses none of the acknowledged ticks (§4.1)."""

from __future__ import annotations

import signal
import subprocess
import time

import httpx
import pytest
import trio

from tests.conftest import API_KEY, tickhub_command
from tests.consistency import differences
from tickhub.sql.embedded import free_port


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"tickhub exited early with {proc.returncode}")
        try:
            if httpx.get(url + "/ops/health/readiness", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("tickhub did not become ready")


@pytest.fixture
def spawn(process_env, tmp_path):
    procs = []

    def start(*args: str, **env: str) -> tuple[subprocess.Popen, str]:
        port = free_port()
        log = open(tmp_path / f"tickhub-{len(procs)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [*tickhub_command(), *args],
            env={**process_env, "PORT": str(port), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc)
        return proc, url

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_run_all_serves_readiness_and_stops_on_sigterm(spawn, db_sync):
    proc, url = spawn("run", "--role", "all")
    body = httpx.get(url + "/ops/health/readiness").json()
    assert body["status"] == "ready" and body["checks"]["db"] == "ok"
    assert httpx.get(url + "/api/v1/health/readiness").status_code == 200
    assert httpx.get(url + "/health/liveness").json() == {"ok": True}
    status = subprocess.run([*tickhub_command(), "status", url], capture_output=True, text=True)
    assert status.returncode == 0 and "writer" in status.stdout
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0
    assert time.monotonic() - started < 5


def test_sigkill_after_acks_loses_nothing(spawn, db_sync):
    proc, url = spawn("run", "--role", "all")
    acked: set[str] = set()
    stop_at = time.monotonic() + 2.0
    i = 0
    with httpx.Client(base_url=url, headers={"x-api-key": API_KEY}, timeout=10) as client:
        while time.monotonic() < stop_at:
            items = [
                {
                    "symbol": f"S{n % 3}",
                    "price": 100 + n % 7,
                    "ts": time.time() - 5,
                    "volume": 1,
                    "idempotencyKey": f"k{i}-{n}",
                }
                for n in range(200)
            ]
            response = client.post("/api/v1/webhooks/ticks", json={"items": items})
            if response.status_code == 202:
                acked.update(item["idempotencyKey"] for item in items)
            i += 1
    proc.kill()  # SIGKILL: no chance to flush anything more
    proc.wait()
    stored = set(db_sync("SELECT idem_key FROM ticks_history"))
    assert acked and acked <= stored
    assert db_sync.differences() == []


@pytest.fixture
def db_sync(pg_url):
    """Synchronous access to the test database for process tests (own trio run per call)."""
    from tickhub.sql.db import open_bridge, open_database
    from tickhub.sql.migrate import migrate_up

    async def run(work):
        async with open_bridge(), open_database(pg_url) as db:
            return await work(db)

    async def reset(db):
        await migrate_up(db)
        await db.execute(
            "TRUNCATE ticks_raw, ticks_history, ohlc_1m, metrics_1m, symbols, source_stats"
        )

    trio.run(run, reset)

    class Access:
        def __call__(self, sql: str) -> list:
            async def q(db):
                return [r[0] for r in await db.fetch(sql)]

            return trio.run(run, q)

        def differences(self) -> list[str]:
            return trio.run(run, differences)

    return Access()
