"""Clear errors (ARCHITECTURE §4.6, API.md "Errors" and "Ingest"): every 4xx of the webhooks
answers with the error envelope and stores nothing of the batch; query parameters out of
range are 400s; every response carries `x-request-id`. Also the accepted ts formats and the
symbols webhook."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from tests.conftest import API_KEY

PREFIX = "/api/v1"
TICKS = PREFIX + "/webhooks/ticks"
SYMBOLS = PREFIX + "/webhooks/symbols"
MIB = 1 << 20
MAX_ITEMS = 5000
NOW = int(time.time()) - 3600  # an hour ago: well inside [2000-01-01, now + 60 s]
MISSING = object()  # marks a field left out of an item
STORAGE = (
    "ticks_history", "ticks_raw", "symbols", "ohlc_1m", "metrics_1m", "candles_1h", "source_stats",
)  # fmt: skip


def tick(symbol: str = "BTCUSDT", **fields) -> dict:
    item = {"symbol": symbol, "price": 68001.23, "ts": NOW, "volume": 0.5}
    item.update(fields)
    return {k: v for k, v in item.items() if v is not MISSING}


def batch(items: list, source: str = "test") -> dict:
    return {"source": source, "items": items}


async def post(tickhub, body, *, key: str | None = API_KEY, content_type="application/json"):
    """POST raw bytes (or a JSON-able document) to the ticks webhook."""
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {}
    if key is not None:
        headers["x-api-key"] = key
    if content_type is not None:
        headers["content-type"] = content_type
    return await tickhub.client.post(TICKS, content=content, headers=headers)


def assert_error(response, status: int, code: str) -> dict:
    """The API.md envelope, with the status's code; returns the `error` object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-request-id")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert set(error) <= {"code", "message", "details"}
    return error


async def assert_nothing_stored(db) -> None:
    counts = {t: await db.fetchval(f"SELECT count(*) FROM {t}") for t in STORAGE}
    assert counts == dict.fromkeys(STORAGE, 0)


def assert_details(error: dict, expected: list[tuple]) -> None:
    """`details` lists exactly the (index, field) problems expected, each with a message."""
    details = error["details"]
    assert all(set(d) == {"index", "field", "message"} for d in details), details
    assert all(isinstance(d["message"], str) and d["message"] for d in details), details
    assert sorted((d["index"], d["field"]) for d in details) == sorted(expected), details


# --- auth, media type, body -------------------------------------------------------------


async def test_missing_api_key_is_401_and_stores_nothing(tickhub, db):
    response = await post(tickhub, batch([tick()]), key=None)
    assert_error(response, 401, "AUTH_REQUIRED")
    assert response.headers["WWW-Authenticate"]
    await assert_nothing_stored(db)


async def test_wrong_api_key_is_401_and_stores_nothing(tickhub, db):
    response = await post(tickhub, batch([tick()]), key="not-the-key")
    assert_error(response, 401, "AUTH_REQUIRED")
    assert response.headers["WWW-Authenticate"]
    await assert_nothing_stored(db)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_wrong_content_type_is_415_and_stores_nothing(tickhub, db, content_type):
    response = await post(tickhub, batch([tick()]), content_type=content_type)
    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    await assert_nothing_stored(db)


async def test_json_content_type_with_charset_is_accepted(tickhub, db):
    response = await post(tickhub, batch([tick()]), content_type="application/json; charset=utf-8")
    assert response.status_code == 202, response.text
    assert await db.fetchval("SELECT count(*) FROM ticks_history") == 1


@pytest.mark.parametrize(
    "body",
    [
        b'{"source": "test", "items": [',
        b'{"items": [{"symbol": "BTCUSDT", "price": 1, "ts": 1}]} trailing',
        b"{'items': []}",
        b"",
        b'{"items": "\xff\xfe"}',
    ],
    ids=["truncated", "trailing-garbage", "single-quotes", "empty", "invalid-utf8"],
)
async def test_malformed_json_is_400_and_stores_nothing(tickhub, db, body):
    assert_error(await post(tickhub, body), 400, "BAD_REQUEST")
    await assert_nothing_stored(db)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
