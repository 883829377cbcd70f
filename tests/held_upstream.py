"""A held-back OpenAI-compatible upstream, run as its own process, so a test can act in the middle of a turn.

`POST /v1/chat/completions` streams its first word at once, then waits until `POST /release` before it sends the
rest (`max_tokens` words in all) and finishes. A release frees the streams waiting at that moment only. A model
that is mid-answer for as long as the test needs, with no timing in the test.

Run: python tests/held_upstream.py --port 9100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def _chunk(model: str, delta: dict[str, str], finish: str | None) -> str:
    body = {
        "id": "chatcmpl-held",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n"


def build() -> Starlette:
    gate = [asyncio.Event()]

    async def completions(request: Request) -> Response:
        payload = await request.json()
        model = payload.get("model", "held")
        words = max(1, int(payload.get("max_tokens") or payload.get("max_completion_tokens") or 4))
        held = gate[0]

        async def events() -> AsyncIterator[str]:
            yield _chunk(model, {"role": "assistant", "content": ""}, None)
            yield _chunk(model, {"content": "w0"}, None)
            await held.wait()
            for i in range(1, words):
                yield _chunk(model, {"content": f" w{i}"}, None)
            yield _chunk(model, {}, "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def release(_: Request) -> Response:
        gate[0].set()
        gate[0] = asyncio.Event()
        return JSONResponse({"released": True})

    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "held-model", "object": "model", "owned_by": "test"}]})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/release", release, methods=["POST"]),
            Route("/v1/models", models),
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(build(), host="127.0.0.1", port=args.port, log_level="warning")
