"""The synthetic source: price walk statistics, rounding, keys, timestamps, volumes."""

from __future__ import annotations

import itertools
import math
import random
import statistics
from decimal import Decimal

import pytest

from tickhub.config import VolumeModel, load_settings
from tickhub.feeder.synthetic import (
    PriceWalk,
    TickGenerator,
    default_tick_size,
)


def log_returns(prices: list[float]) -> list[float]:
    return [math.log(b / a) for a, b in itertools.pairwise(prices)]


@pytest.mark.parametrize(("price", "sigma", "tick"), [(68000.0, 0.0005, 0.01), (1.5, 0.02, 1e-6)])
def test_walk_log_returns_have_sigma(price: float, sigma: float, tick: float) -> None:
    walk = PriceWalk(price, sigma, tick, random.Random(42))
    returns = log_returns(walk.steps(50_000))
    assert statistics.stdev(returns) == pytest.approx(sigma, rel=0.02)
    # No drift in log space: the mean is within a few standard errors of 0.
    assert abs(statistics.fmean(returns)) < 4 * sigma / math.sqrt(len(returns))


def test_walk_with_a_seed_is_reproducible_and_independent_of_chunking() -> None:
    whole = PriceWalk(100.0, 0.01, 0.01, random.Random(1)).steps(1000)
    chunked_walk = PriceWalk(100.0, 0.01, 0.01, random.Random(1))
    chunked = [p for n in (1, 10, 300, 689) for p in chunked_walk.steps(n)]
    assert chunked == whole
    assert PriceWalk(100.0, 0.01, 0.01, random.Random(2)).steps(1000) != whole


@pytest.mark.parametrize("tick", [0.01, 0.05, 0.25, 5.0, 1e-7])
def test_prices_are_rounded_to_the_tick(tick: float) -> None:
    prices = PriceWalk(123.0, 0.01, tick, random.Random(3)).steps(2000)
    exact_tick = Decimal(repr(tick))
    for price in prices:
        # The float prints as an exact multiple of the tick (no 68001.230000000003).
        assert Decimal(repr(price)) % exact_tick == 0


def test_walk_is_floored_above_zero_and_recovers() -> None:
    walk = PriceWalk(0.05, 0.5, 0.01, random.Random(5))
    prices = walk.steps(20_000)
    assert min(prices) == 0.01
    assert all(math.isfinite(p) for p in prices)
    # Held at the floor, the walk leaves it again rather than sinking further in log space.
    floor_hits = [i for i, p in enumerate(prices) if p == 0.01]
    assert floor_hits and any(p > 0.01 for p in prices[floor_hits[0] :])


def test_walk_stays_finite_at_the_ceiling() -> None:
    prices = PriceWalk(10.0, 2.0, 0.01, random.Random(6)).steps(10_000)
    assert max(prices) == pytest.approx(10.0 * 1e6)
    assert all(math.isfinite(p) and p > 0 for p in prices)


def test_walk_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        PriceWalk(0.0, 0.01, 0.01)
    with pytest.raises(ValueError):
        PriceWalk(1.0, -0.01, 0.01)


def test_default_tick_size() -> None:
    assert default_tick_size(68000.0) == 0.01
    assert default_tick_size(3500.0) == 0.001
    assert default_tick_size(0.5) == pytest.approx(1e-7)


def generator(env: dict[str, str], **kw) -> TickGenerator:
    settings = load_settings({"SEED": "11", **env}).feeder
    return TickGenerator.from_settings(settings, run_id="run1", **kw)


def test_batch_shape_keys_and_round_robin() -> None:
    gen = generator({"SYMBOLS": "BTCUSDT,ETHUSDT,SOLUSDT"})
    first = gen.batch(7, 1_800_000_000.0, 0.001)
    second = gen.batch(5, 1_800_000_000.012, 0.001)
    items = first + second
    assert [i["idempotencyKey"] for i in items] == [f"feeder-run1-{n}" for n in range(12)]
    assert [i["symbol"] for i in items] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"] * 4
    assert all(set(i) == {"symbol", "price", "ts", "volume", "idempotencyKey"} for i in items)
    # Millisecond timestamps, 1 ms apart, the last of each batch at its end_ts.
    assert [i["ts"] for i in first] == [
        round(1_800_000_000.0 - (6 - k) * 0.001, 3) for k in range(7)
    ]
    assert second[-1]["ts"] == 1_800_000_000.012
    assert all(round(i["ts"], 3) == i["ts"] for i in items)


