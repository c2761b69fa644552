"""A bad tick or a bad neighbour never costs honest traffic an answer, a tick or memory
(ARCHITECTURE §4.5 to §4.8), tried as a hostile client and as an operator with a sick Redis or
Postgres would: real servers, paused with SIGSTOP or filled to their limits.

Times asserted here are bounds on *hanging* (an answer within a few seconds instead of
never), not speed; the figures the bounds guard are printed for the record.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager

import httpx
import psutil
import pytest
import redis
import trio

from tests.conftest import API_KEY, make_settings, start_tickhub, tickhub_command
from tests.consistency import differences
from tests.integration.test_split import wait_until
from tests.processes import wait_for
from tickhub.dev import EmbeddedRedis
from tickhub.sql import guard

NOW = int(time.time()) - 600
AUTH = {"x-api-key": API_KEY}

# A value Postgres refuses, the way a real one would (class 22, numeric out of range), for
# a symbol that passes validation: the store's own refusal, not the door's.
POISON_TRIGGER = """
CREATE OR REPLACE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.symbol = 'POISON' THEN
        RAISE EXCEPTION 'value out of range: overflow' USING ERRCODE = '22003';
    END IF;
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS refuse_poison ON ticks_history;
CREATE TRIGGER refuse_poison BEFORE INSERT ON ticks_history
    FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""
NO_POISON_TRIGGER = "DROP TRIGGER IF EXISTS refuse_poison ON ticks_history"


def tick(symbol: str, key: str, price: float = 100.0, **extra) -> dict:
    return {
        "symbol": symbol,
        "price": price,
        "ts": NOW,
        "volume": 1,
        "idempotencyKey": key,
        **extra,
    }


@contextmanager
def paused(*pids: int):
    """SIGSTOP these processes and their children (a server that stopped answering)."""
    procs = [p for pid in pids for p in (psutil.Process(pid), *psutil.Process(pid).children())]
    for proc in procs:
        proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for proc in procs:
            try:
                proc.send_signal(signal.SIGCONT)
            except psutil.NoSuchProcess:
                pass


def postgres_pid(pg) -> int:
    return int((pg.data_dir / "postmaster.pid").read_text().split()[0])


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own, to pause or fill without touching the others."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    yield server
    os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


def timed(call, *args, **kw) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call(*args, **kw)
    return response, time.monotonic() - started


def post_sync(url: str, items: list[dict], headers=AUTH, timeout: float = 30) -> httpx.Response:
    return httpx.post(
        url + "/api/v1/webhooks/ticks", json={"items": items}, headers=headers, timeout=timeout
    )


# --- the store refuses a batch ----------------------------------------------------------


async def test_values_beyond_what_the_store_holds_are_refused_at_the_door(tickhub, db):
    huge = [tick("BTCUSDT", "a", volume=1e308), tick("BTCUSDT", "b", volume=1e308)]
    response = await tickhub.post_ticks(huge)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert {d["field"] for d in error["details"]} == {"volume"}
    for item in ({"price": 1e16}, {"price": 1e-13}, {"volume": 2e15}):
        response = await tickhub.post_ticks([tick("BTCUSDT", "c", **item)])
        assert response.status_code == 422, item
    assert await db.fetchval("SELECT count(*) FROM ticks_raw") == 0


async def test_a_poison_batch_fails_alone_among_honest_ones(tickhub, db):
    """15 batches the store refuses among 150 honest one-tick batches, 6 clients at once:
    every honest batch is answered 202 and stored, every poison one 422, nothing of it kept."""
    await db.execute(POISON_TRIGGER)
    answers: dict[str, int] = {}

    async def client(k: int) -> None:
        for n in range(k, 165, 6):
            poison = n % 11 == 0
            items = [tick("POISON" if poison else f"OK{n % 4}", f"c{n}")]
            response = await tickhub.post_ticks(items)
            answers[f"c{n}"] = response.status_code
            if poison:
                assert response.json()["error"]["code"] == "VALIDATION_ERROR"

    try:
        async with trio.open_nursery() as nursery:
            for k in range(6):
                nursery.start_soon(client, k)
    finally:
        await db.execute(NO_POISON_TRIGGER)
    honest = {k for k, code in answers.items() if int(k[1:]) % 11}
    assert len(answers) == 165 and len(honest) == 150
    assert all(answers[k] == 202 for k in honest)
    assert all(answers[k] == 422 for k in answers.keys() - honest)
    stored = {r[0] for r in await db.fetch("SELECT idem_key FROM ticks_history")}
    assert stored == honest
    assert await db.fetchval("SELECT count(*) FROM ticks_raw WHERE symbol = 'POISON'") == 0
    assert await differences(db) == []


