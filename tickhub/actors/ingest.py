"""Where the webhook hands a validated batch, and when it may answer 202 (the durable ack).

- `LocalIngest` (api and consumer in one process): into the pipeline; durable once the
  batch is committed to Postgres, with exact `accepted` / `duplicates`.
- `StreamIngest` (api alone): appended to the Redis ticks stream as one entry; durable once
  XADD succeeded. Duplicates are found later, in storage, so `duplicates` is 0 at ack time.

Either answers by the batch's deadline (the webhook's arrival + INGEST_TIMEOUT_MS). It raises
`IngestUnavailable` when the batch was not made durable — nothing of it is stored then (a
flush still running at the deadline rolls back), except when the database stopped answering
in the middle of the commit itself: then it may be stored, and re-sending is safe (every
tick is deduplicated) — and `IngestRejected` when the store refused the batch's data.
"""

from __future__ import annotations

from typing import Protocol

import attrs
import trio

from tickhub.actors.pipeline import Overloaded, Pipeline
from tickhub.actors.writer import COMMIT_ANSWER_S
from tickhub.messages import Expired, Rejected, TickBatch
from tickhub.redis.link import RedisLink, RedisUnavailable, encode_batch

# How long a webhook whose batch is in a flush at its deadline waits for that flush's answer
# (it committed just in time, or it rolls back): the writer's own bound, and a margin — the
# writer answers by then.
COMMIT_GRACE_S = COMMIT_ANSWER_S + 0.5


class IngestUnavailable(RuntimeError):
    """The batch was not taken (overload, storage or queue down): answer 503, store nothing."""


class IngestRejected(ValueError):
    """The store refused the batch's data: answer 422; nothing of it is stored."""


@attrs.frozen
class IngestResult:
    accepted: int
    duplicates: int


class Ingest(Protocol):
    async def ingest(self, batch: TickBatch, deadline: float) -> IngestResult:
        """Make the batch durable by `deadline` (trio time), or raise."""
        ...


@attrs.frozen
class LocalIngest:
    pipeline: Pipeline

    async def ingest(self, batch: TickBatch, deadline: float) -> IngestResult:
        try:
            receipt = await self.pipeline.submit(batch.parts, batch.items, deadline)
        except Overloaded:
            raise IngestUnavailable("ingest is saturated; retry later") from None
        with trio.move_on_at(deadline):
            await receipt.done.wait()
        if receipt.withdraw():
            raise IngestUnavailable("not committed in time; nothing of this batch was stored")
        # It is in a flush: that flush's answer (committed in time, or rolled back) is due.
        with trio.move_on_after(COMMIT_GRACE_S):
            await receipt.done.wait()
        if not receipt.done.is_set():
            raise IngestUnavailable(
                "the database did not answer in time; the batch is not stored unless its "
                "commit was already under way: re-sending it is safe"
            )
        if isinstance(receipt.error, Rejected):
            raise IngestRejected(str(receipt.error))
        if isinstance(receipt.error, Expired):
            raise IngestUnavailable("not committed in time; nothing of this batch was stored")
        if receipt.failed:
            raise IngestUnavailable(
                "storage is unavailable; the batch is not stored unless the database "
                "committed it before it stopped answering: re-sending it is safe"
            )
        return IngestResult(receipt.accepted, receipt.duplicates)


@attrs.frozen
class StreamIngest:
    link: RedisLink

    async def ingest(self, batch: TickBatch, deadline: float) -> IngestResult:
        received = batch.parts[0].received_us if batch.parts else 0
        payload = encode_batch(batch.source, received, batch.parts)
        left = max(deadline - trio.current_time(), 0.0)
        try:
            await self.link.enqueue(payload, timeout_s=min(self.link.timeout_s, left))
        except RedisUnavailable:
            raise IngestUnavailable(
                "the queue is unavailable: the batch was not queued (or not confirmed); "
                "re-sending it is safe"
            ) from None
        return IngestResult(batch.items, 0)
