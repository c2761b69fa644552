"""Roles in separate processes joined by real Redis and Postgres (ARCHITECTURE §2 and §4):
the same invariants as in one process, across api, consumers and gateways."""

from __future__ import annotations

import signal
import time
from functools import partial

import httpx
import pytest
import trio

from tests.conftest import API_KEY
from tests.consistency import differences
from tests.integration.test_pipeline import ticks
from tests.sse import events

NOW = int(time.time()) - 600


@pytest.fixture
def split(spawn, redis_url):
    """Start one role as its own process joined by the test's Redis."""

    async def start(role: str, redis: str | None = None, **env: str):
        return await trio.to_thread.run_sync(
            partial(
                spawn,
                "run",
                "--role",
                role,
                REDIS_URL=redis or redis_url,
                CLAIM_IDLE_MS="1000",
                **env,
            )
        )

    return start


async def post(url: str, items: list[dict]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        return await client.post(
            "/api/v1/webhooks/ticks",
            json={"source": "split", "items": items},
            headers={"x-api-key": API_KEY},
        )


async def wait_until(check, within: float = 30) -> None:
    """Poll `check()` (an external state: a database, a server) until it is true."""
    with trio.fail_after(within):
        while True:
            if await check():
                return
            await trio.sleep(0.1)


async def wait_stored(db, count: int) -> None:
    async def stored() -> bool:
        return await db.fetchval("SELECT count(*) FROM ticks_history") >= count

    await wait_until(stored)


async def collect(url: str, n: int, into: list, started: trio.Event, headers=None) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=None) as client:  # noqa: SIM117
        async with client.stream("GET", "/realtime/ticks", headers=headers or {}) as response:
            assert response.status_code == 200
            async for event in events(response):
                if event.event == "hello":
                    started.set()
                elif event.event == "message":
                    into.append(event)
                    if len(into) >= n:
                        return


async def test_ingest_through_api_arrives_at_gateway_equal_to_rest(split, db):
    (_, api), (_, _consumer), (_, gateway) = [
        await split("api"),
        await split("consumer"),
        await split("gateway"),
    ]
    got: list = []
    started = trio.Event()
    items = ticks("BTCUSDT", 5, start=NOW)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, gateway, 5, got, started)
            await started.wait()
            response = await post(api, items)
            assert response.status_code == 202
            assert response.json()["accepted"] == 5  # duplicates are found later, in storage
    last = got[-1].json()
    async with httpx.AsyncClient(base_url=api) as client:
        candles = (
            await client.get("/api/v1/ticks/BTCUSDT/history", params={"view": "ohlc1m"})
        ).json()["items"]
    rest = next(c for c in candles if c["ts"] == last["candle1m"]["bucket_start"])
    for field in ("open", "high", "low", "close", "volume", "count"):
        assert last["candle1m"][field] == rest[field]
    assert await differences(db) == []


async def test_consumer_killed_mid_run_loses_nothing_and_counts_once(split, db):
    _, api = await split("api")
    victim, _ = await split("consumer", CONSUMER_NAME="victim")
    await split("consumer", CONSUMER_NAME="survivor")
    acked: set[str] = set()

    async def poster(k: int) -> None:
        for n in range(25):
            items = [
                {**t, "idempotencyKey": f"p{k}-{n}-{i}"}
                for i, t in enumerate(ticks(f"S{k}", 100, start=NOW + n, step=0.01, seed=n))
            ]
            response = await post(api, items)
            assert response.status_code == 202
            acked.update(f"p{k}-{n}-{i}" for i in range(100))

    async with trio.open_nursery() as nursery:
        for k in range(3):
            nursery.start_soon(poster, k)
        await trio.sleep(0.5)
        victim.send_signal(signal.SIGKILL)  # mid-run: some entries read and not acknowledged
    await wait_stored(db, len(acked))
    await trio.sleep(2)  # reclaimed entries replayed by now: the count must not move
    stored = await db.fetch("SELECT idem_key FROM ticks_history")
    assert len(stored) == len(acked) == len({r[0] for r in stored})
    assert {r[0] for r in stored} == acked
    assert await differences(db) == []


