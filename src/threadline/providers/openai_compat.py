"""Any OpenAI-compatible `/v1/chat/completions` upstream (OpenAI, vLLM, Ollama, llama.cpp server, LiteLLM…).

One class, configured per upstream; every request goes over the ONE shared `httpx.AsyncClient` of the app.
Every failure is translated here — httpx exceptions never leave this module:

| what happened                                         | error              | code                    |
|-------------------------------------------------------|--------------------|-------------------------|
| no answer in time (connect, read between chunks, …)   | UpstreamTimeout    | `upstream_timeout`      |
| cannot connect / the connection failed before a reply | UpstreamError      | `upstream_unavailable`  |
| HTTP 429                                              | UpstreamError      | `upstream_rate_limited` |
| HTTP 5xx, or an error object inside the stream        | UpstreamError      | `upstream_error`        |
| any other HTTP 4xx (bad key, unknown model…)          | UpstreamRejected   | `upstream_rejected`     |
| malformed JSON, cut off before finish_reason/[DONE], empty | UpstreamError | `upstream_bad_stream`   |

Sampling and output: `temperature`, `top_p`, `presence_penalty`, `frequency_penalty`, `response_format`
(structured output) and `reasoning_effort` are sent when the request sets them; unset, the upstream's defaults
apply.

Function tools: `tools` (with `strict` when given), `tool_choice` and `parallel_tool_calls` are sent as chat
completions takes them. History replays a run of consecutive `function_call` items as ONE assistant message with
`tool_calls`, and each output as a `tool` message with its `tool_call_id`. Calls are parsed from streamed deltas
(accumulated by their `index`: the first delta of a call names it, the next ones add to its arguments) and from a
plain JSON answer (a server that ignores `stream`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
import orjson

from threadline.domain.json_text import compact_json
from threadline.domain.messages import ChatMessage, ToolCall
from threadline.domain.tokens import reply_overhead
from threadline.errors import ModelNotFound, UpstreamError, UpstreamRejected, UpstreamTimeout
from threadline.ids import new_id
from threadline.providers.base import (
    Finished,
    FunctionTool,
    GenerationParams,
    ModelInfo,
    ReasoningDelta,
    ResponseFormat,
    StreamEvent,
    TextDelta,
    ToolCallArgumentsDelta,
    ToolCallStarted,
    ToolChoiceFunction,
)
from threadline.providers.tokenizers import BpeTokenizer, EstimateTokenizer, make_tokenizer, tokenizer_name_for

# Anything else ends as "stop".
_FINISH_REASONS = {"length": "length", "content_filter": "content_filter", "tool_calls": "tool_calls"}
_MAX_ERROR_BODY = 64 * 1024
# How long to wait, after `[DONE]`, for the end of the body (which normally comes with it).
_END_OF_BODY_SECONDS = 0.5


class OpenAICompatProvider:
    """Streams chat completions from one OpenAI-compatible base URL."""

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        models: Sequence[str],
        http_client: httpx.AsyncClient,
        api_key_env: str | None = None,
        context_window: int = 8192,
        model_context_windows: Mapping[str, int] | None = None,
        tokenizer: str | None = None,
        timeout_seconds: float | None = None,
        max_tokens_param: str = "max_tokens",
        capabilities: Mapping[str, bool] | None = None,
        model_capabilities: Mapping[str, Mapping[str, bool]] | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        try:
            scheme = httpx.URL(self.base_url).scheme
        except httpx.InvalidURL as exc:
            raise ValueError(f"provider {name!r}: base_url {base_url!r} is not a URL ({exc})") from exc
        if scheme not in ("http", "https"):
            raise ValueError(f"provider {name!r}: base_url must start with http:// or https://, not {base_url!r}")
        self._client = http_client
        # The key is this upstream's alone: it is only ever sent to self.base_url (redirects are not followed).
        api_key = os.environ.get(api_key_env) if api_key_env else None
        self._timeout = httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, 10.0)) if timeout_seconds else None
        # Parsed once: httpx parses a string URL and normalizes a dict of headers at every request (~15 µs).
        self._completions_url = httpx.URL(f"{self.base_url}/chat/completions")
        headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._headers = httpx.Headers(headers)
        self._max_tokens_param = max_tokens_param
        windows = dict(model_context_windows or {})
        names = {model: tokenizer_name_for(model, tokenizer) for model in models}
        self._tokenizers = {name: make_tokenizer(name) for name in set(names.values())}
        # Configured upstreams call tools and keep to JSON Schemas unless the config says otherwise; vision and
        # reasoning efforts only when it says so.
        defaults = {"tools": True, "vision": False, "json_schema": True, "reasoning": False, **(capabilities or {})}
        per_model = model_capabilities or {}
        self._infos = {}
        for model in models:
            caps = {**defaults, **per_model.get(model, {})}
            self._infos[model] = ModelInfo(
                name=model,
                provider=name,
                context_window=windows.get(model, context_window),
                tokenizer=names[model],
                request_overhead_tokens=reply_overhead(self._tokenizers[names[model]]),
                tools=caps["tools"],
                vision=caps["vision"],
                json_schema=caps["json_schema"],
                reasoning=caps["reasoning"],
            )

    def __repr__(self) -> str:  # never show the key
        return f"OpenAICompatProvider(name={self.name!r}, base_url={self.base_url!r}, models={list(self._infos)!r})"

    def models(self) -> Sequence[ModelInfo]:
        return list(self._infos.values())

    def tokenizer(self, model: str) -> BpeTokenizer | EstimateTokenizer:
        return self._tokenizers[self._info(model).tokenizer]

    async def aclose(self) -> None:
        """Nothing to release: the shared HTTP client belongs to the app."""

    def _info(self, model: str) -> ModelInfo:
        info = self._infos.get(model)
        if info is None:
            available = ", ".join(sorted(self._infos))
            raise ModelNotFound(f"The model '{model}' does not exist. Available models: {available}.", param="model")
        return info

    def _request(self, model: str, messages: Sequence[ChatMessage], params: GenerationParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": chat_messages(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
            self._max_tokens_param: params.max_output_tokens,
        }
        if params.temperature is not None:
            body["temperature"] = params.temperature
        for name in ("top_p", "presence_penalty", "frequency_penalty"):
            if getattr(params, name) is not None:
                body[name] = getattr(params, name)
        if params.response_format is not None:
            body["response_format"] = _response_format(params.response_format)
        if params.reasoning_effort is not None:
            body["reasoning_effort"] = params.reasoning_effort
        if params.tools:
            body["tools"] = [_tool(tool) for tool in params.tools]
            if params.tool_choice is not None:
                body["tool_choice"] = _tool_choice(params.tool_choice)
            if params.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = params.parallel_tool_calls
        return body

    async def stream(
        self, model: str, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[StreamEvent]:
        self._info(model)
        request = self._client.build_request(
            "POST",
            self._completions_url,
            content=request_json(self._request(model, messages, params)),
            headers=self._headers,
            timeout=self._timeout if self._timeout is not None else httpx.USE_CLIENT_DEFAULT,
        )
        try:
            response = await self._client.send(request, stream=True, follow_redirects=False)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"Upstream '{self.name}' did not answer in time ({type(exc).__name__}).") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"Upstream '{self.name}' is unavailable: {type(exc).__name__}: {exc}", code="upstream_unavailable"
            ) from exc
        try:
            if response.status_code >= 300:
                raise await self._status_error(response)
            if response.headers.get("content-type", "").startswith("application/json"):
                for event in await self._plain(response):
                    yield event
                return
            async for event in self._events(response):
                yield event
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"Upstream '{self.name}' stopped answering mid-stream.") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"Upstream '{self.name}' cut the stream off: {type(exc).__name__}: {exc}", code="upstream_bad_stream"
            ) from exc
        finally:
            await response.aclose()

    async def _status_error(self, response: httpx.Response) -> UpstreamError:
        body = b""
        async for part in response.aiter_bytes():
            body += part
            if len(body) > _MAX_ERROR_BODY:
                break
        detail = _error_message(body) or response.reason_phrase or "no detail"
        status = response.status_code
        if status == 429:
            return UpstreamError(f"Upstream '{self.name}' is rate limiting: {detail}", code="upstream_rate_limited")
        if status >= 500:
            return UpstreamError(f"Upstream '{self.name}' failed with HTTP {status}: {detail}", code="upstream_error")
        if 400 <= status < 500:
            return UpstreamRejected(f"Upstream '{self.name}' rejected the request (HTTP {status}): {detail}")
        # A 3xx: redirects are not followed, so the key never reaches another URL.
        return UpstreamError(f"Upstream '{self.name}' answered HTTP {status}.", code="upstream_error")

    async def _plain(self, response: httpx.Response) -> list[StreamEvent]:
        """A whole chat completion in one JSON body: the same events a stream would have given."""
        chunk = _parse_chunk(self.name, (await response.aread()).decode("utf-8", errors="replace"))
        choices = [c for c in chunk.get("choices") or [] if isinstance(c, dict) and c.get("index", 0) == 0]
        if not choices:
            raise UpstreamError(f"Upstream '{self.name}' answered without a choice.", code="upstream_bad_stream")
        message = choices[0].get("message")
        message = message if isinstance(message, dict) else {}
        events: list[StreamEvent] = []
        reasoning = _reasoning(message)
        if reasoning:
            events.append(ReasoningDelta(reasoning))
        content = message.get("content")
        if isinstance(content, str) and content:
            events.append(TextDelta(content))
        calls = _ToolCalls(self.name)
        for index, call in enumerate(message.get("tool_calls") or []):
            events += calls.add({**call, "index": index} if isinstance(call, dict) else call)
        usage = chunk.get("usage") if isinstance(chunk.get("usage"), dict) else None
        finish = str(choices[0].get("finish_reason") or "stop")
        events.append(
            Finished(
                _FINISH_REASONS.get(finish, "stop"),
                input_tokens=_int(usage, "prompt_tokens"),
                output_tokens=_int(usage, "completion_tokens"),
                cached_tokens=_int((usage or {}).get("prompt_tokens_details"), "cached_tokens"),
                reasoning_tokens=_int((usage or {}).get("completion_tokens_details"), "reasoning_tokens"),
                tool_calls=calls.done(),
            )
        )
        return events

    async def _events(self, response: httpx.Response) -> AsyncIterator[StreamEvent]:
        finish_reason: str | None = None
        usage: dict[str, Any] | None = None
        seen_data = done = False
        calls = _ToolCalls(self.name)
        events = _sse_data(response)
        async for data in events:
            if data.strip() == "[DONE]":
                done = True
                await _read_to_end(events)
                break
            seen_data = True
            chunk = _parse_chunk(self.name, data)
            if isinstance(chunk.get("usage"), dict):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta") or {}
                reasoning = _reasoning(delta) if isinstance(delta, dict) else None
                if reasoning:
                    yield ReasoningDelta(reasoning)
                content = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(content, str) and content:
                    yield TextDelta(content)
                tool_calls = delta.get("tool_calls") if isinstance(delta, dict) else None
                for call in tool_calls if isinstance(tool_calls, list) else []:
                    for event in calls.add(call):
                        yield event
                if choice.get("finish_reason"):
                    finish_reason = str(choice["finish_reason"])
        if not seen_data:
            raise UpstreamError(f"Upstream '{self.name}' sent an empty stream.", code="upstream_bad_stream")
        if finish_reason is None and not done:
            raise UpstreamError(
                f"Upstream '{self.name}' cut the stream off before it finished.", code="upstream_bad_stream"
            )
        yield Finished(
            _FINISH_REASONS.get(finish_reason or "stop", "stop"),
            input_tokens=_int(usage, "prompt_tokens"),
            output_tokens=_int(usage, "completion_tokens"),
            cached_tokens=_int((usage or {}).get("prompt_tokens_details"), "cached_tokens"),
            reasoning_tokens=_int((usage or {}).get("completion_tokens_details"), "reasoning_tokens"),
            tool_calls=calls.done(),
        )


class _ToolCalls:
    """Function calls accumulated from deltas keyed by `index`. A call is announced once its name is known;
    arguments that came before are announced with it."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.order: list[int] = []
        self.ids: dict[int, str] = {}
        self.names: dict[int, str] = {}
        self.arguments: dict[int, list[str]] = {}
        self.announced: set[int] = set()

    def add(self, call: Any) -> list[StreamEvent]:
        if not isinstance(call, dict):
            raise UpstreamError(f"Upstream '{self.upstream}' sent a malformed tool call.", code="upstream_bad_stream")
        index = call.get("index", 0)
        if not isinstance(index, int):
            raise UpstreamError(
                f"Upstream '{self.upstream}' sent a tool call without index.", code="upstream_bad_stream"
            )
        if index not in self.arguments:
            self.order.append(index)
            self.arguments[index] = []
        if isinstance(call.get("id"), str) and call["id"] and index not in self.ids:
            self.ids[index] = call["id"]
        function: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else {}
        name = function.get("name")
        if isinstance(name, str) and name and index not in self.names:
            self.names[index] = name
        delta = function.get("arguments")
        events: list[StreamEvent] = []
        if isinstance(delta, str) and delta:
            self.arguments[index].append(delta)
        if index not in self.announced and index in self.names:
            self.announced.add(index)
            position = self.order.index(index)
            events.append(ToolCallStarted(position, self._id(index), self.names[index]))
            if self.arguments[index]:
                events.append(ToolCallArgumentsDelta(position, "".join(self.arguments[index])))
        elif index in self.announced and isinstance(delta, str) and delta:
            events.append(ToolCallArgumentsDelta(self.order.index(index), delta))
        return events

    def _id(self, index: int) -> str:
        # Some servers send no id: one is made up, as a client would need one to answer the call.
        return self.ids.setdefault(index, new_id("call"))

    def done(self) -> tuple[ToolCall, ...]:
        calls = []
        for index in self.order:
            if index not in self.names:
                raise UpstreamError(
                    f"Upstream '{self.upstream}' sent a tool call without a function name.", code="upstream_bad_stream"
                )
            calls.append(ToolCall(self._id(index), self.names[index], "".join(self.arguments[index])))
        return tuple(calls)