def test_split_mode_dead_letters_a_poison_entry_and_stores_its_neighbours(
    spawn, redis_url, db_sync
):
    db_sync.execute(POISON_TRIGGER)
    env = {"REDIS_URL": redis_url, "CLAIM_IDLE_MS": "1000", "DEAD_LETTER_AFTER": "3"}
    _, api = spawn("run", "--role", "api", **env)
    spawn("run", "--role", "consumer", **env)
    honest, poison = set(), set()

    def client(k: int) -> None:
        for n in range(k, 165, 6):
            is_poison = n % 11 == 0
            key = f"s{n}"
            response = post_sync(api, [tick("POISON" if is_poison else "OK", key)])
            assert response.status_code == 202  # durable in the queue: the ack is the api's
            (poison if is_poison else honest).add(key)

    def queue() -> dict:
        return httpx.get(api + "/api/v1/stats").json()["queue"]

    try:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        def settled() -> bool:
            return queue()["dead"] == len(poison) and queue()["inFlight"] == 0

        wait_for(settled, within=60)
    finally:
        db_sync.execute(NO_POISON_TRIGGER)
    # Every acknowledged honest tick is stored: none was lost behind the poison.
    assert set(db_sync("SELECT idem_key FROM ticks_history")) == honest
    assert queue()["failed"] == len(poison) == 15
    with redis.Redis.from_url(redis_url) as client_redis:

        def trimmed() -> bool:  # nothing pending holds the stream back any more
            return client_redis.xlen("realtime:ticks") == 0

        wait_for(trimmed, within=20)

    cli = [*tickhub_command(), "dead-letters"]
    env = {**os.environ, "REDIS_URL": redis_url}
    listed = subprocess.run([*cli, "list"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "15 dead letter(s)" in listed.stdout and "out of range" in listed.stdout
    replayed = subprocess.run([*cli, "replay", "--all"], env=env, capture_output=True, text=True)
    assert "15 dead letter(s) replayed" in replayed.stdout, replayed.stderr

    def all_stored() -> bool:
        return db_sync("SELECT count(*) FROM ticks_history") == [165]

    wait_for(all_stored)
    assert queue()["dead"] == 0
    assert db_sync.differences() == []


# --- a sick Redis -------------------------------------------------------------------------


def test_a_full_redis_gives_503_to_the_webhook_and_fails_the_limiter_open(
    spawn, own_redis, tmp_path
):
    env = {"REDIS_URL": own_redis.url, "RATE_LIMIT_QUERIES": "1000/s"}
    _, api = spawn("run", "--role", "api", **env)
    with redis.Redis.from_url(own_redis.url) as client:
        client.config_set("maxmemory", 1)  # over it at once; noeviction: every write refused
        try:
            for _ in range(20):
                assert httpx.get(api + "/api/v1/symbols").status_code == 200  # fails open
            response = post_sync(api, [tick("BTCUSDT", "full")])
            assert response.status_code == 503 and response.headers["Retry-After"]
            assert response.json()["error"]["code"] == "UNAVAILABLE"
            ready = httpx.get(api + "/ops/health/readiness")
            assert ready.status_code == 503 and ready.json()["checks"]["redis"] == "unreachable"
        finally:
            client.config_set("maxmemory", 0)
    assert post_sync(api, [tick("BTCUSDT", "after")]).status_code == 202
    assert httpx.get(api + "/ops/health/readiness").status_code == 200
    log = (tmp_path / "tickhub-0.log").read_text()
    assert log.count("rate limit not checked") <= 2  # not one line per request
    assert "Traceback" not in log


def test_a_paused_redis_never_hangs_the_api_or_the_stream(spawn, own_redis, db_sync):
    env = {"REDIS_URL": own_redis.url, "REDIS_TIMEOUT_MS": "1000"}
    _, api = spawn("run", "--role", "api", **env)
    _, gateway = spawn("run", "--role", "gateway", **env)
    timings = {}

    def hello(url: str) -> str:
        with httpx.stream("GET", url + "/realtime/ticks", timeout=10) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("event:"):
                    return line
        return ""

    with paused(own_redis.process.pid):
        read, timings["query"] = timed(httpx.get, api + "/api/v1/symbols", timeout=10)
        assert read.status_code == 200
        webhook, timings["webhook"] = timed(post_sync, api, [tick("BTCUSDT", "paused")])
        assert webhook.status_code == 503 and webhook.headers["Retry-After"]
        ready, timings["readiness"] = timed(httpx.get, api + "/ops/health/readiness", timeout=10)
        assert ready.status_code == 503
        event, timings["stream"] = timed(hello, gateway)
        assert event == "event: hello"
    print("answers with Redis paused (s):", {k: round(v, 2) for k, v in timings.items()})
    assert max(timings.values()) < 4  # REDIS_TIMEOUT_MS plus a margin: never a hang

    def recovered() -> bool:
        return post_sync(api, [tick("BTCUSDT", "resumed")]).status_code == 202

    wait_for(recovered, within=20)


# --- a sick Postgres ----------------------------------------------------------------------


async def test_a_paused_postgres_gives_503_within_the_ingest_timeout(pg, pg_url, db, nursery):
    settings = make_settings(pg_url, ingest_timeout_ms=1000, db_timeout_ms=2000)
    server = await start_tickhub(nursery, settings)
    timings = {}

    async def timed_async(call, *args, **kw):
        started = trio.current_time()
        response = await call(*args, **kw)
        return response, trio.current_time() - started

    # A first flush prepares the statement: the one to come is a flush in flight.
    assert (await server.post_ticks([tick("BTCUSDT", "before")])).status_code == 202
    with paused(postgres_pid(pg)):
        webhook, timings["webhook"] = await timed_async(
            server.post_ticks, [tick("BTCUSDT", "while-paused")]
        )
        assert webhook.status_code == 503 and webhook.headers["Retry-After"]
        read, timings["query"] = await timed_async(server.get, "/api/v1/symbols")
        assert read.status_code == 503
        ready, timings["readiness"] = await timed_async(server.get, "/ops/health/readiness")
        assert ready.status_code == 503 and ready.json()["checks"]["db"] == "unreachable"
    print("answers with Postgres paused (s):", {k: round(v, 2) for k, v in timings.items()})
    # INGEST_TIMEOUT_MS (not the 23 s it used to take), then at most the commit's answer time
    # and one probe that finds the server gone (a flush in flight has an outcome to learn).
    assert timings["webhook"] < 1 + guard.ANSWER_S + guard.PROBE_S + 0.5
    assert max(timings.values()) < 3

    async def ready_again() -> bool:
        return (await server.get("/ops/health/readiness")).status_code == 200

    await wait_until(ready_again, within=20)
    # The flush that was running when Postgres stopped rolled back: nothing of the 503.
    assert await db.fetchval("SELECT count(*) FROM ticks_history") == 1
    again = await server.post_ticks([tick("BTCUSDT", "while-paused")])
    assert again.status_code == 202 and again.json()["accepted"] == 1
    await server.shutdown()


# --- many symbols -------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def test_twenty_thousand_new_symbols_cost_bounded_memory_and_readiness(spawn):
    proc, url = spawn("run", "--role", "all", AGGREGATOR_IDLE_S="1", RATE_LIMIT_WEBHOOKS="0")

    def wave(tag: str) -> None:
        for n in range(20):
            items = [
                tick(f"{tag}{n:02d}X{i:04d}", f"{tag}-{n}-{i}", price=1 + i / 100)
                for i in range(1000)
            ]
            assert post_sync(url, items).status_code == 202

    # Warm up (first-use allocations, caches) with a handful of symbols.
    assert post_sync(url, [tick(f"WARM{i}", f"warm-{i}") for i in range(10)]).status_code == 202
    time.sleep(1)
    before = rss_mib(proc.pid)
    wave("A")
    peak = rss_mib(proc.pid)
    readiness = httpx.get(url + "/ops/health/readiness")
    time.sleep(3)  # idle aggregators stop
    wave("B")
    time.sleep(3)
    after = rss_mib(proc.pid)
    quiet = httpx.get(url + "/ops/health/readiness").json()
    print(
        f"RSS before {before:.1f} MiB, after 20,000 new symbols {peak:.1f} MiB, "
        f"after 20,000 more {after:.1f} MiB; readiness {len(readiness.content)} bytes"
    )
    assert readiness.status_code == 200
    assert len(readiness.content) < 16_384  # a summary, whatever the number of symbols
    assert readiness.json()["actorStates"]["running"] >= 1
    assert quiet["actorStates"].get("running", 0) < 20  # the idle ones stopped
    assert peak - before < 150
    assert after - before < 150  # the second wave reuses what the first freed


# --- hostile clients ------------------------------------------------------------------------


def test_guessing_keys_is_limited_and_a_right_guess_cannot_be_told(spawn, tmp_path):
    _, url = spawn("run", "--role", "all", RATE_LIMIT_WEBHOOKS="5/m")
    codes = [
        post_sync(url, [tick("BTCUSDT", f"g{i}")], headers={"x-api-key": f"guess-{i}"}).status_code
        for i in range(30)
    ]
    assert codes[:5] == [401] * 5 and codes[5:] == [429] * 25
    refused = post_sync(url, [tick("BTCUSDT", "right")])
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    log = (tmp_path / "tickhub-0.log").read_text()
    assert 1 <= log.count("invalid API key") <= 2  # not one warning line per guess


async def test_minus_zero_volume_is_the_same_tick_as_zero(tickhub, db):
    keyless = {"symbol": "BTCUSDT", "price": 100.0, "ts": NOW}
    first = await tickhub.post_ticks([{**keyless, "volume": -0.0}])
    again = await tickhub.post_ticks([{**keyless, "volume": 0}])
    assert first.json()["accepted"] == 1
    assert (again.json()["accepted"], again.json()["duplicates"]) == (0, 1)
    assert await db.fetchval("SELECT count(*) FROM ticks_history") == 1


async def test_a_huge_invalid_batch_gets_a_bounded_answer(tickhub, db):
    items = [{"symbol": "bad symbol", "price": -1, "ts": "x"} for _ in range(5000)]
    response = await tickhub.post_ticks(items)
    assert response.status_code == 422
    error = response.json()["error"]
    assert len(error["details"]) == 100 and error["detailsTotal"] == 15_000
    assert "15000 invalid fields" in error["message"]
    assert len(response.content) < 20_000


def test_the_request_line_counts_toward_the_header_limit(spawn):
    _, url = spawn("run", "--role", "all")
    host, port = url.removeprefix("http://").split(":")
    target = "/api/v1/symbols?pad=" + "a" * 60_000
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head = sock.recv(4096).split(b"\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 431") or head.startswith(b"HTTP/1.1 400"), head


async def test_symbols_with_a_slash_are_readable(tickhub, db):
    assert (await tickhub.post_ticks([tick("BTC/USD", "slash")])).status_code == 202
    latest = await tickhub.get("/api/v1/ticks/BTC/USD")
    assert latest.status_code == 200 and latest.json()["symbol"] == "BTC/USD"
    history = await tickhub.get("/api/v1/ticks/BTC/USD/history")
    assert [i["symbol"] for i in history.json()["items"]] == ["BTC/USD"]
    candles = await tickhub.get("/api/v1/ticks/BTC/USD/history", params={"view": "ohlc1m"})
    assert candles.json()["items"][0]["count"] == 1
    assert (await tickhub.get("/api/v1/metrics/BTC/USD")).json()["count"] == 1
    encoded = await tickhub.get("/api/v1/ticks/BTC%2FUSD")
    assert encoded.status_code == 200 and encoded.json()["symbol"] == "BTC/USD"
