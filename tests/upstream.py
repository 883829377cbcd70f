"""The OpenAI-compatible upstream of the tests and benchmarks: one small, deterministic chat-completions server,
run as its own process so Threadline talks to it over real HTTP.

    python tests/upstream.py --port N [--reply TEXT | --words N] [--pace SECONDS] [--gate each|rest] [--record]

Tests start it with `tests.servers.upstream(log, ...)` (same options as keywords), which picks the port, waits
until it answers and stops it; bench/ runs this file as a script. docs/testing.md lists what each test uses.

What it answers, for `POST /v1/chat/completions` (also `/chat/completions`):
- tools offered, `tool_choice` not `none` and the last message a user message → a function call per tool it
  chooses: the named one (`tool_choice` names a function), every offered tool when the user text holds
  `[parallel]` (and `parallel_tool_calls` is not false; one tool is then called twice), else the first. Each
  argument of the tool's JSON Schema gets the user text (markers removed); integers get its length.
- the last message a tool result → text quoting every output of the trailing tool messages:
  `Tool said: <output>` (joined by ` | `).
- a summary request (the last user text starts with `Summarise this conversation:`, as Threadline's compaction
  asks: docs/compaction.md) → `Summary: ` and the transcript's paragraphs joined by ` / ` (an earlier summary's
  text as it is), at most `max_tokens` words: a summary that keeps the oldest facts; `[fail-summary]` in it → a 500.
- a `response_format` → JSON: for `json_schema` an object with each property of the schema (filled as tool
  arguments are), for `json_object` `{"echo": <last user text>}`.
- anything else → `--reply TEXT`; with `--words N` the words `w0 w1 … w(N-1)`, no more than the request's
  `max_tokens` (or `max_completion_tokens`); without either, `echo: <last user text>`.
- the last user text holding `[think]` → reasoning first, the way vLLM / DeepSeek / llama.cpp server send it:
  `reasoning_content` `Thinking about <text>.` (in two deltas, or on the plain message).
- usage; with `reasoning_effort` also OpenAI's details (1 cached prompt token, 7 reasoning tokens).

Streamed (SSE, the way OpenAI streams: a word per chunk; a call's id and name in its first delta, its arguments
in two pieces keyed by `index`; the usage last when `stream_options.include_usage`) when the request has
`stream: true` and the user text does not hold `[plain]`; otherwise one JSON body. Every answer finishes `stop`
(or `tool_calls`).

When the words go out:
- `--pace S`: S seconds before each word (a plain answer waits for all of them before it is sent);
- `--gate each`: each word waits for its own `POST /release` (releases add up, so one sent early is not lost);
- `--gate rest`: the first word goes at once, the rest wait for the next `POST /release`, which frees every
  answer waiting at that moment (a turn stays mid-answer for as long as the test needs, with no clock).

`--record` keeps every request body, returned by `GET /requests` (for tests that check what Threadline sent).
`GET /v1/models` (also `/models`) lists one model, `upstream-model`, and tells that the process is ready.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MARKERS = re.compile(r"\[(parallel|plain|think)\]\s*")
SUMMARY_REQUEST = "Summarise this conversation:"
EARLIER = "Summary of what came before: "
Gate = Literal["each", "rest"]


def pieces(text: str) -> list[str]:
    """How an answer's text is streamed: a word per chunk, each after the first with its leading space."""
    words = text.split(" ") if text else []
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _arguments(tool: dict[str, Any], text: str) -> str:
    properties = ((tool.get("function") or {}).get("parameters") or {}).get("properties") or {"input": {}}
    values: dict[str, Any] = {}
    for name, schema in properties.items():
        values[name] = len(text) if isinstance(schema, dict) and schema.get("type") == "integer" else text
    return json.dumps(values)


@dataclass(frozen=True)
class Behaviour:
    """What the command line asked for (see the module docstring)."""

    reply: str | None = None
    words: int | None = None
    pace: float = 0.0
    gate: Gate | None = None
    record: bool = False


