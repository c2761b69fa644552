"""Properties of the webhook validators (API.md "Ingest", ARCHITECTURE §4.6), for any input:
a body is either a batch or `Invalid` with well-formed `{index, field, message}` details, never
another exception (which would be a 500); every valid batch is accepted exactly (symbols
upper-cased, ts to the microsecond in every format, every tick in exactly one part); one bad
item anywhere rejects the whole batch and is reported with its index. Pure and fast."""

from __future__ import annotations

import math
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tickhub.http.validation import (
    MAX_KEY_LEN,
    MIN_TS_US,
    PRICE_MAX,
    PRICE_MIN,
    VOLUME_MAX,
    BadRequest,
    Invalid,
    SymbolRow,
    derived_key,
    load_json,
    parse_symbols,
    parse_ticks,
    parse_ts,
)
from tickhub.messages import TickBatch
from tickhub.symbols import SYMBOL, normal_symbol

SKEW_S = 60
SKEW_US = SKEW_S * 1_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SYMBOL_CHARS = string.ascii_letters + string.digits + "._:/-"
SOURCE_CHARS = string.ascii_letters + string.digits + "._:/-"

# No example database: the suite leaves no files behind; each property runs in well under 1 s.
FAST = settings(
    max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

# --- strategies ---------------------------------------------------------------------------

# The server clock, anywhere from 2020 to 2035.
now_us = st.integers(1_577_836_800_000_000, 2_051_222_400_000_000)
# Any character at all: controls, non-ASCII, lone surrogates (a Python caller can pass them).
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
# What orjson can hand over: 64-bit ints (bigger ones arrive as floats) and finite floats.
json_ints = st.integers(-(2**64), 2**64)
json_floats = st.floats(allow_nan=False, allow_infinity=False)
# Zone offsets of ISO times, to the minute.
offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))


def scalars(*, huge: bool) -> st.SearchStrategy[Any]:
    """JSON leaves. `huge` adds ints beyond any float and floats near the limits of float64
    (and NaN/inf, which Python callers can pass); without it numbers stay within ±1e300."""
    if huge:
        numbers = st.one_of(
            st.integers(), st.integers(-(10**400), 10**400), st.floats(), json_floats
        )
    else:
        numbers = st.one_of(
            json_ints,
            st.floats(-1e300, 1e300),
            st.sampled_from([math.nan, math.inf, -math.inf]),
        )
    return st.one_of(st.none(), st.booleans(), numbers, any_text)


def json_values(*, huge: bool) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars(huge=huge),
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
        ),
        max_leaves=12,
    )


def mostly(common: st.SearchStrategy, rare: st.SearchStrategy) -> st.SearchStrategy:
    """`common` three times in four (one_of() would weigh repeated branches once)."""
    return st.integers(0, 3).flatmap(lambda k: common if k else rare)


def merged(extra: st.SearchStrategy[dict], known: st.SearchStrategy[dict]) -> st.SearchStrategy:
    """Known keys on top of random ones: tick-shaped documents with noise around them."""
    return st.builds(lambda a, b: {**a, **b}, extra, known)


def documents(*, huge: bool) -> st.SearchStrategy[Any]:
    """Arbitrary JSON, and mostly something shaped like a batch whose fields are each either
    plausible or arbitrary, so that the item checks run and some batches pass."""
    value = json_values(huge=huge)
    floats = st.floats() if huge else st.floats(-1e300, 1e300)
    plausible_ts = st.one_of(
        st.integers(900_000_000, 2_100_000_000),
        st.floats(9e8, 2.1e9),
        st.floats(9e11, 2.1e12),
        st.datetimes().map(lambda d: d.isoformat()),  # no zone
        st.datetimes(timezones=offsets).map(lambda d: d.isoformat()),
    )
    fields = {
        "symbol": st.text(SYMBOL_CHARS, max_size=40),
        "price": st.one_of(st.floats(1e-3, 1e6), st.integers(1, 10**6)),
        "ts": plausible_ts,
        "volume": st.floats(0, 1e6),
        "idempotencyKey": st.text(max_size=130),
    }
    item = merged(
        st.dictionaries(any_text, value, max_size=2),
        st.fixed_dictionaries(
            {},
            optional={
                name: mostly(plausible, st.one_of(floats, value))
                for name, plausible in fields.items()
            },
        ),
    )
    items = st.lists(mostly(item, value), min_size=1, max_size=8)
    batch = merged(
        st.dictionaries(any_text, value, max_size=2),
        st.fixed_dictionaries(
            {"items": mostly(items, value)},
            optional={"source": st.one_of(st.text(SOURCE_CHARS, max_size=70), value)},
        ),
    )
    return mostly(batch, value)


