"""A small, deterministic OpenAI-compatible chat-completions server that calls tools: the real upstream process of
the tool tests (started by `tool_upstream_url` in tests/tool_helpers.py, run as `python tests/tool_upstream.py
--port N`).

What it answers, for `POST /v1/chat/completions`:
- tools offered, `tool_choice` not `none` and the last message a user message → a function call per tool it
  chooses: the named one (`tool_choice` names a function), every offered tool when the user text holds
  `[parallel]` (and `parallel_tool_calls` is not false; one tool is then called twice), else the first. Each
  argument of the tool's JSON Schema gets the user text (markers removed); integers get its length.
- the last message a tool result → text quoting every output of the trailing tool messages:
  `Tool said: <output>` (joined by ` | `).
- a `response_format` → JSON: for `json_schema` an object with each property of the schema (filled as tool
  arguments are), for `json_object` `{"echo": <last user text>}`.
- a summary request (the last user text starts with `Summarise this conversation`, as Threadline's compaction
  asks: docs/compaction.md) → `Summary: ` and the transcript's paragraphs joined by ` / ` (an earlier summary's
  text as it is), at most `max_tokens` words: a summary that keeps the oldest facts; `[fail-summary]` anywhere in
  it → a 500.
- anything else → `echo: <last user text>`.
- usage; with `reasoning_effort` also OpenAI's details (1 cached prompt token, 7 reasoning tokens).
- the last user text holding `[think]` → reasoning first, the way vLLM / DeepSeek / llama.cpp server send it:
  `reasoning_content` `Thinking about <text>.` (in deltas, or on the plain message).

Streamed (SSE, the way OpenAI streams: the call's id and name in its first delta, the arguments in pieces keyed
by `index`) unless the request has `stream: false` or the user text holds `[plain]`, then one JSON body.
`GET /requests` returns every request body received, for tests that check what Threadline replayed.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SUMMARY_REQUEST = "Summarise this conversation:"
EARLIER = "Summary of what came before: "
MARKERS = re.compile(r"\[(parallel|plain|think)\]\s*")
_received: list[dict[str, Any]] = []
_lock = threading.Lock()


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


def answer(body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
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
    users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
    last = _text(users[-1]) if users else ""
    return f"Thinking about {MARKERS.sub('', last).strip()}." if "[think]" in last else ""


def _chunks(body: dict[str, Any], text: str, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    base = {"id": "chatcmpl-tool", "object": "chat.completion.chunk", "created": 0, "model": body.get("model")}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    out = [chunk({"role": "assistant", "content": ""})]
    thought = reasoning(body)
    if thought:
        middle = len(thought) // 2
        out += [chunk({"reasoning_content": piece}) for piece in (thought[:middle], thought[middle:])]
    words = text.split(" ") if text else []
    out += [chunk({"content": word if i == 0 else " " + word}) for i, word in enumerate(words)]
    for index, call in enumerate(calls):
        first = {"index": index, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"]}}
        out.append(chunk({"tool_calls": [{**first, "function": {**first["function"], "arguments": ""}}]}))
        arguments = call["function"]["arguments"]
        middle = len(arguments) // 2
        for piece in (arguments[:middle], arguments[middle:]):
            out.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
    out.append(chunk({}, "tool_calls" if calls else "stop"))
    out.append({**base, "choices": [], "usage": _usage(body, text, calls)})
    return out


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "tool-model", "object": "model", "owned_by": "tests"}]})
        elif self.path == "/requests":
            with _lock:
                self._json(200, list(_received))
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._json(404, {"error": {"message": "not found"}})
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        with _lock:
            _received.append(body)
        if "[fail-summary]" in json.dumps(body) and SUMMARY_REQUEST in json.dumps(body):
            self._json(500, {"error": {"message": "summary refused"}})
            return
        text, calls = answer(body)
        user_texts = " ".join(_text(m) for m in body.get("messages") or [] if m.get("role") == "user")
        if body.get("stream") is False or "[plain]" in user_texts:
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if reasoning(body):
                message["reasoning_content"] = reasoning(body)
            if calls:
                message["tool_calls"] = calls
            finish = "tool_calls" if calls else "stop"
            self._json(
                200,
                {
                    "id": "chatcmpl-tool",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body.get("model"),
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": _usage(body, text, calls),
                },
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        for chunk in _chunks(body, text, calls):
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
