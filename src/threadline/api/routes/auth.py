"""Login, the caller, API key management, and an organization's rate limits."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from threadline.api.deps import OrganizationDep, PrincipalDep, SessionDep, SettingsDep
from threadline.api.schemas.auth import (
    ApiKeyCreate,
    ApiKeyList,
    ApiKeyRead,
    MeRead,
    OrganizationLimitsRead,
    OrganizationLimitsUpdate,
    OrganizationRead,
    TokenCreate,
    TokenRead,
    UserRead,
)
from threadline.api.schemas.common import ID_PATTERN, iso
from threadline.api.statuses import USER_TOKEN_ONLY, errors
from threadline.services import auth, rate_limits

router = APIRouter(prefix="/v1", tags=["auth"])


@router.post("/auth/token", response_model=TokenRead, responses=errors(401))
async def create_token(body: TokenCreate, session: SessionDep, settings: SettingsDep) -> TokenRead:
    token, secret = await auth.login(session, settings, body.email, body.password)
    return TokenRead(access_token=secret, expires_at=iso(token.expires_at) or "")


@router.post("/auth/logout", status_code=204, responses=USER_TOKEN_ONLY)
async def logout(session: SessionDep, principal: PrincipalDep) -> Response:
    """Revoke the user token this request came with (API keys are revoked through /v1/api-keys)."""
    principal.require_user_token("the session")
    await auth.revoke_user_token(session, principal.credential_id)
    return Response(status_code=204)


@router.get("/me", response_model=MeRead)
async def me(session: SessionDep, principal: PrincipalDep) -> MeRead:
    user, orgs = await auth.describe(session, principal)
    return MeRead(
        user=UserRead(id=user.id, email=user.email),
        organizations=[OrganizationRead.of(o) for o in orgs],
        auth_method=principal.auth_method,
        credential_id=principal.credential_id,
    )


@router.get("/api-keys", response_model=ApiKeyList)
async def list_api_keys(session: SessionDep, organization_id: OrganizationDep) -> ApiKeyList:
    return ApiKeyList(data=[ApiKeyRead.of(k) for k in await auth.list_api_keys(session, organization_id)])


@router.post("/api-keys", response_model=ApiKeyRead, responses=USER_TOKEN_ONLY)
async def create_api_key(body: ApiKeyCreate, session: SessionDep, principal: PrincipalDep) -> ApiKeyRead:
    principal.require_user_token("API keys")
    org = principal.organization(body.organization_id)
    key, secret = await auth.create_api_key(session, org, principal.email, body.name)
    return ApiKeyRead.of(key, secret)


@router.delete("/api-keys/{key_id}", response_model=ApiKeyRead)
async def revoke_api_key(
    key_id: Annotated[str, Path(max_length=64, pattern=ID_PATTERN)],
    session: SessionDep,
    organization_id: OrganizationDep,
) -> ApiKeyRead:
    return ApiKeyRead.of(await auth.revoke_api_key(session, organization_id, key_id))


OrganizationPath = Annotated[str, Path(max_length=64, pattern=ID_PATTERN)]


@router.get("/organizations/{organization_id}/limits", response_model=OrganizationLimitsRead)
async def get_organization_limits(
    organization_id: OrganizationPath, session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> OrganizationLimitsRead:
    organization, server = await rate_limits.organization_limits(session, settings, principal, organization_id)
    return OrganizationLimitsRead.of(organization, server)


@router.put("/organizations/{organization_id}/limits", response_model=OrganizationLimitsRead)
async def set_organization_limits(
    organization_id: OrganizationPath,
    body: OrganizationLimitsUpdate,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
) -> OrganizationLimitsRead:
    """Replace the organization's own limits (its owner only): each credential of it then runs under the tighter
    of these and the server's."""
    changes = {"requests_per_minute": body.requests_per_minute, "concurrent_turns": body.concurrent_turns}
    organization, server = await rate_limits.set_organization_limits(
        session, settings, principal, organization_id, changes
    )
    return OrganizationLimitsRead.of(organization, server)
