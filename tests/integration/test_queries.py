"""The read side of API.md against a running tickhub: candles of every interval, VWAP and SMA10
checked against an independent computation from the posted ticks, paging, fill, raw history
with ties in ts, the latest tick, metrics windows and stats."""

from __future__ import annotations

import random
import time
from collections import defaultdict

import pytest

PREFIX = "/api/v1"
HOUR = (int(time.time()) // 3600 - 1) * 3600  # start of the previous hour: ≥ 1 h ago
START = HOUR - 23 * 60  # hh:37 of the hour before, so the data crosses an hour boundary
MINUTES = 40
# Minutes (from START) without ticks. BTC's 8..12 are hh:45..hh:49, a whole empty 5m bucket.
EMPTY = {"BTCUSDT": {4, 5, 8, 9, 10, 11, 12, 26, 27}, "ETHUSDT": {0, 11, 33}}
ZERO_VOLUME_MINUTE = 20  # every BTC tick in this minute has volume 0: vwap is null
CANDLE_FIELDS = ("ts", "open", "high", "low", "close", "volume", "count")


# --- the market the tests post, and the independent computation -------------------------


def market(symbol: str, seed: int, price: float) -> list[dict]:
    """Ticks with 2-decimal prices and exactly representable volumes, distinct ts per symbol."""
    rng = random.Random(seed)
    out = []
    for minute in range(MINUTES):
        if minute in EMPTY[symbol]:
            continue
        for quarter in sorted(rng.sample(range(240), rng.randint(2, 12))):
            price = round(max(price + rng.randint(-500, 500) / 100, 1), 2)
            volume = rng.choice([0, 0.25, 0.5, 1, 2])
            if symbol == "BTCUSDT" and minute == ZERO_VOLUME_MINUTE:
                volume = 0
            out.append(
                {
                    "symbol": symbol,
                    "price": price,
                    "ts": START + minute * 60 + quarter / 4,
                    "volume": volume,
                }
            )
    return out


def near(value: float | None):
    """Equal within float rounding; None stays None."""
    return None if value is None else pytest.approx(value, rel=1e-12)


def vwap(ticks: list[dict]) -> float | None:
    volume = sum(t["volume"] for t in ticks)
    return sum(t["price"] * t["volume"] for t in ticks) / volume if volume else None


def with_sma10(candles: list[dict]) -> list[dict]:
    """Row-based: the mean close of this candle and the 9 before it; None with fewer."""
    for i, candle in enumerate(candles):
        window = candles[max(0, i - 9) : i + 1]
        candle["sma10"] = sum(c["close"] for c in window) / 10 if len(window) == 10 else None
    return candles


def expected_candles(ticks: list[dict], interval: int) -> list[dict]:
    buckets = defaultdict(list)
    for t in ticks:
        buckets[int(t["ts"] // interval * interval)].append(t)
    candles = []
    for start in sorted(buckets):
        group = sorted(buckets[start], key=lambda t: t["ts"])
        prices = [t["price"] for t in group]
        candles.append(
            {
                "ts": start,
                "open": prices[0],
                "high": max(prices),
                "low": min(prices),
                "close": prices[-1],
                "volume": sum(t["volume"] for t in group),
                "count": len(group),
                "vwap": vwap(group),
            }
        )
    return with_sma10(candles)


def expected_filled(ticks: list[dict]) -> list[dict]:
    """1m candles plus a flat zero-volume candle at the previous close for each empty minute."""
    out: list[dict] = []
    for candle in expected_candles(ticks, 60):
        if out:
            close = out[-1]["close"]
            for ts in range(out[-1]["ts"] + 60, candle["ts"], 60):
                out.append(
                    {
                        "ts": ts,
                        **dict.fromkeys(("open", "high", "low", "close"), close),
                        "volume": 0,
                        "count": 0,
                        "vwap": None,
                    }
                )
        out.append(candle)
    return with_sma10(out)


async def post_gapped(tickhub) -> list[dict]:
    """One tick a minute at minutes 0..10 and 16..22: a five-minute gap."""
    ticks = [
        {"symbol": "BTCUSDT", "price": 100 + m, "ts": START + m * 60 + 1, "volume": 1}
        for m in [*range(11), *range(16, 23)]
    ]
    assert (await tickhub.post_ticks(ticks)).status_code == 202
    return ticks


def assert_candles(got: list[dict], expected: list[dict], symbol: str) -> None:
    assert all(c["symbol"] == symbol for c in got)
    # Exact: 2-decimal prices and sums of 0.25/0.5/1/2 survive numeric → float unchanged.
    assert [tuple(c[f] for f in CANDLE_FIELDS) for c in got] == [
        tuple(c[f] for f in CANDLE_FIELDS) for c in expected
    ]
    for field in ("vwap", "sma10"):  # averages: numeric in SQL, float here
        assert [c[field] for c in got] == [near(c[field]) for c in expected], field


async def seed(tickhub) -> dict[str, list[dict]]:
    data = {"BTCUSDT": market("BTCUSDT", 1, 68000.0), "ETHUSDT": market("ETHUSDT", 2, 2500.0)}
    items = data["BTCUSDT"] + data["ETHUSDT"]
    random.Random(3).shuffle(items)  # arrival order must not matter
    response = await tickhub.post_ticks(items)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == len(items)
    return data


async def history(tickhub, symbol: str, **params) -> dict:
    response = await tickhub.get(f"{PREFIX}/ticks/{symbol}/history", params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def all_pages(tickhub, symbol: str, **params) -> list[list[dict]]:
    """Follow nextCursor from the newest page back until it is null."""
    pages, before = [], None
    while True:
        extra = {"before": before} if before is not None else {}
        page = await history(tickhub, symbol, **params, **extra)
        pages.append(page["items"])
        before = page["nextCursor"]
        if before is None:
            return pages
        assert len(pages) < 100, "nextCursor never became null"


# --- candles ----------------------------------------------------------------------------


async def test_ohlc1m_candles_match_the_ticks(tickhub, db):
    data = await seed(tickhub)
    for symbol, ticks in data.items():
        page = await history(tickhub, symbol, view="ohlc1m", limit=100)
        expected = expected_candles(ticks, 60)
        assert len(expected) == MINUTES - len(EMPTY[symbol])
        assert_candles(page["items"], expected, symbol)
        assert page["nextCursor"] is None  # everything fit in one page
        sma = [c["sma10"] for c in page["items"]]
        assert sma[:9] == [None] * 9 and None not in sma[9:]


async def test_candle_view_aliases_return_the_same_candles(tickhub, db):
    await seed(tickhub)
    canonical = await history(tickhub, "BTCUSDT", view="ohlc1m", limit=100)
    assert len(canonical["items"]) > 10
    for params in ({"agg": "1m"}, {"shape": "candle"}, {"view": "ohlc", "interval": "1m"}):
        assert await history(tickhub, "BTCUSDT", limit=100, **params) == canonical, params


async def test_vwap_is_volume_weighted_and_null_without_volume(tickhub, db):
    data = await seed(tickhub)
    candles = (await history(tickhub, "BTCUSDT", view="ohlc1m", limit=100))["items"]
    by_ts = {c["ts"]: c for c in candles}
    silent = by_ts[START + ZERO_VOLUME_MINUTE * 60]
    assert (silent["volume"], silent["vwap"]) == (0, None) and silent["count"] > 0
    minute = START + 3 * 60
    ticks = [t for t in data["BTCUSDT"] if minute <= t["ts"] < minute + 60]
    assert by_ts[minute]["vwap"] == pytest.approx(vwap(ticks), rel=1e-12)
    assert by_ts[minute]["vwap"] != pytest.approx(sum(t["price"] for t in ticks) / len(ticks))


@pytest.mark.parametrize(
    ("interval", "seconds"), [("5m", 300), ("15m", 900), ("1h", 3600), ("4h", 14400), ("1d", 86400)]
)
async def test_coarser_candles_match_the_ticks_on_utc_boundaries(tickhub, db, interval, seconds):
    data = await seed(tickhub)
    for symbol, ticks in data.items():
        page = await history(tickhub, symbol, view="ohlc", interval=interval, limit=100)
        assert all(c["ts"] % seconds == 0 for c in page["items"])
        # Exact bucket list: BTC's empty hh:45 5m bucket has no candle; 1h gives two candles.
        assert_candles(page["items"], expected_candles(ticks, seconds), symbol)


async def test_sma10_looks_back_beyond_the_page(tickhub, db):
    data = await seed(tickhub)
    page = await history(tickhub, "BTCUSDT", view="ohlc1m", limit=3)
    expected = expected_candles(data["BTCUSDT"], 60)
    assert_candles(page["items"], expected[-3:], "BTCUSDT")
    assert page["items"][0]["sma10"] is not None
    assert page["nextCursor"] == expected[-3]["ts"]


@pytest.mark.parametrize(
    ("params", "seconds"),
    [({"view": "ohlc1m", "limit": 7}, 60), ({"view": "ohlc", "interval": "5m", "limit": 2}, 300)],
    ids=["1m", "5m"],
)
async def test_candle_pages_follow_next_cursor_without_gap_or_overlap(tickhub, db, params, seconds):
    data = await seed(tickhub)
    pages = await all_pages(tickhub, "BTCUSDT", **params)
    assert all(len(p) == params["limit"] for p in pages[:-1])
    joined = [c for page in reversed(pages) for c in page]  # each page is oldest first
    assert_candles(joined, expected_candles(data["BTCUSDT"], seconds), "BTCUSDT")


@pytest.mark.parametrize(("interval", "seconds"), [("5m", 300), ("15m", 900)])
async def test_coarse_candle_pages_over_sparse_minutes(tickhub, db, interval, seconds):
    """A coarse page reads back only as many minutes as its buckets can hold (candles_sql's
    lower bound): with runs of minutes and gaps between them, over far more minutes than a
    page, the pages still join into exactly the candles of the ticks, SMA10 included."""
    start = HOUR - 12 * 3600
    ticks = [
        {"symbol": "BTCUSDT", "price": 100 + m % 50, "ts": start + m * 60 + 1, "volume": 1}
        for m in range(600)
        if m % 23 < 7  # 7 minutes with a tick, then 16 without
    ]
    assert (await tickhub.post_ticks(ticks)).status_code == 202
    pages = await all_pages(tickhub, "BTCUSDT", view="ohlc", interval=interval, limit=2)
    joined = [c for page in reversed(pages) for c in page]
    assert_candles(joined, expected_candles(ticks, seconds), "BTCUSDT")


async def test_fill_adds_flat_zero_volume_candles_for_empty_minutes(tickhub, db):
    data = await seed(tickhub)
    for symbol, ticks in data.items():
        page = await history(tickhub, symbol, view="ohlc1m", fill="true", limit=100)
        expected = expected_filled(ticks)
        first = min(c["ts"] for c in expected)
        assert [c["ts"] for c in expected] == list(range(first, first + len(expected) * 60, 60))
        assert_candles(page["items"], expected, symbol)


async def test_fill_sma10_looks_back_beyond_the_page(tickhub, db):
    # With limit=3 the look-back (minutes 11..20 for the first item) starts inside the gap,
    # which must be filled from minute 10's close.
    ticks = await post_gapped(tickhub)
    full = await history(tickhub, "BTCUSDT", view="ohlc1m", fill="true", limit=100)
    assert_candles(full["items"], expected_filled(ticks), "BTCUSDT")
    page = await history(tickhub, "BTCUSDT", view="ohlc1m", fill="true", limit=3)
    assert_candles(page["items"], expected_filled(ticks)[-3:], "BTCUSDT")


async def test_fill_pages_follow_next_cursor_without_gap(tickhub, db):
    ticks = await post_gapped(tickhub)
    pages = await all_pages(tickhub, "BTCUSDT", view="ohlc1m", fill="true", limit=3)
    joined = [c for page in reversed(pages) for c in page]
    assert [tuple(c[f] for f in CANDLE_FIELDS) for c in joined] == [
        tuple(c[f] for f in CANDLE_FIELDS) for c in expected_filled(ticks)
    ]


# --- raw history and the latest tick ----------------------------------------------------


def us(ts: float) -> int:
    return round(ts * 1_000_000)


async def test_history_is_newest_first_and_limited(tickhub, db):
    data = await seed(tickhub)
    page = await history(tickhub, "ETHUSDT", limit=25)
    newest = sorted(data["ETHUSDT"], key=lambda t: t["ts"], reverse=True)[:25]
    assert [(i["symbol"], i["ts"], i["price"], i["volume"]) for i in page["items"]] == [
        ("ETHUSDT", t["ts"], t["price"], t["volume"]) for t in newest
    ]
    assert page["nextCursor"] == newest[-1]["ts"]
    default = await history(tickhub, "ETHUSDT")
    assert len(default["items"]) == min(200, len(data["ETHUSDT"]))


async def test_history_before_is_exclusive(tickhub, db):
    data = await seed(tickhub)
    cut = sorted(t["ts"] for t in data["BTCUSDT"])[100]
    page = await history(tickhub, "BTCUSDT", before=cut, limit=2000)
    assert len(page["items"]) == 100
    assert max(i["ts"] for i in page["items"]) < cut


async def test_history_pages_never_skip_or_repeat_ticks_sharing_a_ts(tickhub, db):
    base = START + 0.5
    stamps = (
        [base + i for i in range(10)]
        + [base + 10.123456] * 7  # seven ticks in one microsecond
        + [base + 11 + i / 1_000_000 for i in range(6)]  # six consecutive microseconds
        + [base + 12] * 2
    )
    posted = [
        {
            "symbol": "BTCUSDT",
            "price": round(100 + i / 100, 2),
            "ts": ts,
            "volume": 1,
            "idempotencyKey": f"k{i:02d}",
        }
        for i, ts in enumerate(stamps)
    ]
    assert (await tickhub.post_ticks(posted)).status_code == 202
    pages = await all_pages(tickhub, "BTCUSDT", limit=3)
    seen = [(us(i["ts"]), i["price"]) for page in pages for i in page]
    assert len(seen) == len(set(seen)), "a tick was repeated"
    assert set(seen) == {(us(t["ts"]), t["price"]) for t in posted}, "a tick was skipped"
    assert [ts for ts, _ in seen] == sorted((ts for ts, _ in seen), reverse=True)
    # A page exceeds the limit only to keep a group of ticks sharing one ts together.
    assert all(len(p) <= 3 or len({i["ts"] for i in p}) == 1 for p in pages)


async def test_latest_tick_is_the_one_with_the_largest_ts(tickhub, db):
    data = await seed(tickhub)
    for symbol, ticks in data.items():
        newest = max(ticks, key=lambda t: t["ts"])
        response = await tickhub.get(f"{PREFIX}/ticks/{symbol}")
        assert response.status_code == 200
        assert response.json() == {
            "symbol": symbol,
            "ts": newest["ts"],
            "price": newest["price"],
            "volume": newest["volume"],
        }
    # A late tick with an older ts does not become the latest.
    old = {"symbol": "ETHUSDT", "price": 1.23, "ts": START, "volume": 1}
    assert (await tickhub.post_ticks([old])).status_code == 202
    assert (await tickhub.get(f"{PREFIX}/ticks/ETHUSDT")).json()["price"] != 1.23


# --- metrics and stats ------------------------------------------------------------------


def expected_metrics(symbol: str, ticks: list[dict], window: int) -> dict:
    start = int(max(t["ts"] for t in ticks) // window * window)
    group = sorted((t for t in ticks if start <= t["ts"] < start + window), key=lambda t: t["ts"])
    prices = [t["price"] for t in group]
    return {
        "symbol": symbol,
        "windowStart": start,
        "windowEnd": start + window,
        "count": len(group),
        "open": prices[0],
        "min": min(prices),
        "max": max(prices),
        "avg": near(sum(prices) / len(prices)),
        "vwap": near(vwap(group)),
        "volume": sum(t["volume"] for t in group),
        "last": prices[-1],
    }


@pytest.mark.parametrize(("window", "seconds"), [("1m", 60), ("5m", 300), ("1h", 3600)])
async def test_metrics_window_matches_the_latest_ticks(tickhub, db, window, seconds):
    data = await seed(tickhub)
    for symbol, ticks in data.items():
        response = await tickhub.get(f"{PREFIX}/metrics/{symbol}", params={"window": window})
        assert response.status_code == 200, response.text
        expected = expected_metrics(symbol, ticks, seconds)
        assert expected["count"] > 1
        assert response.json() == expected


async def test_metrics_vwap_is_null_without_volume(tickhub, db):
    ticks = [{"symbol": "SOLUSDT", "price": 150 + i, "ts": START + i} for i in range(3)]
    assert (await tickhub.post_ticks(ticks)).status_code == 202
    body = (await tickhub.get(f"{PREFIX}/metrics/SOLUSDT", params={"window": "1h"})).json()
    assert (body["volume"], body["vwap"], body["count"]) == (0, None, 3)
    assert body["avg"] == pytest.approx(151)


async def test_stats_count_stored_ticks_per_source(tickhub, db):
    alpha = [
        {"symbol": "BTCUSDT", "price": 100 + i, "ts": START + i, "volume": 1} for i in range(5)
    ]
    beta = [
        {"symbol": "ETHUSDT", "price": 10 + i, "ts": START + 60 + i, "volume": 1} for i in range(3)
    ] + [{"symbol": "SOLUSDT", "price": 5, "ts": START + 90, "volume": 1}]
    for items, source in ((alpha, "alpha"), (beta, "beta"), (alpha, "alpha")):
        assert (await tickhub.post_ticks(items, source=source)).status_code == 202
    response = await tickhub.get(f"{PREFIX}/stats")
    assert response.status_code == 200
    stats = response.json()
    assert stats["ticksTotal"] == 9  # the re-posted batch added nothing
    assert stats["sources"] == {
        "alpha": {"ticks": 5, "lastTs": START + 4},
        "beta": {"ticks": 4, "lastTs": START + 90},
    }
    assert stats["symbols"] == 3
    assert abs(stats["lastIngestAt"] - time.time()) < 60
    queue = stats["queue"]
    assert set(queue) == {"pending", "inFlight", "completed", "failed", "dead"}
    assert all(isinstance(v, int) for v in queue.values())
    assert (queue["pending"], queue["inFlight"], queue["failed"], queue["dead"]) == (0, 0, 0, 0)
    assert queue["completed"] > 0
