"""One rule for symbols: how a symbol splits into base and quote, the same for the feeder
and for storage."""

from __future__ import annotations

import pytest

from tickhub.symbols import split_symbol


@pytest.mark.parametrize(
    ("symbol", "expected"),
    [
        ("BTCUSDT", ("BTC", "USDT")),
        ("ETHBUSD", ("ETH", "BUSD")),
        ("BTCFDUSD", ("BTC", "FDUSD")),  # not (BTCFD, USD)
        ("ETHBNB", ("ETH", "BNB")),
        ("ETHTRY", ("ETH", "TRY")),
        ("ETHBTC", ("ETH", "BTC")),
        ("BTC/EUR", ("BTC", "EUR")),
        ("SOL_USDC", ("SOL", "USDC")),
        ("BTC-USD", ("BTC", "USD")),
        ("AAPL", ("AAPL", "")),
        ("USDT", ("USDT", "")),
    ],
)
def test_split_symbol(symbol: str, expected: tuple[str, str]) -> None:
    assert split_symbol(symbol) == expected
