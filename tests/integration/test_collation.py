"""Ties in `ts` are broken by the text keys, and Python and SQL must break them alike, on any
server: migration 0003 declares the keys `COLLATE "C"` (bytes; UTF-8 byte order is code-point
order, which is how Python compares the strings the aggregators sort).

The tickhub tests here run on a second embedded cluster created in a non-C locale (en_US, as
most managed PostgreSQL are), where the database's own collation orders `"a" < "B" < "é"`
while code points order `"B" < "a" < "é"`: a machine without such a locale generates one with
glibc's `localedef` into a private directory (`LOCPATH`), or the tests are skipped saying why.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.conftest import TABLES, make_settings, start_tickhub
from tests.integration.test_stream import _listen_while_posting
from tickhub.bridge import open_bridge
from tickhub.sql.db import Database, open_database
from tickhub.sql.embedded import EmbeddedPostgres
from tickhub.sql.migrate import migrate_down, migrate_up

LOCALE = "en_US.UTF-8"
LOCALE_SOURCES = Path("/usr/share/i18n/locales/en_US")
KEY_COLUMNS = {
    ("ticks_raw", "idem_key"),
    ("ticks_history", "idem_key"),
    ("ohlc_1m", "open_key"),
    ("ohlc_1m", "close_key"),
    ("metrics_1m", "last_key"),
}
# The hourly roll-up's keys, "C" from the start (0005).
HOUR_KEY_COLUMNS = {("candles_1h", "open_key"), ("candles_1h", "close_key")}
# Mixed case, accents, other scripts, a symbol: the default en_US order and code-point order
# disagree on almost every pair of these.
KEYS = ["a-1", "B-2", "é-3", "Z-4", "z-5", "É-6", "ß-7", "_-8", "Ω-9", "b-10", "A-11"]


def _installed_locale() -> str | None:
    """A UTF-8 locale other than C/POSIX that the OS already has, if any."""
    listed = subprocess.run(["locale", "-a"], capture_output=True, text=True, check=False).stdout
    for name in listed.split():
        if name.split(".")[0] not in ("C", "POSIX") and name.lower().endswith(("utf8", "utf-8")):
            return name
    return None


@pytest.fixture(scope="module")
def en_us(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a database on a cluster initialised in a non-C locale."""
    root = tmp_path_factory.mktemp("pg-en-us")
    env = {}
    locale = _installed_locale()
    if locale is None:
        if shutil.which("localedef") is None or not LOCALE_SOURCES.exists():
            pytest.skip(
                "no non-C locale on this machine and no glibc locale sources to generate one "
                "(apt-get install locales)"
            )
        locales = root / "locales"
        locales.mkdir()
        subprocess.run(
            ["localedef", "-i", "en_US", "-f", "UTF-8", str(locales / LOCALE)],
            check=True,
            capture_output=True,
        )
        for path in [locales, *locales.rglob("*")]:  # the server runs as another user
            path.chmod(0o755 if path.is_dir() else 0o644)
        env["LOCPATH"] = str(locales)
        locale = LOCALE
    env["LC_ALL"] = locale
    server = EmbeddedPostgres(root / "data", fsync=False)
    with pytest.MonkeyPatch.context() as patch:  # initdb and the server inherit the locale
        for name, value in env.items():
            patch.setenv(name, value)
        server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
async def en_us_db(en_us: str) -> AsyncIterator[Database]:
    async with open_bridge(), open_database(en_us) as db:
        await migrate_up(db)
        await db.execute(f"TRUNCATE {TABLES}")
        yield db


async def _collations(db: Database) -> dict[tuple[str, str], str | None]:
    rows = await db.fetch(
        "SELECT table_name, column_name, collation_name FROM information_schema.columns "
        "WHERE table_schema = 'public' AND column_name LIKE '%key'"
    )
    return {(r[0], r[1]): r[2] for r in rows if (r[0], r[1]) in KEY_COLUMNS | HOUR_KEY_COLUMNS}


async def test_the_cluster_really_sorts_by_its_locale(en_us_db):
    """The premise: this database's own collation does not order like Python."""
    rows = await en_us_db.fetch("SELECT k FROM unnest($1::text[]) k ORDER BY k", KEYS)
    assert [r[0] for r in rows] != sorted(KEYS)
    by_c = await en_us_db.fetch('SELECT k FROM unnest($1::text[]) k ORDER BY k COLLATE "C"', KEYS)
    assert [r[0] for r in by_c] == sorted(KEYS)


async def test_migration_declares_the_keys_c_and_reverts(en_us_db):
    every = KEY_COLUMNS | HOUR_KEY_COLUMNS
    assert await _collations(en_us_db) == dict.fromkeys(every, "C")
    # 0004 keeps 0003's "C"; 0005's table goes with it
    down = ["0005_candles_1h", "0004_partitioned_history", "0003_keys_collate_c"]
    assert await migrate_down(en_us_db, 3) == down
    try:
        assert await _collations(en_us_db) == dict.fromkeys(KEY_COLUMNS, None)
    finally:
        assert await migrate_up(en_us_db) == down[::-1]
    assert await _collations(en_us_db) == dict.fromkeys(every, "C")


async def test_ties_in_ts_are_broken_alike_by_python_and_sql(en_us, en_us_db, nursery):
    """Ticks sharing one ts: the live events (ordered in Python) run in key order, and the
    candle, the minute metrics, the latest tick and the history (ordered in SQL) agree with
    them — the dashboard's last price is its candle's close."""
    ts = int(time.time()) // 60 * 60 - 600
    prices = {key: 100.0 + n for n, key in enumerate(KEYS)}
    items = [
        {"symbol": "TIEUSDT", "price": prices[k], "ts": ts + 1, "volume": 1, "idempotencyKey": k}
        for k in KEYS
    ]
    in_order = [prices[k] for k in sorted(KEYS)]
    tickhub = await start_tickhub(nursery, make_settings(en_us))
    try:
        received = await _listen_while_posting(
            tickhub, "/realtime/ticks?symbol=TIEUSDT", len(KEYS), items
        )
        live = [e.json() for e in received if e.event == "message"]
        candle = (
            await tickhub.get("/api/v1/ticks/TIEUSDT/history", params={"view": "ohlc1m"})
        ).json()["items"][-1]
        metrics = (await tickhub.get("/api/v1/metrics/TIEUSDT")).json()
        latest = (await tickhub.get("/api/v1/ticks/TIEUSDT")).json()
        history = (await tickhub.get("/api/v1/ticks/TIEUSDT/history")).json()["items"]
    finally:
        await tickhub.client.aclose()
        await tickhub.shutdown()

    assert [e["price"] for e in live] == in_order
    assert live[-1]["candle1m"]["close"] == live[-1]["price"]
    assert (candle["open"], candle["close"]) == (in_order[0], in_order[-1])
    assert metrics["last"] == latest["price"] == in_order[-1]
    assert [t["price"] for t in history] == in_order[::-1]


def test_python_orders_keys_by_utf8_bytes():
    """Code-point order is UTF-8 byte order (what COLLATE "C" compares), for any keys."""
    keys = [*KEYS, "\U0001f600", "\u00ff", "\u0100", "\uffff", "~", "\x7f"]
    assert sorted(keys) == sorted(keys, key=lambda k: k.encode())
