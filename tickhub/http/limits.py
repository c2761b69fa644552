"""Rate limits and connection caps at the HTTP edge.

Each request of a limited group (webhooks, queries, stream connects) is charged to its
client — the API key's id or the token's subject when authenticated, else the client IP —
with GCRA (`tickhub.ratelimit`). Refused: 429 with Retry-After and RateLimit-* headers;
allowed responses carry the RateLimit-* headers too. The client IP is the socket's peer,
unless that peer is a trusted proxy: then the right-most address of X-Forwarded-For that is
not itself a trusted proxy.
"""

from __future__ import annotations

import ipaddress
from functools import cache

import structlog
from quart import Response, g, request

from tickhub import metrics
from tickhub.http.errors import ApiError
from tickhub.ratelimit import parse_rate
from tickhub.streams import RedisUnavailable

log = structlog.get_logger(actor="limits")


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


def client_id(svc, caller) -> str:
    return caller.subject if caller is not None else "ip:" + client_ip(svc.settings.trusted_proxies)


async def enforce(svc, group: str, caller) -> None:
    """Charge one request of `group` to the caller; raise 429 when over the limit."""
    rate = parse_rate(getattr(svc.settings, f"rate_limit_{group}"))
    if rate is None:
        return
    try:
        decision = await svc.limiter.check(group, client_id(svc, caller), rate)
    except RedisUnavailable:
        # The shared counters are out of reach: serve rather than refuse everyone (the
        # webhook then answers 503 for the queue anyway; reads keep working).
        metrics.RATE_LIMIT_SKIPPED.inc()
        log.warning("rate limit not checked: redis unavailable", group=group)
        return
    if not decision.allowed:
        metrics.RATE_LIMITED.labels(group).inc()
        raise ApiError(429, f"rate limit of {group} exceeded", headers=decision.headers())
    g.ratelimit = decision


def add_headers(response: Response) -> Response:
    decision = getattr(g, "ratelimit", None)
    if decision is not None:
        for name, value in decision.headers().items():
            response.headers.setdefault(name, value)
    return response
