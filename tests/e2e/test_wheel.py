"""tickhub as `pip install` gives it: a wheel built from a clean checkout (git's tracked and
unignored files, as they are in the working tree: no node_modules/, no vendor/) carries the
front-end files its build hook installed, and a process running from that installed wheel
serves a dashboard that draws. A process whose front-end files are missing says so at
start-up and in readiness, and goes on serving the API."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import CHROMIUM, Server, reset_database
from tickhub.ui import assets

ROOT = Path(__file__).resolve().parents[2]


def clean_checkout(into: Path) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout of tickhub")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not copied
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    checkout = clean_checkout(tmp_path_factory.mktemp("checkout"))
    assert not (checkout / "tickhub/ui/vendor").exists()
    out = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*build, "-w", str(out), str(checkout)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (built,) = out.glob("tickhub-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed into a directory of its own (its dependencies are this venv's)."""
    target = tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q"]
    subprocess.run([*pip, "--target", str(target), str(wheel)], check=True)
    return target


def running_from(target: Path, env: dict[str, str]) -> dict[str, str]:
    """`env` for a `python -m tickhub` that imports tickhub from `target`, not the checkout
    (no current directory on sys.path; the target before the venv's editable install)."""
    env = {**env, "PYTHONPATH": str(target), "PYTHONSAFEPATH": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import tickhub; print(tickhub.__file__)"],
        env=env,
        cwd=target.parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert Path(where.strip()).is_relative_to(target), where
    return env


def test_wheel_from_a_clean_checkout_carries_the_front_end_files(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {f"tickhub/ui/{name}" for name in assets.VENDORED} <= names
    assert "tickhub/ui/docs/init.js" in names
    assert not [n for n in names if "node_modules" in n], "npm's tree is not shipped"


@pytest.fixture
def wheel_server(
    installed: Path, process_env: dict[str, str], pg_url: str, tmp_path: Path
) -> Iterator[Server]:
    reset_database(pg_url)
    running = Server(running_from(installed, process_env), tmp_path)
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: make system-deps")
def test_installed_wheel_serves_a_dashboard_that_draws(wheel_server: Server, page) -> None:
    from tests.e2e.test_dashboard import CHART_COLUMNS, history, open_dashboard, wait_bars

    server = wheel_server
    readiness = server.client.get("/ops/health/readiness").json()
    assert readiness["checks"]["dashboard"] == "ok"
    server.post_ticks(history(("BTCUSDT",)))
    open_dashboard(page, server, "?symbol=BTCUSDT&interval=1m")
    wait_bars(page, server, "BTCUSDT")

    drawn = page.evaluate(CHART_COLUMNS)
    assert drawn["up"] >= 10 and drawn["down"] >= 10 and drawn["sma"] >= 100, drawn


def test_missing_front_end_files_are_reported_not_fatal(
    installed: Path, spawn, pg_url: str, tmp_path: Path
) -> None:
    reset_database(pg_url)
    bare = installed.parent / "site-without-vendor"
    shutil.rmtree(bare, ignore_errors=True)
    shutil.copytree(installed, bare)
    shutil.rmtree(bare / "tickhub/ui/vendor")
    env = running_from(bare, {})

    proc, url = spawn("run", "--role", "all", **env)

    readiness = httpx.get(url + "/ops/health/readiness")
    assert readiness.status_code == 200  # the API, ingest and the stream still work
    assert readiness.json()["checks"]["dashboard"] == "missing"
    assert httpx.get(url + "/api/v1/health/readiness").json()["checks"]["dashboard"] == "missing"
    assert httpx.get(url + "/").status_code == 200
    proc.terminate()
    proc.wait(timeout=10)
    (logged,) = [p.read_text() for p in tmp_path.glob("tickhub-*.log")]
    (line,) = [line for line in logged.splitlines() if "front-end files missing" in line]
    assert str(bare / "tickhub" / "ui") in line and "make ui" in line
