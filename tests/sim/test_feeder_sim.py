"""The feeder actor under trio's mock clock: rate, batching, jitter, outages and backpressure."""

from __future__ import annotations

import itertools
import statistics

import attrs
import httpx
import orjson
import pytest
import trio
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from tickhub.config import load_settings
from tickhub.feeder.client import DeliveryError, RejectedError, RetryPolicy, open_webhook_client
from tickhub.feeder.feeder import Feeder

EPOCH = 1_800_000_000.0


def clock() -> float:
    """Wall-clock time that follows the mock clock, so timestamps are exact."""
    return EPOCH + trio.current_time()


def settings(**env: object):
    base = {"SEED": "5", "JITTER": "0", "SYMBOLS": "BTCUSDT,ETHUSDT,SOLUSDT"}
    return load_settings({**base, **{k: str(v) for k, v in env.items()}}).feeder


@attrs.define
class RecordingApi:
    """A fake api that takes every batch, checking the keys run on without gaps or repeats."""

    keep_items: bool = True
    posts: list[tuple[float, int]] = attrs.Factory(list)
    items: list[tuple[float, dict]] = attrs.Factory(list)  # (posted at, item)
    count: int = 0
    in_window: int = 0  # ticks stamped in [EPOCH + 10, EPOCH + 50)
    dropped: int = 0  # ticks of batches refused with a RejectedError
    upserts: int = 0
    fail_upserts: int = 0
    failures: dict[int, Exception] = attrs.Factory(dict)  # post number -> exception

    async def upsert_symbols(self, symbols) -> dict:
        self.upserts += 1
        if self.upserts <= self.fail_upserts:
            raise DeliveryError("down")
        return {"upserted": len(symbols)}

    async def post_ticks(self, source: str, items: list[dict]) -> dict:
        now = trio.current_time()
        self.posts.append((now, len(items)))
        failure = self.failures.get(len(self.posts))
        if isinstance(failure, RejectedError):  # refused for good: these keys are gone
            self.count += len(items)
            self.dropped += len(items)
        if failure is not None:
            raise failure
        # Keys are made in sequence: checking the ends of each batch checks them all.
        seqs = [int(items[i]["idempotencyKey"].rsplit("-", 1)[1]) for i in (0, -1)]
        assert seqs == [self.count, self.count + len(items) - 1], "keys skip or repeat"
        self.count += len(items)
        self.in_window += sum(EPOCH + 10 <= item["ts"] < EPOCH + 50 for item in items)
        if self.keep_items:
            self.items.extend((now, item) for item in items)
        return {"accepted": len(items), "duplicates": 0}


async def run_for(feeder: Feeder, seconds: float) -> None:
    with trio.move_on_after(seconds):
        await feeder.run()


@pytest.mark.parametrize(("rps", "batch_size"), [(10, 20), (1_000, 20), (50_000, 500)])
async def test_rate_matches_rps_over_a_minute(autojump_clock, rps: int, batch_size: int) -> None:
    api = RecordingApi(keep_items=False)
    feeder = Feeder(settings(RPS=rps, BATCH_SIZE=batch_size), client=api, clock=clock)
    await run_for(feeder, 60)
    # Everything generated was delivered (the stop flushes what is pending)...
    assert api.count == feeder.generated == 60 * rps
    assert feeder.buffered == 0
    # ...and the rate is steady, not just right on average: 40 s in the middle hold 40 s worth.
    assert api.in_window == pytest.approx(40 * rps, rel=0.01)
    assert max(size for _, size in api.posts) <= batch_size


async def test_the_lowest_rate_is_exact_too(autojump_clock) -> None:
    api = RecordingApi()
    feeder = Feeder(settings(RPS=0.1), client=api, clock=clock)
    await run_for(feeder, 600)
    stamps = [item["ts"] - EPOCH for _, item in api.items]
    assert len(stamps) == 60
    assert {round(b - a, 3) for a, b in itertools.pairwise(stamps)} == {10.0}
    assert feeder.ready()


async def test_batches_flush_every_flush_ms_at_low_rates(autojump_clock) -> None:
    api = RecordingApi()
    feeder = Feeder(settings(RPS=10, BATCH_SIZE=20, FLUSH_MS=500), client=api, clock=clock)
    await run_for(feeder, 20.01)
    times = [t for t, _ in api.posts]
    assert all(size == 5 for _, size in api.posts)
    assert [round(b - a, 9) for a, b in itertools.pairwise(times)] == [0.5] * 39
    # No tick waits longer than FLUSH_MS to be posted.
    assert max(posted - (item["ts"] - EPOCH) for posted, item in api.items) <= 0.5 + 0.001


