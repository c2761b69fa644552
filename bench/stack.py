"""The system under test: tickhub in processes of its own (`python -m tickhub run --role …`)
on an embedded PostgreSQL (fsync off) and, split, an embedded Redis; all on 127.0.0.1,
stopped (SIGTERM, then SIGKILL) on exit. Every bench starts tickhub through `Stack`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import attrs

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT")
API_KEY = "bench"
# Every client of a benchmark comes from 127.0.0.x: the per-client caps and rate limits
# would measure themselves, not the pipeline. (Unknown names are ignored by tickhub.)
UNLIMITED = {
    "RATE_LIMIT_WEBHOOKS": "0",
    "RATE_LIMIT_QUERIES": "0",
    "RATE_LIMIT_STREAM": "0",
    "SSE_MAX_PER_CLIENT": "1000000",
    "SSE_MAX_CLIENTS": "1000000",
}


@attrs.define
class Stack:
    """tickhub in its own processes: `all` (one process) or split (api, consumers, gateways
    joined by an embedded Redis). Use as a context manager (blocking start and stop)."""

    mode: str = "all"
    consumers: int = 1
    gateways: int = 1
    env_extra: dict[str, str] = attrs.field(factory=dict)
    procs: list[tuple[str, int, subprocess.Popen]] = attrs.field(factory=list)
    database_url: str = ""
    _tmp: Any = None
    _pg: Any = None
    _redis: Any = None

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        from tickhub.dev import EmbeddedRedis, wait_ready
        from tickhub.sql.embedded import EmbeddedPostgres, free_port

        self._tmp = tempfile.TemporaryDirectory(prefix="tickhub-bench-")
        self._pg = EmbeddedPostgres(Path(self._tmp.name) / "pg", fsync=False)
        self.database_url = self._pg.start()
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "API_KEY": API_KEY,
            "HOST": "127.0.0.1",
            "LOG_LEVEL": "warning",
            **UNLIMITED,
            **self.env_extra,
        }
        if self.mode == "all":
            roles = [("all", free_port())]
        else:
            self._redis = EmbeddedRedis(Path(self._tmp.name) / "redis")
            env["REDIS_URL"] = self._redis.start()
            roles = (
                [("api", free_port())]
                + [("consumer", free_port()) for _ in range(self.consumers)]
                + [("gateway", free_port()) for _ in range(self.gateways)]
            )
        for role, port in roles:  # one at a time: the first one applies the migrations
            with (Path(self._tmp.name) / f"{role}-{port}.log").open("w") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "tickhub", "run", "--role", role],
                    env={**env, "PORT": str(port), "CONSUMER_NAME": f"bench-{port}"},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self.procs.append((role, port, proc))
            wait_ready(f"http://127.0.0.1:{port}", proc, path="/ops/health/liveness")

    def stop(self) -> None:
        for _, _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, _, proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()
        if self._redis is not None:
            self._redis.stop()
            self._redis = None
        if self._pg is not None:
            self._pg.stop()
            self._pg = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def log_tail(self, chars: int = 4000) -> str:
        """The end of every process's output (they log to files, not to the terminal)."""
        if self._tmp is None:
            return ""
        logs = sorted(Path(self._tmp.name).glob("*.log"))
        return "\n".join(f"== {p.name}\n{p.read_text()[-chars:]}" for p in logs)

    def ports(self, *roles: str) -> list[int]:
        return [port for role, port, _ in self.procs if role in roles]

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports('all', 'api')[0]}"

    @property
    def sse_targets(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", p) for p in self.ports("all", "gateway")]

    def pids(self, *roles: str) -> dict[str, int]:
        """{'gateway0': pid, …} for the given roles (all roles when none given)."""
        named: dict[str, int] = {}
        counts: dict[str, int] = {}
        for role, _, proc in self.procs:
            if roles and role not in roles:
                continue
            n = counts.get(role, 0)
            counts[role] = n + 1
            named[role if role == "all" or role == "api" else f"{role}{n}"] = proc.pid
        return named
