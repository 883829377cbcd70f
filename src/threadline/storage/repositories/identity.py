"""SQL for organizations, users, memberships, API keys and user tokens."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from threadline.storage.tables import ApiKey, Membership, Organization, User, UserToken


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

    async def add(self, *rows: Organization | User | Membership | ApiKey | UserToken) -> None:
        self.session.add_all(rows)
        await self.session.flush()

    async def api_key_with_user(self, key_hash: str) -> tuple[ApiKey, User, Organization] | None:
        """The key, its user and its organization, only while the user is still a member of the key's organization.

        One statement instead of four (key, user, membership, organization): authentication runs on every request.
        """
        query = (
            sa.select(ApiKey, User, Organization)
            .join(User, User.id == ApiKey.user_id)
            .join(Organization, Organization.id == ApiKey.organization_id)
            .join(
                Membership,
                sa.and_(Membership.organization_id == ApiKey.organization_id, Membership.user_id == ApiKey.user_id),
            )
            .where(ApiKey.key_hash == key_hash)
        )
        row = (await self.session.execute(query)).one_or_none()
        return None if row is None else (row[0], row[1], row[2])

    async def api_key(self, organization_id: str, key_id: str) -> ApiKey | None:
        return await self.session.get(ApiKey, (organization_id, key_id))

    async def api_keys_of(self, organization_id: str) -> list[ApiKey]:
        query = sa.select(ApiKey).where(ApiKey.organization_id == organization_id).order_by(ApiKey.created_at)
        return list((await self.session.execute(query)).scalars())

    async def touch_api_key(self, key: ApiKey, now: datetime) -> None:
        await self.session.execute(
            sa.update(ApiKey)
            .where(ApiKey.organization_id == key.organization_id, ApiKey.id == key.id)
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )
        key.last_used_at = now

    async def user_token_by_hash(self, token_hash: str) -> UserToken | None:
        query = sa.select(UserToken).where(UserToken.token_hash == token_hash)
        return (await self.session.execute(query)).scalar_one_or_none()

    async def user_token(self, token_id: str) -> UserToken | None:
        return await self.session.get(UserToken, token_id)
