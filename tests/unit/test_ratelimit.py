"""GCRA limits: one rule for every limiter, and an in-memory table that stays bounded
however many clients come."""

from __future__ import annotations

import trio

from tickhub.ratelimit import MemoryLimiter, gcra, parse_rate


def test_a_burst_up_to_the_limit_then_refusals_until_the_window_moves():
    rate = parse_rate("3/m")
    tat, decisions = None, []
    for now in (0, 0, 0, 0, 20_000_000):  # microseconds
        decision, new_tat = gcra(tat, now, rate)
        tat = new_tat if new_tat is not None else tat
        decisions.append((decision.allowed, decision.remaining))
    assert decisions == [(True, 2), (True, 1), (True, 0), (False, 0), (True, 0)]


def test_a_peek_counts_nothing():
    limiter = MemoryLimiter(clock=lambda: 0)
    rate = parse_rate("1/h")

    async def main() -> None:
        for _ in range(5):
            assert (await limiter.check("g", "c", rate, charge=False)).allowed
        assert (await limiter.check("g", "c", rate)).allowed
        assert not (await limiter.check("g", "c", rate, charge=False)).allowed

    trio.run(main)


def test_more_clients_than_it_keeps_evicts_the_least_recently_used():
    now = [0]
    limiter = MemoryLimiter(clock=lambda: now[0], capacity=100)
    rate = parse_rate("1/h")

    async def main() -> None:
        await limiter.check("g", "first", rate)
        for i in range(1000):
            await limiter.check("g", f"ip:{i}", rate)
            assert len(limiter) <= 100
        # The latest clients are remembered (still limited); the first one was forgotten.
        assert not (await limiter.check("g", "ip:999", rate)).allowed
        assert (await limiter.check("g", "first", rate)).allowed

    trio.run(main)


def test_a_limit_of_one_lets_the_first_request_through_at_any_time():
    """Seconds as floats made `(now + period) - period` come out above `now` for some clock
    readings, refusing a first request (a flaky 429 on machines up for 500 to 4,096 s)."""
    rate = parse_rate("1/h")
    for now in range(0, 10**16, 10**16 // 997):
        assert gcra(None, now, rate)[0].allowed, now
