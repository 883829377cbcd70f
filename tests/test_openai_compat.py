"""The OpenAI-compatible provider against httpx.MockTransport: the happy path and one test per fault."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from threadline import errors
from threadline.domain.messages import ChatMessage
from threadline.providers import openai_compat
from threadline.providers.base import Finished, GenerationParams, StreamEvent, TextDelta
from threadline.providers.openai_compat import OpenAICompatProvider

BASE_URL = "http://upstream.test/v1"
MESSAGES = [ChatMessage("system", "Be brief."), ChatMessage("user", "Say hi")]
PARAMS = GenerationParams(max_output_tokens=16, temperature=0.5)


def sse(*events: Any) -> bytes:
    """Server-sent events as an OpenAI-compatible server writes them."""
    out = []
    for event in events:
        out.append(f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n")
    return "".join(out).encode()


def chunk(content: str | None = None, finish_reason: str | None = None) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


USAGE = {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}
HAPPY = sse(chunk(""), chunk("Hel"), chunk("lo"), chunk("!"), chunk(finish_reason="stop"), USAGE, "[DONE]")

Handler = Callable[[httpx.Request], httpx.Response]


def provider_for(handler: Handler, **kwargs: Any) -> OpenAICompatProvider:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenAICompatProvider(
        name="upstream", base_url=BASE_URL, models=["gpt-4.1", "my-llama"], http_client=client, **kwargs
    )


async def collect(provider: OpenAICompatProvider, model: str = "gpt-4.1") -> list[StreamEvent]:
    return [event async for event in provider.stream(model, MESSAGES, PARAMS)]


def stream_response(body: bytes, status: int = 200) -> httpx.Response:
    return httpx.Response(status, content=body, headers={"content-type": "text/event-stream"})


async def test_happy_path_streams_deltas_in_order_then_finished_with_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UPSTREAM_TEST_KEY", raising=False)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return stream_response(HAPPY)

    events = await collect(provider_for(handler, api_key_env="UPSTREAM_TEST_KEY"))

    assert events == [TextDelta("Hel"), TextDelta("lo"), TextDelta("!"), Finished("stop", 12, 3)]
    (request,) = seen
    assert str(request.url) == f"{BASE_URL}/chat/completions"
    body = json.loads(request.content)
    assert body == {
        "model": "gpt-4.1",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 16,
        "temperature": 0.5,
    }
    assert "authorization" not in request.headers  # no key configured → no header at all


async def test_api_key_is_sent_as_bearer_only_when_its_env_var_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTREAM_TEST_KEY", "sk-upstream-secret")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return stream_response(HAPPY)

    keyed = provider_for(handler, api_key_env="UPSTREAM_TEST_KEY")
    other = provider_for(handler, api_key_env="SOME_OTHER_UNSET_KEY")
    await collect(keyed)
    await collect(other)

    assert seen[0].headers["authorization"] == "Bearer sk-upstream-secret"
    assert "authorization" not in seen[1].headers  # another upstream never receives this key
    assert "sk-upstream-secret" not in repr(keyed)


async def test_max_completion_tokens_and_usage_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        # No usage chunk, no [DONE]: a finish_reason is enough to end well.
        return stream_response(sse(chunk("ok"), chunk(finish_reason="length")))

    events = await collect(provider_for(handler, max_tokens_param="max_completion_tokens"))
    assert events == [TextDelta("ok"), Finished("length", None, None)]
    assert seen[0]["max_completion_tokens"] == 16 and "max_tokens" not in seen[0]


async def test_multiline_data_comments_and_crlf_are_parsed() -> None:
    body = (
        b": keep-alive\r\n\r\n"
        b'event: message\r\ndata: {"choices": [{"index": 0,\r\ndata:  "delta": {"content": "A"}}]}\r\n\r\n'
        b"data: " + json.dumps(chunk(finish_reason="stop")).encode() + b"\r\n\r\ndata: [DONE]\r\n\r\n"
    )
    events = await collect(provider_for(lambda _: stream_response(body)))
    assert events == [TextDelta("A"), Finished("stop", None, None)]


async def expect_error(provider: OpenAICompatProvider, cls: type[errors.UpstreamError], code: str) -> str:
    with pytest.raises(errors.UpstreamError) as caught:
        await collect(provider)
    assert type(caught.value) is cls
    assert caught.value.code == code
    return caught.value.message


async def test_timeout_is_upstream_timeout() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    await expect_error(provider_for(handler), errors.UpstreamTimeout, "upstream_timeout")


async def test_timeout_mid_stream_is_upstream_timeout() -> None:
    class Stalling(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield sse(chunk("Hel"))
            raise httpx.ReadTimeout("no chunk within the read timeout")

    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Stalling(), headers={"content-type": "text/event-stream"})

    await expect_error(provider_for(handler), errors.UpstreamTimeout, "upstream_timeout")


def test_a_base_url_that_is_not_http_is_refused_at_start() -> None:
    client = httpx.AsyncClient()
    with pytest.raises(ValueError, match="base_url"):
        OpenAICompatProvider(name="bad", base_url="ftp://example.test/v1", models=["m"], http_client=client)


async def test_connection_error_is_upstream_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    await expect_error(provider_for(handler), errors.UpstreamError, "upstream_unavailable")


async def test_5xx_is_upstream_error() -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": {"message": "overloaded"}})

    message = await expect_error(provider_for(handler), errors.UpstreamError, "upstream_error")
    assert "503" in message and "overloaded" in message


async def test_429_is_upstream_rate_limited() -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"error": {"message": "Rate limit reached for gpt-4.1"}})

    message = await expect_error(provider_for(handler), errors.UpstreamError, "upstream_rate_limited")
    assert "Rate limit reached" in message


async def test_4xx_is_upstream_rejected_with_the_upstream_message() -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}})

    message = await expect_error(provider_for(handler), errors.UpstreamRejected, "upstream_rejected")
    assert "Incorrect API key provided" in message
    assert errors.UpstreamRejected("x").retryable is False


async def test_malformed_json_chunk_is_bad_stream() -> None:
    body = sse(chunk("Hi")) + b"data: {not json\n\n"
    await expect_error(provider_for(lambda _: stream_response(body)), errors.UpstreamError, "upstream_bad_stream")


async def test_stream_cut_off_before_finish_is_bad_stream() -> None:
    body = sse(chunk("Hel"), chunk("lo"))  # no finish_reason, no [DONE]
    await expect_error(provider_for(lambda _: stream_response(body)), errors.UpstreamError, "upstream_bad_stream")


async def test_connection_dropped_mid_stream_is_bad_stream() -> None:
    class Dropping(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield sse(chunk("Hel"))
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Dropping(), headers={"content-type": "text/event-stream"})

    await expect_error(provider_for(handler), errors.UpstreamError, "upstream_bad_stream")


async def test_empty_stream_is_bad_stream() -> None:
    await expect_error(provider_for(lambda _: stream_response(b"")), errors.UpstreamError, "upstream_bad_stream")


async def test_done_alone_is_an_empty_stream() -> None:
    body = sse("[DONE]")
    await expect_error(provider_for(lambda _: stream_response(body)), errors.UpstreamError, "upstream_bad_stream")


async def test_error_object_inside_the_stream_is_upstream_error() -> None:
    body = sse(chunk("Hi"), {"error": {"message": "model crashed"}})
    message = await expect_error(provider_for(lambda _: stream_response(body)), errors.UpstreamError, "upstream_error")
    assert "model crashed" in message


async def test_closing_the_stream_early_closes_the_upstream_response() -> None:
    closed: list[bool] = []

    class Endless(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            while True:
                yield sse(chunk("x"))

        async def aclose(self) -> None:
            closed.append(True)

    provider = provider_for(lambda _: httpx.Response(200, stream=Endless()))
    stream = provider.stream("gpt-4.1", MESSAGES, PARAMS)
    assert await anext(stream) == TextDelta("x")
    await stream.aclose()
    assert closed == [True]


async def test_unknown_model_is_model_not_found() -> None:
    provider = provider_for(lambda _: stream_response(HAPPY))
    with pytest.raises(errors.ModelNotFound) as caught:
        await collect(provider, model="gpt-9")
    assert caught.value.code == "model_not_found" and "gpt-4.1" in caught.value.message


def test_models_carry_windows_and_tokenizers() -> None:
    provider = provider_for(
        lambda _: stream_response(HAPPY), context_window=128000, model_context_windows={"my-llama": 32000}
    )
    infos = {m.name: m for m in provider.models()}
    assert infos["gpt-4.1"].context_window == 128000 and infos["gpt-4.1"].tokenizer == "o200k"
    assert infos["my-llama"].context_window == 32000 and infos["my-llama"].tokenizer == "estimate"
    assert provider.tokenizer("gpt-4.1").name == "o200k"
    configured = provider_for(lambda _: stream_response(HAPPY), tokenizer="cl100k")
    assert {m.tokenizer for m in configured.models()} == {"cl100k"}


async def test_the_body_is_read_to_its_end_after_done_so_the_connection_is_kept() -> None:
    """httpx closes a connection whose response is closed before its end: every turn would open a new one."""
    connections = 0
    served = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
                await reader.readexactly(int(length.group(1)) if length else 0)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
                writer.write(b"transfer-encoding: chunked\r\n\r\n")
                writer.write(b"%x\r\n%s\r\n" % (len(HAPPY), HAPPY))
                await writer.drain()
                await asyncio.sleep(0.01)  # the end of the body comes in a read of its own
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        writer.close()
        await writer.wait_closed()
        served.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        async with httpx.AsyncClient() as client:
            provider = OpenAICompatProvider(
                name="upstream", base_url=f"http://127.0.0.1:{port}/v1", models=["gpt-4.1"], http_client=client
            )
            for _ in range(3):
                assert (await collect(provider))[-1] == Finished("stop", 12, 3)
        await asyncio.wait_for(served.wait(), 5)  # the client hung up: the one connection ends
    assert connections == 1


async def test_an_end_of_body_that_does_not_come_after_done_does_not_hold_the_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(openai_compat, "_END_OF_BODY_SECONDS", 0.05)

    class Lingering(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield HAPPY
            await asyncio.Event().wait()  # never ends
            yield b""

    provider = provider_for(lambda _: httpx.Response(200, stream=Lingering()))
    events = await asyncio.wait_for(collect(provider), 5)
    assert events[-1] == Finished("stop", 12, 3)


async def test_an_event_after_done_is_not_read() -> None:
    body = HAPPY + sse(chunk("ignored"))
    events = await collect(provider_for(lambda _: stream_response(body)))
    assert events == [TextDelta("Hel"), TextDelta("lo"), TextDelta("!"), Finished("stop", 12, 3)]


def test_the_request_body_is_what_json_writes() -> None:
    """orjson writes the upstream body (providers/openai_compat.py): the bytes httpx's `json=` wrote, escapes and
    non-ASCII text included; an integer past 64 bits (a tool's schema) falls back to json."""
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": 'héllo "x"\n\t\x01 \u2028 😀 </script>'},
            {"role": "assistant", "content": None},
        ],
        "stream": True,
        "temperature": 0.7,
        "tools": [{"type": "function", "function": {"parameters": {"maximum": 2**70}}}],
    }
    written = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    assert openai_compat.request_json(body) == written
    del body["tools"]
    assert openai_compat.request_json(body) == json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def test_chunks_are_read_as_json_reads_them() -> None:
    for data in ['{"choices":[{"delta":{"content":"h\\u00e9 \\ud83d\\ude00"}}],"x":1.5e-7}', '{"logprob":NaN}']:
        assert repr(openai_compat._loads(data)) == repr(json.loads(data))
    with pytest.raises(ValueError):
        openai_compat._loads('{"choices":')
