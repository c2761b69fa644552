"""Migrations on a real PostgreSQL: up → down → up, and concurrent starts are safe."""

from __future__ import annotations

import trio

from tests.conftest import psql
from tickhub.bridge import open_bridge
from tickhub.sql.db import open_database
from tickhub.sql.migrate import load_migrations, migrate_down, migrate_up, migration_status


async def _fresh_database(pg, name: str) -> str:
    await trio.to_thread.run_sync(psql, pg, f"DROP DATABASE IF EXISTS {name}")
    await trio.to_thread.run_sync(psql, pg, f"CREATE DATABASE {name}")
    return pg.url.rsplit("/", 1)[0] + "/" + name


async def _tables(db) -> set[str]:
    rows = await db.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    )
    return {r[0] for r in rows}


ALL = [
    "0001_schema",
    "0002_brin_received_at",
    "0003_keys_collate_c",
    "0004_partitioned_history",
    "0005_candles_1h",
]


async def _index_method(db, index: str) -> str:
    return await db.fetchval(
        "SELECT a.amname FROM pg_class c JOIN pg_am a ON a.oid = c.relam WHERE c.relname = $1",
        index,
    )


async def test_up_down_up(pg):
    url = await _fresh_database(pg, "mig_updown")
    async with open_bridge(), open_database(url) as db:
        assert await migrate_up(db) == ALL
        assert await migrate_up(db) == []  # idempotent
        assert {"ticks_history", "ohlc_1m", "metrics_1m", "symbols"} <= await _tables(db)
        assert await migration_status(db) == [(name, True) for name in ALL]
        assert "candles_1h" in await _tables(db)
        assert await migrate_down(db, 1) == ["0005_candles_1h"]
        assert "candles_1h" not in await _tables(db)
        assert await _index_method(db, "ticks_history_received_at") is None  # 0004: by day
        assert await migrate_down(db, 1) == ["0004_partitioned_history"]
        assert await _index_method(db, "ticks_history_received_at") == "brin"
        assert await migrate_down(db, 1) == ["0003_keys_collate_c"]
        assert await migrate_down(db, 1) == ["0002_brin_received_at"]
        assert await _index_method(db, "ticks_history_received_at") == "btree"
        assert await _index_method(db, "ticks_raw_received_at") == "btree"
        assert await migrate_down(db, 1) == ["0001_schema"]
        assert await _tables(db) == {"schema_migrations"}
        assert await migration_status(db) == [(name, False) for name in ALL]
        assert await migrate_up(db) == ALL
        assert "ticks_recent" in {
            r[0] for r in await db.fetch("SELECT table_name FROM information_schema.views")
        }


async def test_concurrent_migrate_up_applies_each_file_once(pg):
    url = await _fresh_database(pg, "mig_race")
    results = []
    async with open_bridge():

        async def one():
            async with open_database(url) as db:
                results.append(await migrate_up(db))

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one)
        async with open_database(url) as db:
            count = await db.fetchval("SELECT count(*) FROM schema_migrations")
    applied = [r for r in results if r]
    assert applied == [[f"{m.version:04d}_{m.name}" for m in load_migrations()]]
    assert count == len(load_migrations())
