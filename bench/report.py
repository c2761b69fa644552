"""Benchmark results: the markdown tables in bench/results/, the shared command-line
options, machine facts, and the one way a bench's main runs."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import trio

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def append_row(path: Path, columns: list[str], values: list[Any]) -> None:
    """Append one row to a markdown table, writing its header first if the file is new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(
            "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n", encoding="utf-8"
        )
    with path.open("a", encoding="utf-8") as f:
        f.write("| " + " | ".join(str(v) for v in values) + " |\n")


def load_parser(doc: str, *, rate: float, batch: int, timeout: float) -> argparse.ArgumentParser:
    """The options of the benches that post paced load at SSE clients (latency, fan-out)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rate", type=float, default=rate, help="ticks per second")
    parser.add_argument("--batch", type=int, default=batch, help="ticks per POST")
    parser.add_argument("--seconds", type=float, default=5.0, help="load per step")
    parser.add_argument("--mode", choices=["all", "split"], default="all")
    parser.add_argument("--per-addr", type=int, default=5000, help="clients per source address")
    parser.add_argument("--timeout", type=float, default=timeout, help="whole run's limit (s)")
    return parser


def run_bench(main: Any, args: argparse.Namespace, record: Any) -> None:
    """Run a bench's trio `main`, print its JSON line and append its rows."""
    result = trio.run(main, args)
    print(json.dumps(result))
    record(result)


def now_stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M")
