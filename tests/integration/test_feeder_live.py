"""The feeder against a real tickhub: its ticks appear in history and on the live stream, and
retries after 503s (Postgres down) and a lost connection (the server restarted) deliver every
generated tick exactly once."""

from __future__ import annotations

import attrs
import trio
from prometheus_client import REGISTRY

from tests.conftest import API_KEY, make_settings, start_tickhub
from tests.consistency import differences
from tests.sse import events
from tickhub.config import load_settings
from tickhub.feeder.feeder import Feeder
from tickhub.sql.embedded import free_port


def feeder_for(url: str, run_id: str) -> Feeder:
    settings = attrs.evolve(
        load_settings({}).feeder,
        base_url=url + "/api/v1",
        api_key=API_KEY,
        symbols=("AAAUSD", "BBBUSD"),
        rps=200.0,
        batch_size=20,
        flush_ms=100,
        retry_backoff_ms=50,
        retry_attempts=100,
    )
    return Feeder(settings, run_id=run_id, stop_flush_s=10)


def expected_keys(feeder: Feeder, run_id: str) -> set[str]:
    return {f"{feeder.settings.source}-{run_id}-{i}" for i in range(feeder.generated)}


async def stored_keys(db) -> set[str]:
    return {r[0] for r in await db.fetch("SELECT idem_key FROM ticks_history")}


async def test_feeder_ticks_reach_history_and_the_stream(tickhub, db):
    feeder = feeder_for(tickhub.url, "live")
    seen = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(feeder.run)
            async with tickhub.client.stream("GET", "/realtime/ticks") as response:
                async for event in events(response):
                    if event.event == "message":
                        seen.append(event.json())
                        if len(seen) >= 50:
                            break
            feeder.stop()
    assert {e["symbol"] for e in seen} == {"AAAUSD", "BBBUSD"}
    assert await stored_keys(db) == expected_keys(feeder, "live")
    symbols = (await tickhub.get("/api/v1/symbols")).json()
    assert {s["symbol"] for s in symbols} >= {"AAAUSD", "BBBUSD"}  # upserted at start


async def test_retries_after_503_and_lost_connections_deliver_exactly_once(db, pg, pg_url, nursery):
    def posts(status: str) -> float:
        value = REGISTRY.get_sample_value("tickhub_feeder_posts_total", {"status": status})
        return value or 0.0

    refused_before, lost_before = posts("503"), posts("error")
    port = free_port()
    settings = make_settings(pg_url, port=port)
    server = await start_tickhub(nursery, settings)
    feeder = feeder_for(server.url, "retry")
    with trio.fail_after(60):
        async with trio.open_nursery() as inner:
            await inner.start(feeder.run)
            await trio.sleep(0.5)
            await trio.to_thread.run_sync(pg.stop)  # the webhook answers 503
            await trio.sleep(1.0)
            await trio.to_thread.run_sync(pg.start)
            await trio.sleep(1.0)
            await server.shutdown()  # connections refused while it is down
            await trio.sleep(0.5)
            server = await start_tickhub(nursery, settings)
            await trio.sleep(1.0)
            feeder.stop()
    await server.client.aclose()
    assert posts("503") > refused_before  # the faults really happened
    assert posts("error") > lost_before
    assert feeder.generated > 300
    assert await stored_keys(db) == expected_keys(feeder, "retry")
    assert await differences(db) == []
    await server.shutdown()
