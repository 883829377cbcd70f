"""The upstream client (`providers/transport.py`: httpx over aiohttp) against a real socket: what the provider sends,
keep-alive, server-sent events cut anywhere, and each fault as the provider's error."""

from __future__ import annotations

import asyncio
import functools
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest

from threadline.domain.messages import ChatMessage
from threadline.errors import UpstreamError, UpstreamRejected, UpstreamTimeout
from threadline.providers.base import Finished, GenerationParams, StreamEvent, TextDelta
from threadline.providers.openai_compat import OpenAICompatProvider
from threadline.providers.transport import upstream_client

MESSAGES = [ChatMessage("user", "Say hi")]
PARAMS = GenerationParams(max_output_tokens=16)
STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def event(content: str | None = None, finish_reason: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}).encode()


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Upstream:
    url: str
    connections: int = 0
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)  # (head, body)


async def read_request(reader: asyncio.StreamReader, upstream: Upstream) -> bool:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return False
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        0,
    )
    upstream.requests.append((head, await reader.readexactly(length)))
    return True


@asynccontextmanager
async def upstream(script: Script) -> AsyncIterator[Upstream]:
    """A TCP server on a free port whose every connection runs `script` for each request it reads."""
    state = Upstream("")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            while await read_request(reader, state):
                await script(reader, writer)
                if writer.is_closing():
                    break
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def provider(url: str, timeout_seconds: float | None = None) -> AsyncIterator[OpenAICompatProvider]:
    client = upstream_client()
    try:
        yield OpenAICompatProvider(
            name="up", base_url=url, models=["m"], http_client=client, timeout_seconds=timeout_seconds
        )
    finally:
        await client.aclose()


async def collect(p: OpenAICompatProvider) -> list[StreamEvent]:
    return [e async for e in p.stream("m", MESSAGES, PARAMS)]


async def answer_in_pieces(
    _reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes = STREAM_HEAD
) -> None:
    """One answer written in awkward pieces: CRLF line ends split between writes, two events in one write."""
    body = event("Hel") + b"\r\n\r\n" + event("lo") + b"\r\n\r\n" + event(finish_reason="stop") + b"\r\n\r\n"
    body += b": a comment\r\n\r\ndata: [DONE]\r\n\r\n"
    writer.write(head)
    for start in range(0, len(body), 37):
        writer.write(chunked(body[start : start + 37]))
        await writer.drain()
        await asyncio.sleep(0)
    writer.write(b"0\r\n\r\n")
    await writer.drain()


async def test_a_stream_cut_anywhere_reads_as_its_events_and_the_connection_is_kept_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UP_KEY", "secret-key")
    async with upstream(answer_in_pieces) as up:
        client = upstream_client()
        try:
            p = OpenAICompatProvider(name="up", base_url=up.url, models=["m"], http_client=client, api_key_env="UP_KEY")
            first, second = await collect(p), await collect(p)
        finally:
            await client.aclose()
    assert first == second == [TextDelta("Hel"), TextDelta("lo"), Finished("stop")]
    assert up.connections == 1  # the second turn reused the first's connection
    head, body = up.requests[0]
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/chat/completions HTTP/1.1"
    headers = [line.split(": ", 1) for line in lines[1:] if line]
    names = [name.lower() for name, _ in headers]
    assert names.count("host") == names.count("content-length") == 1
    assert dict((name.lower(), value) for name, value in headers)["authorization"] == "Bearer secret-key"
    assert json.loads(body)["messages"] == [{"role": "user", "content": "Say hi"}]


async def test_cookies_an_upstream_sets_are_never_sent_back() -> None:
    """One client serves every organization: what one caller's answer set must not ride on the next request."""
    head = STREAM_HEAD.replace(b"\r\n\r\n", b"\r\nset-cookie: session=org-a; Path=/\r\n\r\n", 1)
    async with upstream(functools.partial(answer_in_pieces, head=head)) as up:
        # A host name, not an IP address: aiohttp's own jar would keep cookies only for a name.
        url = up.url.replace("127.0.0.1", "localhost")
        async with provider(url) as p:
            assert await collect(p) == await collect(p) == [TextDelta("Hel"), TextDelta("lo"), Finished("stop")]
    assert len(up.requests) == 2
    assert all(b"\r\ncookie:" not in request_head.lower() for request_head, _ in up.requests)


async def test_nothing_listening_is_an_unavailable_upstream() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    async with provider(f"http://127.0.0.1:{port}/v1") as p:
        with pytest.raises(UpstreamError) as caught:
            await collect(p)
    assert caught.value.code == "upstream_unavailable"


async def hang_up_mid_answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(STREAM_HEAD + chunked(event("Hel") + b"\n\n"))
    await writer.drain()
    writer.close()


async def test_an_upstream_that_hangs_up_mid_answer_is_a_bad_stream() -> None:
    async with upstream(hang_up_mid_answer) as up, provider(up.url) as p:
        with pytest.raises(UpstreamError) as caught:
            await collect(p)
    assert caught.value.code == "upstream_bad_stream"
    assert not isinstance(caught.value, UpstreamTimeout)


async def stall_after_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(STREAM_HEAD)
    await writer.drain()
    await reader.read()  # until the client gives up and closes


async def test_an_upstream_that_stops_sending_times_out() -> None:
    async with upstream(stall_after_headers) as up, provider(up.url, timeout_seconds=0.3) as p:
        with pytest.raises(UpstreamTimeout):
            await collect(p)


async def rate_limited(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    body = json.dumps({"error": {"message": "slow down"}}).encode()
    writer.write(b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n")
    writer.write(b"content-length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()


async def test_an_error_status_reads_its_message() -> None:
    async with upstream(rate_limited) as up, provider(up.url) as p:
        with pytest.raises(UpstreamError) as caught:
            await collect(p)
    assert caught.value.code == "upstream_rate_limited"
    assert "slow down" in str(caught.value)
    assert not isinstance(caught.value, UpstreamRejected)


SSE_HEADERS = {"content-type": "text/event-stream"}


class Pieces(httpx.AsyncByteStream):
    def __init__(self, *pieces: bytes) -> None:
        self.pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


async def test_every_cut_of_the_stream_reads_the_same() -> None:
    """Server-sent events cut at every byte (a CR ending one piece may be half a CRLF), with CRLF, LF and CR line
    ends and a two-line data field."""
    body = event("Hel") + b"\r\n\r\n" + b'data: {"choices": [{"index": 0,\ndata: "delta": {"content": "lo"}}]}\n\n'
    body += event(finish_reason="stop") + b"\r\r: comment\r\rdata: [DONE]\r\n\r\n"
    for cut in range(len(body) + 1):
        pieces = Pieces(body[:cut], body[cut:])
        client = httpx.AsyncClient(
            transport=httpx.MockTransport(
                lambda _r, pieces=pieces: httpx.Response(200, headers=SSE_HEADERS, stream=pieces)
            )
        )
        p = OpenAICompatProvider(name="up", base_url="http://up.test/v1", models=["m"], http_client=client)
        assert await collect(p) == [TextDelta("Hel"), TextDelta("lo"), Finished("stop")], cut
