"""Who may call what: API keys and bearer tokens, checked at the HTTP edge.

- An API key (`x-api-key`, any of API_KEY / API_KEYS, compared in constant time against all
  of them) is an operator credential: every route. Keys are never logged; a key's id (the
  first 8 hex digits of its SHA-256) is.
- A bearer JWT (`Authorization: Bearer …`, HS256 with JWT_SECRET, `exp` and `sub` required)
  carries a `role`: `ingest` for the webhooks, `read` for queries and the stream, `admin` for
  both.
- The browser's EventSource cannot send headers, so the stream also takes `?token=`, a
  short-lived `stream` token from `POST {prefix}/auth/stream-token` — and only that kind:
  a long-lived token in a URL ends up in logs and histories. Each stream token is a client
  of its own (its own subject), so the connection cap per client is per token, not shared
  by everyone behind the key that minted it.

Queries and the stream are open unless READ_AUTH=1. Missing or invalid credentials: 401 with
`WWW-Authenticate`; valid ones with the wrong role: 403.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import attrs
import jwt
from quart import request

from tickhub.clock import wall_s
from tickhub.config import Settings
from tickhub.http.errors import ApiError
from tickhub.logs import Throttled

INGEST = "ingest"
READ = "read"
ADMIN = "admin"
STREAM = "stream"
# Which token roles each kind of route accepts (an API key is accepted everywhere).
ACCEPTS = {INGEST: {INGEST, ADMIN}, READ: {READ, ADMIN}, STREAM: {READ, ADMIN, STREAM}}
CHALLENGE = 'Bearer realm="tickhub", ApiKey header="x-api-key"'

# One line per refused key would let a guesser fill the logs; the ids of the first few are
# enough to see who is at it (the rate limit bounds the rest).
_refused_log = Throttled("auth", "invalid API key", every_s=10)


@attrs.frozen
class Caller:
    """Who made the request: the subject (key id or token `sub`) and its role."""

    subject: str
    role: str


def key_id(key: str) -> str:
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:8]


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": CHALLENGE})


def _match_key(given: str, keys: tuple[str, ...]) -> str | None:
    """The matching key, comparing with every key so timing reveals nothing."""
    found = None
    for key in keys:
        if hmac.compare_digest(given.encode(), key.encode()):
            found = key
    return found


def decode_token(settings: Settings, token: str) -> Caller:
    if not settings.jwt_secret:
        raise _unauthorized("bearer tokens are not enabled (JWT_SECRET)")
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=["HS256"],
            options={"require": ["exp", "sub"]},
            leeway=5,
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise _unauthorized(f"invalid token: {exc}") from None
    role = claims.get("role")
    if not isinstance(role, str) or not isinstance(claims["sub"], str):
        raise _unauthorized("invalid token: `sub` and `role` must be strings")
    return Caller(claims["sub"], role)


def presents_credentials(allow_query_token: bool = False) -> bool:
    """Whether the current request carries credentials of any kind."""
    headers = request.headers
    return bool(
        headers.get("x-api-key")
        or headers.get("Authorization")
        or (allow_query_token and request.args.get("token"))
    )


def authenticate(settings: Settings, *, allow_query_token: bool = False) -> Caller | None:
    """The caller of the current request, or None when it brought no credentials."""
    given = request.headers.get("x-api-key")
    if given:
        key = _match_key(given, settings.api_keys)
        if key is None:
            _refused_log.warning(key_id=key_id(given), path=request.path)
            raise _unauthorized("invalid API key")
        return Caller(key_id(key), ADMIN)
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("expected Authorization: Bearer <token>")
        return decode_token(settings, token.strip())
    if allow_query_token and request.args.get("token"):
        caller = decode_token(settings, request.args["token"])
        if caller.role != STREAM:
            raise _unauthorized("?token= takes only stream tokens (POST /auth/stream-token)")
        return caller
    return None


def require(settings: Settings, kind: str, *, allow_query_token: bool = False) -> Caller:
    """The caller, who must hold a credential accepted for `kind` (401 / 403 otherwise)."""
    caller = authenticate(settings, allow_query_token=allow_query_token)
    if caller is None:
        raise _unauthorized("credentials required: x-api-key or Authorization: Bearer")
    if caller.role not in ACCEPTS[kind]:
        raise ApiError(403, f"role {caller.role!r} may not do this")
    return caller


def issue_stream_token(settings: Settings, caller: Caller) -> tuple[str, int]:
    """A stream token with a subject of its own; `by` names who asked for it (for the logs)."""
    expires = int(wall_s()) + settings.stream_token_ttl_s
    token = jwt.encode(
        {
            "sub": "stream:" + secrets.token_hex(8),
            "by": caller.subject,
            "role": STREAM,
            "exp": expires,
        },
        settings.jwt_secret,
        algorithm="HS256",
    )
    return token, expires
