"""CSV replay: post a file of ticks to the api in order, at real, scaled or full speed, resumably.

The file: a header naming the columns `symbol`, `ts`, `price`, `volume` and optionally `id`
(any order; other columns are ignored), then one tick per line, UTF-8. `ts` is epoch seconds,
epoch milliseconds (a number above 1e11, the api's rule) or ISO-8601 with a zone. Rows are
checked as the api checks items, so a bad row costs only itself: it is reported with its line
number, then skipped or the run stops there (`on_error`). A row the api still rejects (a 422
naming the item) is treated the same way.

Order: the file is streamed in file order, never loaded whole, so a replay of any size runs
in constant memory and its checkpoint is a byte offset; the input must therefore be sorted by
`ts`. A row older than the row before it is still posted, at once (candles do not depend on
arrival order, ARCHITECTURE §4.3), and is counted and logged as out of order.

Pacing: with `speed` s, a row is posted (ts - ts0) / s seconds after the first row of this run;
`speed=None` posts as fast as the api acknowledges. A batch holds at most `batch_size` rows and
no row waits more than `flush_ms` for its batch.

Several batches in flight: up to `concurrency` batches are posted at once, counted from the
first one not yet acknowledged, while the next is read; reading waits for room, so at most that
many batches are held and posted again after an interruption. Batches in flight together may
reach the api in any order, which changes nothing stored (candles do not depend on arrival
order). It is what makes `speed=None` as fast as the api; a paced replay keeps its timing
either way, and is spared waiting on a slow answer.

Exactly once: a tick's idempotency key is its `id` column, or else `{file stem}:{line}:{crc32
of the line}` with the line number zero-padded to ten digits, so a resumed replay re-posts the
same keys and the api counts each once. The api breaks ties in `ts` by key, so the padding is
what keeps same-timestamp trades in file order (unpadded, line 10 sorted before line 9 and a
candle's open or close came from the wrong trade). The checkpoint `{file, size, mtime, offset,
line}` moves to the end of the longest run of batches, from the first, that are all
acknowledged: a batch acknowledged before one sent earlier waits for it. It is written
atomically (temporary file, fsync, rename) by one task as that run grows (moves made while a
write is under way are written together next), and once more when the run ends, fails or is
interrupted; a later run resumes after `line`. The batches that were in flight when a run was
interrupted, or acknowledged past its last write, are posted again, as duplicates the api
ignores. A checkpoint whose file has changed (size or mtime) is refused: delete it to start
over. Inserting or deleting lines in a file without an `id` column re-keys the rows after the
edit.

The first thing to go wrong, in file order, decides how a run ends:
- A batch the api cannot take (unreachable or unavailable through every retry, or a 4xx other
  than a 422 naming items) raises ReplayError: the batches sent before it are awaited, those
  after it cancelled (the api may have stored them: they are posted again on resume), and the
  checkpoint is left before the first batch not acknowledged.
- With `on_error='stop'`, a bad row, in the file or named by a 422, stops the run there, even
  when batches after it were already posted: those finish, their rows are stored, counted in
  `posted` and in `posted_past_stop`, and posted again by the resumed run, which the api counts
  as duplicates. The checkpoint stays before the bad row. Bad rows met in those later batches
  are reported too (`bad_rows`, `errors` keep file order), so a resumed run reports them again.

A replay resumed from a checkpoint written with the unpadded keys goes on after its line as
usual (the rows before it are not posted again), but the batch that was in flight when that
run stopped is posted again under padded keys, which the api takes for new ticks: up to one
batch is stored twice. To stay exact, finish such a replay with the version that began it.
"""

from __future__ import annotations

import bisect
import csv
import math
import os
import zlib
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

import attrs
import cattrs
import orjson
import structlog
import trio

from tickhub.feeder.client import DeliveryError, RejectedError, TickPoster
from tickhub.symbols import SYMBOL_RULE, normal_symbol

