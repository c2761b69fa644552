"""Webhook body validation: one pass over the items into columns, every problem collected.

Per-tick work is the hot path of ingest, so there is no object per tick: each field goes
straight into a list, and a batch with any problem is rejected whole with the list of
`{index, field, message}` (API.md) — the first MAX_PROBLEMS of them, and how many there
were, so a huge bad batch cannot buy a huge answer. Pure functions; the HTTP layer maps the
exceptions.

Prices and volumes are refused at the door when the store could not hold them exactly:
they are kept as `numeric` with 15 significant digits, and the sums a candle and a day's
metrics carry (volume, price x volume for VWAP) must stay finite doubles on the way out.
Up to 10^15 for each leaves room for every sum a real market makes; prices start at 10^-12.
"""

from __future__ import annotations

import hashlib
import math
import re
from datetime import UTC, datetime
from typing import Any

import attrs
import orjson

from tickhub.messages import TickBatch, TickColumns
from tickhub.symbols import SYMBOL_RULE, normal_symbol

SOURCE = re.compile(r"[A-Za-z0-9._:/\-]{1,64}")
MIN_TS_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z
MS_THRESHOLD = 1e11  # above this a numeric ts is epoch milliseconds
MAX_KEY_LEN = 128
DEFAULT_SOURCE = "webhook"
PRICE_MIN = 1e-12
PRICE_MAX = 1e15
VOLUME_MAX = 1e15
# Problems listed in a 422 at most; the message says how many there were.
MAX_PROBLEMS = 100
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class BadRequest(ValueError):
    """The body is not JSON (400)."""


@attrs.define
class Invalid(ValueError):
    """The body is JSON but not a valid batch (422); `details` lists its first problems,
    `total` counts them all."""

    details: list[dict[str, Any]]
    total: int = attrs.field()

    @total.default
    def _count(self) -> int:
        return len(self.details)

    def __str__(self) -> str:
        if self.total > len(self.details):
            return f"{self.total} invalid fields; the first {len(self.details)} are listed"
        return f"{self.total} invalid field(s)"


def load_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond float range
        return None


