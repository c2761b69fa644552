"""What a symbol is: the one rule for valid symbols (API.md: 1-32 of `A-Z 0-9 . _ : / -`,
lower case upper-cased) and how a symbol splits into base and quote, shared by validation,
storage and the feeder."""

from __future__ import annotations

import re

SYMBOL = re.compile(r"[A-Z0-9._:/\-]{1,32}")
SYMBOL_RULE = "expected 1-32 characters of A-Z 0-9 . _ : / -"
# Quote currencies recognised at the end of a symbol without a separator (BTCUSDT), longest
# first so that BUSD is not read as USD nor FDUSD as USD.
QUOTES = tuple(
    sorted(
        ("USDT", "USDC", "BUSD", "FDUSD", "TUSD", "USD", "EUR", "GBP", "JPY", "TRY", "BTC",
         "ETH", "BNB"),
        key=len,
        reverse=True,
    )
)  # fmt: skip


def normal_symbol(value: object) -> str | None:
    """The upper-cased symbol, or None when it is not one. ASCII is checked first: Unicode
    upper-casing would fold e.g. U+017F (long s) into "S" and smuggle other letters in."""
    if not isinstance(value, str) or not value.isascii():
        return None
    symbol = value.upper()
    return symbol if SYMBOL.fullmatch(symbol) else None


def split_symbol(symbol: str) -> tuple[str, str]:
    """Base and quote: `BTC/USDT`, `BTC-USDT`, `BTC_USDT`, `BTC:USDT`, or a known quote at the
    end (`BTCUSDT`, `BTCFDUSD`); otherwise the whole symbol and an empty quote."""
    for sep in "/-_:":
        base, found, quote = symbol.partition(sep)
        if found and base and quote:
            return base, quote
    for quote in QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    return symbol, ""