log = structlog.get_logger("feeder", actor="replay")

_COLUMNS = ("symbol", "ts", "price", "volume")
# The api refuses ticks before 2000-01-01 and reads numbers above 1e11 as milliseconds.
_MIN_TS = 946_684_800.0
_MS_ABOVE = 1e11
# The report keeps this many bad rows in full (all are counted and logged).
_KEEP_ERRORS = 100
# Out-of-order rows logged one by one before the report's count has to do.
_LOG_OUT_OF_ORDER = 10
# Batches in flight at once by default. bench/replay.py against `run --role all` on one host
# (docs/performance.md §3.6): 4 did as well as 1 or better in every round, 2 to 8 are within
# the noise of one another, 16 is lower; 4 leaves room for an api a round trip away. More only
# adds rows held, and posted again after a crash.
DEFAULT_CONCURRENCY = 4


class ReplayError(Exception):
    """The replay cannot start or go on (header, checkpoint, api); the checkpoint is intact."""


class _Refused(Exception):
    """The api refused a batch with a 4xx that names no item: retrying cannot fix it."""

    def __init__(self, first_line: int, last_line: int, error: RejectedError) -> None:
        super().__init__(f"lines {first_line}-{last_line}: {error}")
        self.first_line, self.last_line, self.error = first_line, last_line, error


@attrs.frozen
class BadRow:
    line: int
    message: str
    end: int = attrs.field(default=0, eq=False, repr=False)  # byte offset just after the line


@attrs.frozen
class Row:
    line: int
    end: int  # byte offset just after the line
    ts: float
    item: dict[str, Any]


@attrs.frozen
class Checkpoint:
    file: str
    size: int
    mtime: float
    offset: int
    line: int


@attrs.define
class ReplayReport:
    """What a replay did. `stopped_at` is set when `on_error='stop'` ended it at a bad row;
    `posted_past_stop` of the rows posted lie after it (stored; posted again on resume)."""

    path: str
    source: str
    checkpoint: str
    resumed_from_line: int | None = None
    posted: int = 0  # rows the api acknowledged in this run
    accepted: int = 0
    duplicates: int = 0
    bad_rows: int = 0
    errors: list[BadRow] = attrs.Factory(list)  # the first _KEEP_ERRORS of them
    skipped_before_start: int = 0
    out_of_order: int = 0
    last_line: int = 1  # the last line the checkpoint covers
    stopped_at: BadRow | None = None
    posted_past_stop: int = 0
    complete: bool = False


def parse_ts(text: str) -> float:
    """Epoch seconds from seconds, milliseconds (above 1e11) or ISO-8601 with a zone."""
    value = text.strip()
    try:
        ts = float(value)
    except ValueError:
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"ts {value!r}: expected epoch seconds, milliseconds or ISO-8601"
            ) from None
        if when.tzinfo is None:
            raise ValueError(f"ts {value!r}: an ISO-8601 time needs a zone (Z or +hh:mm)") from None
        ts = when.timestamp()
    else:
        if not math.isfinite(ts):
            raise ValueError(f"ts {value!r}: expected a finite number")
        if ts > _MS_ABOVE:
            ts /= 1000
    if ts < _MIN_TS:
        raise ValueError(f"ts {value!r}: before 2000-01-01")
    return ts


def parse_speed(text: str) -> float | None:
    """`--speed`: a factor above 0 (1 = real time), or `max` (None)."""
    if text.strip().lower() == "max":
        return None
    try:
        speed = float(text)
    except ValueError:
        speed = math.nan
    if not (speed > 0 and math.isfinite(speed)):
        raise ValueError(f"speed {text!r}: expected a factor above 0 or 'max'")
    return speed


def _number(fields: list[str], col: int | None, name: str, *, positive: bool) -> float:
    raw = fields[col].strip() if col is not None else ""
    if not raw and not positive:
        return 0.0  # the api's default volume
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "above 0" if positive else "of at least 0"
        raise ValueError(f"{name} {raw!r}: expected a number {bound}")
    return value


