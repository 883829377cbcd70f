"""Server-sent events, framed the one way every streaming route uses (model responses, thread naming)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse


class EventFramer:
    """Frames events named like OpenAI's streams: each data object has `type` and a rising `sequence_number`."""

    def __init__(self) -> None:
        self.sequence = 0

    def data(self, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        data = {"type": name, "sequence_number": self.sequence, **payload}
        self.sequence += 1
        return data

    def frame(self, name: str, payload: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {json.dumps(self.data(name, payload), ensure_ascii=False)}\n\n"


def sse_response(frames: AsyncIterator[str]) -> StreamingResponse:
    # no-cache / no buffering: each event must reach the client as it is produced, not when a proxy flushes.
    return StreamingResponse(
        frames,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
