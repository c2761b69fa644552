"""Machine facts a result is read with (cores, memory, load, versions) and the limits a large
bench needs raised (open files, ephemeral ports)."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
from typing import Any


def machine() -> dict[str, Any]:
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "mem_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "postgres": postgres_version(),
    }


def postgres_version() -> str:
    from tickhub.sql.embedded import bin_dir

    try:
        out = subprocess.run(
            [str(bin_dir() / "postgres"), "--version"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip().rsplit(" ", 1)[-1]
    except Exception as exc:  # pragma: no cover - informative only
        return f"unknown ({exc})"


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (soft, hard) now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def port_range() -> tuple[int, int]:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        lo, hi = f.read().split()
    return int(lo), int(hi)


def process_usage(pid: int) -> tuple[float, int, int]:
    """RSS in MiB, open fds, and how many of them are sockets."""
    rss_kb = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    fds = sockets = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        fds += 1
        try:
            sockets += os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:")
        except OSError:
            pass  # closed between listdir and readlink
    return rss_kb / 1024, fds, sockets
