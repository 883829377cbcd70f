"""The one pure-ASGI layer in front of FastAPI, and what it does to each HTTP request, in order:

1. observability (`Observation`, api/observability.py): request id, log context, HTTP metrics, the access log
   line, and the cancel scope that draining uses;
2. OpenAI's `x-ratelimit-*-requests` headers on every answer to a rate-limited credential, errors included;
3. the last resort (api/errors.py): whatever escapes the app is answered with the envelope, and swallowed, so the
   server keeps the connection;
4. the body limit (413 before parsing) and camelCase query parameters;
5. `Idempotency-Key` (api/idempotency.py), for a POST that carries the header.

One layer rather than one per concern: every await that suspends inside a route resumes each layer's frame on
its way back, and every message the route sends goes through each layer's `send`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from threadline.api import idempotency
from threadline.api.asgi import header, quota_holder, replaying
from threadline.api.errors import error_body, unexpected_response
from threadline.api.observability import Observation
from threadline.domain.limits import openai_duration
from threadline.observability import Observer
from threadline.services.rate_limits import RequestQuota

_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")


def snake_case(name: str) -> str:
    return _CAMEL.sub(r"_\1", name).lower()


class RequestMiddleware:
    """Steps 1–5 above. `max_bytes` is the body limit; `streamed` maps the paths of routes that read their body as a
    stream (an import) to their own, larger limit."""

    def __init__(
        self, app: ASGIApp, *, observer: Observer, max_bytes: int, streamed: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.observer = observer
        self.max_bytes = max_bytes
        self.streamed = dict(streamed or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        observation = Observation(scope, self.observer)
        quotas = quota_holder(scope)  # filled by the route's authentication (api/deps.py)

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                if quotas:
                    message = _with_quota_headers(message, quotas[-1])
                message = observation.starting(message)
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                observation.finished = True
            await send(message)

        try:
            if observation.probe:
                await self._answer(scope, receive, observed_send, observation)
            else:
                with self.observer.lifecycle.track() as cancel_scope:
                    await self._answer(scope, receive, observed_send, observation)
                if cancel_scope.cancelled_caught:
                    await observation.interrupted(observed_send)
        finally:
            observation.close(scope)

    async def _answer(self, scope: Scope, receive: Receive, send: Send, observation: Observation) -> None:
        """Steps 3–5. An exception after the response started cannot be answered any more: it goes on to the
        server, which ends that (broken) response's connection."""
        try:
            limited = await self._within_limit(scope, receive, send)
            if limited is None:
                return
            scope = _snake_case_query(scope)
            key = header(scope, b"idempotency-key") if scope["method"] == "POST" else None
            if key is None:
                await self.app(scope, limited, send)
            else:
                await idempotency.recorded(self.app, scope, limited, send, key)
        except Exception as exc:
            if observation.started:
                raise
            await unexpected_response(exc)(scope, receive, send)

    async def _within_limit(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """The body limit: `receive` for a body within it, None once refused with a 413 (or the client went away).

        A declared `Content-Length` is checked up front (the server holds the body to it). A body without one
        (`Transfer-Encoding: chunked`) is read here, counting the bytes as they arrive, and handed on once complete:
        stopping it inside the route instead would surface as FastAPI's generic "error parsing the body" 400. A
        chunked body to a streamed route passes through unread (the route counts it).
        """
        declared = dict(scope["headers"]).get(b"content-length")
        limit = self.streamed.get(scope["path"])
        if limit is not None:
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await _too_large(send, limit)
                return None
            return receive
        if declared is not None and declared.isdigit():
            if int(declared) > self.max_bytes:
                await _too_large(send, self.max_bytes)
                return None
            return receive
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away mid-body
                return None
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await _too_large(send, self.max_bytes)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return replaying(b"".join(chunks), receive)


def _snake_case_query(scope: Scope) -> Scope:
    """Requests accept camelCase as well as snake_case (docs/surfaces.md): `?organizationId=` ≡ `?organization_id=`."""
    if not scope.get("query_string"):
        return scope
    pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
    if not any(_CAMEL.search(k) for k, _ in pairs):
        return scope
    normalized = urlencode([(snake_case(k), v) for k, v in pairs])
    return dict(scope, query_string=normalized.encode("latin-1"))


def _with_quota_headers(message: Message, quota: RequestQuota) -> Message:
    extra = [
        (b"x-ratelimit-limit-requests", str(quota.limit).encode()),
        (b"x-ratelimit-remaining-requests", str(quota.remaining).encode()),
        (b"x-ratelimit-reset-requests", openai_duration(quota.reset_seconds).encode()),
    ]
    return {**message, "headers": [*message.get("headers", []), *extra]}


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps(
        error_body(f"The request body is larger than {limit} bytes.", "invalid_request_error", "payload_too_large")
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"x-should-retry", b"false")],
        }
    )
    await send({"type": "http.response.body", "body": body})
