"""CSV replay: formats, bad rows, pacing, and resuming from the checkpoint exactly once."""

from __future__ import annotations

import logging
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import structlog
import trio
from structlog.testing import capture_logs

from tickhub.feeder.client import DeliveryError, RejectedError
from tickhub.feeder.replay import (
    BadRow,
    ReplayError,
    parse_speed,
    parse_ts,
    replay_csv,
)

DATA = Path(__file__).parent.parent / "data"
T0 = 1_730_425_200


class Crash(Exception):
    """Stands for the process dying in the middle of a post."""


class FakeApi:
    """Records every post and stores items by key, deduplicating like the api."""

    def __init__(self) -> None:
        self.stored: dict[str, dict] = {}
        self.posts: list[tuple[float, list[dict]]] = []
        self.crash_at: int | None = None  # crash on this post number...
        self.crash_after_storing = False  # ...after or before the api stored it
        self.reject: dict[str, str] = {}  # key -> message: a 422 naming the item

    async def post_ticks(self, source: str, items: list[dict]) -> dict:
        assert source
        bad = [
            {"index": i, "field": "ts", "message": self.reject[item["idempotencyKey"]]}
            for i, item in enumerate(items)
            if item["idempotencyKey"] in self.reject
        ]
        if bad:
            body = {"error": {"code": "VALIDATION_ERROR", "message": "bad", "details": bad}}
            raise RejectedError(422, body)
        self.posts.append((trio.current_time(), list(items)))
        if len(self.posts) == self.crash_at and not self.crash_after_storing:
            raise Crash
        new = [i for i in items if i["idempotencyKey"] not in self.stored]
        self.stored.update((i["idempotencyKey"], i) for i in new)
        if len(self.posts) == self.crash_at:
            raise Crash
        return {"accepted": len(new), "duplicates": len(items) - len(new)}

    @property
    def posted_items(self) -> list[dict]:
        return [item for _, items in self.posts for item in items]


def copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copy(DATA / name, tmp_path / name))


def write_csv(path: Path, rows: int, *, seed: int = 0, with_id: bool = False) -> Path:
    rng = random.Random(seed)
    lines = ["symbol,ts,price,volume" + (",id" if with_id else "")]
    for n in range(rows):
        symbol = rng.choice(["BTCUSDT", "ETHUSDT"])
        line = f"{symbol},{T0 + n * 0.5},{100 + rng.random():.4f},{rng.random():.3f}"
        lines.append(line + (f",trade-{n}" if with_id else ""))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("fmt", ["seconds", "ms", "iso"])
async def test_ts_formats_give_the_same_ticks(tmp_path: Path, fmt: str) -> None:
    api = FakeApi()
    report = await replay_csv(copy(f"feeder_ticks_{fmt}.csv", tmp_path), api)
    assert report.complete and report.bad_rows == 0 and report.posted == 6
    assert report.source == f"replay:feeder_ticks_{fmt}"
    assert [(i["symbol"], i["ts"], i["price"], i["idempotencyKey"]) for i in api.posted_items] == [
        ("BTCUSDT", 1730425200.0, 68000.5, "t1"),
        ("ETHUSDT", 1730425200.25, 3500.25, "t2"),
        ("BTCUSDT", 1730425201.5, 68001.0, "t3"),
        ("BTCUSDT", 1730425203.125, 67999.75, "t4"),
        ("ETHUSDT", 1730425204.999, 3501.0, "t5"),
        ("BTCUSDT", 1730425260.001, 68010.0, "t6"),
    ]


@pytest.mark.parametrize(
    ("text", "ts"),
    [
        ("1730425200", 1730425200.0),
        ("1730425200.5", 1730425200.5),
        ("1730425200500", 1730425200.5),
        ("2024-11-01T01:40:00.5Z", 1730425200.5),
        ("2024-11-01T03:40:00+02:00", 1730425200.0),
    ],
)
def test_parse_ts(text: str, ts: float) -> None:
    assert parse_ts(text) == ts


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2024-11-01T01:40:00", "needs a zone"),
        ("yesterday", "expected epoch seconds"),
        ("12345", "before 2000-01-01"),
        ("nan", "finite"),
    ],
)
def test_parse_ts_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ts(text)


