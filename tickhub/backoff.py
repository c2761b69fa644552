"""Exponential backoff: the waits between attempts to reach something that is away (Redis,
Postgres, an api), the one rule every retry loop uses."""

from __future__ import annotations

import attrs


def backoff_delay(attempt: int, initial_s: float, max_s: float) -> float:
    """The wait before attempt `attempt` (0 for the first retry): `initial_s` doubling,
    capped at `max_s`."""
    return min(initial_s * 2.0 ** min(attempt, 64), max_s)


@attrs.define
class Backoff:
    """The waits of one retry loop: longer after each failure, short again after a success."""

    initial_s: float = 0.1
    max_s: float = 5.0
    attempt: int = 0

    def next(self) -> float:
        """The wait before the next try (and count this failure)."""
        delay = backoff_delay(self.attempt, self.initial_s, self.max_s)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
