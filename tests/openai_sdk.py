"""The official `openai` SDK (3.x, which speaks `httpx2`) wired to the real app in-process.

`_strict_response_validation=True` makes the SDK validate every answer against its own types, so a wrong
literal, a missing field or an ISO timestamp fails the test instead of slipping through.
"""

from __future__ import annotations

import httpx2
from fastapi import FastAPI
from openai import AsyncOpenAI

BASE_URL = "http://threadline.test/v1"


class CountingTransport(httpx2.AsyncBaseTransport):
    """The app behind an ASGI transport, remembering every request (to see whether the SDK retried)."""

    def __init__(self, app: FastAPI) -> None:
        self.inner = httpx2.ASGITransport(app=app)
        self.requests: list[httpx2.Request] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)


def sdk_client(app: FastAPI, api_key: str, *, strict: bool = True) -> tuple[AsyncOpenAI, CountingTransport]:
    """`strict=False` for `responses.compact`: its output holds user messages, which the SDK types only as
    assistant messages (OpenAI's own answers fail strict validation there too)."""
    transport = CountingTransport(app)
    client = AsyncOpenAI(
        base_url=BASE_URL,
        api_key=api_key,
        http_client=httpx2.AsyncClient(transport=transport),
        _strict_response_validation=strict,
    )
    return client, transport
