"""SQL for organizations, users, memberships, API keys and user tokens."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from threadline.storage import driver
from threadline.storage.statements import param
from threadline.storage.tables import ApiKey, Membership, Organization, User, UserToken, core_table


class ApiKeyGrant(NamedTuple):
    key_id: str
    organization_id: str
    revoked_at: datetime | None
    last_used_at: datetime | None
    user_id: str
    email: str
    requests_per_minute: int | None
    concurrent_turns: int | None


def _api_key_grant() -> sa.Select[tuple[Any, ...]]:
    """What an API key grants: one statement instead of four (key, user, membership, organization), plain columns,
    built once (authentication runs on every request; docs/storage.md)."""
    keys, users, organizations = core_table(ApiKey), core_table(User), core_table(Organization)
    memberships = core_table(Membership)
    return (
        sa.select(
            keys.c.id,
            keys.c.organization_id,
            keys.c.revoked_at,
            keys.c.last_used_at,
            users.c.id,
            users.c.email,
            organizations.c.rate_limit_requests_per_minute,
            organizations.c.rate_limit_concurrent_turns,
        )
        .join(users, users.c.id == keys.c.user_id)
        .join(organizations, organizations.c.id == keys.c.organization_id)
        .join(
            memberships,
            sa.and_(memberships.c.organization_id == keys.c.organization_id, memberships.c.user_id == keys.c.user_id),
        )
        .where(keys.c.key_hash == param("key_hash"))
    )


_API_KEY_GRANT = _api_key_grant()


class IdentityRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def organization_by_name(self, name: str) -> Organization | None:
        query = sa.select(Organization).where(Organization.name == name)
        return (await self.session.execute(query)).scalar_one_or_none()

    async def organization(self, organization_id: str) -> Organization | None:
        return await self.session.get(Organization, organization_id)

    async def user_by_email(self, email: str) -> User | None:
        query = sa.select(User).where(User.email == email)
        return (await self.session.execute(query)).scalar_one_or_none()

    async def user(self, user_id: str) -> User | None:
        return await self.session.get(User, user_id)

    async def membership(self, organization_id: str, user_id: str) -> Membership | None:
        return await self.session.get(Membership, (organization_id, user_id))

    async def organizations_of(self, user_id: str) -> list[Organization]:
        query = (
            sa.select(Organization)
            .join(Membership, Membership.organization_id == Organization.id)
            .where(Membership.user_id == user_id)
            .order_by(Organization.created_at, Organization.id)
        )
        return list((await self.session.execute(query)).scalars())

    async def statement_by_statement(self) -> None:
        """Let each statement of this (fresh) session commit on its own: on PostgreSQL no BEGIN and COMMIT round
        trips around them. For authentication, whose statements are each complete alone (the key's read, at most
        one touch, one counter upsert). SQLite keeps its transaction (storage/engine.py takes its lock at BEGIN)."""
        if self.session.get_bind().dialect.name == "postgresql":
            await self.session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})

    async def add(self, *rows: Organization | User | Membership | ApiKey | UserToken) -> None:
        self.session.add_all(rows)
        await self.session.flush()

    async def api_key_grant(self, key_hash: str) -> ApiKeyGrant | None:
        """What an API key grants, only while its user is still a member of the key's organization."""
        row = await driver.first(self.session, _API_KEY_GRANT, {"p_key_hash": key_hash})
        return None if row is None else ApiKeyGrant(*row)

    async def api_key(self, organization_id: str, key_id: str) -> ApiKey | None:
        return await self.session.get(ApiKey, (organization_id, key_id))

    async def api_keys_of(self, organization_id: str) -> list[ApiKey]:
        query = sa.select(ApiKey).where(ApiKey.organization_id == organization_id).order_by(ApiKey.created_at)
        return list((await self.session.execute(query)).scalars())

    async def touch_api_key(self, organization_id: str, key_id: str, now: datetime) -> None:
        await self.session.execute(
            sa.update(ApiKey)
            .where(ApiKey.organization_id == organization_id, ApiKey.id == key_id)
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )

    async def user_token_by_hash(self, token_hash: str) -> UserToken | None:
        query = sa.select(UserToken).where(UserToken.token_hash == token_hash)
        return (await self.session.execute(query)).scalar_one_or_none()

    async def user_token(self, token_id: str) -> UserToken | None:
        return await self.session.get(UserToken, token_id)