class _Reader:
    """The CSV's rows from a byte offset on. Blocking file I/O: call it in a worker thread."""

    def __init__(self, path: Path, file: BinaryIO) -> None:
        self._file = file
        self._stem = path.stem
        header = file.readline()
        self.offset, self.line = len(header), 1
        try:
            names = [n.strip().lower() for n in next(csv.reader([header.decode("utf-8-sig")]))]
        except (UnicodeDecodeError, StopIteration):
            names = []
        missing = [c for c in _COLUMNS if c not in names]
        if missing:
            raise ReplayError(
                f"{path} line 1: the header lacks {', '.join(missing)}"
                " (expected symbol,ts,price,volume[,id])"
            )
        self._cols = {c: names.index(c) for c in (*_COLUMNS, "id") if c in names}
        self._width = max(self._cols.values()) + 1

    def close(self) -> None:
        self._file.close()

    def seek(self, offset: int, line: int) -> None:
        self._file.seek(offset)
        self.offset, self.line = offset, line

    def read(self, n: int) -> list[Row | BadRow]:
        """Up to `n` rows (blank lines skipped); an empty list at the end of the file."""
        out: list[Row | BadRow] = []
        while len(out) < n:
            raw = self._file.readline()
            if not raw:
                break
            self.offset += len(raw)
            self.line += 1
            entry = self._parse(raw)
            if entry is not None:
                out.append(entry)
        return out

    def _parse(self, raw: bytes) -> Row | BadRow | None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return BadRow(self.line, "not UTF-8", self.offset)
        if not text.strip():
            return None
        if '"' not in text:  # most lines: a split reads them as csv does, at a third of the cost
            fields = text.rstrip("\r\n").split(",")
        else:
            try:
                fields = next(csv.reader([text]))
            except csv.Error as exc:  # e.g. a lone carriage return inside the line
                return BadRow(self.line, f"not CSV: {exc}", self.offset)
        if len(fields) < self._width:
            return BadRow(
                self.line, f"expected {self._width} columns, got {len(fields)}", self.offset
            )
        cols = self._cols
        try:
            raw_symbol = fields[cols["symbol"]].strip()
            symbol = normal_symbol(raw_symbol)
            if symbol is None:
                raise ValueError(f"symbol {raw_symbol.upper()!r}: {SYMBOL_RULE}")
            ts = parse_ts(fields[cols["ts"]])
            price = _number(fields, cols["price"], "price", positive=True)
            volume = _number(fields, cols["volume"], "volume", positive=False)
        except ValueError as exc:
            return BadRow(self.line, str(exc), self.offset)
        key = fields[cols["id"]].strip() if "id" in cols else ""
        if not key:
            crc = zlib.crc32(raw.rstrip(b"\r\n"))
            key = f"{self._stem}:{self.line:010d}:{crc:08x}"
        item = {"symbol": symbol, "price": price, "ts": ts, "volume": volume, "idempotencyKey": key}
        return Row(self.line, self.offset, ts, item)


@attrs.frozen
class _Opened:
    reader: _Reader
    file: str
    stat: os.stat_result
    checkpoint: Checkpoint | None


def _open(path: Path, checkpoint_path: Path) -> _Opened:
    """Open the CSV and position it after the checkpoint, if there is a valid one."""
    file = path.open("rb")
    try:
        resolved = str(path.resolve())
        stat = os.fstat(file.fileno())
        reader = _Reader(path, file)
        checkpoint = _load_checkpoint(checkpoint_path)
        if checkpoint is not None:
            same = (checkpoint.file, checkpoint.size, checkpoint.mtime) == (
                resolved,
                stat.st_size,
                stat.st_mtime,
            )
            if not same or not reader.offset <= checkpoint.offset <= stat.st_size:
                raise ReplayError(
                    f"{checkpoint_path} is for {checkpoint.file} as it was (size"
                    f" {checkpoint.size}, mtime {checkpoint.mtime}); {path} is not that file"
                    " now. Delete the checkpoint to replay from the start (the api ignores"
                    " rows it already has)."
                )
            reader.seek(checkpoint.offset, checkpoint.line)
    except BaseException:
        file.close()
        raise
    return _Opened(reader, resolved, stat, checkpoint)


