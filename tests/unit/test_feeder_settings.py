"""The feeder's knobs through load_settings: scalar and map forms, clear errors."""

from __future__ import annotations

import pytest

from tickhub.config import PerSymbol, SettingsError, load_settings


def feeder(**env: str):
    return load_settings(env).feeder


def test_seed_guide_values() -> None:
    s = feeder(
        ORCHESTRATOR_BASE_URL="https://api.example/api/v1",
        ORCHESTRATOR_API_KEY="secret",
        SYMBOLS="BTCUSDT,ETHUSDT",
        RPS="5",
        BATCH_SIZE="20",
        FLUSH_MS="500",
        JITTER="0.1",
        PRICE_BASE="68000",
        VOLATILITY="0.02",
        RETRY_ATTEMPTS="3",
        RETRY_BACKOFF_MS="500",
        SEED="7",
    )
    assert (s.base_url, s.api_key, s.symbols) == (
        "https://api.example/api/v1",
        "secret",
        ("BTCUSDT", "ETHUSDT"),
    )
    assert (s.rps, s.batch_size, s.flush_ms, s.jitter) == (5.0, 20, 500, 0.1)
    assert (s.retry_attempts, s.retry_backoff_ms, s.seed) == (3, 500, 7)
    assert s.price_base == PerSymbol(68000.0)
    assert s.volatility.for_symbol("ETHUSDT") == 0.02


def test_scalar_applies_to_every_symbol() -> None:
    s = feeder(PRICE_BASE="250.5", VOLATILITY="0.001")
    assert s.price_base.for_symbol("ANY") == 250.5
    assert s.volatility.for_symbol("BTCUSDT") == 0.001


def test_map_form_per_symbol() -> None:
    s = feeder(PRICE_BASE="BTCUSDT:68000,ethusdt:3500", VOLATILITY="BTCUSDT:0.0005,ETHUSDT:0.001")
    assert s.price_base.for_symbol("BTCUSDT") == 68000.0
    assert s.price_base.for_symbol("ETHUSDT") == 3500.0
    assert s.volatility.for_symbol("ETHUSDT") == 0.001


def test_map_with_a_default() -> None:
    s = feeder(PRICE_BASE="100,BTCUSDT:68000")
    assert s.price_base.for_symbol("BTCUSDT") == 68000.0
    assert s.price_base.for_symbol("SOLUSDT") == 100.0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PRICE_BASE": "abc"}, "PRICE_BASE='abc': expected a number"),
        ({"PRICE_BASE": "BTCUSDT:"}, "PRICE_BASE='BTCUSDT:'"),
        ({"VOLATILITY": "BTCUSDT:x"}, "VOLATILITY='BTCUSDT:x'"),
        ({"PRICE_BASE": "1,2"}, "PRICE_BASE='1,2': expected one scalar"),
        ({"PRICE_BASE": "BTCUSDT:-5"}, "PRICE_BASE: expected numbers above 0"),
        ({"VOLATILITY": "0"}, "VOLATILITY: expected numbers above 0"),
        ({"VOLATILITY": "inf"}, "VOLATILITY='inf': expected a finite number"),
        ({"RPS": "0"}, "RPS=0.0: expected ticks per second from 0.1 to 100000"),
        ({"RPS": "200000"}, "RPS="),
        ({"JITTER": "1.5"}, "JITTER="),
        ({"BATCH_SIZE": "ten"}, "BATCH_SIZE='ten': expected a whole number"),
        ({"RETRY_ATTEMPTS": "-1"}, "RETRY_ATTEMPTS="),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    assert message in str(caught.value)
