"""The webhook client's retry policy, against an in-process fake api (httpx.MockTransport)."""

from __future__ import annotations

import email.utils
import itertools
import random

import httpx
import orjson
import pytest
import trio
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from tickhub.feeder.client import (
    DeliveryError,
    RejectedError,
    RetryPolicy,
    open_webhook_client,
)

BASE = "http://api.test/api/v1"
ITEMS = [
    {
        "symbol": "BTCUSDT",
        "price": 68001.23,
        "ts": 1730425200.5,
        "volume": 0.5,
        "idempotencyKey": "k1",
    },
    {
        "symbol": "ETHUSDT",
        "price": 3500.1,
        "ts": 1730425200.6,
        "volume": 1.0,
        "idempotencyKey": "k2",
    },
]


class FakeApi:
    """Answers from a script; stores accepted items by key like the api's deduplication."""

    def __init__(self, script: list) -> None:
        self.script = list(script)
        self.stored: dict[str, dict] = {}
        self.requests: list[tuple[float, httpx.Request]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((trio.current_time(), request))
        step = self.script.pop(0) if self.script else 202
        if step == "store-then-timeout":
            self._store(request)
            raise httpx.ReadTimeout("timed out", request=request)
        if isinstance(step, Exception):
            raise step
        if isinstance(step, tuple):
            status, headers, body = step
            return httpx.Response(status, headers=headers, json=body)
        return self._store(request)

    def _store(self, request: httpx.Request) -> httpx.Response:
        items = orjson.loads(request.content)["items"]
        new = [i for i in items if i["idempotencyKey"] not in self.stored]
        self.stored.update((i["idempotencyKey"], i) for i in new)
        body = {"accepted": len(new), "duplicates": len(items) - len(new), "queued": len(new)}
        return httpx.Response(202, json=body)


def policy(attempts: int = 3, backoff_s: float = 0.5) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, backoff_s=backoff_s, rng=random.Random(7))


def unavailable(retry_after: str | None = None, status: int = 503) -> tuple:
    headers = {"retry-after": retry_after} if retry_after else {}
    body = {"error": {"code": "UNAVAILABLE", "message": "busy"}}
    return (status, headers, body)


async def post(api: FakeApi, retry: RetryPolicy | None = None) -> dict:
    transport = httpx.MockTransport(api.handler)
    async with open_webhook_client(
        BASE, "secret", retry=retry or policy(), transport=transport
    ) as c:
        return await c.post_ticks("demo", ITEMS)


def gaps(api: FakeApi) -> list[float]:
    times = [t for t, _ in api.requests]
    return [b - a for a, b in itertools.pairwise(times)]


async def test_request_shape() -> None:
    api = FakeApi([])
    answer = await post(api)
    assert answer == {"accepted": 2, "duplicates": 0, "queued": 2}
    ((_, request),) = api.requests
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/webhooks/ticks"
    assert request.headers["x-api-key"] == "secret"
    assert request.headers["content-type"] == "application/json"
    assert orjson.loads(request.content) == {"source": "demo", "items": ITEMS}


@pytest.mark.parametrize("status", [503, 429])
async def test_retry_after_is_honoured_and_batch_delivered_once(autojump_clock, status) -> None:
    api = FakeApi([unavailable("2", status), unavailable("3", status)])
    answer = await post(api)
    assert len(api.requests) == 3
    first, second = gaps(api)
    assert 2 <= first <= 2.5 and 3 <= second <= 3.5  # never sooner than Retry-After
    assert answer["accepted"] == 2
    assert sorted(api.stored) == ["k1", "k2"]


async def test_retry_after_as_http_date(autojump_clock) -> None:
    when = email.utils.formatdate(1_900_000_010, usegmt=True)
    api = FakeApi([unavailable(when)])
    transport = httpx.MockTransport(api.handler)
    async with open_webhook_client(BASE, "k", retry=policy(), transport=transport) as client:
        client.clock = lambda: 1_900_000_000.0
        await client.post_ticks("demo", ITEMS)
    assert 10 <= gaps(api)[0] <= 10.5


