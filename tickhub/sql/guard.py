"""A statement that commits only before a cutoff, in one round trip.

A flush must never be stored behind the back of a webhook that already answered 503 at its
deadline (ARCHITECTURE §4.6): it commits before the earliest deadline of its batches, or not
at all. An explicit transaction would let the client decide (BEGIN, the statement, then
COMMIT or ROLLBACK), at the price of two more round trips — on a one-tick flush two of its
three, and each a sleep and a wake-up of the process.

Instead the statement runs inside a PL/pgSQL function that, once the statement has done all
its work, compares the server's clock with the cutoff and raises if it is past. The call is
one autocommit statement: the raise rolls it all back. A database paused in the middle of a
flush (SIGSTOP, a stalled host) therefore rolls it back when it resumes, however late. Its
answer is awaited while the server is alive (`ANSWER_S`, `PROBE_S`, `PATIENCE_S`), so the
outcome reported is the outcome on the server unless the server itself stopped answering.

The cutoff travels in the server's clock: the offset between the two clocks is measured
when the function is created (half a round trip of error) and again every `REMEASURE_S`.
The function is named after a hash of the statement, created on first use with the
statement's own parameter and result types, so every version of tickhub has its own.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import asyncpg
import attrs
import trio

from tickhub.clock import wall_s
from tickhub.sql.db import CommitRefused, Database

GUARD_STATE = "TH001"  # the SQLSTATE the guard raises (class TH: tickhub's own)
REMEASURE_S = 60.0
# After the cutoff the outcome is settled on the server (committed before it, or never);
# only its answer is due. It is awaited ANSWER_S; then, if the server still answers a probe
# (PROBE_S), PATIENCE_S more: a process too busy to read its sockets in time (a burst of
# webhooks, a starved machine) must not take a committed flush for a failed one and answer
# 503 for stored ticks. Only a server that stopped answering leaves the outcome unknown.
ANSWER_S = 0.25
PROBE_S = 1.0
PATIENCE_S = 5.0
OUTCOME_WITHIN_S = ANSWER_S + PROBE_S + PATIENCE_S  # after the cutoff, at the latest
_OFFSET = "SELECT extract(epoch FROM clock_timestamp())::float8"
_TYPES = "SELECT format_type(o, NULL) FROM unnest($1::oid[]) WITH ORDINALITY AS u(o, n) ORDER BY n"


@attrs.define
class Guarded:
    """`sql`, run so that it commits only before a cutoff (`fetch`)."""

    db: Database
    sql: str
    name: str = attrs.field(init=False)
    _call: str = ""
    _offset_s: float = 0.0  # the server's clock minus ours
    _measured_at: float = -math.inf

    def __attrs_post_init__(self) -> None:
        self.name = "tickhub_guard_" + hashlib.sha1(self.sql.encode()).hexdigest()[:20]

    async def fetch(self, *args: Any, cutoff: float) -> list[asyncpg.Record]:
        """The statement's rows; CommitRefused (nothing stored) when it ended after `cutoff`
        (trio time)."""
        if not self._call or trio.current_time() - self._measured_at > REMEASURE_S:
            # Nothing is stored yet: this may only take until the cutoff.
            await self.db.run(self._prepare, timeout_s=max(cutoff - trio.current_time(), 0.01))
        left = cutoff - trio.current_time()
        server_cutoff = wall_s() + left + self._offset_s
        try:
            return await self.db.fetch_outcome(
                self._call,
                *args,
                server_cutoff,
                answer_s=max(left, 0.0) + ANSWER_S,
                probe_s=PROBE_S,
                patience_s=PATIENCE_S,
            )
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == GUARD_STATE:
                raise CommitRefused("ended after its cutoff; rolled back") from None
            raise

    async def _prepare(self, conn: asyncpg.Connection) -> None:
        before = wall_s()
        server = await conn.fetchval(_OFFSET)
        self._offset_s = server - (before + wall_s()) / 2
        self._measured_at = trio.current_time()
        if self._call:
            return
        statement = await conn.prepare(self.sql)
        params = [t.oid for t in statement.get_parameters()]
        columns = [a.type.oid for a in statement.get_attributes()]
        types = [r[0] for r in await conn.fetch(_TYPES, params + columns)]
        signature = ", ".join([*types[: len(params)], "float8"])  # the cutoff, epoch seconds
        table = ", ".join(f"c{i} {t}" for i, t in enumerate(types[len(params) :]))
        cutoff = f"${len(params) + 1}"
        async with conn.transaction():  # one creator at a time across processes
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.name)
            await conn.execute(
                f"""
                CREATE OR REPLACE FUNCTION {self.name}({signature}) RETURNS TABLE ({table})
                LANGUAGE plpgsql AS $guard$
                #variable_conflict use_column
                BEGIN
                    RETURN QUERY {self.sql};
                    IF clock_timestamp() > to_timestamp({cutoff}) THEN
                        RAISE EXCEPTION 'past its commit cutoff' USING ERRCODE = '{GUARD_STATE}';
                    END IF;
                END
                $guard$
                """
            )
        placeholders = ", ".join(f"${i + 1}" for i in range(len(params) + 1))
        self._call = f"SELECT * FROM {self.name}({placeholders})"