async def test_two_gateways_serve_the_same_ids_and_resume_across(split, db):
    _, api = await split("api")
    await split("consumer", CONSUMER_NAME="c1")
    await split("consumer", CONSUMER_NAME="c2")
    _, gw1 = await split("gateway")
    _, gw2 = await split("gateway")
    on1, on2 = [], []
    s1, s2 = trio.Event(), trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, gw1, 20, on1, s1)
            nursery.start_soon(collect, gw2, 20, on2, s2)
            await s1.wait()
            await s2.wait()
            for n in range(4):
                assert (await post(api, ticks(f"X{n}", 5, start=NOW, seed=n))).status_code == 202
    assert [e.id for e in on1] == [e.id for e in on2]
    assert [e.data for e in on1] == [e.data for e in on2]
    # A browser that saw 10 events on gateway 1 resumes on gateway 2.
    assert (await post(api, ticks("X9", 5, start=NOW, seed=9))).status_code == 202
    resumed: list = []
    with trio.fail_after(20):
        await collect(gw2, 15, resumed, trio.Event(), headers={"Last-Event-ID": on1[9].id})
    expected = [e.id for e in on1[10:]]
    assert [e.id for e in resumed][:10] == expected
    ids = [int(e.id) for e in resumed]
    assert ids == sorted(set(ids)) and len(ids) == 15


async def test_redis_down_answers_503_and_nothing_acknowledged_is_lost(split, db, tmp_path):
    from tickhub.dev import EmbeddedRedis

    redis = EmbeddedRedis(tmp_path / "redis")
    url = await trio.to_thread.run_sync(redis.start)
    try:
        _, api = await split("api", redis=url)
        await split("consumer", redis=url)
        _, gateway = await split("gateway", redis=url)
        first = ticks("BTCUSDT", 10, start=NOW)
        assert (await post(api, first)).status_code == 202
        await trio.to_thread.run_sync(redis.stop)
        refused = await post(api, ticks("BTCUSDT", 10, start=NOW + 20, seed=2))
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        async with httpx.AsyncClient(base_url=api) as client:
            assert (await client.get("/api/v1/health/readiness")).status_code == 503
        await trio.to_thread.run_sync(redis.start)
        async with httpx.AsyncClient(base_url=api) as client:

            async def ready() -> bool:
                return (await client.get("/api/v1/health/readiness")).status_code == 200

            await wait_until(ready, within=20)
        # The gateway is back on the stream: a new tick arrives live.
        got: list = []
        started = trio.Event()
        last = ticks("BTCUSDT", 10, start=NOW + 40, seed=3)
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect, gateway, 10, got, started)
                await started.wait()
                await trio.sleep(1)
                assert (await post(api, last)).status_code == 202
        await wait_stored(db, 20)
        keys = {r[0] for r in await db.fetch("SELECT idem_key FROM ticks_history")}
        assert keys == {t["idempotencyKey"] for t in first + last}
        assert await differences(db) == []
    finally:
        await trio.to_thread.run_sync(redis.stop)


async def test_postgres_down_entries_wait_in_the_stream(split, db, pg):
    _, api = await split("api")
    await split("consumer")
    await trio.to_thread.run_sync(pg.stop)
    try:
        items = ticks("ETHUSDT", 50, start=NOW)
        response = await post(api, items)
        assert response.status_code == 202  # durable in the stream
        await trio.sleep(1.5)  # the consumer tries, fails, keeps the entry pending
    finally:
        await trio.to_thread.run_sync(pg.start)
    await wait_stored(db, 50)
    await trio.sleep(1.5)
    assert await db.fetchval("SELECT count(*) FROM ticks_history") == 50
    assert await differences(db) == []


async def test_rate_limits_are_shared_by_api_processes(split, db):
    _, first = await split("api", RATE_LIMIT_QUERIES="4/m")
    _, second = await split("api", RATE_LIMIT_QUERIES="4/m")
    codes = []
    async with httpx.AsyncClient() as client:
        for url in (first, second, first, second, first, second):
            codes.append((await client.get(url + "/api/v1/symbols")).status_code)
    assert codes == [200, 200, 200, 200, 429, 429]  # one budget for this client, not two
