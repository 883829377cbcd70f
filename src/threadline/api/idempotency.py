"""`Idempotency-Key` on creating POSTs: a step of the request layer plus a one-line opt-in per route.

A route opts in with `dependencies=[Idempotent]` (or a router with `APIRouter(dependencies=[Idempotent])`).
The dependency documents the header in OpenAPI, authenticates through `services.auth` (keys are scoped to the
organization) and claims the key before the route runs — or answers with the stored result. `recorded`
buffers the body of a POST that carries the header (the request hash needs it) and, once a key is claimed,
records the whole response — status, headers and every body chunk, SSE streams included — storing it before the
last chunk leaves, so a client never sees a result that a retry could not replay. The rules live in
`services/idempotency.py`; routes that do not opt in ignore the header.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from threadline.api.asgi import replaying
from threadline.api.deps import credential_of
from threadline.config import Settings
from threadline.errors import ThreadlineError
from threadline.services import auth, idempotency
from threadline.services.auth import Principal

logger = logging.getLogger("threadline.idempotency")

# Not replayed: recomputed for the replay, or about the connection rather than the result.
_UNSTORED_HEADERS = {"content-length", "date", "server", "set-cookie", "transfer-encoding", "connection"}
_SCOPE_KEY = "threadline.idempotency"


@dataclass
class _Pending:
    """What the middleware hands the route's dependency: the key and the buffered body; the claim comes back."""

    key: str
    body: bytes
    claim: idempotency.Claim | None = None


class _Replay(Exception):
    """Raised by the dependency to answer with the stored result instead of running the route."""

    def __init__(self, stored: idempotency.Stored) -> None:
        super().__init__("replay")
        self.stored = stored


async def idempotency_key_header(
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=idempotency.HEADER,
            description="Makes the request safe to retry: a retry with the same key and request returns the "
            "first result instead of running again (kept 24 h, scoped to the organization).",
            json_schema_extra={"pattern": idempotency.KEY_PATTERN.pattern},
        ),
    ] = None,
) -> None:
    """Claim the key before the route runs (or replay the first result).

    It runs before the route's other dependencies open the request's transaction, and uses its own short ones:
    SQLite allows one writer, so a second transaction inside the request's would wait on itself.
    """
    pending: _Pending | None = request.scope.get(_SCOPE_KEY)
    if idempotency_key is None or pending is None:
        return
    idempotency.validate_key(idempotency_key)
    maker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    settings: Settings = request.app.state.settings
    organization_id = await _organization(maker, request, pending.body)
    if organization_id is None:
        # Unauthenticated or no organization: the route answers with the error; nothing to remember.
        return
    digest = idempotency.request_hash(request.method, request.url.path, request.url.query, pending.body)
    outcome = await idempotency.begin(maker, settings, organization_id, pending.key, digest)
    if isinstance(outcome, idempotency.Stored):
        raise _Replay(outcome)
    pending.claim = outcome


Idempotent = Depends(idempotency_key_header)


def install(app: FastAPI) -> None:
    """Add the replay handler (the request layer, api/middleware.py, calls `recorded` for a POST with the header)."""

    async def on_replay(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Replay)
        headers = {k: v for k, v in exc.stored.headers.items() if k not in _UNSTORED_HEADERS}
        headers["idempotent-replayed"] = "true"
        return Response(exc.stored.body, exc.stored.status, headers=headers)

    app.add_exception_handler(_Replay, on_replay)


async def recorded(app: ASGIApp, scope: Scope, receive: Receive, send: Send, key: str) -> None:
    """Run a POST that carries the header: its body buffered for the dependency, its response recorded once the
    key is claimed (the last layer before the app: it sees normalized query strings, bodies within the limit)."""
    pending = _Pending(key=key, body=await _read_body(receive))
    scope[_SCOPE_KEY] = pending
    fastapi_app: FastAPI = scope["app"]
    maker: async_sessionmaker[AsyncSession] = fastapi_app.state.sessionmaker
    status = 500
    headers: dict[str, Any] = {}
    chunks: list[bytes] = []
    settled = False

    async def recording_send(message: Message) -> None:
        nonlocal status, headers, settled
        claim = pending.claim
        if claim is None:  # a route that did not opt in, or a refusal before the claim
            await send(message)
            return
        if message["type"] == "http.response.start":
            status = int(message["status"])
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body" and not settled:
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                # Store before the client sees the end, so whatever it saw can be replayed.
                settled = True
                await _settle(maker, claim, status, headers, b"".join(chunks))
        await send(message)

    try:
        await app(scope, replaying(pending.body, receive), recording_send)
    finally:
        if pending.claim is not None and not settled:
            # An exception or a stream cut short: nothing final to remember; a retry runs again.
            await _quietly(idempotency.abandon(maker, pending.claim))


async def _settle(
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


async def _organization(maker: async_sessionmaker[AsyncSession], request: Request, body: bytes) -> str | None:
    """The organization the request acts in, as the route will resolve it; None when it will fail anyway."""
    credential = credential_of(request)
    try:
        async with maker() as session:
            principal: Principal = await auth.authenticate(session, credential)
            await session.commit()
        organization_id: str = principal.organization(_requested_organization(request, body))
        return organization_id
    except ThreadlineError:
        return None


def _requested_organization(request: Request, body: bytes) -> str | None:
    requested = request.query_params.get("organization_id")
    if requested:
        return requested
    try:
        parsed = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError, RecursionError):  # the route refuses the body itself
        return None
    if isinstance(parsed, dict):
        value = parsed.get("organization_id", parsed.get("organizationId"))
        return value if isinstance(value, str) else None
    return None
