"""Prometheus metrics of the feeder role, on the default registry that `/ops/metrics` serves."""

from prometheus_client import Counter, Gauge, Histogram

TICKS_GENERATED = Counter(
    "tickhub_feeder_ticks_generated_total",
    "Synthetic ticks generated.",
)
POSTS = Counter(
    "tickhub_feeder_posts_total",
    "Tick webhook requests by outcome: the HTTP status, or `error` for a connection failure.",
    ["status"],
)
POST_SECONDS = Histogram(
    "tickhub_feeder_post_seconds",
    "Duration of one tick webhook request (each attempt).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BUFFERED_TICKS = Gauge(
    "tickhub_feeder_buffered_ticks",
    "Ticks generated and not yet acknowledged by the api.",
)
BACKPRESSURE_SECONDS = Counter(
    "tickhub_feeder_backpressure_seconds_total",
    "Time generation was paused because the buffer of undelivered ticks was full.",
)