def _reasoning(message: dict[str, Any]) -> str | None:
    """The reasoning of a chat message or delta: `reasoning_content` (vLLM, DeepSeek, llama.cpp server), or
    `reasoning` (some proxies)."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def request_json(body: dict[str, Any]) -> bytes:
    """The request body as httpx's `json=` writes it (compact, UTF-8), by orjson (`domain/json_text.py`): for a
    long prompt json's encoding was the biggest cost per message after reading it."""
    return compact_json(body)


def chat_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Items as chat-completions messages: consecutive function calls become ONE assistant message with
    `tool_calls`, outputs `tool` messages with their `tool_call_id`; a message with images sends its parts. A
    reasoning item (in the prompt only for a model with the `reasoning` capability) goes back as the
    `reasoning_content` of the assistant message that follows it."""
    out: list[dict[str, Any]] = []
    reasoning: list[str] = []
    for m in messages:
        if m.type == "reasoning":
            reasoning.append(m.content)
            continue
        if m.type == "function_call":
            call = {"id": m.call_id, "type": "function", "function": {"name": m.name, "arguments": m.content}}
            previous = out[-1] if out else None
            if previous is not None and previous["role"] == "assistant" and previous.get("tool_calls"):
                previous["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif m.type == "function_call_output":
            out.append({"role": "tool", "tool_call_id": m.call_id, "content": m.content})
        elif m.parts:
            out.append({"role": m.role, "content": [_chat_part(p) for p in m.parts]})
        else:
            out.append({"role": m.role, "content": m.content})
        if reasoning and out[-1]["role"] == "assistant":
            prior = out[-1].get("reasoning_content")
            out[-1]["reasoning_content"] = "\n\n".join([prior, *reasoning] if prior else reasoning)
            reasoning = []
    return out


def _chat_part(part: dict[str, Any]) -> dict[str, Any]:
    """A stored content part (docs/items.md) as a chat part: an image goes as its URL, which the upstream
    fetches (an https URL) or decodes (a data URL); Threadline never fetches it."""
    if part.get("type") == "image":
        return {"type": "image_url", "image_url": {"url": part["url"], "detail": part.get("detail", "auto")}}
    return {"type": "text", "text": part.get("text", "")}


def _tool(tool: FunctionTool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters is not None:
        function["parameters"] = tool.parameters
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _response_format(fmt: ResponseFormat) -> dict[str, Any]:
    """Chat completions' `response_format` (the Responses API's `text.format` with the schema one level down)."""
    if fmt.type != "json_schema":
        return {"type": fmt.type}
    schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema}
    if fmt.description is not None:
        schema["description"] = fmt.description
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}


def _tool_choice(choice: str | ToolChoiceFunction) -> Any:
    if isinstance(choice, ToolChoiceFunction):
        return {"type": "function", "function": {"name": choice.name}}
    return choice


async def _sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The `data` of each server-sent event (multi-line data joined by newlines; comments and other fields skipped).

    Read from the body's bytes and cut into lines here: httpx's text and line decoders cost more CPU than the rest
    of the stream. A line ends at CRLF, LF or CR; a CR that ends a chunk waits for the next (it may be half a CRLF).
    """
    lines: list[str] = []
    partial = b""
    async for chunk in response.aiter_bytes():
        if b"\n" not in chunk and b"\r" not in chunk:
            partial += chunk
            continue
        *complete, partial = _LINE_END.split(partial + chunk)
        for line in complete:
            if line:
                _add_field(lines, line)
            elif lines:
                yield "\n".join(lines)
                lines = []
    partial = partial.rstrip(b"\r")
    if partial:
        _add_field(lines, partial)
    if lines:  # a last event without its blank line
        yield "\n".join(lines)