async def test_connection_errors_back_off_exponentially(autojump_clock) -> None:
    api = FakeApi([httpx.ConnectError("refused")] * 3)
    answer = await post(api, policy(attempts=3, backoff_s=0.5))
    assert answer["accepted"] == 2
    # Each wait is backoff * 2**retry, at least half of it fixed and the rest random.
    for retry, gap in enumerate(gaps(api)):
        full = 0.5 * 2**retry
        assert full / 2 <= gap <= full


def test_jitter_spreads_retries() -> None:
    delays = {round(RetryPolicy(backoff_s=1.0).delay(2), 6) for _ in range(20)}
    assert len(delays) > 10
    assert all(2 <= d <= 4 for d in delays)


def test_backoff_is_capped() -> None:
    p = RetryPolicy(backoff_s=1.0, max_delay_s=30.0)
    assert 15 <= p.delay(50) <= 30
    assert p.delay(50, retry_after=100.0) == 100.0
    assert p.delay(0, retry_after=10_000.0) == p.max_retry_after_s


async def test_timeout_after_the_api_stored_is_not_double_counted(autojump_clock) -> None:
    api = FakeApi(["store-then-timeout"])
    answer = await post(api)
    assert len(api.requests) == 2
    assert answer == {"accepted": 0, "duplicates": 2, "queued": 0}
    assert sorted(api.stored) == ["k1", "k2"]


async def test_gives_up_after_the_configured_retries(autojump_clock) -> None:
    api = FakeApi([unavailable()] * 10)
    with pytest.raises(DeliveryError, match="failed after 3 tries"):
        await post(api, policy(attempts=2))
    assert len(api.requests) == 3
    assert api.stored == {}


async def test_zero_retries_means_one_try(autojump_clock) -> None:
    api = FakeApi([httpx.ConnectError("refused")])
    with pytest.raises(DeliveryError):
        await post(api, policy(attempts=0))
    assert len(api.requests) == 1


@pytest.mark.parametrize("status", [400, 401, 413, 422])
async def test_client_errors_are_not_retried_and_logged_with_body(autojump_clock, status) -> None:
    body = {
        "error": {
            "code": "VALIDATION_ERROR",
            "message": "bad item",
            "details": [{"index": 1, "field": "price", "message": "must be > 0"}],
        }
    }
    api = FakeApi([(status, {}, body)])
    with capture_logs() as logs, pytest.raises(RejectedError) as caught:
        await post(api)
    assert len(api.requests) == 1
    assert caught.value.status == status
    assert caught.value.item_errors() == {1: "price: must be > 0"}
    (entry,) = [e for e in logs if e["event"] == "webhook.rejected"]
    assert entry["log_level"] == "error"
    assert entry["status"] == status
    assert entry["body"] == body


async def test_posts_are_counted_by_status(autojump_clock) -> None:
    def count(status: str) -> float:
        return REGISTRY.get_sample_value("tickhub_feeder_posts_total", {"status": status}) or 0.0

    before = {s: count(s) for s in ("503", "error", "202")}
    await post(FakeApi([unavailable(), httpx.ConnectError("refused")]))
    assert count("503") - before["503"] == 1
    assert count("error") - before["error"] == 1
    assert count("202") - before["202"] == 1


async def test_upsert_symbols() -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"upserted": 2, "skipped": 0})

    transport = httpx.MockTransport(handler)
    async with open_webhook_client(BASE, "k", transport=transport) as client:
        assert await client.upsert_symbols(["BTCUSDT", "ETH-USD"]) == {"upserted": 2, "skipped": 0}
    (request,) = seen
    assert str(request.url) == f"{BASE}/webhooks/symbols"
    assert orjson.loads(request.content) == {
        "items": [
            {"symbol": "BTCUSDT", "base": "BTC", "quote": "USDT", "active": True},
            {"symbol": "ETH-USD", "base": "ETH", "quote": "USD", "active": True},
        ]
    }


async def test_rejects_a_url_without_scheme() -> None:
    with pytest.raises(ValueError, match="ORCHESTRATOR_BASE_URL"):
        async with open_webhook_client("api.test/api/v1", "k"):
            pass
