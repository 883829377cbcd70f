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
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx

from threadline.domain.messages import ChatMessage
from threadline.domain.tokens import reply_overhead
from threadline.errors import ModelNotFound, UpstreamError, UpstreamRejected, UpstreamTimeout
from threadline.providers.base import Finished, GenerationParams, ModelInfo, StreamEvent, TextDelta
from threadline.providers.tokenizers import BpeTokenizer, EstimateTokenizer, make_tokenizer, tokenizer_name_for

_FINISH_REASONS = {"length": "length", "content_filter": "content_filter"}  # anything else ends as "stop"
_MAX_ERROR_BODY = 64 * 1024


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
        self._api_key = os.environ.get(api_key_env) if api_key_env else None
        self._timeout = httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, 10.0)) if timeout_seconds else None
        self._max_tokens_param = max_tokens_param
        windows = dict(model_context_windows or {})
        names = {model: tokenizer_name_for(model, tokenizer) for model in models}
        self._tokenizers = {name: make_tokenizer(name) for name in set(names.values())}
        self._infos = {
            model: ModelInfo(
                name=model,
                provider=name,
                context_window=windows.get(model, context_window),
                tokenizer=names[model],
                request_overhead_tokens=reply_overhead(self._tokenizers[names[model]]),
            )
            for model in models
        }

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
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            self._max_tokens_param: params.max_output_tokens,
        }
        if params.temperature is not None:
            body["temperature"] = params.temperature
        return body

    async def stream(
        self, model: str, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[StreamEvent]:
        self._info(model)
        headers = {"Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        url = f"{self.base_url}/chat/completions"
        request = self._client.build_request(
            "POST",
            url,
            json=self._request(model, messages, params),
            headers=headers,
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

    async def _events(self, response: httpx.Response) -> AsyncIterator[StreamEvent]:
        finish_reason: str | None = None
        usage: dict[str, Any] | None = None
        seen_data = done = False
        async for data in _sse_data(response):
            if data.strip() == "[DONE]":
                done = True
                break
            seen_data = True
            chunk = _parse_chunk(self.name, data)
            if isinstance(chunk.get("usage"), dict):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta") or {}
                content = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(content, str) and content:
                    yield TextDelta(content)
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
        )


async def _sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The `data` of each server-sent event (multi-line data joined by newlines; comments and other fields skipped)."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field == "data":
            lines.append(value[1:] if value.startswith(" ") else value)
    if lines:  # a last event without its blank line
        yield "\n".join(lines)


def _parse_chunk(upstream: str, data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
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


def _int(usage: dict[str, Any] | None, key: str) -> int | None:
    value = (usage or {}).get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
