"""The ground under everything: the embedded PostgreSQL's life cycle, sslmode, the CLI's
health check and settings errors, JSON logs, CORS."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import httpx
import pytest
import trio

from tests.conftest import tickhub_command
from tickhub.bridge import open_bridge
from tickhub.sql.db import DatabaseUnavailable, open_database
from tickhub.sql.embedded import EmbeddedPostgres


def test_embedded_postgres_survives_a_killed_server_and_reuses_a_running_one(tmp_path):
    first = EmbeddedPostgres(tmp_path / "data", fsync=False)
    first.start()
    pid = int((tmp_path / "data" / "postmaster.pid").read_text().split()[0])
    # A second start (tickhub restarted after a SIGKILL) finds it running and reuses it.
    again = EmbeddedPostgres(tmp_path / "data", fsync=False)
    assert again.start() == first.url
    os.kill(pid, signal.SIGKILL)  # the server dies; its postmaster.pid stays behind
    third = EmbeddedPostgres(tmp_path / "data", fsync=False)
    url = third.start()  # stale pid file handled: a fresh server on the same data
    assert (tmp_path / "data" / "postmaster.pid").exists()
    out = subprocess.run(
        [*tickhub_command(), "migrate", "status"],
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "0001_schema" in out.stdout
    third.stop()
    assert not (tmp_path / "data" / "postmaster.pid").exists()


async def test_sslmode_in_the_url_is_honoured(pg_url):
    async with open_bridge():
        async with open_database(pg_url + "?sslmode=disable") as db:
            assert await db.fetchval("SELECT 1") == 1
        # The embedded server has no TLS: demanding it must fail, not silently fall back.
        with pytest.raises((DatabaseUnavailable, OSError, Exception)) as caught:
            async with open_database(pg_url + "?sslmode=require", connect_timeout_s=1) as db:
                await db.fetchval("SELECT 1")
        assert "ssl" in str(caught.value).lower() or "SSL" in repr(caught.value)


def test_healthcheck_exit_codes(spawn, process_env):
    proc, url = spawn("run", "--role", "all")
    port = url.rsplit(":", 1)[1]
    ok = subprocess.run(
        [*tickhub_command(), "healthcheck"], env={**process_env, "PORT": port}, timeout=30
    )
    assert ok.returncode == 0
    proc.terminate()
    proc.wait(10)
    down = subprocess.run(
        [*tickhub_command(), "healthcheck"], env={**process_env, "PORT": port}, timeout=30
    )
    assert down.returncode == 1


def test_a_bad_setting_stops_start_up_with_one_line(process_env):
    out = subprocess.run(
        [*tickhub_command(), "run", "--role", "all"],
        env={**process_env, "BATCH_MAX": "abc"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == ["Error: BATCH_MAX='abc': expected a whole number"]


def test_logs_are_json_lines_naming_their_actor(spawn, tmp_path):
    proc, url = spawn("run", "--role", "all", LOG_LEVEL="info")
    httpx.get(url + "/api/v1/symbols")
    proc.terminate()
    assert proc.wait(10) == 0
    lines = [
        json.loads(line)
        for path in tmp_path.glob("tickhub-*.log")
        for line in path.read_text().splitlines()
        if line.startswith("{")
    ]
    assert lines and all({"event", "level", "timestamp", "actor"} <= set(line) for line in lines)
    assert {"process"} <= {line["actor"] for line in lines}


async def test_cors_is_pinned_to_the_configured_origins(db, pg_url, nursery):
    from tests.conftest import make_settings, start_tickhub

    server = await start_tickhub(
        nursery,
        make_settings(
            pg_url,
            cors_allow_origins=("https://dash.example",),
            allow_origins=("https://dash.example",),
        ),
    )
    allowed = await server.get("/api/v1/symbols", headers={"Origin": "https://dash.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://dash.example"
    other = await server.get("/api/v1/symbols", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    with trio.fail_after(5):
        async with server.client.stream(
            "GET", "/realtime/ticks", headers={"Origin": "https://dash.example"}
        ) as stream:
            assert stream.headers["Access-Control-Allow-Origin"] == "https://dash.example"
    preflight = await server.client.options(
        "/api/v1/webhooks/ticks",
        headers={"Origin": "https://dash.example", "Access-Control-Request-Method": "POST"},
    )
    assert "x-api-key" in preflight.headers["Access-Control-Allow-Headers"]
    await server.client.aclose()
    await server.shutdown()
