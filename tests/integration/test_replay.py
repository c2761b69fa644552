"""`tickhub replay` against a real tickhub: several batches in flight, stopped with Ctrl-C in
the middle and run again, every row of the file stored exactly once and the candles equal to
a recomputation from the stored ticks."""

from __future__ import annotations

import signal
import time
import zlib
from functools import partial
from pathlib import Path
from subprocess import DEVNULL

import orjson
import trio

from tests.conftest import API_KEY, tickhub_command
from tests.consistency import differences

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT")
ROWS = 20_000


def write_csv(path: Path) -> list[str]:
    """Recent trades, a few sharing a timestamp; the keys replay derives for them."""
    base = time.time() - 3600
    lines = [
        f"{SYMBOLS[n % 4]},{base + (n // 3) * 0.1:.3f},{100 + n % 89 / 100},{1 + n % 5}"
        for n in range(ROWS)
    ]
    path.write_text("symbol,ts,price,volume\n" + "\n".join(lines) + "\n")
    return [
        f"{path.stem}:{n:010d}:{zlib.crc32(line.encode()):08x}"
        for n, line in enumerate(lines, start=2)
    ]


async def test_a_replay_stopped_midway_and_run_again_stores_every_row_once(
    tickhub, db, process_env, tmp_path
):
    path = tmp_path / "trades.csv"
    keys = write_csv(path)
    checkpoint = trio.Path(tmp_path / "trades.csv.checkpoint.json")
    env = {
        **process_env,
        "ORCHESTRATOR_BASE_URL": tickhub.url + "/api/v1",
        "ORCHESTRATOR_API_KEY": API_KEY,
        "LOG_LEVEL": "warning",
    }
    command = [*tickhub_command(), "replay", str(path), "--batch-size", "250", "--concurrency", "4"]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            first = await nursery.start(
                partial(trio.run_process, command, env=env, check=False, stdout=DEVNULL)
            )
            while True:  # until a first run of batches is acknowledged
                if await checkpoint.exists():
                    break
                await trio.sleep(0.02)
            first.send_signal(signal.SIGINT)
        assert first.returncode == 130
        line = orjson.loads(await checkpoint.read_bytes())["line"]
        assert 2 <= line < ROWS + 1
        stored = {r[0] for r in await db.fetch("SELECT idem_key FROM ticks_history")}
        assert set(keys[: line - 1]) <= stored  # nothing the checkpoint covers is missing

        second = await trio.run_process(command, env=env, capture_stdout=True)
    assert f"checkpoint {checkpoint} at line {ROWS + 1}" in second.stdout.decode()
    rows = await db.fetch("SELECT idem_key, count(*) AS n FROM ticks_history GROUP BY 1")
    assert sorted(r["idem_key"] for r in rows) == sorted(keys)
    assert {r["n"] for r in rows} == {1}
    assert await differences(db) == []
