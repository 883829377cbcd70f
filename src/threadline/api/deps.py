"""Request-scoped dependencies: settings, the database session (the request owns the transaction), the caller.

Every dependency is `async def`, even when it awaits nothing: FastAPI runs a plain `def` one in a worker thread,
a thread hop that costs more than the function.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import httpx
from fastapi import Depends, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection

from threadline.api.asgi import record_request_quota
from threadline.api.observability import note_organization
from threadline.config import Settings
from threadline.providers.registry import ModelRegistry
from threadline.services import auth, rate_limits
from threadline.services.auth import Principal
from threadline.services.response_streams import StreamHub
from threadline.turns.engine import TurnEngine


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_sessionmaker(request: Request) -> async_sessionmaker[AsyncSession]:
    maker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    return maker


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the route returns, rolled back on any error."""
    maker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with maker() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


async def get_models(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.models
    return registry


async def get_webhook_http(request: Request) -> httpx.AsyncClient:
    """The client webhook deliveries go through (services/webhook_delivery.py)."""
    client: httpx.AsyncClient = request.app.state.webhook_http
    return client


async def get_stream_hub(request: Request) -> StreamHub:
    """The process's live signals about responses (resumable streams, cancels; docs/streams.md)."""
    hub: StreamHub = request.app.state.streams
    return hub


async def get_turns(request: Request) -> TurnEngine:
    """The turn engine the app built at start-up."""
    engine: TurnEngine = request.app.state.turns
    return engine


SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelsDep = Annotated[ModelRegistry, Depends(get_models)]
SessionmakerDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_sessionmaker)]
WebhookHttpDep = Annotated[httpx.AsyncClient, Depends(get_webhook_http)]
TurnsDep = Annotated[TurnEngine, Depends(get_turns)]
StreamHubDep = Annotated[StreamHub, Depends(get_stream_hub)]
# scope="function": the commit happens before the response is sent, so a client never reads its own write late.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


def credential_of(request: HTTPConnection) -> str | None:
    """`X-API-Key: <key>` or `Authorization: Bearer <key or token>` (header names are case-insensitive)."""
    api_key = request.headers.get("x-api-key")
    if api_key:
        return api_key.strip()
    authorization = request.headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def _note(principal: Principal) -> None:
    """The request's log lines name the organization when the credential has exactly one."""
    if len(principal.organization_ids) == 1:
        note_organization(principal.organization_ids[0])


async def get_principal(request: Request) -> Principal:
    """Who is calling, counted against the credential's requests per minute (429 when over it).

    In a transaction of its own, committed before the route runs: the rate-limit counter row stays locked only
    for its one statement, never for a whole request, and a model turn holds no transaction across the model call.
    The sessionmaker is read here, not through `SessionmakerDep`: every dependency FastAPI resolves costs some
    µs, and every authenticated request runs this one.
    """
    maker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    return await authenticate(request, maker)


async def authenticate(connection: HTTPConnection, maker: async_sessionmaker[AsyncSession]) -> Principal:
    """`get_principal` for any connection: an HTTP request, or a WebSocket's handshake and each of its requests."""
    settings: Settings = connection.app.state.settings
    async with maker() as session:
        principal = await auth.authenticate(session, credential_of(connection))
        quota = await rate_limits.count_request(session, settings, principal)
        await session.commit()
    _note(principal)
    if quota is not None:
        record_request_quota(connection.scope, quota)
    rate_limits.enforce(quota)
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]
# The same dependency: a turn's route, like every other, authenticates outside the request's transaction.
TurnPrincipalDep = PrincipalDep


# `?organization_id=`: for routes that resolve the organization themselves (from the body or the query).
OrganizationQuery = Annotated[str | None, Query(max_length=64)]


async def get_query_organization(principal: PrincipalDep, organization_id: OrganizationQuery = None) -> str:
    organization = principal.organization(organization_id)
    note_organization(organization)
    return organization


OrganizationDep = Annotated[str, Depends(get_query_organization)]