def test_parse_speed() -> None:
    assert parse_speed("max") is None
    assert parse_speed("10") == 10.0
    for bad in ("0", "-1", "fast", "inf"):
        with pytest.raises(ValueError, match="speed"):
            parse_speed(bad)


BAD_LINES = [
    (3, "price 'abc'"),
    (6, "symbol 'BAD SYMBOL!'"),
    (7, "expected 4 columns, got 3"),
    (8, "before 2000-01-01"),
    (9, "needs a zone"),
    (10, "price '-1'"),
    (11, "volume '-0.5'"),
]


async def test_bad_rows_are_skipped_with_their_line_numbers(tmp_path: Path) -> None:
    api = FakeApi()
    with capture_logs() as logs:
        report = await replay_csv(copy("feeder_bad_rows.csv", tmp_path), api, on_error="skip")
    assert report.complete and report.stopped_at is None
    assert [
        (r.line, m in r.message) for r, (_, m) in zip(report.errors, BAD_LINES, strict=True)
    ] == [(line, True) for line, _ in BAD_LINES]
    assert report.bad_rows == len(BAD_LINES)
    assert [e["line"] for e in logs if e["event"] == "replay.bad_row"] == [n for n, _ in BAD_LINES]
    assert [(i["ts"], i["volume"]) for i in api.posted_items] == [
        (1730425200.0, 1.0),
        (1730425202.0, 0.0),  # an empty volume is 0, as in the api
        (1730425208.0, 2.0),
    ]


async def test_on_error_stop_ends_at_the_first_bad_row(tmp_path: Path) -> None:
    api = FakeApi()
    path = copy("feeder_bad_rows.csv", tmp_path)
    report = await replay_csv(path, api, on_error="stop")
    assert report.stopped_at is not None and report.stopped_at.line == 3
    assert "price 'abc'" in report.stopped_at.message
    assert not report.complete
    assert [i["ts"] for i in api.posted_items] == [1730425200.0]
    checkpoint = orjson.loads(path.with_name(path.name + ".checkpoint.json").read_bytes())
    assert checkpoint["line"] == 2


async def test_a_row_the_api_rejects_is_reported_by_line_and_the_rest_posted(
    tmp_path: Path,
) -> None:
    path = write_csv(tmp_path / "t.csv", 10, with_id=True)
    api = FakeApi()
    api.reject = {"trade-4": "too far in the future"}
    report = await replay_csv(path, api, batch_size=4)
    assert report.complete
    assert report.errors == [BadRow(6, "rejected by the api: ts: too far in the future")]
    assert sorted(api.stored) == sorted(f"trade-{n}" for n in range(10) if n != 4)


async def test_a_row_the_api_rejects_stops_the_run_after_the_rows_before_it(
    tmp_path: Path,
) -> None:
    path = write_csv(tmp_path / "t.csv", 10, with_id=True)
    api = FakeApi()
    api.reject = {"trade-6": "too far in the future"}
    report = await replay_csv(path, api, batch_size=4, on_error="stop")
    assert report.stopped_at == BadRow(8, "rejected by the api: ts: too far in the future")
    assert sorted(api.stored) == sorted(f"trade-{n}" for n in range(6))
    assert report.last_line == 7
    # Resuming (once the api is fixed) posts the rest, nothing twice.
    api.reject = {}
    report = await replay_csv(path, api, batch_size=4)
    assert report.complete and report.resumed_from_line == 7
    assert sorted(api.stored) == sorted(f"trade-{n}" for n in range(10))
    assert len(api.posted_items) == 10


