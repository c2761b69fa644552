"""/ops/metrics really counts: ingest results, flushes, queue depth, SSE clients and events."""

from __future__ import annotations

import time

import trio

from tests.integration.test_pipeline import ticks
from tests.sse import events


async def scrape(tickhub) -> dict[str, float]:
    text = (await tickhub.get("/ops/metrics")).text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def delta(after: dict, before: dict, name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


async def test_ingest_and_flush_metrics_count(tickhub):
    before = await scrape(tickhub)
    items = ticks("BTCUSDT", 30, start=int(time.time()) - 100)
    await tickhub.post_ticks(items)
    await tickhub.post_ticks(items[:10])  # 10 duplicates
    await tickhub.post_ticks([{"symbol": "BTCUSDT", "price": -1, "ts": 1}])  # rejected
    after = await scrape(tickhub)
    assert delta(after, before, 'tickhub_ingest_ticks_total{result="accepted"}') == 30
    assert delta(after, before, 'tickhub_ingest_ticks_total{result="duplicate"}') == 10
    assert delta(after, before, 'tickhub_ingest_ticks_total{result="rejected"}') == 1
    assert delta(after, before, 'tickhub_ingest_requests_total{status="202"}') == 2
    assert delta(after, before, 'tickhub_ingest_requests_total{status="422"}') == 1
    assert delta(after, before, "tickhub_flush_rows_sum") == 40
    assert delta(after, before, "tickhub_flush_seconds_count") >= 2
    assert after["tickhub_ingest_pending_ticks"] == 0
    assert after["tickhub_writer_queue_rows"] == 0


async def test_sse_metrics_count_events_sent(tickhub):
    before = await scrape(tickhub)
    with trio.fail_after(10):
        async with tickhub.client.stream("GET", "/realtime/ticks") as response:
            seen = 0
            async for event in events(response):
                if event.event == "hello":
                    assert (await scrape(tickhub))["tickhub_sse_clients"] == (
                        before["tickhub_sse_clients"] + 1
                    )
                    await tickhub.post_ticks(ticks("ETHUSDT", 5, start=int(time.time()) - 50))
                elif event.event == "message":
                    seen += 1
                    if seen == 5:
                        break
    after = await scrape(tickhub)
    assert delta(after, before, "tickhub_sse_events_sent_total") >= 5
    assert delta(after, before, "tickhub_hub_events_total") == 5
