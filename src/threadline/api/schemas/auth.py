"""Wire schemas for identity: login, the caller, API keys, an organization's limits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from threadline.api.schemas.common import RequestModel, ResponseModel, iso
from threadline.domain.limits import Limits, effective_limits
from threadline.storage.tables import ApiKey, Organization


class TokenCreate(RequestModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)


class TokenRead(ResponseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_at: str


class OrganizationRead(ResponseModel):
    id: str
    object: Literal["organization"] = "organization"
    name: str

    @classmethod
    def of(cls, org: Organization) -> OrganizationRead:
        return cls(id=org.id, name=org.name)


class UserRead(ResponseModel):
    id: str
    object: Literal["user"] = "user"
    email: str


class MeRead(ResponseModel):
    object: Literal["me"] = "me"
    user: UserRead
    organizations: list[OrganizationRead]
    auth_method: Literal["api_key", "user_token"]
    credential_id: str


class ApiKeyCreate(RequestModel):
    name: str | None = Field(default=None, max_length=200)
    organization_id: str | None = Field(default=None, max_length=64)


class ApiKeyRead(ResponseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    organization_id: str
    user_id: str
    name: str | None
    prefix: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None
    # Only in the answer to the create call: the secret is never shown again.
    key: str | None = None

    @classmethod
    def of(cls, key: ApiKey, secret: str | None = None) -> ApiKeyRead:
        return cls(
            id=key.id,
            organization_id=key.organization_id,
            user_id=key.user_id,
            name=key.name,
            prefix=key.display_prefix,
            created_at=iso(key.created_at) or "",
            last_used_at=iso(key.last_used_at),
            revoked_at=iso(key.revoked_at),
            key=secret,
        )


class ApiKeyList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ApiKeyRead]


class LimitsRead(ResponseModel):
    """Requests per minute and concurrent turns per credential; null: no limit."""

    requests_per_minute: int | None
    concurrent_turns: int | None

    @classmethod
    def of(cls, limits: Limits) -> LimitsRead:
        return cls(requests_per_minute=limits.requests_per_minute, concurrent_turns=limits.concurrent_turns)


class OrganizationLimitsUpdate(RequestModel):
    """The organization's own limits for each of its credentials (omitted or null: none of its own). They tighten
    the server's limits, never lift them."""

    requests_per_minute: int | None = Field(default=None, ge=1, le=1_000_000)
    concurrent_turns: int | None = Field(default=None, ge=1, le=10_000)


class OrganizationLimitsRead(ResponseModel):
    object: Literal["organization.limits"] = "organization.limits"
    organization_id: str
    # The organization's own limits (set by its owner).
    requests_per_minute: int | None
    concurrent_turns: int | None
    # The server's (THREADLINE_RATE_LIMIT_*), and what each credential of the organization runs under.
    server: LimitsRead
    effective: LimitsRead

    @classmethod
    def of(cls, organization: Organization, server: Limits) -> OrganizationLimitsRead:
        own = Limits(organization.rate_limit_requests_per_minute, organization.rate_limit_concurrent_turns)
        return cls(
            organization_id=organization.id,
            requests_per_minute=own.requests_per_minute,
            concurrent_turns=own.concurrent_turns,
            server=LimitsRead.of(server),
            effective=LimitsRead.of(effective_limits(server, [own])),
        )
