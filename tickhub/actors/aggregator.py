"""The per-symbol aggregator: one actor per symbol, started on the symbol's first tick.

Its mailbox holds the symbol's parts of accepted batches. It orders each part by time and
hands it to the writer; after the commit the writer sends back the ticks really inserted and
the candles they touched (with SMA10), and the aggregator turns those into the symbol's live
events, in time order, for the hub. Per-minute aggregation itself is done by the flush SQL
from the rows the insert returned — only that way can a duplicate never count twice.

Two loops run side by side so that a reply from the writer is always taken even while the
aggregator waits for room in the writer's mailbox (no cycle of full channels).
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs
import orjson
import structlog
import trio

from tickhub.actors.messages import FlushOutcome, TickColumns, WriteRequest
from tickhub.actors.supervisor import ActorHealth

log = structlog.get_logger(actor="aggregator")


class Publisher(Protocol):
    """Where live events go: the local hub, or the updates stream in split mode."""

    async def publish(self, symbol: str, payloads: list[bytes]) -> None: ...


def ordered(ticks: TickColumns) -> TickColumns:
    """The same ticks sorted by (ts, key), so the writer sees each symbol in time order.

    Python compares keys by code point, which is UTF-8 byte order: the order of the keys'
    `COLLATE "C"` in SQL (migration 0003), so a tie in ts is broken here as the flush
    statement and the REST queries break it."""
    ts = ticks.ts_us
    if all(ts[i] <= ts[i + 1] for i in range(len(ts) - 1)):
        return ticks
    order = sorted(range(len(ts)), key=lambda i: (ts[i], ticks.keys[i]))
    return attrs.evolve(
        ticks,
        keys=[ticks.keys[i] for i in order],
        ts_us=[ts[i] for i in order],
        price=[ticks.price[i] for i in order],
        volume=[ticks.volume[i] for i in order],
    )


def live_events(symbol: str, outcome: FlushOutcome) -> list[bytes]:
    """One event per stored tick, carrying its candle and SMA10 as stored after the flush."""
    return [
        orjson.dumps(
            {
                "symbol": symbol,
                "price": tick.price,
                "ts": tick.ts_us / 1_000_000,
                "volume": tick.volume,
                "sma10": tick.sma10,
                "candle1m": {
                    "bucket_start": tick.bucket_start,
                    "open": tick.open,
                    "high": tick.high,
                    "low": tick.low,
                    "close": tick.close,
                    "volume": tick.candle_volume,
                    "count": tick.count,
                },
            }
        )
        for tick in sorted(outcome.ticks, key=lambda t: (t.ts_us, t.key))
    ]


@attrs.define
class Aggregator:
    symbol: str
    rx: trio.MemoryReceiveChannel  # SymbolBatch
    writer_tx: trio.MemorySendChannel  # WriteRequest
    stored_rx: trio.MemoryReceiveChannel  # FlushOutcome, from the writer
    stored_tx: trio.MemorySendChannel  # handed to the writer as the reply address
    publisher: Publisher
    health: ActorHealth

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publish_loop)
            task_status.started()
            await self._forward_loop()

    async def _forward_loop(self) -> None:
        async with self.rx, self.writer_tx:
            async for batch in self.rx:
                try:
                    request = WriteRequest(ordered(batch.ticks), batch.receipt, self.stored_tx)
                    await self.writer_tx.send(request)
                except BaseException as exc:
                    batch.receipt.fail(exc)  # its webhook answers 503; nothing was stored
                    raise
                self.health.touch()

    async def _publish_loop(self) -> None:
        async with self.stored_rx:
            async for outcome in self.stored_rx:
                await self.publisher.publish(self.symbol, live_events(self.symbol, outcome))
                self.health.touch()
