"""SQL for Idempotency-Key records.

A record is claimed by inserting it `in_progress`; its `created_at` doubles as the claim token, so a process
whose claim was taken over (stale or expired) can no longer complete or release it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from threadline.storage.engine import dialect_insert
from threadline.storage.tables import IdempotencyKey


class IdempotencyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert_claim(
        self, organization_id: str, key: str, request_hash: str, now: datetime, expires_at: datetime
    ) -> bool:
        """Insert an in-progress record unless the key exists; True when this call inserted it."""
        statement = (
            dialect_insert(self.session, IdempotencyKey)
            .values(
                organization_id=organization_id,
                key=key,
                request_hash=request_hash,
                status="in_progress",
                created_at=now,
                expires_at=expires_at,
            )
            .on_conflict_do_nothing(index_elements=["organization_id", "key"])
            .returning(IdempotencyKey.key)
        )
        return (await self.session.execute(statement)).first() is not None

    async def get(self, organization_id: str, key: str) -> IdempotencyKey | None:
        query = sa.select(IdempotencyKey).where(
            IdempotencyKey.organization_id == organization_id, IdempotencyKey.key == key
        )
        return (await self.session.execute(query)).scalar_one_or_none()

    async def take_over(
        self,
        organization_id: str,
        key: str,
        seen_created_at: datetime,
        request_hash: str,
        now: datetime,
        expires_at: datetime,
    ) -> bool:
        """Re-claim an expired or abandoned record, if nobody else did since it was read."""
        result = await self.session.execute(
            sa.update(IdempotencyKey)
            .where(
                IdempotencyKey.organization_id == organization_id,
                IdempotencyKey.key == key,
                IdempotencyKey.created_at == seen_created_at,
            )
            .values(
                request_hash=request_hash,
                status="in_progress",
                response_status=None,
                response_headers=None,
                response_body=None,
                created_at=now,
                expires_at=expires_at,
            )
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount) == 1  # type: ignore[attr-defined]

    async def complete(
        self,
        organization_id: str,
        key: str,
        claimed_at: datetime,
        status: int,
        headers: dict[str, Any],
        body: bytes,
    ) -> bool:
        result = await self.session.execute(
            sa.update(IdempotencyKey)
            .where(
                IdempotencyKey.organization_id == organization_id,
                IdempotencyKey.key == key,
                IdempotencyKey.created_at == claimed_at,
                IdempotencyKey.status == "in_progress",
            )
            .values(status="completed", response_status=status, response_headers=headers, response_body=body)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount) == 1  # type: ignore[attr-defined]

    async def release(self, organization_id: str, key: str, claimed_at: datetime) -> None:
        await self.session.execute(
            sa.delete(IdempotencyKey).where(
                IdempotencyKey.organization_id == organization_id,
                IdempotencyKey.key == key,
                IdempotencyKey.created_at == claimed_at,
                IdempotencyKey.status == "in_progress",
            )
        )

    async def count_expired(self, now: datetime) -> int:
        query = sa.select(sa.func.count()).select_from(IdempotencyKey).where(IdempotencyKey.expires_at < now)
        return int((await self.session.execute(query)).scalar_one())

    async def delete_expired(self, now: datetime, limit: int) -> int:
        """Delete at most `limit` expired records (the retention sweeper calls this in a loop)."""
        batch = (
            sa.select(IdempotencyKey.organization_id, IdempotencyKey.key)
            .where(IdempotencyKey.expires_at < now)
            .limit(limit)
        )
        result = await self.session.execute(
            sa.delete(IdempotencyKey)
            .where(sa.tuple_(IdempotencyKey.organization_id, IdempotencyKey.key).in_(batch))
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]