@pytest.mark.parametrize("seed", range(12))
async def test_interrupted_and_resumed_posts_every_row_exactly_once(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    rows = rng.randint(50, 400)
    batch_size = rng.choice([1, 7, 50, 128])
    path = write_csv(tmp_path / "trades.csv", rows, seed=seed)
    expected_keys = {f"trades:{line:010d}" for line in range(2, rows + 2)}
    api = FakeApi()
    interruptions = 0
    while True:
        batches = -(-rows // batch_size)
        api.crash_at = len(api.posts) + rng.randint(1, batches) if interruptions < 3 else None
        api.crash_after_storing = rng.random() < 0.5
        try:
            report = await replay_csv(path, api, batch_size=batch_size)
        except Crash:
            interruptions += 1
            continue
        break
    assert report.complete
    # No gaps, no extras: the stored set is the file's rows...
    assert {k.rsplit(":", 1)[0] for k in api.stored} == expected_keys
    assert len(api.stored) == rows
    # ...and only a batch in flight at a crash was ever posted twice (the api dropped it).
    resent = len(api.posted_items) - rows
    assert 0 <= resent <= interruptions * batch_size


async def test_cancelled_paced_replay_resumes_without_gaps(tmp_path: Path, autojump_clock) -> None:
    path = write_csv(tmp_path / "paced.csv", 200, seed=3)
    api = FakeApi()
    for stop_after in (7.3, 11.1):  # rows are 0.5 s apart: 100 s of data at speed 4 = 25 s
        with trio.move_on_after(stop_after):
            await replay_csv(path, api, speed=4, batch_size=16, flush_ms=250)
    report = await replay_csv(path, api, speed=4, batch_size=16, flush_ms=250)
    assert report.complete
    assert len(api.stored) == 200
    assert len(api.posted_items) - 200 <= 2 * 16


async def test_checkpoint_file(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", 30)
    await replay_csv(path, FakeApi(), batch_size=8, checkpoint_path=tmp_path / "cp.json")
    checkpoint = orjson.loads((tmp_path / "cp.json").read_bytes())
    stat = path.stat()
    assert checkpoint == {
        "file": str(path.resolve()),
        "size": stat.st_size,
        "mtime": stat.st_mtime,
        "offset": stat.st_size,
        "line": 31,
    }
    assert sorted(p.name for p in await trio.Path(tmp_path).iterdir()) == ["cp.json", "t.csv"]


async def test_a_finished_replay_posts_nothing_when_run_again(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", 30)
    api = FakeApi()
    await replay_csv(path, api)
    report = await replay_csv(path, api)
    assert report.complete and report.posted == 0 and report.resumed_from_line == 31
    assert len(api.posts) == 1


async def test_a_checkpoint_for_a_changed_file_is_refused(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", 30)
    api = FakeApi()
    await replay_csv(path, api)
    with path.open("a") as f:
        f.write(f"BTCUSDT,{T0 + 100},1,1\n")
    with pytest.raises(ReplayError, match="Delete the checkpoint"):
        await replay_csv(path, api)


async def test_api_down_ends_the_run_with_the_checkpoint_intact(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", 30, with_id=True)
    api = FakeApi()
    calls = 0

    async def flaky(source: str, items: list[dict]) -> dict:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise DeliveryError("POST webhooks/ticks failed after 4 tries: 503")
        return await FakeApi.post_ticks(api, source, items)

    api.post_ticks = flaky  # type: ignore[method-assign]
    with pytest.raises(ReplayError, match="resume after line 21"):
        await replay_csv(path, api, batch_size=10)
    report = await replay_csv(path, api, batch_size=10)
    assert report.complete and report.resumed_from_line == 21
    assert len(api.stored) == 30


async def test_header_must_name_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("sym,time,price\nBTCUSDT,1730425200,1\n")
    with pytest.raises(ReplayError, match="line 1: the header lacks symbol, ts, volume"):
        await replay_csv(path, FakeApi())


async def test_columns_in_any_order_and_extra_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("\ufeffTS, Price ,venue,Symbol,volume\n1730425200,5.5,x,btcusdt,1\n")
    api = FakeApi()
    await replay_csv(path, api)
    (item,) = api.posted_items
    assert (item["symbol"], item["price"], item["ts"]) == ("BTCUSDT", 5.5, 1730425200.0)
    assert item["idempotencyKey"].startswith("t:0000000002:")


async def test_same_timestamp_trades_keep_file_order(tmp_path: Path) -> None:
    """The api breaks ties in ts by key (a candle's open is the smallest, its close the
    largest), so the derived keys of rows sharing a ts must sort in file order, line 10 after
    line 9 included."""
    path = tmp_path / "burst.csv"
    prices = [100 + n for n in range(12)]
    path.write_text("symbol,ts,price,volume\n" + "".join(f"BTCUSDT,{T0},{p},1\n" for p in prices))
    api = FakeApi()

    await replay_csv(path, api)

    by_tie_break = sorted(api.posted_items, key=lambda i: (i["ts"], i["idempotencyKey"]))
    assert [i["price"] for i in by_tie_break] == prices


async def test_start_ts_skips_earlier_rows(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", 20)
    api = FakeApi()
    report = await replay_csv(path, api, start_ts=parse_ts(str(T0 + 5)))
    assert report.skipped_before_start == 10
    assert [i["ts"] for i in api.posted_items] == [T0 + n * 0.5 for n in range(10, 20)]


async def test_replays_at_scaled_speed(tmp_path: Path, autojump_clock) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "symbol,ts,price,volume\n" + "".join(f"BTCUSDT,{T0 + s},1,1\n" for s in (0, 1, 2, 4, 10))
    )
    api = FakeApi()
    start = trio.current_time()
    await replay_csv(path, api, speed=2, batch_size=1)
    assert [round(t - start, 6) for t, _ in api.posts] == [0, 0.5, 1, 2, 5]


async def test_batches_hold_rows_at_most_flush_ms(tmp_path: Path, autojump_clock) -> None:
    path = write_csv(tmp_path / "t.csv", 40)  # a row every 0.5 s of data
    api = FakeApi()
    start = trio.current_time()
    await replay_csv(path, api, speed=1, batch_size=100, flush_ms=1200)
    for posted_at, items in api.posts:
        assert len(items) <= 3
        for item in items:
            due = start + (item["ts"] - T0)
            assert 0 <= posted_at - due <= 1.2 + 1e-9


async def test_out_of_order_rows_are_posted_at_once_and_counted(
    tmp_path: Path, autojump_clock
) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "symbol,ts,price,volume\n" + "".join(f"BTCUSDT,{T0 + s},1,1\n" for s in (0, 10, 5, 20))
    )
    api = FakeApi()
    start = trio.current_time()
    with capture_logs() as logs:
        report = await replay_csv(path, api, speed=1, batch_size=1)
    assert report.out_of_order == 1
    assert [e["line"] for e in logs if e["event"] == "replay.out_of_order"] == [4]
    assert [(round(t - start, 6), i[0]["ts"] - T0) for t, i in api.posts] == [
        (0, 0),
        (10, 10),
        (10, 5),
        (20, 20),
    ]


@pytest.fixture
def info_logs() -> Iterator[list[dict]]:
    """Captured log entries down to info (the test session logs only warnings)."""
    config = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        with capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(**config)


async def test_progress_lines(tmp_path: Path, autojump_clock, info_logs: list[dict]) -> None:
    path = write_csv(tmp_path / "t.csv", 60)  # 30 s of data
    await replay_csv(path, FakeApi(), speed=1, batch_size=5, progress_every_s=5)
    progress = [e for e in info_logs if e["event"] == "replay.progress"]
    assert 4 <= len(progress) <= 7
    assert all({"line", "percent", "rows_per_s", "eta_s"} <= set(e) for e in progress)
    assert progress[0]["rows_per_s"] == pytest.approx(2, rel=0.25)
    assert progress[-1]["percent"] > progress[0]["percent"]


async def test_an_api_rejection_stops_a_paced_replay_there(tmp_path: Path, autojump_clock) -> None:
    path = write_csv(tmp_path / "t.csv", 12, with_id=True)  # a row every 0.5 s of data
    api = FakeApi()
    api.reject = {"trade-3": "too far in the future"}
    report = await replay_csv(path, api, speed=1, batch_size=4, flush_ms=1200, on_error="stop")
    assert report.stopped_at is not None and report.stopped_at.line == 5
    assert sorted(api.stored) == ["trade-0", "trade-1", "trade-2"]
    assert report.last_line == 4


async def test_the_shipped_sample_replays_cleanly(tmp_path: Path) -> None:
    sample = Path(__file__).parent.parent.parent / "samples" / "ticks.csv"
    path = Path(shutil.copy(sample, tmp_path / sample.name))
    api = FakeApi()
    report = await replay_csv(path, api)
    assert report.complete and report.bad_rows == 0 and report.out_of_order == 0
    assert report.posted == len(api.stored) > 1000
    assert {i["symbol"] for i in api.posted_items} == {"BTCUSDT", "ETHUSDT"}
