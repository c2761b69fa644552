"""The Docker image's start command, run here as the container would run it: for every
service of render.yaml, `tickhub run` with its TICKHUB_ROLE and PORT starts, its health check
path answers 200, and SIGTERM drains and exits 0. (No Docker engine on these machines: this
runs the same command line the image runs.)"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.unit.test_deploy_files import (
    env_specs,
    image_command,
    load_yaml,
    role_of,
    services,
)
from tickhub.dev import wait_ready
from tickhub.sql.embedded import free_port

BLUEPRINT = load_yaml("render.yaml")


def host_command() -> list[str]:
    """The image's command with `tickhub` resolved to this environment's console script."""
    program, *args = image_command()
    assert program == "tickhub"
    return [str(Path(sys.executable).parent / "tickhub"), *args]


DOCKER_SERVICES = {
    name: svc for name, svc in services(BLUEPRINT).items() if svc.get("runtime") == "docker"
}


@pytest.mark.parametrize("name", sorted(DOCKER_SERVICES))
def test_image_command_serves_its_health_path_and_stops_cleanly(
    name, process_env, redis_url, db_sync, tmp_path
):
    service = DOCKER_SERVICES[name]
    role = role_of(env_specs(BLUEPRINT, service))
    port = free_port()
    api_port = free_port()
    env = {
        **process_env,
        "TICKHUB_ROLE": role,
        "PORT": str(port),
        "HOST": "0.0.0.0",
        "REDIS_URL": redis_url,
        # The feeder posts to an api; here it gets one of its own.
        "ORCHESTRATOR_BASE_URL": f"http://127.0.0.1:{api_port}/api/v1",
        "ORCHESTRATOR_API_KEY": process_env["API_KEY"],
    }
    helpers = []
    if role == "feeder":
        api = subprocess.Popen(
            host_command(),
            env={**env, "TICKHUB_ROLE": "all", "PORT": str(api_port)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        helpers.append(api)
        wait_ready(f"http://127.0.0.1:{api_port}", api)
    log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(host_command(), env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc, timeout_s=30)  # the feeder is ready once a post succeeded
        status = httpx.get(url + service["healthCheckPath"], timeout=5).status_code
        assert status == 200, (tmp_path / f"{name}.log").read_text()[-2000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        for p in (proc, *helpers):
            if p.poll() is None:
                p.kill()
                p.wait()
