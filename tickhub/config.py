"""Settings: every environment variable tickhub reads, parsed once into frozen attrs objects.

Each field names its variable in `metadata={"env": ...}`; `load_settings()` structures every
raw string with cattrs and stops start-up with one line naming the variable and what it
expects. Nothing else in tickhub reads `os.environ`.
"""

from __future__ import annotations

import ipaddress
import math
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args, get_origin

import attrs
import cattrs
import platformdirs

from tickhub.ratelimit import Rate, parse_rate

ROLES = ("api", "gateway", "consumer", "feeder", "all")
LOG_LEVELS = ("debug", "info", "warning", "error")


class SettingsError(ValueError):
    """A setting has a value tickhub cannot use; the message names the variable."""


@attrs.frozen
class PerSymbol:
    """A number for every symbol: a default plus per-symbol overrides (`68000` or `BTC:1,ETH:2`)."""

    default: float
    overrides: tuple[tuple[str, float], ...] = ()

    def for_symbol(self, symbol: str) -> float:
        return dict(self.overrides).get(symbol, self.default)


# Volumes are rounded to millionths, the finest lot size of common venues.
_LOT = 1_000_000


@attrs.frozen
class VolumeModel:
    """The feeder's distribution of tick volumes (FEEDER_VOLUME): `exp:MEAN`,
    `lognormal:MEDIAN,SIGMA`, `uniform:LOW,HIGH` or `const:VALUE`."""

    kind: str
    a: float
    b: float = 0.0

    @classmethod
    def parse(cls, text: str) -> VolumeModel:
        kind, _, args = text.strip().partition(":")
        try:
            numbers = [float(x) for x in args.split(",")] if args else []
        except ValueError:
            numbers = []
        arity = {"exp": 1, "const": 1, "lognormal": 2, "uniform": 2}.get(kind.strip().lower())
        if arity is None or len(numbers) != arity or not all(map(math.isfinite, numbers)):
            raise ValueError(
                "expected exp:MEAN, lognormal:MEDIAN,SIGMA, uniform:LOW,HIGH or const:VALUE"
            )
        model = cls(kind.strip().lower(), *numbers)
        valid = {
            "exp": model.a > 0,
            "const": model.a >= 0,
            "lognormal": model.a > 0 and model.b >= 0,
            "uniform": 0 <= model.a <= model.b,
        }[model.kind]
        if not valid:
            raise ValueError(f"{text!r}: volumes must be at least 0 (and MEAN, MEDIAN above 0)")
        return model

    def sample(self, rng: random.Random, n: int) -> list[float]:
        rnd = rng.random
        if self.kind == "exp":
            log, mean = math.log, self.a
            draws = [-log(1.0 - rnd()) * mean for _ in range(n)]
        elif self.kind == "lognormal":
            mu = math.log(self.a)
            draws = [rng.lognormvariate(mu, self.b) for _ in range(n)]
        elif self.kind == "uniform":
            low, width = self.a, self.b - self.a
            draws = [low + width * rnd() for _ in range(n)]
        else:
            draws = [self.a] * n
        return [round(v * _LOT) / _LOT for v in draws]


def env(name: str, default: Any = attrs.NOTHING, **kw: Any) -> Any:
    """An attrs field read from the environment variable `name`."""
    return attrs.field(default=default, metadata={"env": name}, **kw)


def _positive(_inst: Any, att: attrs.Attribute, value: float | None) -> None:
    if value is not None and not value > 0:
        raise SettingsError(f"{att.metadata['env']}={value!r}: expected a number above 0")


def _non_negative(_inst: Any, att: attrs.Attribute, value: float | None) -> None:
    if value is not None and not value >= 0:
        raise SettingsError(f"{att.metadata['env']}={value!r}: expected a number of at least 0")