def check_invalid(exc: Invalid, doc: Any) -> None:
    """Details are a non-empty list of {index, field, message}; index is an item's position
    or None; the whole thing serialises (the HTTP layer sends it as the 422 body)."""
    items = doc.get("items") if isinstance(doc, dict) else None
    count = len(items) if isinstance(items, list) else 0
    assert isinstance(exc.details, list) and exc.details
    for detail in exc.details:
        assert set(detail) == {"index", "field", "message"}, detail
        index = detail["index"]
        assert index is None or (type(index) is int and 0 <= index < count), detail
        assert isinstance(detail["field"], str) and detail["field"]
        assert isinstance(detail["message"], str) and detail["message"]
    orjson.dumps(exc.details)
    assert str(exc)


def check_batch(batch: TickBatch, doc: Any, now: int) -> None:
    assert isinstance(batch, TickBatch)
    assert isinstance(doc, dict) and isinstance(doc["items"], list)
    assert batch.items == len(doc["items"]) == sum(len(p) for p in batch.parts)
    assert len({p.symbol for p in batch.parts}) == len(batch.parts)
    for part in batch.parts:
        assert SYMBOL.fullmatch(part.symbol)
        assert part.source == batch.source
        assert all(type(t) is int and MIN_TS_US <= t <= now + SKEW_US for t in part.ts_us)
        assert all(math.isfinite(p) and p > 0 for p in part.price)
        assert all(math.isfinite(v) and v >= 0 for v in part.volume)


def run_parse(doc: Any, now: int, max_items: int) -> TickBatch | Invalid:
    try:
        batch = parse_ticks(doc, now_us=now, max_items=max_items, max_skew_s=SKEW_S)
    except Invalid as exc:
        check_invalid(exc, doc)
        event("invalid: " + ",".join(sorted({d["field"] for d in exc.details})))
        return exc
    check_batch(batch, doc, now)
    event("batch")
    return batch


# --- any input ----------------------------------------------------------------------------


@FAST
@given(doc=documents(huge=False), now=now_us, max_items=mostly(st.just(8), st.integers(1, 8)))
def test_any_body_gives_a_batch_or_invalid(doc, now, max_items):
    run_parse(doc, now, max_items)


# A JSON body with "ts": -1e306 reaches parse_ts over HTTP (orjson gives floats up to 1.8e308)
# and is answered 500: see test_huge_numbers_are_invalid below for the exact inputs.
@FAST
@given(doc=documents(huge=True), now=now_us, max_items=st.integers(1, 10))
@example(
    doc={"items": [{"symbol": "A", "price": 1, "ts": -1e306}]},
    now=1_800_000_000_000_000,
    max_items=1,
)
def test_any_body_incl_extreme_numbers_gives_a_batch_or_invalid(doc, now, max_items):
    run_parse(doc, now, max_items)


NOW = 1_800_000_000_000_000  # 2027-01-15


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("ts", 1e306, id="ts=1e306"),  # ms branch: 1e306 * 1e3 = inf
        pytest.param("ts", -1e303, id="ts=-1e303"),  # seconds branch: -1e309 = -inf
        pytest.param("ts", 10**400, id="ts=10**400"),  # int beyond float
        pytest.param("price", 10**400, id="price=10**400"),
        pytest.param("volume", 10**400, id="volume=10**400"),
    ],
)
def test_huge_numbers_are_invalid(field, value):
    item = {"symbol": "BTCUSDT", "price": 1.0, "ts": 1_700_000_000, "volume": 1.0, field: value}
    with pytest.raises(Invalid) as caught:
        parse_ticks({"items": [item]}, now_us=NOW, max_items=10, max_skew_s=SKEW_S)
    assert caught.value.details == [
        {"index": 0, "field": field, "message": caught.value.details[0]["message"]}
    ]


@FAST
@given(value=scalars(huge=False) | json_values(huge=False), now=now_us)
def test_parse_ts_gives_microseconds_in_range_or_a_message(value, now):
    result = parse_ts(value, now, SKEW_US)
    if isinstance(result, str):
        assert result
    else:
        assert type(result) is int and MIN_TS_US <= result <= now + SKEW_US


