"""Readiness follows Postgres: 503 while it is down (and the webhook answers 503 with
Retry-After, storing nothing), 200 again once it is back, with no restart of tickhub."""

from __future__ import annotations

import time

import trio

from tests.consistency import differences


async def _wait_status(tickhub, path: str, status: int, within: float = 20) -> dict:
    with trio.fail_after(within):
        while True:
            response = await tickhub.get(path)
            if response.status_code == status:
                return response.json()
            await trio.sleep(0.1)


async def test_readiness_and_ingest_follow_postgres(tickhub, pg, db):
    ok = await _wait_status(tickhub, "/ops/health/readiness", 200)
    assert ok["checks"]["db"] == "ok"
    await trio.to_thread.run_sync(pg.stop)
    try:
        down = await _wait_status(tickhub, "/ops/health/readiness", 503)
        assert down["status"] == "not_ready" and down["checks"]["db"] == "unreachable"
        assert (await tickhub.get("/api/v1/health/readiness")).status_code == 503
        item = {
            "symbol": "BTCUSDT",
            "price": 1.5,
            "ts": time.time() - 1,
            "volume": 1,
            "idempotencyKey": "while-down",
        }
        response = await tickhub.post_ticks([item])
        assert response.status_code == 503
        assert response.headers["Retry-After"]
        assert response.json()["error"]["code"] == "UNAVAILABLE"
    finally:
        await trio.to_thread.run_sync(pg.start)
    await _wait_status(tickhub, "/ops/health/readiness", 200)
    assert await db.fetchval("SELECT count(*) FROM ticks_history") == 0
    response = await tickhub.post_ticks([item])
    assert response.status_code == 202 and response.json()["accepted"] == 1
    assert await differences(db) == []
