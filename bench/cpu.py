"""CPU accounting from /proc: a process tree, the whole machine, and a meter that measures
both over a window (benches report CPU beside every rate)."""

from __future__ import annotations

import os
import time

import attrs
import psutil

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children, live and exited: a PostgreSQL server is a
    postmaster whose backends do the work (the pool's backends live through a bench; those
    that end are in the postmaster's children times)."""
    parent = psutil.Process(pid)
    own = parent.cpu_times()
    total = own.user + own.system + own.children_user + own.children_system
    for child in parent.children():
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies over all cores since boot."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    total = sum(parts[:8])
    return total - idle, total


def background_busy(seconds: float = 1.0) -> float:
    """Share of the machine busy over `seconds` while the bench itself idles: other work on
    this shared machine, which the figures of the step that follows compete with."""
    b0, t0 = machine_cpu()
    time.sleep(seconds)
    b1, t1 = machine_cpu()
    return round((b1 - b0) / max(1.0, t1 - t0), 2)


@attrs.define
class CpuMeter:
    """CPU used between `start()` and `stop()`: per named pid (in cores) and the machine."""

    pids: dict[str, int]
    _t0: float = 0.0
    _cpu0: dict[str, float] = attrs.field(factory=dict)
    _m0: tuple[float, float] = (0.0, 0.0)
    result: dict[str, float] = attrs.field(factory=dict)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._cpu0 = {k: proc_cpu_s(p) for k, p in self.pids.items()}
        self._m0 = machine_cpu()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._t0
        busy, total = machine_cpu()
        self.result = {
            f"{k}_cores": round((proc_cpu_s(p) - self._cpu0[k]) / wall, 2)
            for k, p in self.pids.items()
        }
        self.result["machine_busy"] = round((busy - self._m0[0]) / max(1.0, total - self._m0[1]), 2)
        return self.result