@FAST
@given(value=scalars(huge=True) | json_values(huge=False))
def test_normal_symbol_is_a_valid_upper_case_symbol_or_none(value):
    symbol = normal_symbol(value)
    if symbol is not None:
        assert SYMBOL.fullmatch(symbol) and symbol == value.upper() and value.isascii()


# --- valid batches ------------------------------------------------------------------------

symbols = st.text(SYMBOL_CHARS, min_size=1, max_size=32)
prices = st.one_of(
    st.floats(min_value=PRICE_MIN, max_value=PRICE_MAX),
    st.integers(1, 10**15),
)
volumes = st.one_of(
    st.floats(min_value=0, max_value=VOLUME_MAX), st.integers(0, 10**15), st.just(-0.0)
)
keys = st.text(
    st.characters(categories=["L", "N", "P", "S"]) | st.just(" "), min_size=1, max_size=128
)
sources = st.text(SOURCE_CHARS, min_size=1, max_size=64)


@st.composite
def ts_forms(draw, now: int, ts_us: int | None = None, *, exact: bool = False) -> tuple[Any, int]:
    """A ts in one of the accepted forms, and the microseconds it must become (whole seconds
    and milliseconds drop the rest, unless `exact` keeps to forms that hold `ts_us` whole)."""
    if ts_us is None:
        ts_us = draw(st.integers(MIN_TS_US, now + SKEW_US))
    forms = ["s.f", "ms.f", "iso", "iso-z"]
    if not exact or ts_us % 1_000_000 == 0:
        forms.append("s")
    if not exact or ts_us % 1_000 == 0:
        forms.append("ms")
    form = draw(st.sampled_from(forms))
    if form == "s":
        ts_us -= ts_us % 1_000_000
        return ts_us // 1_000_000, ts_us
    if form == "s.f":
        return ts_us / 1_000_000, ts_us
    if form == "ms":
        ts_us -= ts_us % 1_000
        return ts_us // 1_000, ts_us
    if form == "ms.f":
        return ts_us / 1_000, ts_us
    moment = EPOCH + timedelta(microseconds=ts_us)
    if form == "iso-z":
        return moment.isoformat().replace("+00:00", "Z"), ts_us
    return moment.astimezone(draw(offsets)).isoformat(), ts_us


@st.composite
def valid_items(draw, now: int) -> tuple[dict, tuple]:
    """A valid item and what it must become: (SYMBOL, key or None, ts_us, price, volume)."""
    symbol = draw(symbols)
    ts, ts_us = draw(ts_forms(now))
    item = {"symbol": symbol, "price": draw(prices), "ts": ts}
    volume = 0.0
    if draw(st.booleans()):
        item["volume"] = draw(volumes)
        volume = float(item["volume"]) + 0.0  # -0.0 is stored as 0
    key = draw(st.none() | keys)
    if key is not None:
        item["idempotencyKey"] = key
    return item, (symbol.upper(), key, ts_us, float(item["price"]), volume)


@st.composite
def valid_batches(draw) -> tuple[dict, list[tuple], int, int]:
    now = draw(now_us)
    pairs = draw(st.lists(valid_items(now), min_size=1, max_size=30))
    doc: dict[str, Any] = {"items": [item for item, _ in pairs]}
    if draw(st.booleans()):
        doc["source"] = draw(sources)
    max_items = draw(st.integers(len(pairs), 5000))
    return doc, [want for _, want in pairs], now, max_items


@FAST
@given(case=valid_batches())
def test_valid_batch_is_accepted_exactly(case):
    doc, wanted, now, max_items = case
    batch = parse_ticks(doc, now_us=now, max_items=max_items, max_skew_s=SKEW_S)
    check_batch(batch, doc, now)
    source = doc.get("source", "webhook")
    assert batch.source == source
    assert batch.items == len(wanted)
    got = {
        part.symbol: list(zip(part.keys, part.ts_us, part.price, part.volume, strict=True))
        for part in batch.parts
    }
    assert all(part.received_us == now for part in batch.parts)
    # Every tick in exactly one part, its symbol's, in the order of the batch.
    expected: dict[str, list[tuple]] = {}
    for symbol, key, ts_us, price, volume in wanted:
        key = key if key is not None else derived_key(source, symbol, ts_us, price, volume)
        expected.setdefault(symbol, []).append((key, ts_us, price, volume))
    assert got == expected


