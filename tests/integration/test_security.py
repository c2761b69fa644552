"""No one in who should not be: API keys and their rotation, bearer tokens and their roles,
stream tokens, keys kept out of logs, rate limits and connection caps, hostile input."""

from __future__ import annotations

import socket
import time

import jwt
import pytest
import trio

from tests.conftest import API_KEY, make_settings, start_tickhub
from tests.integration.test_pipeline import ticks
from tests.sse import events
from tickhub.ratelimit import parse_rate

SECRET = "s" * 40
NOW = int(time.time()) - 300


def token(
    role: str, *, sub: str = "alice", exp: float | None = None, secret: str = SECRET, **extra
) -> str:
    claims = {"sub": sub, "role": role, "exp": exp if exp is not None else time.time() + 60}
    claims.update(extra)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, secret, "HS256")


def bearer(t: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {t}"}


async def post(server, items, headers) -> int:
    response = await server.client.post(
        "/api/v1/webhooks/ticks", json={"items": items}, headers=headers
    )
    return response.status_code


async def test_key_rotation_accepts_both_keys_then_only_the_new(db, pg_url, nursery):
    old = await start_tickhub(
        nursery, make_settings(pg_url, api_key="old-key", api_keys_extra=("new-key",))
    )
    assert await post(old, ticks("A", 1, start=NOW), {"x-api-key": "old-key"}) == 202
    assert await post(old, ticks("A", 1, start=NOW, seed=2), {"x-api-key": "new-key"}) == 202
    await old.shutdown()
    new = await start_tickhub(nursery, make_settings(pg_url, api_key="new-key"))
    response = await new.client.post(
        "/api/v1/webhooks/ticks",
        json={"items": ticks("A", 1, start=NOW, seed=3)},
        headers={"x-api-key": "old-key"},
    )
    assert response.status_code == 401
    assert "WWW-Authenticate" in response.headers
    assert await post(new, ticks("A", 1, start=NOW, seed=4), {"x-api-key": "new-key"}) == 202
    await new.shutdown()


@pytest.fixture
async def guarded(db, pg_url, nursery):
    """READ_AUTH=1 with bearer tokens enabled."""
    server = await start_tickhub(
        nursery, make_settings(pg_url, jwt_secret=SECRET, read_auth=True, stream_token_ttl_s=60)
    )
    yield server
    await server.client.aclose()
    await server.shutdown()


async def test_bearer_tokens_by_role_and_expiry(guarded):
    items = ticks("BTCUSDT", 2, start=NOW)
    assert await post(guarded, items, bearer(token("ingest"))) == 202
    assert await post(guarded, items, bearer(token("admin"))) == 202
    assert await post(guarded, items, bearer(token("read"))) == 403  # wrong role
    expired = token("ingest", exp=time.time() - 60)
    response = await guarded.client.post(
        "/api/v1/webhooks/ticks", json={"items": items}, headers=bearer(expired)
    )
    assert response.status_code == 401 and "expired" in response.json()["error"]["message"]
    assert await post(guarded, items, bearer(token("ingest", secret="x" * 40))) == 401
    no_exp = jwt.encode({"sub": "alice", "role": "ingest"}, SECRET, "HS256")
    assert await post(guarded, items, bearer(no_exp)) == 401
    assert await post(guarded, items, {"Authorization": "Basic abc"}) == 401


async def test_read_auth_guards_queries(guarded):
    response = await guarded.get("/api/v1/symbols")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "AUTH_REQUIRED"
    assert "Bearer" in response.headers["WWW-Authenticate"]
    assert (await guarded.get("/api/v1/symbols", headers=bearer(token("read")))).status_code == 200
    assert (
        await guarded.get("/api/v1/symbols", headers=bearer(token("ingest")))
    ).status_code == 403
    assert (await guarded.get("/api/v1/symbols", headers={"x-api-key": API_KEY})).status_code == 200
    assert (await guarded.get("/ops/health/liveness")).status_code == 200  # ops stay open


async def test_stream_needs_a_stream_token_and_it_expires(guarded):
    assert (await guarded.get("/realtime/ticks")).status_code == 401
    issued = await guarded.client.post("/api/v1/auth/stream-token", headers=bearer(token("read")))
    assert issued.status_code == 200
    body = issued.json()
    claims = jwt.decode(body["token"], SECRET, algorithms=["HS256"])
    assert claims["role"] == "stream" and abs(claims["exp"] - (time.time() + 60)) < 5
    with trio.fail_after(5):
        async with guarded.client.stream(
            "GET", "/realtime/ticks", params={"token": body["token"]}
        ) as response:
            assert response.status_code == 200
            async for event in events(response):
                assert event.event == "hello"
                break
    stale = token("stream", exp=time.time() - 60)
    assert (await guarded.get("/realtime/ticks", params={"token": stale})).status_code == 401
    # A stream token opens the stream only, not the API.
    only_stream = bearer(body["token"])
    assert (await guarded.get("/api/v1/symbols", headers=only_stream)).status_code == 403


def test_keys_never_appear_in_logs(spawn, tmp_path, db_sync):
    proc, url = spawn("run", "--role", "all", LOG_LEVEL="debug")
    import httpx

    with httpx.Client(base_url=url) as client:
        client.post(
            "/api/v1/webhooks/ticks",
            json={"items": ticks("A", 2, start=NOW)},
            headers={"x-api-key": API_KEY},
        )
        client.post(
            "/api/v1/webhooks/ticks", json={"items": []}, headers={"x-api-key": "wrong-secret-key"}
        )
    proc.terminate()
    proc.wait(10)
    logs = "".join(p.read_text() for p in tmp_path.glob("tickhub-*.log"))
    assert logs  # the process did log
    assert API_KEY not in logs and "wrong-secret-key" not in logs


async def test_rate_limit_answers_429_with_headers(db, pg_url, nursery):
    server = await start_tickhub(
        nursery, make_settings(pg_url, rate_limit_queries=parse_rate("3/m"))
    )
    remaining = []
    for _ in range(3):
        response = await server.get("/api/v1/symbols")
        assert response.status_code == 200
        remaining.append(response.headers["RateLimit-Remaining"])
    refused = await server.get("/api/v1/symbols")
    assert remaining == ["2", "1", "0"]
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "RATE_LIMITED"
    assert 1 <= int(refused.headers["Retry-After"]) <= 20
    assert refused.headers["RateLimit-Limit"] == "3"
    # Another client (an API key is its own client) has its own budget.
    other = await server.get("/api/v1/symbols", headers={"x-api-key": API_KEY})
    assert other.status_code == 200
    await server.shutdown()


async def test_forwarded_for_counts_only_behind_a_trusted_proxy(db, pg_url, nursery):
    settings = make_settings(
        pg_url, rate_limit_queries=parse_rate("1/m"), trusted_proxies=("127.0.0.1",)
    )
    trusting = await start_tickhub(nursery, settings)
    for ip in ("203.0.113.1", "203.0.113.2"):
        headers = {"X-Forwarded-For": f"{ip}, 127.0.0.1"}
        assert (await trusting.get("/api/v1/symbols", headers=headers)).status_code == 200
    assert (
        await trusting.get("/api/v1/symbols", headers={"X-Forwarded-For": "203.0.113.1"})
    ).status_code == 429
    await trusting.shutdown()
    plain = await start_tickhub(
        nursery, make_settings(pg_url, rate_limit_queries=parse_rate("1/m"))
    )
    assert (
        await plain.get("/api/v1/symbols", headers={"X-Forwarded-For": "1.1.1.1"})
    ).status_code == 200
    # Without a trusted proxy the header is ignored: same client, limit reached.
    assert (
        await plain.get("/api/v1/symbols", headers={"X-Forwarded-For": "2.2.2.2"})
    ).status_code == 429
    await plain.shutdown()


async def test_concurrent_streams_are_capped_per_client(db, pg_url, nursery):
    server = await start_tickhub(nursery, make_settings(pg_url, sse_max_per_client=2))
    hellos = trio.Semaphore(0)
    release = trio.Event()

    async def listen():
        async with server.client.stream("GET", "/realtime/ticks") as response:
            assert response.status_code == 200
            async for _ in events(response):
                hellos.release()
                await release.wait()
                return

    with trio.fail_after(10):
        async with trio.open_nursery() as inner:
            inner.start_soon(listen)
            inner.start_soon(listen)
            await hellos.acquire()
            await hellos.acquire()
            third = await server.get("/realtime/ticks")
            assert third.status_code == 429
            release.set()
    await server.client.aclose()
    await server.shutdown()


# --- hostile input ---------------------------------------------------------------------------


async def test_deeply_nested_json_is_a_clear_400(tickhub, db):
    body = ("[" * 100_000 + "]" * 100_000).encode()
    response = await tickhub.client.post(
        "/api/v1/webhooks/ticks",
        content=body,
        headers={"x-api-key": API_KEY, "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert await db.fetchval("SELECT count(*) FROM ticks_raw") == 0


async def test_sql_looking_strings_are_data_or_rejected(tickhub, db):
    evil = "x'); DROP TABLE ticks_history; --"
    item = {"symbol": "BTCUSDT", "price": 1, "ts": NOW, "volume": 1, "idempotencyKey": evil}
    response = await tickhub.post_ticks([item], source="demo")
    assert response.status_code == 202
    assert await db.fetchval("SELECT idem_key FROM ticks_history") == evil
    rejected = await tickhub.post_ticks([{**item, "symbol": "A'; DROP TABLE symbols;--"}])
    assert rejected.status_code == 422
    assert (await tickhub.get("/api/v1/ticks/BTC'--/history")).status_code in (200, 404)
    assert await db.fetchval("SELECT count(*) FROM symbols") == 1


async def test_very_long_headers_are_refused_without_a_500(tickhub):
    response = await tickhub.get("/api/v1/symbols", headers={"x-filler": "a" * 64_000})
    assert 400 <= response.status_code < 500


def _slow_client(url: str, payload: bytes, until_closed: bool = False) -> tuple[float, bytes]:
    """Send `payload` and then nothing: seconds until the server answered (or, with
    `until_closed`, closed the connection), and what it sent."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(payload)
        started = time.monotonic()
        answer = sock.recv(4096)
        while until_closed and (more := sock.recv(4096)):
            answer += more
        return time.monotonic() - started, answer


async def test_slow_loris_clients_are_cut_off(db, pg_url, nursery):
    server = await start_tickhub(
        nursery, make_settings(pg_url, http_idle_timeout_s=1.0, http_body_timeout_s=1.0)
    )
    head_only = b"GET /api/v1/symbols HTTP/1.1\r\nHost: x\r\nX-Slow: "  # never finished
    waited, answer = await trio.to_thread.run_sync(_slow_client, server.url, head_only)
    assert waited < 5 and answer == b""  # closed without a word
    body_missing = (
        b"POST /api/v1/webhooks/ticks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"x-api-key: " + API_KEY.encode() + b'\r\nContent-Length: 1000\r\n\r\n{"items": ['
    )
    waited, answer = await trio.to_thread.run_sync(_slow_client, server.url, body_missing)
    assert waited < 5 and answer.startswith(b"HTTP/1.1 408")
    assert b"connection: close" in answer.lower()
    waited, _ = await trio.to_thread.run_sync(_slow_client, server.url, body_missing, True)
    assert waited < 5  # answered, then the connection is closed: nothing is held
    assert (await server.get("/ops/health/liveness")).status_code == 200  # still serving
    await server.shutdown()


async def test_security_headers_on_json_and_html(tickhub):
    api = await tickhub.get("/api/v1/symbols")
    assert api.headers["X-Content-Type-Options"] == "nosniff"
    page = await tickhub.get("/")
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"


async def test_each_stream_token_is_a_client_of_its_own(db, pg_url, nursery):
    """SSE_MAX_PER_CLIENT counts per token, not for everyone behind the key that minted it."""
    settings = make_settings(pg_url, jwt_secret=SECRET, read_auth=True, sse_max_per_client=1)
    server = await start_tickhub(nursery, settings)

    async def mint() -> str:
        issued = await server.client.post(
            "/api/v1/auth/stream-token", headers=bearer(token("read"))
        )
        return issued.json()["token"]

    first, second = await mint(), await mint()
    assert (
        jwt.decode(first, SECRET, ["HS256"])["sub"] != jwt.decode(second, SECRET, ["HS256"])["sub"]
    )
    with trio.fail_after(10):
        async with (
            server.client.stream("GET", "/realtime/ticks", params={"token": first}) as one,
            server.client.stream("GET", "/realtime/ticks", params={"token": second}) as two,
        ):
            assert (one.status_code, two.status_code) == (200, 200)
            again = await server.get("/realtime/ticks", params={"token": first})
            assert again.status_code == 429  # the cap holds per token
    await server.client.aclose()
    await server.shutdown()


async def test_only_stream_tokens_go_in_the_url(guarded):
    for role in ("read", "admin"):
        refused = await guarded.get("/realtime/ticks", params={"token": token(role)})
        assert refused.status_code == 401, role
        assert "stream tokens" in refused.json()["error"]["message"]