def _load_checkpoint(path: Path) -> Checkpoint | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return cattrs.structure(orjson.loads(data), Checkpoint)
    except (orjson.JSONDecodeError, cattrs.BaseValidationError, TypeError, KeyError) as exc:
        raise ReplayError(f"{path} is not a replay checkpoint ({exc}); delete it") from None


def _save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write temp, fsync, rename: a reader sees the old checkpoint or the new, never half."""
    tmp = path.with_name(f"{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(orjson.dumps(attrs.asdict(checkpoint)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@attrs.define
class _Progress:
    """A structlog line every `every_s`: position, rate and ETA (from the bytes left)."""

    every_s: float
    size: int
    start_offset: int
    started: float = attrs.field(factory=trio.current_time)
    last_at: float = attrs.field(init=False)
    last_posted: int = 0

    def __attrs_post_init__(self) -> None:
        self.last_at = self.started

    def maybe_log(self, report: ReplayReport, offset: int) -> None:
        now = trio.current_time()
        if now - self.last_at < self.every_s:
            return
        bytes_per_s = (offset - self.start_offset) / max(now - self.started, 1e-9)
        log.info(
            "replay.progress",
            source=report.source,
            line=report.last_line,
            percent=round(100 * offset / max(self.size, 1), 1),
            rows_per_s=round((report.posted - self.last_posted) / (now - self.last_at), 1),
            eta_s=round((self.size - offset) / bytes_per_s) if bytes_per_s > 0 else None,
        )
        self.last_at, self.last_posted = now, report.posted


Position = tuple[int, int]  # (byte offset, line) just after a line


@attrs.define
class _Window:
    """The batches of a run, numbered in file order: which may be sent, how far the
    checkpoint may move, and what ended the run.

    `position` is the end of the longest run of acknowledged batches from the first; a batch
    acknowledged before its predecessors waits in `early`. The first batch in file order that
    ends the run (a stop at a bad row, or a failure) caps that run: nothing after it moves the
    checkpoint. Batches sent and not yet in the run are open; at most `size` are, which bounds
    the rows held and the rows posted again after an interruption.
    """

    size: int
    position: Position
    sent: int = 0
    done: int = 0  # batches 0 .. done-1 are acknowledged: the checkpoint may cover them
    # Acknowledged before a predecessor: seq -> (where the checkpoint may go, rows posted).
    early: dict[int, tuple[Position | None, int]] = attrs.Factory(dict)
    ending: tuple[int, BadRow | Exception] | None = None
    _changed: trio.Event = attrs.Factory(trio.Event)

    @property
    def ended(self) -> bool:
        return self.ending is not None

    def open(self) -> int:
        self.sent += 1
        return self.sent - 1

    def acknowledge(
        self, seq: int, end: Position | None, rows: int, stop: BadRow | None = None
    ) -> None:
        """Batch `seq` is answered: the checkpoint may go to `end` (None: it may not move
        past the batch before) once every earlier batch is; `stop` ends the run at it."""
        if stop is not None:
            self.end_at(seq, stop)
        self.early[seq] = (end, rows)
        while self.done in self.early and not self._past_end(self.done):
            end, _ = self.early.pop(self.done)
            if end is not None:
                self.position = end
            self.done += 1
        self._notify()

    def end_at(self, seq: int, why: BadRow | Exception) -> None:
        """The run ends at batch `seq` (for a failure, before it), unless it ended earlier."""
        if self.ending is None or seq < self.ending[0]:
            self.ending = (seq, why)
        self._notify()

    def rows_past_end(self) -> int:
        """Rows acknowledged in batches after the one that ended the run."""
        return sum(rows for seq, (_, rows) in self.early.items() if self._past_end(seq))

    async def wait_room(self) -> None:
        """Until a batch may be sent (fewer than `size` open) or the run has ended."""
        while self.sent - self.done >= self.size and not self.ended:
            await self._changed.wait()

    async def wait_moved(self, line: int) -> None:
        """Until the checkpoint may go past `line`."""
        while self.position[1] <= line:
            await self._changed.wait()

    def _past_end(self, seq: int) -> bool:
        return self.ending is not None and seq > self.ending[0]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


@attrs.define
class _Replay:
    path: Path
    file: str  # the resolved path, as the checkpoint names it
    client: TickPoster
    speed: float | None
    start_ts: float | None
    on_error: str
    checkpoint_path: Path
    batch_size: int
    flush_s: float
    report: ReplayReport
    reader: _Reader
    stat: os.stat_result
    progress: _Progress
    window: _Window
    pending: list[Row] = attrs.Factory(list)
    flush_at: float = math.inf
    # Just after the last row taken from the file (posted or skipped).
    consumed: Position = (0, 1)
    last_ts: float = -math.inf
    t0: float | None = None
    ts0: float = 0.0
    # The batches being posted, by seq, so a failure can cancel those after it.
    sending: dict[int, trio.CancelScope] = attrs.Factory(dict)
    senders: trio.Nursery | None = None

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep_checkpoint)
                async with trio.open_nursery() as senders:
                    self.senders = senders
                    try:
                        await self._read()
                    except Exception as exc:  # a read error ends the run after what was sent
                        self._fail(self.window.sent, exc)
                nursery.cancel_scope.cancel()
        finally:
            # Interrupted or not, the checkpoint ends where the acknowledged batches do. One
            # small write, done in place: a thread could be cancelled and go on writing.
            if self.window.position[1] > self.report.last_line:
                _save_checkpoint(self.checkpoint_path, self._checkpoint(self.window.position))
                self.report.last_line = self.window.position[1]
        self._conclude()

    async def _read(self) -> None:
        self.consumed = (self.reader.offset, self.reader.line)
        while entries := await trio.to_thread.run_sync(self.reader.read, self.batch_size):
            for entry in entries:
                if isinstance(entry, BadRow):
                    self._bad(entry)
                    if self.on_error == "stop":
                        await self._flush()
                        self.window.end_at(self.window.sent, entry)  # after every batch sent
                        return
                elif self.start_ts is not None and entry.ts < self.start_ts:
                    self.report.skipped_before_start += 1
                else:
                    await self._take(entry)
                if self.window.ended:
                    return
                self.consumed = (entry.end, entry.line)
        # Trailing skipped or blank lines are covered too, so a finished replay's checkpoint
        # is at the end of the file and a rerun posts nothing.
        self.consumed = (self.reader.offset, self.reader.line)
        await self._flush()

    async def _take(self, row: Row) -> None:
        if row.ts < self.last_ts:
            self.report.out_of_order += 1
            if self.report.out_of_order <= _LOG_OUT_OF_ORDER:
                log.warning("replay.out_of_order", line=row.line, ts=row.ts, after_ts=self.last_ts)
        else:
            self.last_ts = row.ts
        if self.speed is not None:
            if self.t0 is None:
                self.t0, self.ts0 = trio.current_time(), row.ts
            # An out-of-order row goes at once: it is due no later than the row before it.
            due = self.t0 + (self.last_ts - self.ts0) / self.speed
            if self.pending and due > self.flush_at:
                await trio.sleep_until(self.flush_at)
                await self._flush()
                if self.window.ended:
                    return
            await trio.sleep_until(due)
        if not self.pending:
            self.flush_at = trio.current_time() + self.flush_s
        self.pending.append(row)
        if len(self.pending) >= self.batch_size:
            self.consumed = (row.end, row.line)
            await self._flush()

    def _bad(self, row: BadRow) -> None:
        self.report.bad_rows += 1
        errors = self.report.errors
        # Batches answer in any order: keep the first _KEEP_ERRORS in file order.
        bisect.insort(errors, row, key=lambda r: r.line)
        del errors[_KEEP_ERRORS:]
        log.warning("replay.bad_row", path=str(self.path), line=row.line, error=row.message)

    async def _flush(self) -> None:
        """Hand the pending rows, and the checkpoint just after them, to a batch of their own
        (without rows, it only moves the checkpoint past skipped lines, in its turn)."""
        rows, self.pending, self.flush_at = self.pending, [], math.inf
        await self.window.wait_room()
        if self.window.ended:
            return
        seq = self.window.open()
        if rows:
            assert self.senders is not None
            self.senders.start_soon(self._send, seq, rows, self.consumed)
        else:
            self.window.acknowledge(seq, self.consumed, 0)

    async def _send(self, seq: int, batch: list[Row], end: Position) -> None:
        with trio.CancelScope() as scope:
            self.sending[seq] = scope
            try:
                posted, position, stop = await self._post(batch, end)
            except Exception as exc:  # the first failure in file order ends the run there
                self._fail(seq, exc)
            else:
                self.window.acknowledge(seq, position, posted, stop)
                self.progress.maybe_log(self.report, self.consumed[0])
            finally:
                del self.sending[seq]

    async def _post(
        self, batch: list[Row], end: Position
    ) -> tuple[int, Position | None, BadRow | None]:
        """Post a batch until the api takes it, without the rows a 422 names: the rows
        posted, where the checkpoint may go after them and, with `on_error='stop'`, the row
        the run stops at."""
        position: Position | None = end
        stop: BadRow | None = None
        while batch:
            try:
                answer = await self.client.post_ticks(self.report.source, [r.item for r in batch])
            except RejectedError as exc:
                batch, position, stop = self._without_rejected(batch, exc, position, stop)
                continue
            self.report.posted += len(batch)
            self.report.accepted += int(answer.get("accepted", 0))
            self.report.duplicates += int(answer.get("duplicates", 0))
            break
        return len(batch), position, stop

    def _without_rejected(
        self,
        batch: list[Row],
        exc: RejectedError,
        position: Position | None,
        stop: BadRow | None,
    ) -> tuple[list[Row], Position | None, BadRow | None]:
        """The rows to post again after a 422 naming bad items, the checkpoint then, and the
        row the run stops at."""
        bad = {i: m for i, m in exc.item_errors().items() if 0 <= i < len(batch)}
        if exc.status != 422 or not bad:
            raise _Refused(batch[0].line, batch[-1].line, exc)
        for i, message in sorted(bad.items()):
            self._bad(BadRow(batch[i].line, f"rejected by the api: {message}"))
        if self.on_error == "skip":
            return [r for i, r in enumerate(batch) if i not in bad], position, stop
        first = min(bad)
        keep = batch[:first]
        position = (keep[-1].end, keep[-1].line) if keep else None
        return keep, position, BadRow(batch[first].line, f"rejected by the api: {bad[first]}")

    def _fail(self, seq: int, exc: Exception) -> None:
        """Batch `seq` failed: nothing after it may move the checkpoint, so the batches after
        it stop waiting; those before it go on (they may still move it)."""
        self.window.end_at(seq, exc)
        for later, scope in self.sending.items():
            if later > seq:
                scope.cancel()

    async def _keep_checkpoint(self) -> None:
        """Write the checkpoint whenever the acknowledged batches reach further."""
        while True:
            await self.window.wait_moved(self.report.last_line)
            try:
                await self._save(self.window.position)
            except Exception as exc:  # the run cannot record its progress: end it here
                self._fail(self.window.done, exc)
                return

    async def _save(self, position: Position) -> None:
        checkpoint = self._checkpoint(position)
        await trio.to_thread.run_sync(_save_checkpoint, self.checkpoint_path, checkpoint)
        self.report.last_line = checkpoint.line

    def _checkpoint(self, position: Position) -> Checkpoint:
        offset, line = position
        return Checkpoint(self.file, self.stat.st_size, self.stat.st_mtime, offset, line)

    def _conclude(self) -> None:
        if self.window.ending is None:
            self.report.complete = True
            return
        _, why = self.window.ending
        if isinstance(why, BadRow):
            self.report.stopped_at = why
            self.report.posted_past_stop = self.window.rows_past_end()
            return
        if isinstance(why, DeliveryError):
            raise ReplayError(
                f"{why}; run again to resume after line {self.report.last_line}"
            ) from why
        if isinstance(why, _Refused):
            raise ReplayError(
                f"the api rejected lines {why.first_line}-{why.last_line} ({why.error});"
                f" the checkpoint is at line {self.report.last_line}"
            ) from why.error
        raise why


def default_checkpoint_path(path: Path) -> Path:
    """`ticks.csv` -> `ticks.csv.checkpoint.json`, next to the file."""
    return path.with_name(f"{path.name}.checkpoint.json")


async def replay_csv(
    path: str | os.PathLike[str],
    client: TickPoster,
    *,
    speed: float | None = None,
    start_ts: float | None = None,
    on_error: Literal["skip", "stop"] = "skip",
    checkpoint_path: str | os.PathLike[str] | None = None,
    source: str | None = None,
    batch_size: int = 500,
    flush_ms: int = 500,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress_every_s: float = 5.0,
) -> ReplayReport:
    """Post the ticks of a CSV file through `client`; see the module docstring.

    `speed` None replays as fast as the api acknowledges; `start_ts` skips earlier rows;
    `source` defaults to `replay:<file stem>`; `concurrency` batches may be in flight at
    once. Raises ReplayError when it cannot go on (the
    checkpoint then says where to resume); a bad row with `on_error='stop'` returns a report
    with `stopped_at` set.
    """
    if speed is not None and not speed > 0:
        raise ValueError(f"speed {speed!r}: expected a factor above 0, or None for max")
    if on_error not in ("skip", "stop"):
        raise ValueError(f"on_error {on_error!r}: expected 'skip' or 'stop'")
    if concurrency < 1:
        raise ValueError(f"concurrency {concurrency!r}: expected at least 1")
    csv_path = Path(path)
    cp_path = Path(checkpoint_path) if checkpoint_path else default_checkpoint_path(csv_path)
    opened = await trio.to_thread.run_sync(_open, csv_path, cp_path)
    checkpoint = opened.checkpoint
    report = ReplayReport(
        path=str(csv_path),
        source=source or f"replay:{csv_path.stem}",
        checkpoint=str(cp_path),
        resumed_from_line=checkpoint.line if checkpoint else None,
        last_line=checkpoint.line if checkpoint else 1,
    )
    log.info(
        "replay.start",
        path=str(csv_path),
        source=report.source,
        resume_after_line=report.resumed_from_line,
    )
    try:
        await _Replay(
            path=csv_path,
            file=opened.file,
            client=client,
            speed=speed,
            start_ts=start_ts,
            on_error=on_error,
            checkpoint_path=cp_path,
            batch_size=batch_size,
            flush_s=flush_ms / 1000,
            report=report,
            reader=opened.reader,
            stat=opened.stat,
            progress=_Progress(progress_every_s, opened.stat.st_size, opened.reader.offset),
            window=_Window(concurrency, (opened.reader.offset, opened.reader.line)),
        ).run()
    finally:
        opened.reader.close()
    log.info(
        "replay.done",
        source=report.source,
        posted=report.posted,
        accepted=report.accepted,
        duplicates=report.duplicates,
        bad_rows=report.bad_rows,
        posted_past_stop=report.posted_past_stop,
        last_line=report.last_line,
        complete=report.complete,
    )
    return report