@FAST
@given(data=st.data(), now=now_us)
def test_every_ts_form_of_one_instant_is_the_same_tick(data, now):
    """Seconds, ms and ISO of one microsecond give one ts and one derived key, so a tick
    re-sent in another format is still recognised as a duplicate."""
    # Whole seconds and milliseconds are drawn often enough to pair with the other forms.
    unit = data.draw(st.sampled_from([1, 1_000, 1_000_000]))
    want = data.draw(st.integers(MIN_TS_US // unit + 1, (now + SKEW_US) // unit)) * unit
    first, _ = data.draw(ts_forms(now, want, exact=True))
    second, _ = data.draw(ts_forms(now, want, exact=True))
    items = [{"symbol": "btcusdt", "price": 1.5, "ts": ts} for ts in (first, second)]
    batch = parse_ticks({"items": items}, now_us=now, max_items=2, max_skew_s=SKEW_S)
    [part] = batch.parts
    assert part.ts_us == [want, want]
    assert part.keys[0] == part.keys[1]


@pytest.mark.parametrize(
    ("ts", "ts_us"),
    [
        (946_684_800, MIN_TS_US),
        ("2000-01-01T00:00:00Z", MIN_TS_US),
        (NOW // 1_000_000 + SKEW_S, NOW + SKEW_US),
        ((NOW + SKEW_US) // 1_000, NOW + SKEW_US),
    ],
)
def test_ts_range_ends_are_accepted(ts, ts_us):
    item = {"symbol": "BTCUSDT", "price": 1, "ts": ts}
    batch = parse_ticks({"items": [item]}, now_us=NOW, max_items=1, max_skew_s=SKEW_S)
    assert batch.parts[0].ts_us == [ts_us]


# --- one bad item -------------------------------------------------------------------------

BAD = {
    "symbol": st.one_of(
        st.just(""),
        st.text(SYMBOL_CHARS, min_size=33, max_size=40),
        st.sampled_from(["BTC USDT", "\u017f", "BTCÜSDT", "A\x00", "A\n", "A+B", "A*"]),
        st.integers(),
        st.none(),
        st.lists(st.just("A"), max_size=1),
    ),
    "price": st.one_of(
        st.floats(max_value=PRICE_MIN, exclude_max=True),
        st.floats(min_value=PRICE_MAX, exclude_min=True),
        st.sampled_from([math.nan, math.inf, -math.inf, True, False, "1.5", None, [1.0]]),
        st.integers(max_value=0),
        st.integers(min_value=10**15 + 1),
    ),
    "volume": st.one_of(
        st.floats(max_value=-5e-324),
        st.floats(min_value=VOLUME_MAX, exclude_min=True),
        st.sampled_from([math.nan, math.inf, -math.inf, True, "0", None]),
        st.integers(max_value=-1),
        st.integers(min_value=10**15 + 1),
    ),
    "ts": st.sampled_from(
        [
            946_684_799.999999,  # one microsecond before 2000
            "1999-12-31T23:59:59.999999Z",
            "2024-01-01T00:00:00",  # no zone
            "yesterday",
            "",
            True,
            None,
            math.nan,
            math.inf,
            [],
        ]
    ),
    "idempotencyKey": st.one_of(
        st.just(""),
        st.text(string.ascii_letters, min_size=MAX_KEY_LEN + 1, max_size=MAX_KEY_LEN + 5),
        st.sampled_from(["a\nb", "tab\t", "\x00", "\u2028"]),
        st.integers(),
        st.booleans(),
    ),
}


@st.composite
def batches_with_one_bad_item(draw) -> tuple[dict, int, str, int]:
    doc, _, now, _ = draw(valid_batches())
    items = doc["items"]
    index = draw(st.integers(0, len(items) - 1))
    field = draw(st.sampled_from([*BAD, "item", "missing ts", "future ts"]))
    item = dict(items[index])
    if field == "item":
        item = draw(st.one_of(st.lists(st.integers(), max_size=2), any_text, st.none()))
    elif field == "missing ts":
        del item["ts"]
        field = "ts"
    elif field == "future ts":
        # Beyond the limit by more than a second, so that whole seconds stay beyond it too.
        late = now + SKEW_US + draw(st.integers(1_000_001, 10**12))
        item["ts"], _ = draw(ts_forms(now, late))
        field = "ts"
    else:
        item[field] = draw(BAD[field])
    items[index] = item
    return doc, index, field, now


@FAST
@given(case=batches_with_one_bad_item())
def test_one_bad_item_rejects_the_batch_with_its_index(case):
    doc, index, field, now = case
    with pytest.raises(Invalid) as caught:
        parse_ticks(doc, now_us=now, max_items=5000, max_skew_s=SKEW_S)
    check_invalid(caught.value, doc)
    assert {(d["index"], d["field"]) for d in caught.value.details} == {(index, field)}


@FAST
@given(doc=valid_batches(), extra=st.integers(1, 5))
def test_too_many_items_is_invalid(doc, extra):
    body, wanted, now, _ = doc
    with pytest.raises(Invalid) as caught:
        parse_ticks(body, now_us=now, max_items=len(wanted) - 1, max_skew_s=SKEW_S)
    assert caught.value.details[-1]["index"] is None
    assert caught.value.details[-1]["field"] == "items"


# --- load_json ----------------------------------------------------------------------------


@FAST
@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=60).map(str.encode),
        st.builds(
            lambda head, tail: head + tail,
            st.sampled_from(
                [b"{", b"[", b'{"items": [', b"1e999", b"-", b'"\\ud800"', b"\xef\xbb\xbf"]
            ),
            st.binary(max_size=40),
        ),
    )
)
def test_load_json_returns_or_raises_bad_request(body):
    try:
        load_json(body)
    except BadRequest as exc:
        assert str(exc).startswith("malformed JSON")


finite_json = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        json_floats,
        st.text(max_size=20),
    ),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@FAST