async def test_full_batches_go_at_once(autojump_clock) -> None:
    api = RecordingApi()
    feeder = Feeder(settings(RPS=1000, BATCH_SIZE=20, FLUSH_MS=500), client=api, clock=clock)
    await run_for(feeder, 5)
    assert {size for _, size in api.posts} == {20}
    latency = [posted - (item["ts"] - EPOCH) for posted, item in api.items]
    assert max(latency) <= 0.02 + 0.001


async def test_jitter_shortens_flush_intervals_within_bounds(autojump_clock) -> None:
    api = RecordingApi()
    env = {"RPS": 50, "BATCH_SIZE": 1000, "FLUSH_MS": 500, "JITTER": 0.3}
    feeder = Feeder(settings(**env), client=api, clock=clock)
    await run_for(feeder, 60)
    times = [t for t, _ in api.posts[:-1]]  # the last post is the stop's flush
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.35 - 1e-9 <= g <= 0.5 + 1e-9 for g in gaps)
    # Spread across the whole band, centred where a uniform jitter puts it.
    assert min(gaps) < 0.37 and max(gaps) > 0.48
    assert statistics.fmean(gaps) == pytest.approx(0.425, abs=0.01)


async def test_timestamps_are_milliseconds_spaced_by_the_rate(autojump_clock) -> None:
    api = RecordingApi()
    feeder = Feeder(settings(RPS=100, BATCH_SIZE=50), client=api, clock=clock)
    await run_for(feeder, 3)
    stamps = [item["ts"] for _, item in api.items]
    assert all(round(ts, 3) == ts for ts in stamps)
    assert {round(b - a, 3) for a, b in itertools.pairwise(stamps)} == {0.01}


async def test_stop_delivers_what_is_pending(autojump_clock) -> None:
    api = RecordingApi()
    feeder = Feeder(settings(RPS=10, FLUSH_MS=500), client=api, clock=clock)
    await run_for(feeder, 0.32)
    assert [size for _, size in api.posts] == [3]


async def test_symbols_upserted_once_at_start_waiting_for_the_api(autojump_clock) -> None:
    api = RecordingApi(fail_upserts=2)
    feeder = Feeder(settings(RPS=10), client=api, clock=clock)
    await run_for(feeder, 10)
    assert api.upserts == 3
    assert api.count > 0


def backpressure_seconds() -> float:
    return REGISTRY.get_sample_value("tickhub_feeder_backpressure_seconds_total") or 0.0


async def test_api_outage_buffers_then_backpressures_then_delivers_each_tick_once(
    autojump_clock,
) -> None:
    """The api answers 503 from t=10 s to t=40 s; the feeder must neither lose nor repeat a
    tick, nor hold more than FEEDER_BUFFER_MAX of them."""
    stored: dict[str, dict] = {}
    answers: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/symbols"):
            return httpx.Response(202, json={"upserted": 3, "skipped": 0})
        if 10 <= trio.current_time() < 40:
            answers.append(503)
            return httpx.Response(503, headers={"retry-after": "1"}, json={"error": {}})
        items = orjson.loads(request.content)["items"]
        new = [i for i in items if i["idempotencyKey"] not in stored]
        stored.update((i["idempotencyKey"], i) for i in new)
        answers.append(202)
        return httpx.Response(202, json={"accepted": len(new), "duplicates": len(items) - len(new)})

    s = settings(RPS=1000, BATCH_SIZE=100, FLUSH_MS=200, FEEDER_BUFFER_MAX=5000, RETRY_ATTEMPTS=2)
    readiness: dict[int, bool] = {}
    buffered: list[int] = []
    before = backpressure_seconds()

    async def watch(feeder: Feeder) -> None:
        for second in range(60):
            await trio.sleep_until(second + 0.5)
            readiness[second] = feeder.ready()
            buffered.append(feeder.buffered)

    transport = httpx.MockTransport(handler)
    async with open_webhook_client(
        "http://api.test/api/v1", "k", retry=RetryPolicy.from_settings(s), transport=transport
    ) as client:
        feeder = Feeder(s, client=client, clock=clock)
        with capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch, feeder)
                await run_for(feeder, 60)

    assert 503 in answers
    # Buffered up to the bound (plus the batch in hand and one generator step), never beyond.
    assert 5000 <= max(buffered) <= 5000 + 2 * 100 + 5
    # Generation paused for most of the outage and said so.
    assert backpressure_seconds() - before > 20
    assert any(e["event"] == "feeder.backpressure" for e in logs)
    assert feeder.generated < 60 * 1000 - 20 * 1000
    # Every generated tick is stored once, keys without gaps.
    keys = sorted(int(k.rsplit("-", 1)[1]) for k in stored)
    assert keys == list(range(feeder.generated))
    assert feeder.buffered == 0
    # Not ready while nothing gets through; ready again once posts succeed.
    assert readiness[5] and not readiness[35] and readiness[55]


