"""CSV replay: formats, bad rows, pacing, and resuming from the checkpoint exactly once."""

from __future__ import annotations

import logging
import math
import random
import shutil
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import orjson
import pytest
import structlog
import trio
from structlog.testing import capture_logs

from tickhub.feeder import replay
from tickhub.feeder.client import DeliveryError, RejectedError
from tickhub.feeder.replay import (
    BadRow,
    Checkpoint,
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
    """Records every post and stores items by key, deduplicating like the api.

    Scripted answers, with no clock involved: `answer_order` lists batches (numbered from 0
    by their first row, `batch_size` rows each) in the order the api answers their first post;
    a post waits for its turn, so the batches before it in the list must have been sent.
    Posts of other batches, and later posts of a batch, are answered at once. Posts of the
    batches in `held` wait for `release`.
    """

    def __init__(self, batch_size: int = 500) -> None:
        self.stored: dict[str, dict] = {}
        self.posts: list[tuple[float, list[dict]]] = []
        self.crash_at: int | None = None  # crash on this post number...
        self.crash_after_storing = False  # ...after or before the api stored it
        self.reject: dict[str, str] = {}  # key -> message: a 422 naming the item
        self.latency: Callable[[], float] | None = None  # seconds a post takes
        self.batch_size = batch_size
        self.answer_order: list[int] = []
        self.unreachable: set[int] = set()  # batches whose turn is a DeliveryError
        self.held: set[int] = set()
        self.release = trio.Event()
        self.in_flight = self.max_in_flight = 0
        self.arrived: list[tuple[float, int]] = []  # (time, first line) of every post
        self.changed = trio.Event()  # set (and replaced) when a post arrives or is answered
        self._answered: list[int] = []
        self._turn = trio.Event()

    async def post_ticks(self, source: str, items: list[dict]) -> dict:
        assert source
        self.arrived.append((trio.current_time(), line_of(items[0])))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self._notify()
        try:
            return await self._answer(items)
        finally:
            self.in_flight -= 1
            self._notify()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def _answer(self, items: list[dict]) -> dict:
        batch = (line_of(items[0]) - 2) // self.batch_size
        if batch in self.held:
            await self.release.wait()
        if batch not in self.answer_order or batch in self._answered:
            return await self._store(items)
        while self.answer_order[len(self._answered)] != batch:
            await self._turn.wait()
        try:
            if batch in self.unreachable:
                raise DeliveryError("POST webhooks/ticks failed after 4 tries: 503")
            return await self._store(items)
        finally:  # the next batch's turn comes once this one is answered
            self._answered.append(batch)
            self._turn.set()
            self._turn = trio.Event()

    async def _store(self, items: list[dict]) -> dict:
        latency = self.latency() if self.latency else 0.0
        await trio.sleep(latency / 2)  # an interruption may come before or after storing
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
        await trio.sleep(latency / 2)
        return {"accepted": len(new), "duplicates": len(items) - len(new)}

    @property
    def posted_items(self) -> list[dict]:
        return [item for _, items in self.posts for item in items]

    def stored_lines(self) -> set[int]:
        return {line_of(item) for item in list(self.stored.values())}


def line_of(item: dict) -> int:
    """The file line of a derived key (`stem:line:crc`), or of `trade-N` (write_csv's ids)."""
    key = item["idempotencyKey"]
    if key.startswith("trade-"):
        return int(key.removeprefix("trade-")) + 2
    return int(key.split(":")[1]) if ":" in key else 0


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


async def test_quoted_fields_and_stray_carriage_returns(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(
        b"symbol,ts,price,volume,id\n"
        b'"BTCUSDT","1730425200","1,5",1,a\n'  # the quotes make "1,5" one (bad) price
        b'BTCUSDT,"1730425201",2,1,b\n'
        b"BTCUSDT,17304\r25202,3,1,c\n"  # a carriage return inside a line costs only it
        b'BTCUSDT,"17304\r25203",4,1,d\n'
        b'BTCUSDT,1730425204,5,1,e"\r"\n'
        b"BTCUSDT,1730425205,6,1,f\r\n"
    )
    api = FakeApi()
    report = await replay_csv(path, api)
    assert [(r.line, r.message.split(":")[0]) for r in report.errors] == [
        (2, "price '1,5'"),
        (4, "ts '17304\\r25202'"),
        (5, "ts '17304\\r25203'"),
        (6, "not CSV"),
    ]
    assert [(i["idempotencyKey"], i["ts"]) for i in api.posted_items] == [
        ("b", 1730425201.0),
        ("f", 1730425205.0),
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
            report = await replay_csv(path, api, batch_size=batch_size, concurrency=1)
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


# --- several batches in flight ------------------------------------------------------------


class CheckpointWatch:
    """Every checkpoint write, checked before it lands: each row up to its line is stored."""

    def __init__(self) -> None:
        self.api: FakeApi | None = None
        self.not_stored: set[int] = set()  # lines that are bad rows
        self.lines: list[int] = []

    def check(self, checkpoint: Checkpoint) -> None:
        assert self.api is not None
        wanted = set(range(2, checkpoint.line + 1)) - self.not_stored
        missing = sorted(wanted - self.api.stored_lines())
        assert not missing, f"checkpoint at line {checkpoint.line}; not stored: {missing[:5]}"
        self.lines.append(checkpoint.line)


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> CheckpointWatch:
    watch = CheckpointWatch()
    save = replay._save_checkpoint

    def checked(path: Path, checkpoint: Checkpoint) -> None:
        watch.check(checkpoint)
        save(path, checkpoint)

    monkeypatch.setattr(replay, "_save_checkpoint", checked)
    return watch


def last_first(batches: int, group: int) -> list[int]:
    """Answer order: in each group of batches, the last one first, then the rest in order."""
    order = []
    for start in range(0, batches, group):
        members = list(range(start, min(start + group, batches)))
        order += [members[-1], *members[:-1]]
    return order


async def test_several_batches_are_in_flight_at_once(tmp_path: Path, watch) -> None:
    path = write_csv(tmp_path / "t.csv", 64)
    api = watch.api = FakeApi(batch_size=4)
    # The api answers each group of four batches last first: it can only do so once all four
    # were sent before the first was answered.
    api.answer_order = last_first(16, 4)
    with trio.fail_after(10):
        report = await replay_csv(path, api, batch_size=4, concurrency=4)
    assert report.complete and report.posted == 64 and len(api.stored) == 64
    assert api.max_in_flight == 4
    assert [line for _, line in api.arrived] == list(range(2, 66, 4))  # sent in file order


async def test_reading_waits_while_the_first_unanswered_batch_holds_the_window(
    tmp_path: Path,
) -> None:
    path = write_csv(tmp_path / "t.csv", 100)
    api = FakeApi(batch_size=5)
    api.held = {0}
    cp = tmp_path / "t.csv.checkpoint.json"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(replay_csv, path, api, batch_size=5, concurrency=3))
        with trio.fail_after(10):
            while len(api.arrived) < 3 or api.in_flight > 1:
                await api.changed.wait()
        await trio.sleep(0.2)  # time enough to read and send more, if it could
        # Batches 1 and 2 are answered, yet no fourth is sent while batch 0 is not, and the
        # checkpoint is not written past it.
        assert (len(api.arrived), api.in_flight, await trio.Path(cp).exists()) == (3, 1, False)
        api.release.set()
    assert len(api.stored) == 100


async def test_the_checkpoint_waits_for_a_batch_answered_after_later_ones(
    tmp_path: Path, watch
) -> None:
    path = write_csv(tmp_path / "t.csv", 32)
    api = watch.api = FakeApi(batch_size=4)
    api.answer_order = [1, 2, 3, 0, 5, 6, 7, 4]
    events: list[str] = []
    post = api.post_ticks

    async def logged(source: str, items: list[dict]) -> dict:
        batch = (line_of(items[0]) - 2) // 4
        events.append(f"sent {batch}")
        answer = await post(source, items)
        events.append(f"answered {batch}")
        return answer

    api.post_ticks = logged  # type: ignore[method-assign]
    with trio.fail_after(10):
        report = await replay_csv(path, api, batch_size=4, concurrency=4)
    assert report.complete and len(api.stored) == 32
    # Nothing is written while batch 0 is unanswered; then the checkpoint jumps past the
    # three answered before it, and again once batch 4 is.
    assert watch.lines == [17, 33]
    # The window: batch 4 is read and sent only once batch 0 is answered.
    assert events.index("sent 4") > events.index("answered 0")


async def test_a_batch_that_fails_ends_the_run_before_it(tmp_path: Path, watch) -> None:
    path = write_csv(tmp_path / "t.csv", 40)  # 10 batches of 4
    api = watch.api = FakeApi(batch_size=4)
    # With batches 0-4 sent, 4 and 1 are answered, 2 fails, 0 is answered; 3 still waits.
    api.answer_order = [4, 1, 2, 0, 3]
    api.unreachable = {2}
    with trio.fail_after(10), pytest.raises(ReplayError, match="resume after line 9"):
        await replay_csv(path, api, batch_size=4, concurrency=5)
    # Batch 0 was awaited, batch 3 cancelled, nothing after 4 sent; batch 4 is stored but
    # the checkpoint is not past it.
    assert api.stored_lines() == {*range(2, 10), *range(18, 22)}
    assert [line for _, line in api.arrived] == [2, 6, 10, 14, 18]
    assert watch.lines[-1] == 9
    api.answer_order, api.unreachable = [], set()
    report = await replay_csv(path, api, batch_size=4, concurrency=5)
    assert report.complete and report.resumed_from_line == 9
    assert report.posted == 32 and report.duplicates == 4
    assert len(api.stored) == 40


async def test_a_stop_is_at_the_first_rejected_row_in_file_order_though_later_rows_are_stored(
    tmp_path: Path, watch
) -> None:
    path = write_csv(tmp_path / "t.csv", 16, with_id=True)  # trade-N on line N + 2
    api = watch.api = FakeApi(batch_size=4)
    api.reject = {"trade-6": "too far in the future", "trade-9": "too far in the future"}
    # Batches 3 and 2 are answered (2 with a 422) before batch 1's 422 and batch 0.
    api.answer_order = [3, 2, 1, 0]
    watch.not_stored = {8, 11}
    with trio.fail_after(10):
        report = await replay_csv(path, api, batch_size=4, concurrency=4, on_error="stop")
    rejected = "rejected by the api: ts: too far in the future"
    assert report.stopped_at == BadRow(8, rejected)
    assert report.errors == [BadRow(8, rejected), BadRow(11, rejected)]
    assert report.last_line == 7  # just before the first bad row
    # Rows past the stop were posted before it was known: stored, and counted as such.
    assert sorted(api.stored_lines()) == [2, 3, 4, 5, 6, 7, 10, 14, 15, 16, 17]
    assert report.posted == 11 and report.posted_past_stop == 5
    # Resumed once the api takes them: the rest is stored, the rows past the stop again.
    api.reject, api.answer_order = {}, []
    resumed = await replay_csv(path, api, batch_size=4, concurrency=4, on_error="stop")
    assert resumed.complete and resumed.resumed_from_line == 7
    assert resumed.duplicates == report.posted_past_stop
    assert len(api.stored) == 16


async def test_a_bad_line_stops_the_run_once_the_batches_before_it_are_answered(
    tmp_path: Path, watch
) -> None:
    path = tmp_path / "t.csv"
    good = [f"BTCUSDT,{T0 + n},1,1\n" for n in range(15)]
    path.write_text("symbol,ts,price,volume\n" + "".join(good[:10]) + "oops\n" + "".join(good[10:]))
    api = watch.api = FakeApi(batch_size=4)
    api.answer_order = [2, 1, 0]  # batch 2: the two rows before the bad line
    with trio.fail_after(10):
        report = await replay_csv(path, api, batch_size=4, concurrency=4, on_error="stop")
    assert report.stopped_at is not None and report.stopped_at.line == 12
    assert report.last_line == 11 and report.posted == 10 and report.posted_past_stop == 0
    assert api.stored_lines() == set(range(2, 12))


async def test_a_paced_replay_keeps_its_timing_while_the_api_answers_late(
    tmp_path: Path, autojump_clock
) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "symbol,ts,price,volume\n" + "".join(f"BTCUSDT,{T0 + s},1,1\n" for s in range(12))
    )
    api = FakeApi(batch_size=1)
    api.answer_order = last_first(12, 4)  # each row answered only once three more were sent
    start = trio.current_time()
    report = await replay_csv(path, api, speed=1, batch_size=1, concurrency=4)
    assert report.complete and len(api.stored) == 12
    assert [round(t - start, 6) for t, _ in api.arrived] == list(range(12))


@pytest.mark.parametrize("seed", range(12))
async def test_interrupted_concurrent_replays_store_every_row_once(
    tmp_path: Path, autojump_clock, watch, seed: int
) -> None:
    rng = random.Random(seed)
    rows = rng.randint(50, 400)
    batch_size = rng.choice([1, 7, 50])
    concurrency = rng.choice([2, 4, 8])
    path = write_csv(tmp_path / "trades.csv", rows, seed=seed)
    api = watch.api = FakeApi()
    api.latency = lambda: rng.uniform(0.01, 0.2)  # batches answered in any order
    interruptions = 0
    while True:
        batches = -(-rows // batch_size)
        api.crash_at = None
        cancel_after = math.inf
        if interruptions < 4:
            if rng.random() < 0.5:
                api.crash_at = len(api.posts) + rng.randint(1, batches)
                api.crash_after_storing = rng.random() < 0.5
            else:
                cancel_after = rng.uniform(0.01, 0.1 * batches / concurrency)
        try:
            with trio.move_on_after(cancel_after) as scope:
                report = await replay_csv(path, api, batch_size=batch_size, concurrency=concurrency)
        except Crash:
            interruptions += 1
            continue
        if scope.cancelled_caught:
            interruptions += 1
            continue
        break
    assert report.complete
    assert api.stored_lines() == set(range(2, rows + 2)) and len(api.stored) == rows
    assert api.max_in_flight <= concurrency
    # Only the batches in flight at an interruption were posted twice.
    resent = len(api.posted_items) - rows
    assert 0 <= resent <= interruptions * concurrency * batch_size
    assert watch.lines and watch.lines[-1] == rows + 1


def test_the_command_defaults_to_the_measured_concurrency() -> None:
    from tickhub.cli import replay as command

    (option,) = [p for p in command.params if p.name == "concurrency"]
    assert option.default == replay.DEFAULT_CONCURRENCY
