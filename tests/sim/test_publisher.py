"""The consumer's publisher (split mode): the aggregators of one flush share one round trip to
the updates stream, a symbol's events keep their order, an outage holds them (never drops
them), and what was waiting when the publisher failed goes out when it restarts."""

from __future__ import annotations

import pytest
import trio

from tickhub.actors.relay import RedisPublisher
from tickhub.redis.link import RedisUnavailable


class FakeLink:
    """The updates stream as a list; `down` refuses calls, as Redis away would."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, list[bytes]]]] = []
        self.down = 0  # calls still to refuse
        self.fail_with: BaseException | None = None

    async def publish_updates(self, batch, maxlen: int) -> None:
        await trio.sleep(0.001)  # one round trip
        if self.fail_with is not None:
            exc, self.fail_with = self.fail_with, None
            raise exc
        if self.down:
            self.down -= 1
            raise RedisUnavailable("connection refused")
        self.calls.append(list(batch))

    @property
    def stream(self) -> list[tuple[str, bytes]]:
        return [(s, d) for batch in self.calls for s, ps in batch for d in ps]


async def test_a_flush_of_many_symbols_is_one_round_trip(autojump_clock):
    link = FakeLink()
    publisher = RedisPublisher(link, maxlen=1000)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(publisher.run)
        async with trio.open_nursery() as aggregators:
            for i in range(100):
                aggregators.start_soon(publisher.publish, f"S{i}", [b"%d" % i])
        assert len(link.calls) == 1 and len(link.calls[0]) == 100
        nursery.cancel_scope.cancel()


async def test_a_symbols_events_stay_in_order_across_round_trips(autojump_clock):
    link = FakeLink()
    publisher = RedisPublisher(link, maxlen=1000)  # type: ignore[arg-type]

    async def aggregator(symbol: str) -> None:
        for n in range(20):  # one flush after another: each waits for the last to land
            await publisher.publish(symbol, [b"%s-%d-a" % (symbol.encode(), n), b"-b"])

    async with trio.open_nursery() as nursery:
        await nursery.start(publisher.run)
        async with trio.open_nursery() as aggregators:
            for symbol in ("BTC", "ETH", "SOL"):
                aggregators.start_soon(aggregator, symbol)
        nursery.cancel_scope.cancel()
    for symbol in ("BTC", "ETH", "SOL"):
        mine = [d for s, d in link.stream if s == symbol and d != b"-b"]
        assert mine == [b"%s-%d-a" % (symbol.encode(), n) for n in range(20)]
    assert len(link.calls) < 60  # the three shared round trips


async def test_an_outage_holds_the_events_until_redis_is_back(autojump_clock):
    link = FakeLink()
    link.down = 5
    publisher = RedisPublisher(link, maxlen=1000)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(publisher.run)
        with trio.fail_after(60):
            await publisher.publish("BTC", [b"1"])
        assert link.stream == [("BTC", b"1")] and link.down == 0
        nursery.cancel_scope.cancel()


async def test_what_was_waiting_when_the_publisher_failed_goes_out_after_its_restart(
    autojump_clock,
):
    link = FakeLink()
    link.fail_with = RuntimeError("bug")
    publisher = RedisPublisher(link, maxlen=1000)  # type: ignore[arg-type]
    landed = []

    async def aggregator() -> None:
        await publisher.publish("BTC", [b"1"])
        landed.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(aggregator)
        with pytest.raises(RuntimeError):
            await publisher.run()
        assert landed == [] and link.stream == []
        await nursery.start(publisher.run)  # the supervisor's restart
        await trio.sleep(1)
        assert landed == [True] and link.stream == [("BTC", b"1")]
        nursery.cancel_scope.cancel()
