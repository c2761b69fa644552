"""Schemathesis against a live tickhub (`run --role all` in its own process): for every
operation of `/openapi.json`, generated requests — valid ones, and invalid ones where the
operation takes input — never get a 5xx, and every answer has a documented status code, a
documented content type and a body that matches its schema (API.md, ARCHITECTURE §4.6).

The webhooks get the `x-api-key` header. Rate limits are off in the fuzzed process (a 429 would
depend on timing); a second process with tight limits checks the 429 answers on their own.
`GET /realtime/ticks` streams forever: schemathesis reads each stream for a second (or 20
events) and checks every event it read against the documented `itemSchema` (ST108 "SSE event
violates schema"), while ticks are posted and keepalives are due every 250 ms, so hello, tick,
reset and ping events are all checked. Each operation runs at most 25 examples per mode.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import API_KEY, TABLES, tickhub_command
from tickhub.dev import wait_ready
from tickhub.sql.embedded import free_port

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
AUTH = {"x-api-key": API_KEY}
SEEDED = "BTCUSDT"  # has ticks, candles and metrics, so the 200 bodies are checked too
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # a failure is reported as found, unshrunk
    suppress_health_check=list(HealthCheck),
)

# Every operation of the document (test_every_operation_is_fuzzed keeps this list complete)
# and whether it takes input that can be made invalid.
OPERATIONS = {
    "POST /api/v1/webhooks/ticks": True,
    "POST /api/v1/webhooks/symbols": True,
    "POST /api/v1/auth/stream-token": False,
    "GET /api/v1/symbols": False,
    "GET /api/v1/ticks/{symbol}": False,  # a path string cannot be made invalid
    "GET /api/v1/ticks/{symbol}/history": True,
    "GET /api/v1/metrics/{symbol}": True,
    "GET /api/v1/stats": False,
    "GET /api/v1/health/liveness": False,
    "GET /api/v1/health/readiness": False,
    "GET /health/liveness": False,
    "GET /health/readiness": False,
    "GET /ops/health/liveness": False,
    "GET /ops/health/readiness": False,
    "GET /ops/metrics": False,
}
STREAM = "GET /realtime/ticks"
KEEPALIVE_MS = 250  # so that every stream read carries `event: ping` too
STREAM_READ_S = 1.0

KNOWN: dict = {}  # (operation, mode) → marks, for a known bug while it is open


def fuzz_params() -> list[Any]:
    params = []
    for label, takes_input in OPERATIONS.items():
        for mode in ("positive", "negative") if takes_input else ("positive",):
            marks = KNOWN.get((label, mode), ())
            params.append(pytest.param(label, mode, marks=marks, id=f"{label} {mode}"))
    return params


# --- the live process ---------------------------------------------------------------------


def process_env(pg_url: str, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "TICKHUB"))}
    env.update(
        DATABASE_URL=pg_url,
        API_KEY=API_KEY,
        HOST="127.0.0.1",
        PORT=str(port),
        LOG_LEVEL="warning",
        STOP_TIMEOUT_S="5",
        **extra,
    )
    return env


def start(pg_url: str, log_path: Any, **extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(log_path, "w")  # noqa: SIM115 - the process writes to it until it ends
    proc = subprocess.Popen(
        [*tickhub_command(), "run", "--role", "all"],
        env=process_env(pg_url, port, **extra),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
    except BaseException:
        stop(proc)
        raise
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def seed(url: str) -> None:
    """A few minutes of ticks for SEEDED: candles, SMA10 inputs and metrics exist."""
    now = int(time.time()) - 900
    items = [
        {"symbol": SEEDED, "price": 100 + i % 7, "ts": now + i * 20, "volume": i % 3}
        for i in range(40)
    ]
    response = httpx.post(
        url + "/api/v1/webhooks/ticks", json={"source": "seed", "items": items}, headers=AUTH
    )
    assert response.status_code == 202, response.text


@pytest.fixture(scope="module")
def live(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import trio

    from tickhub.bridge import open_bridge
    from tickhub.sql.db import open_database
    from tickhub.sql.migrate import migrate_up

    async def reset() -> None:
        async with open_bridge(), open_database(pg_url) as db:
            await migrate_up(db)
            await db.execute(f"TRUNCATE {TABLES}")

    trio.run(reset)
    off = {"RATE_LIMIT_WEBHOOKS": "0", "RATE_LIMIT_QUERIES": "0", "RATE_LIMIT_STREAM": "0"}
    log = tmp_path_factory.mktemp("schemathesis") / "tickhub.log"
    proc, url = start(pg_url, log, SSE_KEEPALIVE_MS=str(KEEPALIVE_MS), **off)
    try:
        seed(url)
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def schema(live: str) -> Any:
    return schemathesis.openapi.from_url(live + "/openapi.json")


def operation(schema: Any, label: str) -> Any:
    found = schema.find_operation_by_label(label)
    assert found is not None, f"{label} is not in /openapi.json"
    return found


def strategy(op: Any, mode: str) -> st.SearchStrategy:
    generation = GenerationMode(mode)
    cases = op.as_strategy(generation_mode=generation)
    if "{symbol}" in op.path:  # also a symbol that exists, so 200 bodies are validated
        seeded = op.as_strategy(generation_mode=generation, path_parameters={"symbol": SEEDED})
        cases = st.one_of(cases, seeded)
    return cases


# --- fuzzing ------------------------------------------------------------------------------


def test_every_operation_is_fuzzed(schema):
    documented = {op.ok().label for op in schema.get_all_operations()}
    assert documented == {*OPERATIONS, STREAM}


@pytest.mark.parametrize(("label", "mode"), fuzz_params())
def test_operation_conforms_to_its_schema(schema, live, label, mode):
    op = operation(schema, label)
    runs = 0

    @SETTINGS
    @given(case=strategy(op, mode))
    def check(case: Any) -> None:
        nonlocal runs
        runs += 1
        case.call_and_validate(base_url=live, headers=AUTH, checks=CHECKS, timeout=10)

    check()
    assert runs > 0


def event_kinds(content: bytes) -> set[str]:
    """The kinds of the events in a read stream (`message` for the default type)."""
    kinds = set()
    for block in content.decode().replace("\r\n", "\n").split("\n\n"):
        fields = dict(
            line.partition(": ")[::2] for line in block.split("\n") if line and line[0] != ":"
        )
        if "data" in fields:
            kinds.add(fields.get("event", "message"))
    return kinds


@contextmanager
def ticking(url: str) -> Iterator[None]:
    """Ticks for SEEDED posted every 100 ms while the block runs: live events to read."""
    stop = threading.Event()

    def post() -> None:
        with httpx.Client(base_url=url, headers=AUTH, timeout=10) as client:
            n = 0
            while not stop.wait(0.1):
                item = {"symbol": SEEDED, "price": 100 + n % 5, "ts": time.time(), "volume": 1}
                client.post("/api/v1/webhooks/ticks", json={"source": "live", "items": [item]})
                n += 1

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def test_every_stream_event_conforms_to_its_schema(schema, live):
    """Schemathesis reads each stream it opens for a second and checks the events it read; a
    stale `lastEventId` makes the stream reset, and the explicit cases cover the filters."""
    op = operation(schema, STREAM)
    kinds: set[str] = set()
    statuses: set[int] = set()
    explicit = [
        {},
        {"symbol": SEEDED},
        {"symbols": f"{SEEDED},ETHUSDT"},
        {"symbol": "ETHUSDT"},  # quiet: keepalives
        {"lastEventId": "1"},  # long gone: reset
        {"symbol": SEEDED, "conflate": 250},  # conflated: `"conflated": n`
        {"conflate": 50, "lastEventId": "1"},
    ]

    def read(case: Any) -> None:
        response = case.call_and_validate(
            base_url=live, headers=AUTH, checks=CHECKS, timeout=STREAM_READ_S
        )
        statuses.add(response.status_code)
        if response.status_code == 200:
            kinds.update(event_kinds(response.content))

    @settings(SETTINGS, max_examples=8)
    @given(case=st.one_of(op.as_strategy(), op.as_strategy(GenerationMode.NEGATIVE)))
    def check(case: Any) -> None:
        read(case)

    with ticking(live):
        for query in explicit:
            read(op.Case(query=query))
        check()
    assert 200 in statuses
    assert kinds >= {"hello", "message", "reset", "ping"}, kinds


# --- what fuzzing found -------------------------------------------------------------------


def call(schema: Any, live: str, label: str, **data: Any) -> Any:
    return operation(schema, label).Case(**data).call(base_url=live, headers=AUTH, timeout=10)


@pytest.mark.parametrize("ts", [-1e303, 1e306, -1.7976931348623157e308])
def test_ts_overflow_is_a_422(schema, live, ts):
    body = {"source": "fuzz", "items": [{"symbol": SEEDED, "price": 1.0, "ts": ts}]}
    response = call(
        schema, live, "POST /api/v1/webhooks/ticks", body=body, media_type="application/json"
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["field"] == "ts"


@pytest.mark.parametrize(
    "label",
    [
        "GET /api/v1/ticks/{symbol}",
        "GET /api/v1/ticks/{symbol}/history",
        "GET /api/v1/metrics/{symbol}",
    ],
)
def test_nul_in_symbol_is_not_a_server_error(schema, live, label):
    response = call(schema, live, label, path_parameters={"symbol": "BTC\x00USDT"})
    assert response.status_code in (400, 404), response.text


RATE_LIMITED = [
    ("POST /api/v1/webhooks/ticks", {"body": {"items": []}, "media_type": "application/json"}),
    ("POST /api/v1/webhooks/symbols", {"body": {"items": []}, "media_type": "application/json"}),
    ("GET /api/v1/symbols", {}),
    ("GET /api/v1/ticks/{symbol}", {"path_parameters": {"symbol": SEEDED}}),
    ("GET /api/v1/ticks/{symbol}/history", {"path_parameters": {"symbol": SEEDED}}),
    ("GET /api/v1/metrics/{symbol}", {"path_parameters": {"symbol": SEEDED}}),
    ("GET /api/v1/stats", {}),
]


def test_rate_limited_answers_are_documented(pg_url, tmp_path):
    tight = {"RATE_LIMIT_WEBHOOKS": "1/h", "RATE_LIMIT_QUERIES": "1/h"}
    proc, url = start(pg_url, tmp_path / "tickhub.log", **tight)
    try:
        schema = schemathesis.openapi.from_url(url + "/openapi.json")
        undocumented = []
        for label, data in RATE_LIMITED:
            case = operation(schema, label).Case(**data)
            responses = [case.call(base_url=url, headers=AUTH, timeout=10) for _ in range(3)]
            limited = responses[-1]
            if limited.status_code != 429:  # not the bug: the limits did not apply
                pytest.fail(f"{label}: expected a 429, got {limited.status_code}")
            try:
                case.validate_response(limited, checks=CHECKS)
            except (Failure, FailureGroup):
                undocumented.append(label)
        assert undocumented == []
    finally:
        stop(proc)