@given(value=finite_json)
def test_load_json_reads_back_what_json_writes(value):
    assert load_json(orjson.dumps(value)) == value


# --- parse_symbols ------------------------------------------------------------------------


@FAST
@given(doc=documents(huge=False), max_items=st.integers(1, 10))
def test_any_symbols_body_gives_rows_or_invalid(doc, max_items):
    try:
        rows = parse_symbols(doc, max_items=max_items)
    except Invalid as exc:
        check_invalid(exc, doc)
        return
    assert isinstance(doc, dict) and 1 <= len(doc["items"]) <= max_items
    assert all(isinstance(r, SymbolRow) and SYMBOL.fullmatch(r.symbol) for r in rows)
    assert len({r.symbol for r in rows}) == len(rows)


names = st.text(st.characters(categories=["L", "N", "P", "S"]), max_size=32)


@st.composite
def symbol_items(draw) -> dict:
    item: dict[str, Any] = {"symbol": draw(symbols)}
    for name, strategy in (("base", names), ("quote", names), ("active", st.booleans())):
        if draw(st.booleans()):
            item[name] = draw(strategy)
    return item


@FAST
@given(items=st.lists(symbol_items(), min_size=1, max_size=20))
def test_valid_symbols_are_upper_cased_and_the_last_entry_wins(items):
    rows = parse_symbols({"items": items}, max_items=5000)
    last = {item["symbol"].upper(): item for item in items}
    assert [r.symbol for r in rows] == list(dict.fromkeys(i["symbol"].upper() for i in items))
    for row in rows:
        item = last[row.symbol]
        assert row == SymbolRow(
            row.symbol,
            item.get("base", "").upper(),
            item.get("quote", "").upper(),
            item.get("active", True),
        )


BAD_SYMBOL_FIELDS = {
    "symbol": BAD["symbol"],
    "base": st.one_of(
        st.text(string.ascii_letters, min_size=33, max_size=40), st.integers(), st.just("a\nb")
    ),
    "quote": st.one_of(st.just("\x00"), st.none(), st.lists(st.just("x"), max_size=1)),
    "active": st.one_of(st.integers(), st.none(), st.sampled_from(["true", "false", ""])),
}


@FAST
@given(items=st.lists(symbol_items(), min_size=1, max_size=10), data=st.data())
def test_one_bad_symbol_item_rejects_with_its_index(items, data):
    index = data.draw(st.integers(0, len(items) - 1))
    field = data.draw(st.sampled_from(sorted(BAD_SYMBOL_FIELDS)))
    items[index] = {**items[index], field: data.draw(BAD_SYMBOL_FIELDS[field])}
    with pytest.raises(Invalid) as caught:
        parse_symbols({"items": items}, max_items=5000)
    check_invalid(caught.value, {"items": items})
    assert {(d["index"], d["field"]) for d in caught.value.details} == {(index, field)}
