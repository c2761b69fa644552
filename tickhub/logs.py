"""Structured logs: JSON lines by default, console rendering with LOG_PRETTY=1, LOG_LEVEL
honoured; every logger binds the name of the actor or edge it belongs to (`actor=`).
"""

from __future__ import annotations

import logging
import math
import sys
import time

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(level: str = "info", pretty: bool = False) -> None:
    numeric = LEVELS[level]
    renderer = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if pretty
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the standard library (hypercorn, asyncpg) at warning and up.
    logging.basicConfig(
        level=max(numeric, logging.WARNING),
        stream=sys.stderr,
        format="%(levelname)s %(name)s %(message)s",
    )


class Throttled:
    """A log line that repeats under a fault (a limiter that cannot reach Redis, refused keys)
    written at most once per `every_s`, with the number of times it was held back."""

    def __init__(self, actor: str, event: str, every_s: float = 60.0) -> None:
        self._log = structlog.get_logger(actor=actor)
        self._event = event
        self._every_s = every_s
        self._last = -math.inf
        self._held = 0

    def warning(self, **fields: object) -> None:
        now = time.monotonic()
        if now - self._last < self._every_s:
            self._held += 1
            return
        self._log.warning(self._event, suppressed=self._held, **fields)
        self._last, self._held = now, 0