async def test_non_finite_number_is_400_and_stores_nothing(tickhub, db, literal):
    good = orjson.dumps(tick("ETHUSDT"))
    body = b'{"items": [%s, {"symbol": "BTCUSDT", "price": %s, "ts": %d}]}' % (
        good,
        literal,
        NOW,
    )
    assert_error(await post(tickhub, body), 400, "BAD_REQUEST")
    await assert_nothing_stored(db)


def padded_body(size: int) -> bytes:
    """A valid one-tick batch of exactly `size` bytes (unknown fields are ignored)."""
    shell = orjson.dumps(batch([tick(note="")]))
    return orjson.dumps(batch([tick(note="x" * (size - len(shell)))]))


async def test_body_at_the_limit_is_accepted(tickhub, db):
    body = padded_body(MIB)
    assert len(body) == MIB
    assert (await post(tickhub, body)).status_code == 202
    assert await db.fetchval("SELECT count(*) FROM ticks_history") == 1


async def test_body_over_the_limit_is_413_and_stores_nothing(tickhub, db):
    body = padded_body(MIB + MIB // 10)
    assert_error(await post(tickhub, body), 413, "PAYLOAD_TOO_LARGE")
    await assert_nothing_stored(db)


async def test_chunked_body_over_the_limit_is_413_and_stores_nothing(tickhub, db):
    body = padded_body(MIB + MIB // 10)

    async def chunks():
        for i in range(0, len(body), 64 * 1024):
            yield body[i : i + 64 * 1024]

    response = await tickhub.client.post(
        TICKS,
        content=chunks(),  # no Content-Length: the limit must hold while reading
        headers={"x-api-key": API_KEY, "content-type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    await assert_nothing_stored(db)


# --- batch shape ------------------------------------------------------------------------


async def test_batch_of_max_items_is_accepted(tickhub, db):
    items = [tick(ts=NOW + i / 1000) for i in range(MAX_ITEMS)]
    response = await post(tickhub, batch(items))
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == MAX_ITEMS


@pytest.mark.parametrize("n", [0, MAX_ITEMS + 1], ids=["empty", "over-max"])
async def test_batch_size_out_of_range_is_422_and_stores_nothing(tickhub, db, n):
    items = [tick(ts=NOW + i / 1000) for i in range(n)]
    error = assert_error(await post(tickhub, batch(items)), 422, "VALIDATION_ERROR")
    assert_details(error, [(None, "items")])
    await assert_nothing_stored(db)


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ([tick()], "body"),
        ("items", "body"),
        (None, "body"),
        ({"source": "test"}, "items"),
        ({"items": {"0": tick()}}, "items"),
        ({"items": "BTCUSDT"}, "items"),
        ({"items": None}, "items"),
    ],
    ids=["list", "string", "null", "no-items", "items-object", "items-string", "items-null"],
)
async def test_body_of_the_wrong_shape_is_422_and_stores_nothing(tickhub, db, doc, field):
    error = assert_error(await post(tickhub, doc), 422, "VALIDATION_ERROR")
    assert_details(error, [(None, field)])
    await assert_nothing_stored(db)


async def test_invalid_source_is_422_and_stores_nothing(tickhub, db):
    error = assert_error(
        await post(tickhub, batch([tick()], source="bad source")), 422, "VALIDATION_ERROR"
    )
    assert_details(error, [(None, "source")])
    await assert_nothing_stored(db)


# --- per-item problems ------------------------------------------------------------------

BAD_ITEMS = {
    "symbol-too-long": ("symbol", {"symbol": "A" * 33}),
    "symbol-space": ("symbol", {"symbol": "BTC USDT"}),
    "symbol-dollar": ("symbol", {"symbol": "BTC$USDT"}),
    "symbol-empty": ("symbol", {"symbol": ""}),
    "symbol-newline": ("symbol", {"symbol": "BTC\nUSDT"}),
    "symbol-nul": ("symbol", {"symbol": "BTC\x00"}),
    "symbol-number": ("symbol", {"symbol": 123}),
    "symbol-null": ("symbol", {"symbol": None}),
    "symbol-list": ("symbol", {"symbol": ["BTCUSDT"]}),
    "symbol-missing": ("symbol", {"symbol": MISSING}),
    "price-zero": ("price", {"price": 0}),
    "price-negative": ("price", {"price": -1.5}),
    "price-string": ("price", {"price": "68001.23"}),
    "price-bool": ("price", {"price": True}),
    "price-null": ("price", {"price": None}),
    "price-missing": ("price", {"price": MISSING}),
    "volume-negative": ("volume", {"volume": -0.5}),
    "volume-string": ("volume", {"volume": "1"}),
    "volume-bool": ("volume", {"volume": True}),
    "ts-missing": ("ts", {"ts": MISSING}),
    "ts-before-2000-number": ("ts", {"ts": 946684799}),
    "ts-before-2000-iso": ("ts", {"ts": "1999-12-31T23:59:59Z"}),
    "ts-before-2000-ms": ("ts", {"ts": 946684799999}),
    "ts-future": ("ts", {"ts": MISSING, "future": 120}),
    "ts-future-iso": ("ts", {"ts": MISSING, "future_iso": 120}),
    "ts-iso-without-zone": ("ts", {"ts": "2024-11-01T00:00:00"}),
    "ts-garbage": ("ts", {"ts": "yesterday"}),
    "ts-bool": ("ts", {"ts": True}),
    "ts-null": ("ts", {"ts": None}),
    "key-too-long": ("idempotencyKey", {"idempotencyKey": "k" * 129}),
    "key-number": ("idempotencyKey", {"idempotencyKey": 42}),
    "key-empty": ("idempotencyKey", {"idempotencyKey": ""}),
    "not-an-object": ("item", None),
}


def bad_item(override: dict | None):
    if override is None:
        return "BTCUSDT"
    override = dict(override)
    if "future" in override:  # computed at call time: the skew check uses the server clock
        override["ts"] = time.time() + override.pop("future")
    if "future_iso" in override:
        ahead = datetime.now(UTC) + timedelta(seconds=override.pop("future_iso"))
        override["ts"] = ahead.isoformat()
    return tick(**{"symbol": "XRPUSDT", **override})


@pytest.mark.parametrize(("field", "override"), BAD_ITEMS.values(), ids=BAD_ITEMS.keys())
async def test_one_bad_item_rejects_the_whole_batch(tickhub, db, field, override):
    items = [tick("BTCUSDT"), bad_item(override), tick("ETHUSDT", ts=NOW + 1)]
    error = assert_error(await post(tickhub, batch(items)), 422, "VALIDATION_ERROR")
    assert_details(error, [(1, field)])
    await assert_nothing_stored(db)  # not even BTCUSDT / ETHUSDT as symbols


async def test_every_problem_is_reported_with_its_index_and_field(tickhub, db):
    items = [
        tick("BTCUSDT", price=0),
        tick("BTCUSDT", ts=NOW + 1),
        tick("bad symbol", volume=-1),
        tick("ETHUSDT", ts="soon"),
        tick("ETHUSDT", ts=NOW + 2),
    ]
    error = assert_error(await post(tickhub, batch(items)), 422, "VALIDATION_ERROR")
    assert_details(error, [(0, "price"), (2, "symbol"), (2, "volume"), (3, "ts")])
    await assert_nothing_stored(db)


# --- accepted forms ---------------------------------------------------------------------


async def test_lower_case_symbol_is_upper_cased(tickhub, db):
    assert (await post(tickhub, batch([tick("btc-usdt")]))).status_code == 202
    assert await db.fetchval("SELECT symbol FROM ticks_history") == "BTC-USDT"
    latest = await tickhub.get(PREFIX + "/ticks/btc-usdt")
    assert latest.status_code == 200
    assert latest.json()["symbol"] == "BTC-USDT"


async def test_symbol_of_32_allowed_characters_is_accepted(tickhub, db):
    symbol = "AZ09._:/-" * 3 + "XYZ0A"
    assert len(symbol) == 32
    assert (await post(tickhub, batch([tick(symbol)]))).status_code == 202
    assert await db.fetchval("SELECT symbol FROM ticks_history") == symbol


@pytest.mark.parametrize("symbol", ["b\u0131tusdt", "\u017folusdt", "\ufb01lusdt"])
async def test_non_ascii_letters_are_not_folded_into_a_symbol(tickhub, db, symbol):
    error = assert_error(await post(tickhub, batch([tick(symbol)])), 422, "VALIDATION_ERROR")
    assert_details(error, [(0, "symbol")])
    await assert_nothing_stored(db)


def _iso(epoch: float, offset_h: int) -> str:
    return datetime.fromtimestamp(epoch, timezone(timedelta(hours=offset_h))).isoformat()


TS_FORMATS = {
    "seconds-int": (NOW, NOW),
    "seconds-float": (NOW + 0.25, NOW + 0.25),
    "seconds-micro": (NOW + 0.123456, NOW + 0.123456),
    "milliseconds": (NOW * 1000 + 123, NOW + 0.123),
    "iso-z": (datetime.fromtimestamp(NOW, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), NOW),
    "iso-z-fraction": (
        datetime.fromtimestamp(NOW, UTC).strftime("%Y-%m-%dT%H:%M:%S.5Z"),
        NOW + 0.5,
    ),
    "iso-plus-two": (_iso(NOW, 2), NOW),
    "iso-minus-five": (_iso(NOW, -5), NOW),
    "year-2000": (946684800, 946684800),
}


@pytest.mark.parametrize(("ts", "epoch"), TS_FORMATS.values(), ids=TS_FORMATS.keys())
async def test_ts_formats_are_stored_as_the_intended_instant(tickhub, db, ts, epoch):
    response = await post(tickhub, batch([tick("BTCUSDT", ts=ts)]))
    assert response.status_code == 202, response.text
    latest = (await tickhub.get(PREFIX + "/ticks/BTCUSDT")).json()
    assert latest["ts"] == epoch


async def test_ts_slightly_ahead_of_the_clock_is_accepted(tickhub, db):
    ahead = round(time.time() + 30, 3)  # inside MAX_FUTURE_SKEW_S = 60
    assert (await post(tickhub, batch([tick(ts=ahead)]))).status_code == 202
    assert (await tickhub.get(PREFIX + "/ticks/BTCUSDT")).json()["ts"] == ahead


# --- request ids ------------------------------------------------------------------------


async def test_request_id_is_echoed_on_success_and_error(tickhub, db):
    ok = await tickhub.client.post(
        TICKS, json=batch([tick()]), headers={"x-api-key": API_KEY, "x-request-id": "req-ok-1"}
    )
    bad = await tickhub.client.post(
        TICKS,
        json=batch([tick(price=0)]),
        headers={"x-api-key": API_KEY, "x-request-id": "req-bad-2"},
    )
    missing = await tickhub.get(PREFIX + "/ticks/NOPE", headers={"x-request-id": "req-404-3"})
    assert (ok.status_code, ok.headers["x-request-id"]) == (202, "req-ok-1")
    assert (bad.status_code, bad.headers["x-request-id"]) == (422, "req-bad-2")
    assert (missing.status_code, missing.headers["x-request-id"]) == (404, "req-404-3")


async def test_request_id_is_generated_when_absent(tickhub, db):
    responses = [
        await post(tickhub, batch([tick()]), key=None),
        await tickhub.get(PREFIX + "/symbols"),
        await tickhub.get("/no/such/path"),
    ]
    ids = [r.headers.get("x-request-id") for r in responses]
    assert all(ids), ids
    assert len(set(ids)) == len(ids)


# --- symbols webhook --------------------------------------------------------------------


async def post_symbols(tickhub, items, key: str | None = API_KEY):
    headers = {"x-api-key": key} if key else {}
    return await tickhub.client.post(SYMBOLS, json={"items": items}, headers=headers)


async def test_symbols_webhook_upserts_and_lists_them(tickhub, db):
    response = await post_symbols(
        tickhub,
        [
            {"symbol": "ethusdt", "base": "ETH", "quote": "USDT", "active": True},
            {"symbol": "BTC-EUR"},
        ],
    )
    assert response.status_code == 202
    assert response.json() == {"upserted": 2, "skipped": 0}
    listed = (await tickhub.get(PREFIX + "/symbols")).json()
    assert listed == [
        {"symbol": "BTC-EUR", "base": "BTC", "quote": "EUR", "active": True},
        {"symbol": "ETHUSDT", "base": "ETH", "quote": "USDT", "active": True},
    ]


async def test_inactive_symbols_are_not_listed(tickhub, db):
    await post_symbols(tickhub, [{"symbol": "BTCUSDT"}, {"symbol": "ETHUSDT"}])
    response = await post_symbols(tickhub, [{"symbol": "ETHUSDT", "active": False}])
    assert response.status_code == 202
    listed = (await tickhub.get(PREFIX + "/symbols")).json()
    assert [s["symbol"] for s in listed] == ["BTCUSDT"]
    assert await db.fetchval("SELECT active FROM symbols WHERE symbol = 'ETHUSDT'") is False


@pytest.mark.parametrize(
    "bad",
    [{"symbol": "BAD SYMBOL"}, {"symbol": ""}, {"symbol": 7}, {"base": "BTC"}, "BTCUSDT"],
    ids=["space", "empty", "number", "missing", "not-an-object"],
)
async def test_symbols_webhook_rejects_invalid_symbols(tickhub, db, bad):
    response = await post_symbols(tickhub, [{"symbol": "BTCUSDT"}, bad])
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert [d["index"] for d in error["details"]] == [1]
    await assert_nothing_stored(db)


async def test_symbols_webhook_requires_the_api_key(tickhub, db):
    assert_error(
        await post_symbols(tickhub, [{"symbol": "BTCUSDT"}], key=None), 401, "AUTH_REQUIRED"
    )
    await assert_nothing_stored(db)


async def test_symbols_webhook_with_a_repeated_symbol_keeps_the_last(tickhub, db):
    response = await post_symbols(
        tickhub, [{"symbol": "BTCUSDT"}, {"symbol": "btcusdt", "active": False}]
    )
    assert response.status_code == 202, response.text
    assert (await tickhub.get(PREFIX + "/symbols")).json() == []


# --- query parameters -------------------------------------------------------------------

HISTORY = PREFIX + "/ticks/BTCUSDT/history"
BAD_PARAMS = {
    "limit-0": (HISTORY, {"limit": "0"}),
    "limit-2001": (HISTORY, {"limit": "2001"}),
    "limit-abc": (HISTORY, {"limit": "abc"}),
    "limit-fraction": (HISTORY, {"limit": "1.5"}),
    "candle-limit-0": (HISTORY, {"view": "ohlc1m", "limit": "0"}),
    "candle-limit-2001": (HISTORY, {"view": "ohlc1m", "limit": "2001"}),
    "before-abc": (HISTORY, {"before": "abc"}),
    "before-nan": (HISTORY, {"before": "nan"}),
    "before-negative": (HISTORY, {"before": "-1"}),
    "candle-before-abc": (HISTORY, {"view": "ohlc1m", "before": "abc"}),
    "view-bogus": (HISTORY, {"view": "bogus"}),
    "interval-7m": (HISTORY, {"view": "ohlc", "interval": "7m"}),
    "fill-maybe": (HISTORY, {"view": "ohlc1m", "fill": "maybe"}),
    "window-2m": (PREFIX + "/metrics/BTCUSDT", {"window": "2m"}),
}


@pytest.mark.parametrize(("path", "params"), BAD_PARAMS.values(), ids=BAD_PARAMS.keys())
async def test_bad_query_parameter_is_400(tickhub, db, path, params):
    # With a tick stored, so a 200 or 404 would be the answer if the parameter were ignored.
    assert (await post(tickhub, batch([tick()]))).status_code == 202
    assert_error(await tickhub.get(path, params=params), 400, "BAD_REQUEST")


@pytest.mark.parametrize("path", ["/ticks/NOPE", "/metrics/NOPE"])
async def test_symbol_without_ticks_is_404(tickhub, db, path):
    assert (await post(tickhub, batch([tick()]))).status_code == 202
    assert_error(await tickhub.get(PREFIX + path), 404, "NOT_FOUND")


@pytest.mark.parametrize("path", ["/no/such/path", PREFIX + "/nothing", PREFIX + "/ticks"])
async def test_unknown_path_is_404_with_the_envelope(tickhub, db, path):
    assert_error(await tickhub.get(path), 404, "NOT_FOUND")
