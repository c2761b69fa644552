"""The OpenAPI document (`/openapi.json`), via quart-schema (Swagger UI at `/docs` is
`http.docs`, served from the package).

The models below describe the wire shapes of API.md for the document only: requests are
validated by `http.validation` (columnar, on the hot path), not by these models. The SSE
route's `text/event-stream` response is added by the provider, which quart-schema cannot
express from a model: each event the stream sends is described by the media type's
`itemSchema`, which OpenAPI 3.2 defines for sequential media types (hence `openapi: 3.2.0`;
3.2 is 3.1 plus such additions). An event is read as a parser sees it — `event` (`message`
when the server names none), `data`, `id` and `retry` — and its JSON `data` is described with
`contentMediaType` / `contentSchema`, so schemathesis checks every event it reads.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, RootModel
from quart_schema import QuartSchema
from quart_schema.openapi import APIKeySecurityScheme, HttpSecurityScheme, OpenAPIProvider

from tickhub import __version__
from tickhub.wire import CONFLATE_MS

Number = float


class TickIn(BaseModel):
    symbol: str = Field(description="1-32 of A-Z 0-9 . _ : / - (lower case is upper-cased)")
    price: Number = Field(ge=1e-12, le=1e15)
    ts: Number | str = Field(
        description="epoch seconds, epoch milliseconds (> 1e11) or ISO-8601 with a zone"
    )
    volume: Number = Field(default=0, ge=0, le=1e15)
    idempotencyKey: str | None = Field(
        default=None,
        max_length=128,
        description="deduplication key; derived from (source, symbol, ts, price, volume) if absent",
    )


class TicksIn(BaseModel):
    source: str = Field(default="webhook", max_length=64)
    items: list[TickIn] = Field(min_length=1, max_length=5000)


class IngestAccepted(BaseModel):
    accepted: int = Field(description="ticks new to tickhub")
    duplicates: int = Field(description="ticks it already had")
    queued: int
    rejected: int
    skipped: int


class SymbolOut(BaseModel):
    symbol: str
    base: str
    quote: str
    active: bool


class SymbolIn(BaseModel):
    symbol: str
    base: str = ""
    quote: str = ""
    active: bool = True


class SymbolsIn(BaseModel):
    items: list[SymbolIn] = Field(min_length=1, max_length=5000)


class Upserted(BaseModel):
    upserted: int
    skipped: int


class Tick(BaseModel):
    symbol: str
    ts: Number
    price: Number
    volume: Number


class TickPage(BaseModel):
    items: list[Tick] = Field(description="newest first")
    nextCursor: Number | None = Field(description="pass as `before` for the next page")


class Candle(BaseModel):
    symbol: str
    ts: int = Field(description="bucket start, epoch seconds")
    open: Number
    high: Number
    low: Number
    close: Number
    volume: Number
    count: int
    vwap: Number | None
    sma10: Number | None = Field(description="mean close of this and the 9 candles before")


class CandlePage(BaseModel):
    items: list[Candle] = Field(description="oldest first")
    nextCursor: int | None = Field(description="pass as `before` for the page before")


class HistoryPage(RootModel[TickPage | CandlePage]):
    """Raw ticks by default; candles with `view=ohlc1m` (`agg=1m`, `shape=candle`, `ohlc`)."""


class SymbolList(RootModel[list[SymbolOut]]):
    pass


class HistoryQuery(BaseModel):
    limit: int | None = Field(default=200, ge=1, le=2000)
    before: Number | None = Field(default=None, description="exclusive, epoch seconds")
    view: Literal["raw", "ohlc1m", "ohlc"] | None = None
    interval: Literal["1m", "5m", "15m", "1h", "4h", "1d"] | None = None
    agg: Literal["1m"] | None = None
    shape: Literal["candle"] | None = None
    fill: bool | None = None


class MetricsQuery(BaseModel):
    window: Literal["1m", "5m", "1h", "1d"] | None = "1m"


class Metrics(BaseModel):
    symbol: str
    windowStart: int
    windowEnd: int
    count: int
    open: Number
    min: Number
    max: Number
    avg: Number
    vwap: Number | None
    volume: Number
    last: Number


class SourceStats(BaseModel):
    ticks: int
    lastTs: Number


class QueueStats(BaseModel):
    pending: int
    inFlight: int
    completed: int
    failed: int = Field(description="batches given up (moved to the dead letters, split mode)")
    dead: int = Field(description="dead letters waiting (split mode: `tickhub dead-letters`)")


class Stats(BaseModel):
    ticksTotal: int
    symbols: int
    lastIngestAt: Number | None
    sources: dict[str, SourceStats]
    queue: QueueStats


class Liveness(BaseModel):
    ok: bool


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, str]
    actors: list[dict[str, Any]] = Field(
        description="at most 50: every permanent actor, then per-symbol ones (troubled first)"
    )
    actorStates: dict[str, int] = Field(description="how many actors are in each state")


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None
    detailsTotal: int | None = Field(
        default=None, description="how many problems there were, when only the first are listed"
    )


class Error(BaseModel):
    error: ErrorDetail


class StreamToken(BaseModel):
    token: str = Field(description="pass as `token=` to /realtime/ticks")
    expiresAt: int = Field(description="epoch seconds")


class StreamQuery(BaseModel):
    symbol: str | None = None
    symbols: str | None = Field(default=None, description="comma-separated")
    lastEventId: str | None = Field(default=None, description="resume after this event id")
    token: str | None = Field(default=None, description="a stream token (READ_AUTH=1)")
    conflate: Literal[0] | Annotated[int, Field(ge=CONFLATE_MS[0], le=CONFLATE_MS[1])] | None = (
        Field(
            default=None,
            description="at most one event per symbol per this many milliseconds (0: every tick)",
        )
    )


STREAM_DESCRIPTION = """\
Server-Sent Events. First `retry: 3000` and `event: hello`; then one default-type event per
stored tick: `id: <n>` and `data: {"symbol","price","ts","volume","sma10","candle1m":{...}}`
(with `conflate=MS`, at most one per symbol and interval, with `"conflated": n`).
Keepalive `: ping <ms>` (plus `event: ping`) every SSE_KEEPALIVE_MS. Resume with the
`Last-Event-ID` header or `lastEventId`; `event: reset` when that id left the window, or
after this client's buffer overflowed: reload history."""