async def test_a_rejected_batch_is_dropped_and_feeding_goes_on(autojump_clock) -> None:
    api = RecordingApi(failures={2: RejectedError(422, {"error": {"code": "VALIDATION_ERROR"}})})
    feeder = Feeder(settings(RPS=100, BATCH_SIZE=10), client=api, clock=clock)
    with capture_logs() as logs:
        await run_for(feeder, 5)
    assert [e["status"] for e in logs if e["event"] == "feeder.batch_dropped"] == [422]
    assert api.dropped == 10
    assert api.count == feeder.generated == 500
    assert feeder.buffered == 0
    assert feeder.ready()


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_a_wrong_key_or_url_fails_the_actor(autojump_clock, status: int) -> None:
    api = RecordingApi(failures={1: RejectedError(status, {"error": {"code": "AUTH_REQUIRED"}})})
    feeder = Feeder(settings(RPS=100), client=api, clock=clock)
    with pytest.raises(ExceptionGroup) as caught:
        await run_for(feeder, 5)
    assert caught.group_contains(RejectedError)
    assert len(api.posts) == 1


@attrs.define
class Health:
    touches: int = 0

    def touch(self) -> None:
        self.touches += 1


async def test_ready_and_health(autojump_clock) -> None:
    class HangingApi(RecordingApi):
        hang = False

        async def post_ticks(self, source: str, items: list[dict]) -> dict:
            if self.hang:
                await trio.sleep_forever()
            return await super().post_ticks(source, items)

    api = HangingApi()
    health = Health()
    feeder = Feeder(settings(RPS=10, FLUSH_MS=500), client=api, clock=clock, health=health)
    assert feeder.ready_window_s == 10.0
    results: list[bool] = []

    async def watch() -> None:
        for at in (0.2, 3.0, 12.4, 13.1):
            await trio.sleep_until(at)
            results.append(feeder.ready())
            api.hang = at == 3.0 or api.hang

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await run_for(feeder, 14)
    # Not before the first post; ready while posts succeed, and for ready_window_s after
    # the last one (at 2.5 or 3 s) when the api stops answering.
    assert results == [False, True, True, False]
    assert health.touches > 0


async def test_stop_gives_up_quickly_when_the_api_is_gone(autojump_clock) -> None:
    class GoneApi(RecordingApi):
        async def post_ticks(self, source: str, items: list[dict]) -> dict:
            if trio.current_time() < 5:
                return await super().post_ticks(source, items)
            await trio.sleep(0.7)  # the client's own retries
            raise DeliveryError("connection refused")

    api = GoneApi()
    feeder = Feeder(settings(RPS=100), client=api, clock=clock)
    with capture_logs() as logs:
        await run_for(feeder, 10)
    assert trio.current_time() <= 10 + feeder.stop_flush_s
    assert any(e["event"] == "feeder.stop_undelivered" for e in logs)


async def test_stop_ends_run_after_delivering_what_was_generated(autojump_clock) -> None:
    api = RecordingApi()
    feeder = Feeder(settings(RPS=100, FLUSH_MS=500), client=api, clock=clock)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feeder.run)
        await trio.sleep(5.123)
        feeder.stop()
    assert trio.current_time() == pytest.approx(5.123)
    assert api.count == feeder.generated == round(5.123 * 100)
    assert feeder.buffered == 0


async def test_stop_during_backpressure(autojump_clock) -> None:
    api = RecordingApi(failures=dict.fromkeys(range(1, 1000), DeliveryError("down")))
    feeder = Feeder(settings(RPS=1000, FEEDER_BUFFER_MAX=500), client=api, clock=clock)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feeder.run)
            await trio.sleep(30)
            feeder.stop()
    assert trio.current_time() <= 30 + feeder.stop_flush_s
    assert [e["event"] for e in logs].count("feeder.backpressure") == 1
    assert any(e["event"] == "feeder.stop_undelivered" for e in logs)
