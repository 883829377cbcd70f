"""An instant OpenAI-compatible upstream: POST /v1/chat/completions answers at once (streaming or not).

Run: python bench/stub_upstream.py --port 9100. Used by turn_overhead.py so that what is measured is
Threadline's own cost per turn, not a model's. A summary request (compaction.py: the last user message starts
`Summarise this conversation:`) is answered with the transcript's own lines, an earlier summary's as they are, cut
to `max_tokens` words: a summariser that keeps the oldest facts, so the benchmark measures what the context
builder keeps, not a model's judgement.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

REPLY = ["Sure", ",", " here", " is", " an", " answer", "."]


def _chunk(model: str, delta: dict[str, str], finish: str | None) -> str:
    body = {
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n"


SUMMARY_REQUEST = "Summarise this conversation:"
EARLIER = "Summary of what came before: "


def _reply(payload: dict[str, object]) -> list[str]:
    messages = payload.get("messages") or []
    last = messages[-1] if isinstance(messages, list) and messages else {}
    text = last.get("content") if isinstance(last, dict) else None
    if not isinstance(text, str) or not text.startswith(SUMMARY_REQUEST):
        return REPLY
    lines = [line.removeprefix(EARLIER) for line in text.removeprefix(SUMMARY_REQUEST).split("\n\n") if line.strip()]
    words = " / ".join(lines).split(" ")[: int(str(payload.get("max_tokens") or 512))]
    return [" ".join(words)]


async def completions(request: Request) -> Response:
    payload = await request.json()
    model = payload.get("model", "stub")
    reply = _reply(payload)
    if not payload.get("stream"):
        return JSONResponse(
            {
                "id": "chatcmpl-stub",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "".join(reply)}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": len(reply), "total_tokens": 1 + len(reply)},
            }
        )

    async def events() -> AsyncIterator[str]:
        yield _chunk(model, {"role": "assistant", "content": ""}, None)
        for piece in reply:
            yield _chunk(model, {"content": piece}, None)
        yield _chunk(model, {}, "stop")
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def models(_: Request) -> Response:
    return JSONResponse({"object": "list", "data": [{"id": "stub-model", "object": "model", "owned_by": "stub"}]})


# Both spellings: a base_url may or may not end in /v1.
app = Starlette(
    routes=[
        Route("/v1/chat/completions", completions, methods=["POST"]),
        Route("/chat/completions", completions, methods=["POST"]),
        Route("/v1/models", models),
        Route("/models", models),
    ]
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
