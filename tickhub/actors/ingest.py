"""Where the webhook hands a validated batch, and when it may answer 202 (the durable ack).

- `LocalIngest` (api and consumer in one process): into the pipeline; durable once the
  batch is committed to Postgres, with exact `accepted` / `duplicates`.
- `StreamIngest` (api alone): appended to the Redis ticks stream as one entry; durable once
  XADD succeeded. Duplicates are found later, in storage, so `duplicates` is 0 at ack time.

Either raises `IngestUnavailable` when the batch was not taken; nothing of it is stored then.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from tickhub.actors.messages import TickBatch
from tickhub.actors.pipeline import Overloaded, Pipeline
from tickhub.streams import RedisLink, RedisUnavailable, encode_batch


class IngestUnavailable(RuntimeError):
    """The batch was not taken (overload, storage or queue down): answer 503, store nothing."""


@attrs.frozen
class IngestResult:
    accepted: int
    duplicates: int


class Ingest(Protocol):
    async def ingest(self, batch: TickBatch) -> IngestResult: ...


@attrs.frozen
class LocalIngest:
    pipeline: Pipeline

    async def ingest(self, batch: TickBatch) -> IngestResult:
        try:
            receipt = await self.pipeline.submit(batch.parts, batch.items)
        except Overloaded:
            raise IngestUnavailable("ingest is saturated; retry later") from None
        await receipt.done.wait()
        if receipt.failed:
            raise IngestUnavailable("storage is unavailable; nothing of this batch was stored")
        return IngestResult(receipt.accepted, receipt.duplicates)


@attrs.frozen
class StreamIngest:
    link: RedisLink

    async def ingest(self, batch: TickBatch) -> IngestResult:
        received = batch.parts[0].received_us if batch.parts else 0
        try:
            await self.link.enqueue(encode_batch(batch.source, received, batch.parts))
        except RedisUnavailable:
            raise IngestUnavailable("the queue is unavailable; nothing was stored") from None
        return IngestResult(batch.items, 0)