OPENAPI_VERSION = "3.2.0"
_NUMBER = {"type": "number"}
_SYMBOL = {"type": "string", "pattern": "^[A-Z0-9._:/-]{1,32}$"}
_EVENT_ID = {"type": "string", "pattern": "^[0-9]+$"}


def _obj(properties: dict[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """A closed object: these properties, all required but `optional`, nothing else."""
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }


# The JSON carried in the `data` of the stream's events (aggregator.live_events, hub, subscriber).
STREAM_SCHEMAS: dict[str, Any] = {
    "StreamHello": _obj(
        {
            "ok": {"const": True},
            "connectedAt": {"type": "integer", "description": "epoch milliseconds"},
            "filterSymbol": {
                "type": ["string", "null"],
                "description": "the subscribed symbols, comma-separated; null: all",
            },
            "conflateMs": {
                "type": "integer",
                "minimum": CONFLATE_MS[0],
                "maximum": CONFLATE_MS[1],
                "description": "the stream's conflation interval (absent: every tick)",
            },
        },
        optional=("conflateMs",),
    ),
    "StreamCandle": _obj(
        {
            "bucket_start": {"type": "integer", "description": "the minute's start, epoch s"},
            "open": _NUMBER,
            "high": _NUMBER,
            "low": _NUMBER,
            "close": _NUMBER,
            "volume": _NUMBER,
            "count": {"type": "integer", "minimum": 1},
        }
    ),
    "StreamTick": _obj(
        {
            "symbol": _SYMBOL,
            "price": {"type": "number", "exclusiveMinimum": 0},
            "ts": {"type": "number", "description": "epoch seconds"},
            "volume": {"type": "number", "minimum": 0},
            "sma10": {
                "type": ["number", "null"],
                "description": "mean close of this and the 9 candles before; null: fewer",
            },
            "candle1m": {"$ref": "#/components/schemas/StreamCandle"},
            "conflated": {
                "type": "integer",
                "minimum": 1,
                "description": "conflate=MS only: how many ticks this event stands for",
            },
        },
        optional=("conflated",),
    ),
    "StreamReset": _obj({"reason": {"enum": ["stale", "overflow"]}}),
}


def _event(name: str, data: dict[str, Any], *, with_id: bool = False) -> dict[str, Any]:
    """One kind of event as a parser reads it. `id` is optional unless `with_id`: a parser
    carries the last id it saw over to the events after it."""
    properties: dict[str, Any] = {"event": {"const": name}, "data": data, "id": _EVENT_ID}
    required = ["event", "data", "id"] if with_id else ["event", "data"]
    if name == "hello":  # its frame starts with the reconnection delay for EventSource
        properties["retry"] = {"const": 3000}
        required.append("retry")
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _json(component: str) -> dict[str, Any]:
    return {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"$ref": f"#/components/schemas/{component}"},
    }


STREAM_EVENT = {
    "oneOf": [
        _event("hello", _json("StreamHello")),
        _event("message", _json("StreamTick"), with_id=True),
        _event("reset", _json("StreamReset")),
        _event("ping", {"type": "string", "pattern": "^[0-9]+$", "description": "epoch ms"}),
    ],
    "description": "one event of the stream: hello, a tick (default type), reset or ping",
}


class _Provider(OpenAPIProvider):
    def schema(self) -> dict[str, Any]:
        document = super().schema()
        document["openapi"] = OPENAPI_VERSION
        stream = document["paths"].get("/realtime/ticks", {}).get("get")
        if stream is not None:
            stream["responses"][200] = {
                "description": "the live event stream",
                "content": {"text/event-stream": {"itemSchema": STREAM_EVENT}},
            }
            stream["description"] = STREAM_DESCRIPTION
            document["components"]["schemas"].update(STREAM_SCHEMAS)
        metrics_route = document["paths"].get("/ops/metrics", {}).get("get")
        if metrics_route is not None:
            metrics_route["responses"][200] = {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        return document


def install(app: Any) -> None:
    QuartSchema(
        app,
        openapi_path="/openapi.json",
        swagger_ui_path=None,  # served from the package by `http.docs`, not from a CDN
        redoc_ui_path=None,
        scalar_ui_path=None,
        info={"title": "tickhub", "version": __version__},
        security_schemes={
            "ApiKey": APIKeySecurityScheme(name="x-api-key", in_="header"),
            "Bearer": HttpSecurityScheme(scheme="bearer", bearer_format="JWT"),
        },
        openapi_provider_class=_Provider,
        conversion_preference="pydantic",
    )
