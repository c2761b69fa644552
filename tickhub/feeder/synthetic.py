"""Synthetic ticks: a geometric random walk per symbol, generated a whole batch at a time.

At 100,000 ticks/s the Python work per tick is the budget, so a batch is made column by
column (normals, log-prices, prices, volumes, timestamps, keys) in list comprehensions, and
each tick becomes one dict in the webhook's item shape, ready for orjson.

Each symbol has its own random streams (price and volume), seeded from `SEED` and the symbol
when a seed is given, so a symbol's prices do not depend on how ticks are cut into batches or
on which other symbols run.
"""

from __future__ import annotations

import math
import random
import secrets
from decimal import Decimal
from itertools import accumulate, islice
from typing import Any

import attrs

from tickhub.config import FeederSettings, VolumeModel

# A walk is held within [one tick, start price x this]: the floor keeps prices above 0 and
# lets the walk leave it at once; the ceiling keeps exp() finite however long it runs.
_CEILING_FACTOR = 1e6


def default_tick_size(price: float) -> float:
    """A tick about a millionth of the price, as a power of ten (0.01 for 68,000)."""
    return 10.0 ** (math.floor(math.log10(price)) - 6)


@attrs.define
class PriceWalk:
    """One symbol's price: p <- p*exp(sigma*z), z standard normal, rounded to `tick`."""

    price: float
    sigma: float
    tick: float
    rng: random.Random = attrs.field(factory=random.Random, repr=False)
    _log: float = attrs.field(init=False)
    _low: float = attrs.field(init=False)
    _high: float = attrs.field(init=False)
    _num: int = attrs.field(init=False)
    _den: int = attrs.field(init=False)
    _spare: list[float] = attrs.field(init=False, factory=list)

    def __attrs_post_init__(self) -> None:
        if not (self.price > 0 and self.tick > 0 and self.sigma >= 0):
            raise ValueError("PriceWalk needs price > 0, tick > 0 and sigma >= 0")
        self._log = math.log(self.price)
        self._low = math.log(self.tick)
        self._high = math.log(self.price * _CEILING_FACTOR)
        # The tick as an exact fraction: (ticks * num) / den is then the correctly rounded
        # decimal (68001.23, not 68001.230000000003) however many ticks the price has.
        self._num, self._den = Decimal(repr(self.tick)).as_integer_ratio()

    def steps(self, n: int) -> list[float]:
        """The next `n` prices of the walk."""
        logs = list(islice(accumulate(self._normals(n), initial=self._log), 1, None))
        if logs and (min(logs) < self._low or max(logs) > self._high):
            logs = self._clamped(logs)
        if logs:
            self._log = logs[-1]
        exp, num, den = math.exp, self._num, self._den
        per_tick = den / num
        # The walk's floor is one tick, so this is at least 1 tick: the price stays above 0.
        return [round(exp(x) * per_tick) * num / den for x in logs]

    def _normals(self, n: int) -> list[float]:
        """`n` draws of sigma*z by Box-Muller, a column at a time (several times cheaper than
        random.gauss per tick). Uniforms are drawn in pairs and an odd call's last normal is
        kept for the next, so the sequence does not depend on how it is cut into calls."""
        pairs = (n - len(self._spare) + 1) // 2
        if pairs <= 0:
            out, self._spare = self._spare[:n], self._spare[n:]
            return out
        rnd, log, sqrt, sigma = self.rng.random, math.log, math.sqrt, self.sigma
        us = [rnd() for _ in range(2 * pairs)]
        radii = [sigma * sqrt(-2.0 * log(1.0 - u)) for u in us[0::2]]
        angles = [math.tau * u for u in us[1::2]]
        draws = [0.0] * (2 * pairs)
        draws[0::2] = [r * math.cos(a) for r, a in zip(radii, angles, strict=True)]
        draws[1::2] = [r * math.sin(a) for r, a in zip(radii, angles, strict=True)]
        draws = self._spare + draws
        self._spare = draws[n:]
        return draws[:n]

    def _clamped(self, logs: list[float]) -> list[float]:
        # Redo the walk step by step, holding it at the bounds (rare, so the slow path).
        low, high = self._low, self._high
        x, out = self._log, []
        previous = self._log
        for value in logs:
            x = min(high, max(low, x + (value - previous)))
            previous = value
            out.append(x)
        return out


def _rng(seed: int | None, *parts: str) -> random.Random:
    # A string seed is hashed with SHA-512, so the stream is the same on every run and platform.
    return random.Random(":".join((str(seed), *parts))) if seed is not None else random.Random()


@attrs.define
class TickGenerator:
    """Ticks for `symbols` in turn, a batch per call, each with a unique idempotency key
    `{source}-{run_id}-{seq}`."""

    symbols: tuple[str, ...]
    walks: tuple[PriceWalk, ...]
    volume_rngs: tuple[random.Random, ...]
    volume: VolumeModel
    source: str
    run_id: str
    seq: int = 0

    @classmethod
    def from_settings(
        cls,
        settings: FeederSettings,
        *,
        run_id: str | None = None,
    ) -> TickGenerator:
        """One walk per symbol from PRICE_BASE, VOLATILITY and SEED.

        The run id is random even with a SEED: a second run with the same seed would
        otherwise repeat the first run's keys, and the api would drop all its ticks as
        duplicates. Pass `run_id` to fix it (tests).
        """
        symbols = tuple(s.upper() for s in settings.symbols)
        if not symbols:
            raise ValueError("SYMBOLS: expected at least one symbol")
        walks = []
        for symbol in symbols:
            price = settings.price_base.for_symbol(symbol)
            sizes = settings.tick_size
            tick = sizes.for_symbol(symbol) if sizes else default_tick_size(price)
            walks.append(
                PriceWalk(
                    price,
                    settings.volatility.for_symbol(symbol),
                    tick,
                    _rng(settings.seed, symbol, "price"),
                )
            )
        return cls(
            symbols=symbols,
            walks=tuple(walks),
            volume_rngs=tuple(_rng(settings.seed, s, "volume") for s in symbols),
            volume=settings.volume,
            source=settings.source,
            run_id=run_id or secrets.token_hex(4),
        )

    def batch(self, count: int, end_ts: float, spacing: float) -> list[dict[str, Any]]:
        """The next `count` ticks: the last stamped `end_ts` (epoch seconds), each earlier
        one `spacing` seconds before the next, to the millisecond."""
        items: list[Any] = [None] * count
        n, first = len(self.symbols), self.seq
        prefix = f"{self.source}-{self.run_id}-"
        # In milliseconds, so each tick's ts is one multiply-add and one round.
        start_ms, step_ms = (end_ts - (count - 1) * spacing) * 1000, spacing * 1000
        for i in range(min(n, count)):
            s = (first + i) % n
            positions = range(i, count, n)
            symbol = self.symbols[s]
            prices = self.walks[s].steps(len(positions))
            volumes = self.volume.sample(self.volume_rngs[s], len(positions))
            # Every n-th slot belongs to this symbol: filling a slice keeps the batch in
            # time order without a per-tick index lookup.
            items[i::n] = [
                {
                    "symbol": symbol,
                    "price": price,
                    "ts": round(start_ms + j * step_ms) / 1000,
                    "volume": volume,
                    "idempotencyKey": f"{prefix}{first + j}",
                }
                for j, price, volume in zip(positions, prices, volumes, strict=True)
            ]
        self.seq += count
        return items