def parse_ts(value: Any, now_us: int, max_skew_us: int) -> int | str:
    """Epoch microseconds, or an error message."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return "expected epoch seconds, milliseconds or an ISO-8601 time"
        if parsed.tzinfo is None:
            return "an ISO-8601 time needs a zone (Z or +hh:mm)"
        delta = parsed - EPOCH
        ts_us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    else:
        number = _number(value)
        if number is None or not math.isfinite(number):
            return "expected a number or an ISO-8601 string"
        if not -1e15 < number < 1e15:  # beyond any ms time; and keeps the product finite
            return "out of range"
        # A number above 1e11 is epoch milliseconds (1e11 s is the year 5138).
        ts_us = round(number * 1_000) if number > MS_THRESHOLD else round(number * 1_000_000)
    if ts_us < MIN_TS_US:
        return "before 2000-01-01"
    if ts_us > now_us + max_skew_us:
        return f"more than {max_skew_us // 1_000_000} s in the future"
    return ts_us


PRICE_RULE = f"expected a number from {PRICE_MIN:g} to {PRICE_MAX:g}"
VOLUME_RULE = f"expected a number from 0 to {VOLUME_MAX:g}"


def _problem(index: int | None, field: str, message: str) -> dict[str, Any]:
    return {"index": index, "field": field, "message": message}


def derived_key(source: str, symbol: str, ts_us: int, price: float, volume: float) -> str:
    raw = f"{source}|{symbol}|{ts_us}|{price!r}|{volume!r}".encode()
    return "d:" + hashlib.blake2b(raw, digest_size=16).hexdigest()


def parse_ticks(
    doc: Any, *, now_us: int, max_items: int, max_skew_s: float, received_us: int | None = None
) -> TickBatch:
    """Validate a decoded webhook body into per-symbol columns; raise Invalid."""
    if not isinstance(doc, dict):
        raise Invalid([_problem(None, "body", "expected a JSON object")])
    source = doc.get("source", DEFAULT_SOURCE)
    problems: list[dict[str, Any]] = []
    if not isinstance(source, str) or not SOURCE.fullmatch(source):
        problems.append(
            _problem(None, "source", "expected 1-64 characters of A-Z a-z 0-9 . _ : / -")
        )
        source = DEFAULT_SOURCE
    items = doc.get("items")
    if not isinstance(items, list):
        problems.append(_problem(None, "items", "expected a list of ticks"))
        raise Invalid(problems)
    if not 1 <= len(items) <= max_items:
        problems.append(
            _problem(None, "items", f"expected 1 to {max_items} items, got {len(items)}")
        )
        raise Invalid(problems)

    max_skew_us = int(max_skew_s * 1_000_000)
    columns: dict[str, tuple[list, list, list, list]] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(_problem(index, "item", "expected an object"))
            continue
        bad = len(problems)
        symbol = normal_symbol(item.get("symbol"))
        if symbol is None:
            problems.append(_problem(index, "symbol", SYMBOL_RULE))
        price = _number(item.get("price"))
        if price is None or not PRICE_MIN <= price <= PRICE_MAX:
            problems.append(_problem(index, "price", PRICE_RULE))
        volume = _number(item.get("volume", 0))
        if volume is None or not 0 <= volume <= VOLUME_MAX:
            problems.append(_problem(index, "volume", VOLUME_RULE))
        else:
            volume += 0.0  # -0.0 is 0: one tick, one derived key
        if "ts" not in item:
            problems.append(_problem(index, "ts", "required"))
            ts_us: int | str = 0
        else:
            ts_us = parse_ts(item["ts"], now_us, max_skew_us)
            if isinstance(ts_us, str):
                problems.append(_problem(index, "ts", ts_us))
        key = item.get("idempotencyKey")
        if key is not None and (
            not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_LEN or not key.isprintable()
        ):
            problems.append(
                _problem(index, "idempotencyKey", f"expected 1-{MAX_KEY_LEN} printable characters")
            )
        if len(problems) > bad:
            continue
        if key is None:
            key = derived_key(source, symbol, ts_us, price, volume)
        cols = columns.get(symbol)
        if cols is None:
            cols = columns[symbol] = ([], [], [], [])
        cols[0].append(key)
        cols[1].append(ts_us)
        cols[2].append(price)
        cols[3].append(volume)
    if problems:
        raise Invalid(problems[:MAX_PROBLEMS], len(problems))
    received = now_us if received_us is None else received_us
    parts = [
        TickColumns(symbol, source, received, keys, ts, prices, volumes)
        for symbol, (keys, ts, prices, volumes) in columns.items()
    ]
    return TickBatch(source, len(items), parts)


@attrs.frozen
class SymbolRow:
    symbol: str
    base: str
    quote: str
    active: bool


def parse_symbols(doc: Any, *, max_items: int) -> list[SymbolRow]:
    """Validate a `POST /webhooks/symbols` body; raise Invalid."""
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        raise Invalid([_problem(None, "items", "expected a list of symbols")])
    items = doc["items"]
    if not 1 <= len(items) <= max_items:
        raise Invalid(
            [_problem(None, "items", f"expected 1 to {max_items} items, got {len(items)}")]
        )
    problems: list[dict[str, Any]] = []
    rows = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(_problem(index, "item", "expected an object"))
            continue
        symbol = normal_symbol(item.get("symbol"))
        if symbol is None:
            problems.append(_problem(index, "symbol", SYMBOL_RULE))
            continue
        fields = {}
        for name in ("base", "quote"):
            value = item.get(name, "")
            if not isinstance(value, str) or len(value) > 32 or not value.isprintable():
                problems.append(_problem(index, name, "expected up to 32 characters"))
            fields[name] = value if isinstance(value, str) else ""
        active = item.get("active", True)
        if not isinstance(active, bool):
            problems.append(_problem(index, "active", "expected true or false"))
            active = True
        rows.append(SymbolRow(symbol, fields["base"].upper(), fields["quote"].upper(), active))
    if problems:
        raise Invalid(problems[:MAX_PROBLEMS], len(problems))
    # A symbol listed twice: the last entry wins, as if the items were applied in order.
    return list({row.symbol: row for row in rows}.values())
