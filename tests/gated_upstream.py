"""An OpenAI-compatible upstream that sends each token only when told to: `POST /release` lets one more through.

Run: python tests/gated_upstream.py --port N. A test streams a turn through Threadline (and a proxy), releases a
token, and waits for it at the client before releasing the next: if anything on the way buffered, the token
would never arrive and the test would fail, with no clock involved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

TOKENS = ["One", " token", " at", " a", " time", "."]
_released = asyncio.Semaphore(0)


def _chunk(model: str, delta: dict[str, str], finish: str | None) -> str:
    body = {
        "id": "chatcmpl-gated",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n"


async def completions(request: Request) -> Response:
    payload = await request.json()
    model = payload.get("model", "gated")

    async def events() -> AsyncIterator[str]:
        yield _chunk(model, {"role": "assistant", "content": ""}, None)
        for token in TOKENS:
            await _released.acquire()
            yield _chunk(model, {"content": token}, None)
        yield _chunk(model, {}, "stop")
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def release(_: Request) -> Response:
    _released.release()
    return JSONResponse({"released": True})


async def models(_: Request) -> Response:
    return JSONResponse({"object": "list", "data": [{"id": "gated", "object": "model", "owned_by": "test"}]})


app = Starlette(
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
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