def test_prices_per_symbol_do_not_depend_on_batch_sizes() -> None:
    env = {"SYMBOLS": "BTCUSDT,ETHUSDT", "PRICE_BASE": "BTCUSDT:68000,ETHUSDT:3500"}
    one = generator(env).batch(100, 1.8e9, 0.01)
    gen = generator(env)
    many = [item for n in (3, 1, 50, 46) for item in gen.batch(n, 1.8e9, 0.01)]

    def by_symbol(items: list[dict]) -> dict[str, list[tuple[float, float]]]:
        out: dict[str, list[tuple[float, float]]] = {}
        for i in items:
            out.setdefault(i["symbol"], []).append((i["price"], i["volume"]))
        return out

    assert by_symbol(one) == by_symbol(many)


def test_symbols_take_price_base_and_volatility_per_symbol() -> None:
    gen = generator(
        {
            "SYMBOLS": "btcusdt,ETHUSDT",
            "PRICE_BASE": "100,BTCUSDT:68000",
            "VOLATILITY": "ETHUSDT:0.002,0.0005",
        }
    )
    btc, eth = gen.walks
    assert gen.symbols == ("BTCUSDT", "ETHUSDT")
    assert (btc.price, btc.sigma, btc.tick) == (68000.0, 0.0005, 0.01)
    assert (eth.price, eth.sigma) == (100.0, 0.002)


def test_default_symbols_walk_from_their_own_prices() -> None:
    """The demo's first chart: bitcoin near its level, ether near its own (not bitcoin's),
    each moving by its own volatility."""
    gen = generator({})
    items = gen.batch(400, 1.8e9, 0.01)
    prices = {s: [i["price"] for i in items if i["symbol"] == s] for s in gen.symbols}

    assert gen.symbols == ("BTCUSDT", "ETHUSDT")
    assert all(40_000 < p < 120_000 for p in prices["BTCUSDT"])
    assert all(1_000 < p < 6_000 for p in prices["ETHUSDT"])

    def spread(series: list[float]) -> float:
        return statistics.pstdev(log_returns(series))

    assert spread(prices["ETHUSDT"]) > 1.2 * spread(prices["BTCUSDT"])


def test_tick_size_override() -> None:
    gen = generator({"SYMBOLS": "BTCUSDT", "TICK_SIZE": "0.5"})
    assert all(i["price"] % 0.5 == 0 for i in gen.batch(500, 1.8e9, 0.01))


def test_run_id_is_random_without_being_given() -> None:
    settings = load_settings({"SEED": "11"}).feeder
    a = TickGenerator.from_settings(settings)
    b = TickGenerator.from_settings(settings)
    assert a.run_id != b.run_id
    # ... while the data of a seeded run is reproducible.
    assert [i["price"] for i in a.batch(50, 1.8e9, 0.1)] == [
        i["price"] for i in b.batch(50, 1.8e9, 0.1)
    ]


@pytest.mark.parametrize(
    ("text", "mean"),
    [
        ("exp:0.5", 0.5),
        ("lognormal:2,0.25", 2 * math.exp(0.25**2 / 2)),
        ("uniform:1,3", 2.0),
        ("const:4", 4.0),
    ],
)
def test_volume_models(text: str, mean: float) -> None:
    volumes = VolumeModel.parse(text).sample(random.Random(9), 40_000)
    assert min(volumes) >= 0
    assert statistics.fmean(volumes) == pytest.approx(mean, rel=0.03)
    assert all(round(v, 6) == v for v in volumes)


@pytest.mark.parametrize(
    "text", ["exp", "exp:-1", "gamma:1", "uniform:3,1", "lognormal:1", "exp:x"]
)
def test_volume_model_rejects_bad_text(text: str) -> None:
    with pytest.raises(ValueError):
        VolumeModel.parse(text)