def _one_of(choices: tuple[str, ...]):
    def check(_inst: Any, att: attrs.Attribute, value: str) -> None:
        if value not in choices:
            raise SettingsError(
                f"{att.metadata['env']}={value!r}: expected one of {', '.join(choices)}"
            )

    return check


def _roles(_inst: Any, att: attrs.Attribute, value: tuple[str, ...]) -> None:
    bad = [r for r in value if r not in ROLES]
    if bad or not value:
        raise SettingsError(
            f"{att.metadata['env']}={','.join(value)!r}: expected roles from {', '.join(ROLES)}"
        )


def _prefix(_inst: Any, att: attrs.Attribute, value: str) -> None:
    if not value.startswith("/") or value.endswith("/"):
        raise SettingsError(f"{att.metadata['env']}={value!r}: expected a path like /api/v1")


def default_data_dir() -> str:
    return platformdirs.user_data_dir("tickhub", appauthor=False)


@attrs.frozen
class FeederSettings:
    """The feeder role: synthetic ticks posted to an api's webhook (names from the seed guide)."""

    base_url: str = env("ORCHESTRATOR_BASE_URL", "http://127.0.0.1:8080/api/v1")
    api_key: str = env("ORCHESTRATOR_API_KEY", "dev-key")
    symbols: tuple[str, ...] = env("SYMBOLS", ("BTCUSDT", "ETHUSDT"))
    rps: float = env("RPS", 5.0)
    batch_size: int = env("BATCH_SIZE", 20, validator=_positive)
    flush_ms: int = env("FLUSH_MS", 500, validator=_positive)
    jitter: float = env("JITTER", 0.1)
    # The demo's first impression: each default symbol near its real level and with its own
    # per-tick volatility (ether moves more than bitcoin); any other symbol starts at 100.
    # Setting PRICE_BASE or VOLATILITY replaces the whole table.
    price_base: PerSymbol = env(
        "PRICE_BASE",
        PerSymbol(100.0, (("BTCUSDT", 68000.0), ("ETHUSDT", 2400.0))),
        validator=attrs.validators.instance_of(PerSymbol),
    )
    volatility: PerSymbol = env(
        "VOLATILITY",
        PerSymbol(0.001, (("BTCUSDT", 0.0005), ("ETHUSDT", 0.0008))),
        validator=attrs.validators.instance_of(PerSymbol),
    )
    retry_attempts: int = env("RETRY_ATTEMPTS", 3, validator=_non_negative)
    retry_backoff_ms: int = env("RETRY_BACKOFF_MS", 500, validator=_positive)
    seed: int | None = env("SEED", None)
    source: str = env("FEEDER_SOURCE", "feeder")
    # Price increment per symbol; unset: a power of ten about a millionth of the base price.
    tick_size: PerSymbol | None = env("TICK_SIZE", None)
    # Volume distribution: exp:MEAN, lognormal:MEDIAN,SIGMA, uniform:LO,HI or const:V.
    volume: VolumeModel = env("FEEDER_VOLUME", VolumeModel("exp", 0.5))
    # How many ticks the feeder keeps while the api is unreachable before it stops generating.
    buffer_max: int = env("FEEDER_BUFFER_MAX", 100_000, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if not 0.1 <= self.rps <= 100_000:
            raise SettingsError(f"RPS={self.rps!r}: expected ticks per second from 0.1 to 100000")
        if not 0 <= self.jitter < 1:
            raise SettingsError(f"JITTER={self.jitter!r}: expected a fraction from 0 to below 1")
        checked = [("PRICE_BASE", self.price_base), ("VOLATILITY", self.volatility)]
        if self.tick_size is not None:
            checked.append(("TICK_SIZE", self.tick_size))
        for name, per in checked:
            values = [per.default, *(v for _, v in per.overrides)]
            if not all(v > 0 and math.isfinite(v) for v in values):
                raise SettingsError(f"{name}: expected numbers above 0, got {values}")


@attrs.frozen
class Settings:
    """Everything a tickhub process is configured with (ARCHITECTURE §5)."""

    roles: tuple[str, ...] = env("TICKHUB_ROLE", ("all",), validator=_roles)
    host: str = env("HOST", "0.0.0.0")
    port: int | None = env("PORT", None, validator=_non_negative)  # 0: any free port
    database_url: str | None = env("DATABASE_URL", None)
    redis_url: str | None = env("REDIS_URL", None)
    data_dir: str = env("TICKHUB_DATA_DIR", attrs.Factory(default_data_dir))
    api_prefix: str = env("API_PREFIX", "/api/v1", validator=_prefix)
    api_key: str | None = env("API_KEY", None)
    api_keys_extra: tuple[str, ...] = env("API_KEYS", ())
    # HS256 secret for bearer tokens and stream tokens (at least 32 bytes); unset: keys only.
    jwt_secret: str | None = env("JWT_SECRET", None)
    # 1: queries and the stream need credentials too (a key, a `read` token, a stream token).
    read_auth: bool = env("READ_AUTH", False)
    stream_token_ttl_s: int = env("STREAM_TOKEN_TTL_S", 300, validator=_positive)
    # Requests per window per client (API key, token subject, or IP): "N/s", "N/m", "N/h";
    # "0" turns a limit off. Shared through Redis when roles run in separate processes. An IP
    # gets the same budget for requests whose credentials fail.
    rate_limit_webhooks: Rate | None = env("RATE_LIMIT_WEBHOOKS", Rate(200, 1))
    rate_limit_queries: Rate | None = env("RATE_LIMIT_QUERIES", Rate(100, 1))
    rate_limit_stream: Rate | None = env("RATE_LIMIT_STREAM", Rate(60, 60))
    # Proxies whose X-Forwarded-For is believed (IPs or CIDRs); otherwise the socket's peer.
    trusted_proxies: tuple[str, ...] = env("TRUSTED_PROXIES", ())
    sse_max_clients: int = env("SSE_MAX_CLIENTS", 20_000, validator=_positive)
    sse_max_per_client: int = env("SSE_MAX_PER_CLIENT", 50, validator=_positive)
    # Raw and deduplicated ticks older than this are deleted (candles are kept); 0: keep all.
    retention_days: float = env("RETENTION_DAYS", 0.0, validator=_non_negative)
    # A connection that has not sent a whole request head in this long is closed (slow loris).
    http_idle_timeout_s: float = env("HTTP_IDLE_TIMEOUT_S", 15.0, validator=_positive)
    # A request body that takes longer than this to arrive is cut off.
    http_body_timeout_s: float = env("HTTP_BODY_TIMEOUT_S", 30.0, validator=_positive)
    queue_prefix: str = env("QUEUE_PREFIX", "realtime")
    ticks_queue: str = env("TICKS_QUEUE", "ticks")
    pubsub_channel: str = env("PUBSUB_CHANNEL", "ch:ticks")
    cors_allow_origins: tuple[str, ...] = env("CORS_ALLOW_ORIGINS", ())
    allow_origins: tuple[str, ...] = env("ALLOW_ORIGINS", ())
    sse_keepalive_ms: int = env("SSE_KEEPALIVE_MS", 15_000, validator=_positive)
    sse_client_buffer: int = env("SSE_CLIENT_BUFFER", 256, validator=_positive)
    sse_retain_events: int = env("SSE_RETAIN_EVENTS", 10_000, validator=_positive)
    batch_max: int = env("BATCH_MAX", 500, validator=_positive)
    batch_flush_ms: int = env("BATCH_FLUSH_MS", 200, validator=_positive)
    # The largest flush: while rows wait, a flush takes whole batches up to this many rows
    # (never fewer than BATCH_MAX). Equal to BATCH_MAX by default: on one host, larger flushes
    # measured no faster (docs/performance.md §3.1); a database a network hop away may differ.
    batch_backlog_max: int = env("BATCH_BACKLOG_MAX", 500, validator=_positive)
    # Flushes that may overlap: one runs in PostgreSQL while the process prepares the next.
    worker_concurrency: int = env("WORKER_CONCURRENCY", 2, validator=_positive)
    # The consumer's name in the stream's consumer group; stable names resume their own
    # pending entries after a restart (default: host-pid).
    consumer_name: str | None = env("CONSUMER_NAME", None)
    # Entries pending this long on another consumer are taken over (it is presumed dead).
    claim_idle_ms: int = env("CLAIM_IDLE_MS", 30_000, validator=_positive)
    ingest_timeout_ms: int = env("INGEST_TIMEOUT_MS", 2_000, validator=_positive)
    # Ticks admitted into the pipeline but not yet committed; beyond it the webhook waits.
    ingest_max_pending: int = env("INGEST_MAX_PENDING", 50_000, validator=_positive)
    max_batch_items: int = env("MAX_BATCH_ITEMS", 5_000, validator=_positive)
    max_body_bytes: int = env("MAX_BODY_BYTES", 1 << 20, validator=_positive)
    max_future_skew_s: float = env("MAX_FUTURE_SKEW_S", 60.0, validator=_non_negative)
    raw_audit: bool = env("RAW_AUDIT", True)
    migrate_on_start: bool = env("MIGRATE_ON_START", True)
    db_pool_size: int = env("DB_POOL_SIZE", 8, validator=_positive)
    # The deadline of every database call (a flush is bounded by its webhooks' deadlines too).
    db_timeout_ms: int = env("DB_TIMEOUT_MS", 5_000, validator=_positive)
    # The deadline of every Redis call (a blocking read adds its block time).
    redis_timeout_ms: int = env("REDIS_TIMEOUT_MS", 2_000, validator=_positive)
    # A ticks-stream entry that fails on its data this many times goes to the dead letters.
    dead_letter_after: int = env("DEAD_LETTER_AFTER", 5, validator=_positive)
    # A symbol's aggregator with nothing to do for this long stops (started again on its
    # next tick); at most AGGREGATORS_MAX run at once (the least recently busy idle one
    # makes room), so memory does not grow with the number of symbols ever seen.
    aggregator_idle_s: float = env("AGGREGATOR_IDLE_S", 60.0, validator=_positive)
    aggregators_max: int = env("AGGREGATORS_MAX", 4_096, validator=_positive)
    stop_timeout_s: float = env("STOP_TIMEOUT_S", 10.0, validator=_positive)
    restart_max: int = env("RESTART_MAX", 5, validator=_positive)
    restart_window_s: float = env("RESTART_WINDOW_S", 60.0, validator=_positive)
    # Where the page served by the api finds the API and the stream (the seed's build-time
    # names); unset: the page's own origin.
    ui_api_base_url: str | None = env("VITE_API_BASE_URL", None)
    ui_realtime_url: str | None = env("VITE_REALTIME_URL", None)
    log_level: str = env("LOG_LEVEL", "info", validator=_one_of(LOG_LEVELS))
    log_pretty: bool = env("LOG_PRETTY", False)
    feeder: FeederSettings = attrs.field(factory=FeederSettings)

    def __attrs_post_init__(self) -> None:
        if self.jwt_secret is not None and len(self.jwt_secret.encode()) < 32:
            raise SettingsError("JWT_SECRET: expected at least 32 bytes")
        if self.read_auth and not self.jwt_secret:
            raise SettingsError("READ_AUTH=1 needs JWT_SECRET (browsers use stream tokens)")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise SettingsError(
                    f"TRUSTED_PROXIES: {proxy!r} is not an IP address or network"
                ) from None

    def rate_limit(self, group: str) -> Rate | None:
        """The limit of a route group: webhooks, queries or stream."""
        return getattr(self, f"rate_limit_{group}")

    @property
    def api_keys(self) -> tuple[str, ...]:
        keys = (self.api_key, *self.api_keys_extra)
        return tuple(k for k in keys if k)


# --- parsing -------------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

converter = cattrs.Converter()


def _bool(raw: Any, _t: type) -> bool:
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("expected 1 or 0 (true/false)")


def _int(raw: Any, _t: type) -> int:
    try:
        return int(str(raw).strip())
    except ValueError:
        raise ValueError("expected a whole number") from None


def _float(raw: Any, _t: type) -> float:
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise ValueError("expected a number") from None
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def _str_tuple(raw: Any, _t: type) -> tuple[str, ...]:
    if isinstance(raw, tuple):
        return raw
    return tuple(part.strip() for part in str(raw).split(",") if part.strip())


def _per_symbol(raw: Any, _t: type) -> PerSymbol:
    """`68000`, `BTCUSDT:68000,ETHUSDT:3500`, or both (`100,BTCUSDT:68000`)."""
    if isinstance(raw, PerSymbol):
        return raw
    default: float | None = None
    overrides: list[tuple[str, float]] = []
    for part in (p.strip() for p in str(raw).split(",")):
        if not part:
            continue
        symbol, sep, number = part.rpartition(":")
        value = _float(number, float)
        if sep:
            overrides.append((symbol.strip().upper(), value))
        elif default is None:
            default = value
        else:
            raise ValueError("expected one scalar and SYMBOL:value pairs")
    if default is None and not overrides:
        raise ValueError("expected a number or SYMBOL:value pairs")
    fallback = default if default is not None else overrides[0][1]
    return PerSymbol(fallback, tuple(overrides))


converter.register_structure_hook(bool, _bool)
converter.register_structure_hook(int, _int)
converter.register_structure_hook(float, _float)
converter.register_structure_hook_func(lambda t: t == tuple[str, ...], _str_tuple)
converter.register_structure_hook(PerSymbol, _per_symbol)
converter.register_structure_hook(VolumeModel, lambda raw, _t: VolumeModel.parse(str(raw)))
# "0" (no limit) structures to None: the fields are `Rate | None`.
converter.register_structure_hook(Rate, lambda raw, _t: parse_rate(str(raw)))


attrs.resolve_types(FeederSettings)
attrs.resolve_types(Settings)


def _structure_field(att: attrs.Attribute, raw: str) -> Any:
    typ = att.type
    if get_origin(typ) is not None and type(None) in get_args(typ):  # `X | None`
        if raw.strip() == "":
            return None
        typ = next(a for a in get_args(typ) if a is not type(None))
    return converter.structure(raw, typ)


def _load(cls: type, environ: Mapping[str, str]) -> Any:
    values: dict[str, Any] = {}
    for att in attrs.fields(cls):
        name = att.metadata.get("env")
        if name is None or name not in environ:
            continue
        raw = environ[name]
        try:
            values[att.name] = _structure_field(att, raw)
        except (ValueError, TypeError, cattrs.BaseValidationError) as exc:
            reason = exc.args[0] if exc.args else "invalid value"
            raise SettingsError(f"{name}={raw!r}: {reason}") from None
    return values


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Parse the environment (or `environ`) into Settings; SettingsError names the variable."""
    environ = os.environ if environ is None else environ
    feeder = FeederSettings(**_load(FeederSettings, environ))
    values = _load(Settings, environ)
    values.update(overrides)
    settings = Settings(feeder=feeder, **values)
    if "://" not in feeder.base_url:
        # Render's `fromService … property: hostport` gives "host:port": a private http URL.
        url = f"http://{feeder.base_url}{settings.api_prefix}"
        settings = attrs.evolve(settings, feeder=attrs.evolve(feeder, base_url=url))
    return settings


def data_path(settings: Settings, *parts: str) -> Path:
    path = Path(settings.data_dir, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
