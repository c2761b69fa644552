"""Who may call, and how often, at the HTTP edge: authentication plus rate limits.

`admit()` is the door of every limited route group (webhooks, queries, stream connects):
- An authenticated request is charged to its client — the API key's id or the token's
  subject — with GCRA (`tickhub.ratelimit`); an anonymous one to its IP.
- A request whose credentials fail is charged to its IP as well, against the group's own
  budget, in a table kept in this process. Once an IP has spent it, any request from it that
  carries credentials gets 429 before they are even checked: guessing keys is as slow as the
  limit, and a right guess cannot be told from a wrong one meanwhile.
- Refused: 429 with Retry-After and RateLimit-* headers; allowed responses carry the
  RateLimit-* headers too.
- When the shared limiter (Redis) is out of reach the request is let through (fail open):
  counted in `tickhub_rate_limit_skipped_total`, logged at most once a minute.

The client IP is the socket's peer, unless that peer is a trusted proxy: then the right-most
address of X-Forwarded-For that is not itself a trusted proxy.
"""

from __future__ import annotations

import ipaddress
from functools import cache

from quart import Response, g, request

from tickhub import metrics
from tickhub.http import auth
from tickhub.http.auth import Caller
from tickhub.http.errors import ApiError
from tickhub.logs import Throttled
from tickhub.ratelimit import Decision, LimiterUnavailable

_skipped_log = Throttled("limits", "rate limit not checked: limiter unavailable", every_s=60)


@cache
def _networks(proxies: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(p, strict=False) for p in proxies)


def _trusted(address: str, proxies: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in _networks(proxies))


def client_ip(trusted_proxies: tuple[str, ...]) -> str:
    peer = request.remote_addr or "unknown"
    if not trusted_proxies or not _trusted(peer, trusted_proxies):
        return peer
    forwarded = [a.strip() for a in request.headers.get("X-Forwarded-For", "").split(",")]
    for address in reversed([a for a in forwarded if a]):
        if not _trusted(address, trusted_proxies):
            return address
    return peer


def client_id(svc, caller: Caller | None) -> str:
    return caller.subject if caller is not None else "ip:" + client_ip(svc.settings.trusted_proxies)


def _refused(what: str, decision: Decision) -> ApiError:
    return ApiError(429, what, headers=decision.headers())


async def admit(
    svc, group: str, kind: str, *, required: bool, allow_query_token: bool = False
) -> Caller | None:
    """The caller of this request (None: anonymous, when `required` is false), charged one
    request of `group`; 401/403 for bad credentials, 429 over a limit."""
    settings = svc.settings
    rate = settings.rate_limit(group)
    failures = svc.auth_failures
    ip = "ip:" + client_ip(settings.trusted_proxies)
    if rate is not None and auth.presents_credentials(allow_query_token):
        spent = await failures.check(group, ip, rate, charge=False)
        if not spent.allowed:
            metrics.RATE_LIMITED.labels("auth").inc()
            raise _refused("too many failed authentications", spent)
    try:
        if required:
            caller = auth.require(settings, kind, allow_query_token=allow_query_token)
        else:
            caller = auth.authenticate(settings, allow_query_token=allow_query_token)
    except ApiError as exc:
        if exc.status == 401 and rate is not None:
            decision = await failures.check(group, ip, rate)
            if not decision.allowed:
                metrics.RATE_LIMITED.labels("auth").inc()
                raise _refused("too many failed authentications", decision) from None
        raise
    if rate is not None:
        await _charge(svc, group, caller.subject if caller is not None else ip, rate)
    return caller


async def _charge(svc, group: str, client: str, rate) -> None:
    try:
        decision = await svc.limiter.check(group, client, rate)
    except LimiterUnavailable as exc:
        # Serve rather than refuse everyone (the webhook then answers 503 for the queue
        # anyway; reads keep working).
        metrics.RATE_LIMIT_SKIPPED.inc()
        _skipped_log.warning(group=group, error=str(exc))
        return
    if not decision.allowed:
        metrics.RATE_LIMITED.labels(group).inc()
        raise _refused(f"rate limit of {group} exceeded", decision)
    g.ratelimit = decision


async def add_headers(response: Response) -> Response:
    # A coroutine: quart runs a plain function hook in a worker thread, on every request.
    decision = getattr(g, "ratelimit", None)
    if decision is not None:
        for name, value in decision.headers().items():
            response.headers.setdefault(name, value)
    return response
