"""A small SSE client for tests: reads a text/event-stream into parsed events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import httpx
import orjson


@attrs.frozen
class SseEvent:
    event: str
    id: str | None
    data: str

    def json(self) -> Any:
        return orjson.loads(self.data)


async def events(response: httpx.Response) -> AsyncIterator[SseEvent]:
    """Events (comments skipped) from a streaming response."""
    fields: dict[str, str] = {}
    buffer = ""
    async for text in response.aiter_text():
        buffer += text
        while "\n" in buffer:
            line, buffer = buffer.split("\n", 1)
            if line == "":
                if "data" in fields or "event" in fields:
                    yield SseEvent(
                        fields.get("event", "message"), fields.get("id"), fields.get("data", "")
                    )
                fields = {}
            elif line.startswith(":"):
                continue
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data" and "data" in fields:
                    fields["data"] += "\n" + value
                else:
                    fields[name] = value
