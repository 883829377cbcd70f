"""Request-scoped dependencies: settings, the database session (the request owns the transaction), the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline.api.middleware import record_request_quota
from threadline.api.observability import note_organization
from threadline.config import Settings
from threadline.providers.registry import ModelRegistry
from threadline.services import auth, rate_limits
from threadline.services.auth import Principal
from threadline.turns.engine import TurnEngine


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_sessionmaker(request: Request) -> async_sessionmaker[AsyncSession]:
    maker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    return maker


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the route returns, rolled back on any error."""
    async with get_sessionmaker(request)() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


def get_models(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.models
    return registry


def get_turns(request: Request) -> TurnEngine:
    """The turn engine the app built at start-up."""
    engine: TurnEngine = request.app.state.turns
    return engine


SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelsDep = Annotated[ModelRegistry, Depends(get_models)]
SessionmakerDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_sessionmaker)]
TurnsDep = Annotated[TurnEngine, Depends(get_turns)]
# scope="function": the commit happens before the response is sent, so a client never reads its own write late.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


def credential_of(request: Request) -> str | None:
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


async def get_principal(request: Request, maker: SessionmakerDep) -> Principal:
    """Who is calling, counted against the credential's requests per minute (429 when over it).

    In a transaction of its own, committed before the route runs: the rate-limit counter row stays locked only
    for its one statement, never for a whole request, and a model turn holds no transaction across the model call.
    """
    async with maker() as session:
        principal = await auth.authenticate(session, credential_of(request))
        quota = await rate_limits.count_request(session, get_settings(request), principal)
        await session.commit()
    _note(principal)
    if quota is not None:
        record_request_quota(request.scope, quota)
    rate_limits.enforce(quota)
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]
# The same dependency: a turn's route, like every other, authenticates outside the request's transaction.
TurnPrincipalDep = PrincipalDep


# `?organization_id=`: for routes that resolve the organization themselves (from the body or the query).
OrganizationQuery = Annotated[str | None, Query(max_length=64)]


def get_query_organization(principal: PrincipalDep, organization_id: OrganizationQuery = None) -> str:
    organization = principal.organization(organization_id)
    note_organization(organization)
    return organization


OrganizationDep = Annotated[str, Depends(get_query_organization)]