def answer(body: dict[str, Any], behaviour: Behaviour = Behaviour()) -> tuple[str, list[dict[str, Any]]]:
    """(text, tool calls) for a request."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    tools = [t for t in body.get("tools") or [] if t.get("type") == "function"]
    choice = body.get("tool_choice", "auto")
    if last.get("role") == "tool":
        outputs = []
        for message in reversed(messages):
            if message.get("role") != "tool":
                break
            outputs.append(_text(message))
        return "Tool said: " + " | ".join(reversed(outputs)), []
    user_text = _text(last)
    if user_text.startswith(SUMMARY_REQUEST):
        lines = [line for line in user_text.removeprefix(SUMMARY_REQUEST).split("\n\n") if line.strip()]
        # An earlier summary's lines are kept as they are (not nested), oldest first; the budget cuts the newest.
        lines = [line.removeprefix(EARLIER).removeprefix("Summary: ") for line in lines]
        words = ("Summary: " + " / ".join(lines)).split(" ")
        return " ".join(words[: int(body.get("max_tokens") or 512)]), []
    clean = MARKERS.sub("", user_text).strip()
    if tools and choice != "none" and last.get("role") == "user":
        if isinstance(choice, dict):
            wanted = (choice.get("function") or {}).get("name")
            chosen = [t for t in tools if t["function"]["name"] == wanted]
        elif "[parallel]" in user_text and body.get("parallel_tool_calls") is not False:
            chosen = tools if len(tools) > 1 else tools * 2
        else:
            chosen = tools[:1]
        calls = [
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": t["function"]["name"], "arguments": _arguments(t, clean)},
            }
            for t in chosen
        ]
        return "", calls
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        schema = response_format["json_schema"].get("schema") or {}
        return _arguments({"function": {"parameters": schema}}, clean), []
    if response_format.get("type") == "json_object":
        return json.dumps({"echo": clean}), []
    if behaviour.reply is not None:
        return behaviour.reply, []
    if behaviour.words is not None:
        limit = body.get("max_tokens") or body.get("max_completion_tokens") or behaviour.words
        return " ".join(f"w{i}" for i in range(min(behaviour.words, int(limit)))), []
    return f"echo: {clean}", []


def _usage(body: dict[str, Any], text: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    prompt = sum(len(_text(m)) for m in body.get("messages") or []) // 4 + 1
    completion = (len(text) + sum(len(c["function"]["arguments"]) for c in calls)) // 4 + 1
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if body.get("reasoning_effort"):  # as OpenAI's reasoning models report it
        usage["prompt_tokens_details"] = {"cached_tokens": 1}
        usage["completion_tokens_details"] = {"reasoning_tokens": 7}
    return usage


def reasoning(body: dict[str, Any]) -> str:
    """The reasoning sent before the answer: only when the last user text holds `[think]`."""
    users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
    last = _text(users[-1]) if users else ""
    return f"Thinking about {MARKERS.sub('', last).strip()}." if "[think]" in last else ""


@dataclass
class Upstream:
    """The server's state: its behaviour, the gates, the requests received."""

    behaviour: Behaviour
    received: list[dict[str, Any]] = field(default_factory=list)
    # `--gate each`: one permit per release. `--gate rest`: the event the answers waiting now are held on.
    permits: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(0))
    held: asyncio.Event = field(default_factory=asyncio.Event)

    async def words(self, text: str) -> AsyncIterator[str]:
        """The answer's pieces, each when the behaviour lets it go."""
        held = self.held  # a release frees the answers waiting when it comes, not the later ones
        for index, piece in enumerate(pieces(text)):
            if self.behaviour.pace:
                await asyncio.sleep(self.behaviour.pace)
            if self.behaviour.gate == "each":
                await self.permits.acquire()
            elif self.behaviour.gate == "rest" and index == 1:
                await held.wait()
            yield piece

    def release(self) -> None:
        if self.behaviour.gate == "each":
            self.permits.release()
        else:
            self.held.set()
            self.held = asyncio.Event()


