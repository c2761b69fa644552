"""Read queries keep their cost as history grows: on a table of a few hundred thousand rows
(enough for the planner to tell an index from a scan), each reads its index, never the whole
symbol. An empty table would hide a bad plan."""

from __future__ import annotations

from typing import Any

import orjson

from tickhub.sql.queries import LATEST_TICK

FILL = """
INSERT INTO ticks_history (symbol, idem_key, ts, price, volume, source, received_at)
SELECT 'S' || (i % 3), 'k' || i, timestamptz '2026-01-01' + i * interval '10 ms',
       100 + i % 7, 1, 'fill', now()
FROM generate_series(1, 300000) AS i
"""


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan tree."""
    out = [plan]
    for child in plan.get("Plans", ()):
        out.extend(nodes(child))
    return out


async def explain(db, sql: str, *args: Any) -> list[dict[str, Any]]:
    raw = await db.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
    plan = (orjson.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    return nodes(plan)


async def day_indexes(db) -> set[str]:
    """The day partitions' copies of ticks_history_symbol_ts (migration 0004)."""
    rows = await db.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'ticks_history_symbol_ts'::regclass"
    )
    return {r[0] for r in rows}


async def test_the_latest_tick_is_one_index_entry(db):
    await db.execute("SELECT tickhub_ensure_partitions('ticks_history', ARRAY[date '2026-01-01'])")
    await db.execute(FILL)
    await db.execute("ANALYZE ticks_history")
    plan = await explain(db, LATEST_TICK, "S1")
    kinds = [n["Node Type"] for n in plan]
    assert kinds[0] == "Limit"
    assert "Seq Scan" not in kinds and "Sort" not in kinds, kinds
    indexes = await day_indexes(db)
    assert any(n.get("Index Name") in indexes for n in plan), plan
