"""tickhub as a real process: serves readiness, stops cleanly on SIGTERM, and a SIGKILL after
202 answers loses none of the acknowledged ticks (§4.1)."""

from __future__ import annotations

import signal
import subprocess
import time

import httpx

from tests.conftest import API_KEY, tickhub_command


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
