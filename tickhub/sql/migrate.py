"""Schema migrations: numbered `migrations/NNNN_name.up.sql` / `.down.sql` files, applied in
order, each in its own transaction, recorded in `schema_migrations`, under a Postgres
advisory lock so that several processes starting at once apply each file exactly once.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import asyncpg
import attrs

from tickhub.sql.db import Database

# Any constant shared by every tickhub process; the value spells "tickhub" in ASCII.
LOCK_KEY = 0x7469636B687562
# A migration may rewrite large tables: its deadline is generous, but a deadline still.
TIMEOUT_S = 3600.0
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(up|down)\.sql$")


@attrs.frozen
class Migration:
    version: int
    name: str
    up: str
    down: str


def load_migrations() -> list[Migration]:
    folder = resources.files("tickhub.sql") / "migrations"
    parts: dict[int, dict[str, str]] = {}
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            version, name, direction = int(match[1]), match[2], match[3]
            parts.setdefault(version, {"name": name})[direction] = entry.read_text()
    found = []
    for version in sorted(parts):
        p = parts[version]
        if "up" not in p or "down" not in p:
            raise RuntimeError(f"migration {version:04d} needs both .up.sql and .down.sql")
        found.append(Migration(version, p["name"], p["up"], p["down"]))
    return found


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""


async def _applied(conn: asyncpg.Connection) -> set[int]:
    await conn.execute(_CREATE_TABLE)
    return {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}


async def _locked(conn: asyncpg.Connection, body: Any) -> list[str]:
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    try:
        return await body(conn)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)


async def migrate_up(db: Database) -> list[str]:
    """Apply every pending migration; return the names applied (empty when up to date)."""

    async def body(conn: asyncpg.Connection) -> list[str]:
        done = await _applied(conn)
        applied = []
        for m in load_migrations():
            if m.version in done:
                continue
            async with conn.transaction():
                await conn.execute(m.up)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    m.version,
                    m.name,
                )
            applied.append(f"{m.version:04d}_{m.name}")
        return applied

    return await db.run(_locked, body, timeout_s=TIMEOUT_S)


async def migrate_down(db: Database, steps: int = 1) -> list[str]:
    """Revert the latest `steps` applied migrations; return the names reverted."""

    async def body(conn: asyncpg.Connection) -> list[str]:
        done = await _applied(conn)
        reverted = []
        for m in sorted(load_migrations(), key=lambda m: -m.version):
            if len(reverted) == steps:
                break
            if m.version not in done:
                continue
            async with conn.transaction():
                await conn.execute(m.down)
                await conn.execute("DELETE FROM schema_migrations WHERE version = $1", m.version)
            reverted.append(f"{m.version:04d}_{m.name}")
        return reverted

    return await db.run(_locked, body, timeout_s=TIMEOUT_S)


async def migration_status(db: Database) -> list[tuple[str, bool]]:
    """Every known migration and whether it is applied."""
    done = await db.run(_applied)
    return [(f"{m.version:04d}_{m.name}", m.version in done) for m in load_migrations()]