def build(behaviour: Behaviour) -> Starlette:
    state = Upstream(behaviour)

    async def completions(request: Request) -> Response:
        body = await request.json()
        if behaviour.record:
            state.received.append(body)
        if SUMMARY_REQUEST in json.dumps(body) and "[fail-summary]" in json.dumps(body):
            return JSONResponse({"error": {"message": "summary refused"}}, status_code=500)
        text, calls = answer(body, behaviour)
        user_texts = " ".join(_text(m) for m in body.get("messages") or [] if m.get("role") == "user")
        if not body.get("stream") or "[plain]" in user_texts:
            text = "".join([piece async for piece in state.words(text)])
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if reasoning(body):
                message["reasoning_content"] = reasoning(body)
            if calls:
                message["tool_calls"] = calls
            return JSONResponse(
                {
                    "id": "chatcmpl-upstream",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body.get("model"),
                    "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
                    "usage": _usage(body, text, calls),
                }
            )
        return StreamingResponse(_events(state, body, text, calls), media_type="text/event-stream")

    async def release(_: Request) -> Response:
        state.release()
        return JSONResponse({"released": True})

    async def requests(_: Request) -> Response:
        return JSONResponse(state.received)

    async def models(_: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": "upstream-model", "object": "model", "owned_by": "tests"}]}
        )

    return Starlette(
        routes=[
            # Both spellings: a provider's base_url may or may not end in /v1.
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/chat/completions", completions, methods=["POST"]),
            Route("/v1/models", models),
            Route("/models", models),
            Route("/release", release, methods=["POST"]),
            Route("/requests", requests),
        ]
    )


async def _events(state: Upstream, body: dict[str, Any], text: str, calls: list[dict[str, Any]]) -> AsyncIterator[str]:
    base = {"id": "chatcmpl-upstream", "object": "chat.completion.chunk", "created": 0, "model": body.get("model")}

    def event(chunk: dict[str, Any]) -> str:
        return f"data: {json.dumps(chunk)}\n\n"

    def delta(content: dict[str, Any], finish: str | None = None) -> str:
        return event({**base, "choices": [{"index": 0, "delta": content, "finish_reason": finish}]})

    yield delta({"role": "assistant", "content": ""})
    thought = reasoning(body)
    if thought:
        middle = len(thought) // 2
        for part in (thought[:middle], thought[middle:]):
            yield delta({"reasoning_content": part})
    async for piece in state.words(text):
        yield delta({"content": piece})
    for index, call in enumerate(calls):
        first = {"index": index, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"]}}
        yield delta({"tool_calls": [{**first, "function": {**first["function"], "arguments": ""}}]})
        arguments = call["function"]["arguments"]
        middle = len(arguments) // 2
        for part in (arguments[:middle], arguments[middle:]):
            yield delta({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
    yield delta({}, "tool_calls" if calls else "stop")
    if (body.get("stream_options") or {}).get("include_usage"):
        yield event({**base, "choices": [], "usage": _usage(body, text, calls)})
    yield "data: [DONE]\n\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    words = parser.add_mutually_exclusive_group()
    words.add_argument("--reply", help="answer this text (when no tool is called)")
    words.add_argument("--words", type=int, help="answer w0 w1 … (this many, at most the request's max_tokens)")
    parser.add_argument("--pace", type=float, default=0.0, help="seconds before each word")
    parser.add_argument("--gate", choices=["each", "rest"], help="words wait for POST /release (see the docstring)")
    parser.add_argument("--record", action="store_true", help="keep the requests for GET /requests")
    args = parser.parse_args()
    behaviour = Behaviour(reply=args.reply, words=args.words, pace=args.pace, gate=args.gate, record=args.record)
    uvicorn.run(build(behaviour), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
