"""`Idempotency-Key` on creating POSTs: a small ASGI layer plus a one-line opt-in per route.

A route opts in with `dependencies=[Idempotent]` (or a router with `APIRouter(dependencies=[Idempotent])`); the
dependency documents the header in OpenAPI and marks the route. The layer sits outside the routes because it
must see the whole response — status, headers and every body chunk, SSE streams included — to store and replay
it. It authenticates through `services.auth` (keys are scoped to the organization) in its own short transaction,
claims the key before the route runs, and stores the result before the last body chunk leaves, so a client never
sees a result that a retry could not replay. The rules live in `services/idempotency.py`.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, Header
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from threadline.api.deps import credential_of
from threadline.api.errors import error_response
from threadline.config import Settings
from threadline.errors import ThreadlineError
from threadline.services import auth, idempotency
from threadline.services.auth import Principal

logger = logging.getLogger("threadline.idempotency")

# Not replayed: recomputed for the replay, or about the connection rather than the result.
_UNSTORED_HEADERS = {"content-length", "date", "server", "set-cookie", "transfer-encoding", "connection"}


async def idempotency_key_header(
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=idempotency.HEADER,
            description="Makes the request safe to retry: a retry with the same key and request returns the "
            "first result instead of running again (kept 24 h, scoped to the organization).",
        ),
    ] = None,
) -> None:
    """Marks a route as idempotent (the middleware does the work) and documents the header."""


Idempotent = Depends(idempotency_key_header)


def _opted_in(scope: Scope) -> bool:
    app = scope.get("app")
    if not isinstance(app, FastAPI):
        return False
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return isinstance(route, APIRoute) and any(
                getattr(d, "dependency", None) is idempotency_key_header for d in route.dependencies
            )
    return False


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        key = Headers(scope=scope).get(idempotency.HEADER)
        if key is None or not _opted_in(scope):
            await self.app(scope, receive, send)
            return
        try:
            idempotency.validate_key(key)
        except ThreadlineError as exc:
            await error_response(exc)(scope, receive, send)
            return
        body = await _read_body(receive)
        replay_receive = _replaying(body, receive)
        fastapi_app: FastAPI = scope["app"]
        maker: async_sessionmaker[AsyncSession] = fastapi_app.state.sessionmaker
        settings: Settings = fastapi_app.state.settings
        organization_id = await _organization(maker, scope, body)
        if organization_id is None:
            # Unauthenticated or no organization: the route answers with the error; nothing to remember.
            await self.app(scope, replay_receive, send)
            return
        raw_query: bytes = scope.get("query_string", b"")
        query = raw_query.decode("latin-1")
        digest = idempotency.request_hash(scope["method"], scope["path"], query, body)
        try:
            outcome = await idempotency.begin(maker, settings, organization_id, key, digest)
        except ThreadlineError as exc:
            await error_response(exc)(scope, replay_receive, send)
            return
        if isinstance(outcome, idempotency.Stored):
            headers = {k: v for k, v in outcome.headers.items() if k not in _UNSTORED_HEADERS}
            headers["idempotent-replayed"] = "true"
            await Response(outcome.body, outcome.status, headers=headers)(scope, replay_receive, send)
            return
        await self._run(scope, replay_receive, send, maker, outcome)

    async def _run(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        maker: async_sessionmaker[AsyncSession],
        claim: idempotency.Claim,
    ) -> None:
        status = 500
        headers: dict[str, Any] = {}
        chunks: list[bytes] = []
        settled = False

        async def recording_send(message: Message) -> None:
            nonlocal status, headers, settled
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
            elif message["type"] == "http.response.body" and not settled:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    # Store before the client sees the end, so whatever it saw can be replayed.
                    settled = True
                    await self._settle(maker, claim, status, headers, b"".join(chunks))
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            if not settled:
                # An exception or a stream cut short: nothing final to remember; a retry runs again.
                await _quietly(idempotency.abandon(maker, claim))

    async def _settle(
        self,
        maker: async_sessionmaker[AsyncSession],
        claim: idempotency.Claim,
        status: int,
        headers: dict[str, Any],
        body: bytes,
    ) -> None:
        # 5xx and retryable refusals (thread_busy, rate_limited…) are not final: a retry may succeed.
        if status >= 500 or headers.get("x-should-retry") == "true":
            await _quietly(idempotency.abandon(maker, claim))
            return
        stored = {k: v for k, v in headers.items() if k not in _UNSTORED_HEADERS}
        await _quietly(idempotency.finish(maker, claim, status, stored, body))


async def _quietly(work: Any) -> None:
    """Bookkeeping must never turn a delivered result into an error; a lost record only costs a re-run."""
    try:
        await work
    except Exception:
        logger.exception("idempotency bookkeeping failed")


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """Hand the buffered body to the route, then pass through (disconnect detection for streams)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _organization(maker: async_sessionmaker[AsyncSession], scope: Scope, body: bytes) -> str | None:
    """The organization the request acts in, as the route will resolve it; None when it will fail anyway."""
    credential = credential_of(Request(scope))
    try:
        async with maker() as session:
            principal: Principal = await auth.authenticate(session, credential)
            await session.commit()
        organization_id: str = principal.organization(_requested_organization(scope, body))
        return organization_id
    except ThreadlineError:
        return None


def _requested_organization(scope: Scope, body: bytes) -> str | None:
    raw: bytes = scope.get("query_string", b"")
    query = parse_qs(raw.decode("latin-1"))
    if query.get("organization_id"):
        return query["organization_id"][0]
    try:
        parsed = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(parsed, dict):
        value = parsed.get("organization_id", parsed.get("organizationId"))
        return value if isinstance(value, str) else None
    return None
