"""tickhub: trade ticks in over webhooks, candles and metrics in PostgreSQL, live updates
out over SSE."""

__version__ = "0.1.0"
