"""Server-sent events, framed the one way every streaming route uses (model responses, thread naming)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse

from threadline.services.response_streams import EventRecorder, RecordedEvent

# Told of every framed event: (sequence number, type, the JSON of its data).
Record = Callable[[int, str, str], None]


class EventFramer:
    """Frames events named like OpenAI's streams: each data object has `type` and a rising `sequence_number`,
    from `start`. `record` (an `EventRecorder.add`) keeps each event for replay (docs/streams.md)."""

    def __init__(self, record: Record | None = None, start: int = 0) -> None:
        self.sequence = start
        self._record = record

    def frame(self, name: str, payload: dict[str, Any]) -> str:
        return framed(name, self.encode(name, payload))

    def encode(self, name: str, payload: dict[str, Any]) -> str:
        """The event's JSON, numbered (and recorded) — what an SSE frame carries and a WebSocket message is."""
        data = json.dumps({"type": name, "sequence_number": self.sequence, **payload}, ensure_ascii=False)
        if self._record is not None:
            self._record(self.sequence, name, data)
        self.sequence += 1
        return data


def framed(name: str, data: str) -> str:
    return f"event: {name}\ndata: {data}\n\n"


def replayed(event: RecordedEvent) -> str:
    return framed(event.type, event.data)


async def recorded(frames: AsyncGenerator[str, None], recorder: EventRecorder) -> AsyncIterator[str]:
    """`frames` as they come; the recorder writes what is left when they end (or the client goes away).

    aclosing: when the client goes away, `frames` (and the turn under it) is closed now, not whenever the abandoned
    generator is garbage-collected; its last events are recorded after that."""
    try:
        async with contextlib.aclosing(frames):
            async for chunk in frames:
                yield chunk
    finally:
        await recorder.aclose()


def sse_response(frames: AsyncIterator[str]) -> StreamingResponse:
    # no-cache / no buffering: each event must reach the client as it is produced, not when a proxy flushes.
    return StreamingResponse(
        frames,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
