"""The SSE wire format of the live stream (API.md, "Live stream"): every frame a client can
receive, encoded once and shared by every connection that gets it.

- `event_data`: the JSON of a stored tick with its candle and SMA10 (a default-type event).
- `event_frame`: that data with its id; `conflated_frame`: the same plus `"conflated": n`.
- `hello_frame`, `keepalive_frame`, `RESET_FRAME`, `OVERFLOW_FRAME`: the stream's control
  frames.
"""

from __future__ import annotations

import orjson

from tickhub.messages import StoredTick

RESET_FRAME = b'event: reset\ndata: {"reason":"stale"}\n\n'
# After an overflow the client missed events it cannot see under a symbol filter: it reloads.
OVERFLOW_FRAME = b'event: reset\ndata: {"reason":"overflow"}\n\n'
RETRY_MS = 3000
CONFLATE_MS = (50, 60_000)  # a conflated stream's interval bounds (`conflate=MS`)


def event_data(tick: StoredTick) -> bytes:
    """The data of a tick's live event: the tick, its 1-minute candle as stored after the
    flush, and the SMA10 of the closes up to that candle."""
    return orjson.dumps(
        {
            "symbol": tick.symbol,
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


def event_frame(event_id: int, data: bytes) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (event_id, data)


def conflated_frame(event_id: int, data: bytes, count: int) -> bytes:
    """The event of the latest tick, standing for `count` ticks (its data is a JSON object:
    the count goes in before its closing brace, nothing is decoded)."""
    return b'id: %d\ndata: %s,"conflated":%d}\n\n' % (event_id, data[:-1], count)


def hello_frame(connected_ms: int, symbols: frozenset[str] | None, conflate_ms: int = 0) -> bytes:
    filt = None if symbols is None else ",".join(sorted(symbols))
    hello = {"ok": True, "connectedAt": connected_ms, "filterSymbol": filt}
    if conflate_ms:
        hello["conflateMs"] = conflate_ms
    return b"retry: %d\nevent: hello\ndata: %s\n\n" % (RETRY_MS, orjson.dumps(hello))


def keepalive_frame(now_ms: int) -> bytes:
    """The `: ping` comment of the contract, plus an `event: ping` that a browser's
    EventSource can observe (it never sees comments) to tell a quiet stream from a dead one."""
    return b": ping %d\nevent: ping\ndata: %d\n\n" % (now_ms, now_ms)
