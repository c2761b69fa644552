"""The webhook client: posts tick batches and symbols to an api, retrying what can succeed later.

Retried, with exponential backoff and jitter, up to RETRY_ATTEMPTS more tries before
`DeliveryError`: connection errors, 5xx, and 429 (never sooner than its `Retry-After`).
Never retried: any other 4xx. That is a bug in what was sent, or a wrong key or URL; it is
logged with the response body and raised as `RejectedError`. Re-sending a batch is safe: every
item carries an idempotency key and the api counts each key once.
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import attrs
import httpx
import orjson
import structlog
import trio

from tickhub.backoff import backoff_delay
from tickhub.clock import wall_s
from tickhub.config import FeederSettings
from tickhub.feeder import metrics
from tickhub.symbols import split_symbol

log = structlog.get_logger("feeder", actor="webhook-client")

# Enough of an error body to see the api's message and details, not a whole HTML page.
_BODY_LOG_CHARS = 2000


class DeliveryError(Exception):
    """The api stayed unreachable or unavailable through every retry."""


class RejectedError(Exception):
    """The api refused the request with a 4xx that retrying cannot fix."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"api answered {status}: {body}")
        self.status = status
        self.body = body

    def item_errors(self) -> dict[int, str]:
        """Per-item messages of a 422 (`error.details[].index`), by item index."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        details = error.get("details") if isinstance(error, dict) else None
        out: dict[int, str] = {}
        for d in details if isinstance(details, list) else ():
            if isinstance(d, dict) and isinstance(d.get("index"), int):
                field = d.get("field")
                message = str(d.get("message", "invalid"))
                out.setdefault(d["index"], f"{field}: {message}" if field else message)
        return out


class TickPoster(Protocol):
    """What the feeder and replay need of the api: `WebhookClient`, or a fake in tests."""

    async def post_ticks(
        self, source: str, items: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]: ...

    async def upsert_symbols(self, symbols: Iterable[str]) -> dict[str, Any]: ...


@attrs.frozen
class RetryPolicy:
    """How long to wait before each retry: exponential, jittered, capped."""

    attempts: int = 3
    backoff_s: float = 0.5
    max_delay_s: float = 30.0
    # Retry-After is honoured up to this; a larger value is more likely a bug than a plan.
    max_retry_after_s: float = 300.0
    rng: random.Random = attrs.field(factory=random.Random, eq=False, repr=False)

    @classmethod
    def from_settings(cls, settings: FeederSettings) -> RetryPolicy:
        rng = random.Random(f"{settings.seed}:retry") if settings.seed is not None else None
        return cls(
            attempts=settings.retry_attempts,
            backoff_s=settings.retry_backoff_ms / 1000,
            rng=rng or random.Random(),
        )

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds before retry number `retry` (0 for the first): backoff * 2**retry with half
        of it random (so clients that failed together do not retry together), capped at
        max_delay_s, and never less than the server's Retry-After."""
        base = backoff_delay(retry, self.backoff_s, self.max_delay_s)
        wait = base * (0.5 + 0.5 * self.rng.random())
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after_s))
        return wait


def _retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds: a number of seconds, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:_BODY_LOG_CHARS]


@attrs.define
class WebhookClient:
    """Posts to `{base_url}/webhooks/*` with the retry policy; see the module docstring."""

    http: httpx.AsyncClient
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    # Only for Retry-After given as an HTTP date.
    clock: Callable[[], float] = wall_s

    async def post_ticks(self, source: str, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """POST one batch; the api's 202 body (`accepted`, `duplicates`, ...)."""
        body = orjson.dumps({"source": source, "items": list(items)})
        return await self._post("webhooks/ticks", body, metered=True)

    async def upsert_symbols(self, symbols: Iterable[str]) -> dict[str, Any]:
        """POST the symbols as active, with base and quote from `split_symbol`."""
        items = []
        for symbol in symbols:
            base, quote = split_symbol(symbol)
            items.append({"symbol": symbol, "base": base, "quote": quote, "active": True})
        return await self._post("webhooks/symbols", orjson.dumps({"items": items}), metered=False)

    async def _post(self, path: str, body: bytes, *, metered: bool) -> dict[str, Any]:
        retry = 0
        while True:
            started = trio.current_time()
            response: httpx.Response | None = None
            try:
                response = await self.http.post(path, content=body)
            except httpx.TransportError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if metered:
                outcome = "error" if response is None else str(response.status_code)
                metrics.POSTS.labels(outcome).inc()
                metrics.POST_SECONDS.observe(trio.current_time() - started)
            retry_after: float | None = None
            if response is not None:
                status = response.status_code
                if response.is_success:
                    answer = _body(response) if response.content else {}
                    return answer if isinstance(answer, dict) else {}
                if status != 429 and status < 500:
                    rejected = _body(response)
                    log.error("webhook.rejected", path=path, status=status, body=rejected)
                    raise RejectedError(status, rejected)
                retry_after = _retry_after(response.headers.get("retry-after"), self.clock())
                reason = f"{status}: {response.text[:200]}"
            if retry >= self.retry.attempts:
                raise DeliveryError(f"POST {path} failed after {retry + 1} tries: {reason}")
            wait = self.retry.delay(retry, retry_after)
            log.warning("webhook.retry", path=path, reason=reason, retry=retry + 1, wait_s=wait)
            retry += 1
            await trio.sleep(wait)


@asynccontextmanager
async def open_webhook_client(
    base_url: str,
    api_key: str,
    *,
    retry: RetryPolicy | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout_s: float = 10.0,
) -> AsyncIterator[WebhookClient]:
    """A WebhookClient on `base_url` (e.g. `http://127.0.0.1:8080/api/v1`) sending `api_key`.

    `transport` replaces the network (tests pass `httpx.MockTransport`).
    """
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"ORCHESTRATOR_BASE_URL={base_url!r}: expected an http(s):// URL")
    async with httpx.AsyncClient(
        base_url=base_url,
        headers={"x-api-key": api_key, "content-type": "application/json"},
        timeout=timeout_s,
        transport=transport,
    ) as http:
        yield WebhookClient(http, retry or RetryPolicy())