_LINE_END = re.compile(rb"\r\n|\n|\r(?=[^\n])")


def _add_field(data: list[str], line: bytes) -> None:
    """One non-empty line of an event: its `data` is kept, comments (`:…`) and other fields are not."""
    field, _, value = line.decode("utf-8", errors="replace").partition(":")
    if field == "data":
        data.append(value[1:] if value.startswith(" ") else value)


async def _read_to_end(events: AsyncIterator[str]) -> None:
    """Read what follows `[DONE]`, normally only the end of the body, so the connection goes back to the client's
    pool: httpx closes a connection whose response is closed before its end, and the next turn would pay for a new
    one (a TLS handshake, with a real upstream). An event after `[DONE]`, or an end that does not come, stops it."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(_END_OF_BODY_SECONDS):
            async for _ in events:
                return


def _parse_chunk(upstream: str, data: str) -> dict[str, Any]:
    try:
        chunk = _loads(data)
    except ValueError as exc:
        raise UpstreamError(
            f"Upstream '{upstream}' sent a chunk that is not JSON: {data[:200]!r}", code="upstream_bad_stream"
        ) from exc
    if not isinstance(chunk, dict):
        raise UpstreamError(f"Upstream '{upstream}' sent a chunk that is not an object.", code="upstream_bad_stream")
    if chunk.get("error"):
        # Some servers report a failure inside an already-started 200 stream.
        detail = _error_message(json.dumps(chunk).encode()) or "unknown error"
        raise UpstreamError(f"Upstream '{upstream}' failed mid-stream: {detail}", code="upstream_error")
    return chunk


def _loads(data: str) -> Any:
    """json.loads, by orjson (~2x faster; every chunk of every stream comes through here). What orjson refuses and
    json reads (NaN, Infinity) is read by json; an integer past 64 bits, which no chunk field holds, comes back a
    float."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _error_message(body: bytes) -> str | None:
    """The message of an OpenAI-style error body ({"error": {"message": …}}), else the text itself (truncated)."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:500] or None
    if isinstance(parsed, dict):
        error = parsed.get("error", parsed)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
        if isinstance(error, str):
            return error[:500]
    return text[:500] or None


def _int(usage: Any, key: str) -> int | None:
    value = usage.get(key) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
