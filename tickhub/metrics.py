"""Prometheus metrics of the server roles, on prometheus-client's default registry (served at
`/ops/metrics`). The feeder keeps its own in `tickhub.feeder.metrics`.
"""

from prometheus_client import Counter, Gauge, Histogram

INGEST_TICKS = Counter(
    "tickhub_ingest_ticks_total", "Ticks answered by the webhook", ["result"]
)  # result: accepted | duplicate | rejected
INGEST_REQUESTS = Counter("tickhub_ingest_requests_total", "Webhook requests", ["status"])
FLUSH_ROWS = Histogram(
    "tickhub_flush_rows",
    "Rows per writer flush",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
FLUSH_SECONDS = Histogram(
    "tickhub_flush_seconds",
    "Writer flush duration (one transaction)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
FLUSH_FAILURES = Counter("tickhub_flush_failures_total", "Writer flushes that failed")
WRITER_QUEUE = Gauge("tickhub_writer_queue_rows", "Rows waiting in the writer")
PENDING_TICKS = Gauge("tickhub_ingest_pending_ticks", "Ticks admitted and not yet committed")
SSE_CLIENTS = Gauge("tickhub_sse_clients", "Connected SSE clients")
SSE_EVENTS_SENT = Counter("tickhub_sse_events_sent_total", "Events written to SSE clients")
SSE_EVENTS_DROPPED = Counter(
    "tickhub_sse_events_dropped_total", "Events dropped from a slow client's buffer"
)
HUB_EVENTS = Counter("tickhub_hub_events_total", "Live events published to the hub")
QUEUE_BATCHES = Gauge(
    "tickhub_queue_batches", "Batches in the Redis ticks stream by state", ["state"]
)  # state: pending | inFlight | completed | failed | dead
DEAD_LETTERS = Counter(
    "tickhub_dead_letters_total", "Ticks-stream entries moved to the dead letters by this process"
)
RATE_LIMITED = Counter("tickhub_rate_limited_total", "Requests refused by a rate limit", ["group"])
RATE_LIMIT_SKIPPED = Counter(
    "tickhub_rate_limit_skipped_total", "Requests let through unchecked (limiter unreachable)"
)
ACTOR_RESTARTS = Counter("tickhub_actor_restarts_total", "Actor restarts", ["actor"])
