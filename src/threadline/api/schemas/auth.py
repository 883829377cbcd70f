"""Wire schemas for identity: login, the caller, API keys."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from threadline.api.schemas.common import RequestModel, ResponseModel, iso
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
