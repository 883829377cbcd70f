"""Small ASGI middlewares: body size limit, camelCase query parameters, rate-limit headers."""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from threadline.api.errors import error_body
from threadline.domain.limits import openai_duration
from threadline.services.rate_limits import RequestQuota

_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")


def snake_case(name: str) -> str:
    return _CAMEL.sub(r"_\1", name).lower()


class QueryCaseMiddleware:
    """Requests accept camelCase as well as snake_case (docs/surfaces.md): `?organizationId=` ≡ `?organization_id=`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("query_string"):
            raw = scope["query_string"].decode("latin-1")
            pairs = parse_qsl(raw, keep_blank_values=True)
            if any(_CAMEL.search(k) for k, _ in pairs):
                normalized = urlencode([(snake_case(k), v) for k, v in pairs])
                scope = dict(scope, query_string=normalized.encode("latin-1"))
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse bodies over `max_bytes` with 413 before parsing them.

    A declared `Content-Length` is checked up front (the server holds the body to it). A body without one
    (`Transfer-Encoding: chunked`) is read here, counting the bytes as they arrive, and handed on once complete:
    stopping it inside the route instead would surface as FastAPI's generic "error parsing the body" 400.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > self.max_bytes:
                await self._reject(send)
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away mid-body
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await self._reject(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, replaying(b"".join(chunks), receive), send)

    async def _reject(self, send: Send) -> None:
        body = json.dumps(
            error_body(
                f"The request body is larger than {self.max_bytes} bytes.",
                "invalid_request_error",
                "payload_too_large",
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"x-should-retry", b"false")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def replaying(body: bytes, receive: Receive) -> Receive:
    """Hand an already-read body to the app, then pass through (disconnect detection for streams)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


_QUOTA_KEY = "threadline.request_quota"


def record_request_quota(scope: Scope, quota: RequestQuota) -> None:
    """Hand the credential's standing to `RateLimitHeadersMiddleware` (called where the request is counted)."""
    holder: list[RequestQuota] | None = scope.get(_QUOTA_KEY)
    if holder is not None:
        holder.append(quota)


class RateLimitHeadersMiddleware:
    """OpenAI's `x-ratelimit-*-requests` headers on every answer to a rate-limited credential, errors included.

    The holder list travels in the scope: the middlewares below copy the scope, but shallowly, so the route's
    dependency fills the same list this layer reads when the response starts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        holder: list[RequestQuota] = []
        scope[_QUOTA_KEY] = holder

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and holder:
                quota = holder[-1]
                extra = [
                    (b"x-ratelimit-limit-requests", str(quota.limit).encode()),
                    (b"x-ratelimit-remaining-requests", str(quota.remaining).encode()),
                    (b"x-ratelimit-reset-requests", openai_duration(quota.reset_seconds).encode()),
                ]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
