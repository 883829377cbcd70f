"""SQL for the recorded events of streamed responses (services/response_streams.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from threadline.storage.tables import ResponseEvent


class ResponseEventRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_many(self, events: Sequence[ResponseEvent]) -> None:
        """One multi-row INSERT for a batch of events."""
        if not events:
            return
        rows = [
            {
                "organization_id": e.organization_id,
                "response_id": e.response_id,
                "sequence_number": e.sequence_number,
                "type": e.type,
                "data": e.data,
                "created_at": e.created_at,
            }
            for e in events
        ]
        await self.session.execute(sa.insert(ResponseEvent), rows)

    async def after(self, organization_id: str, response_id: str, after: int, limit: int) -> list[ResponseEvent]:
        """Up to `limit` events with a sequence number above `after`, in order."""
        query = (
            sa.select(ResponseEvent)
            .where(
                ResponseEvent.organization_id == organization_id,
                ResponseEvent.response_id == response_id,
                ResponseEvent.sequence_number > after,
            )
            .order_by(ResponseEvent.sequence_number)
            .limit(limit)
        )
        return list((await self.session.scalars(query)).all())

    async def last_sequence(self, organization_id: str, response_id: str) -> int | None:
        """The highest sequence number recorded for the response (None: none recorded)."""
        query = sa.select(sa.func.max(ResponseEvent.sequence_number)).where(
            ResponseEvent.organization_id == organization_id, ResponseEvent.response_id == response_id
        )
        value = await self.session.scalar(query)
        return int(value) if value is not None else None

    async def count_before(self, before: datetime) -> int:
        query = sa.select(sa.func.count()).select_from(ResponseEvent).where(ResponseEvent.created_at < before)
        return int(await self.session.scalar(query) or 0)

    async def purge_before(self, before: datetime, limit: int) -> int:
        """Delete up to `limit` events recorded before `before` (the retention sweeper); returns how many."""
        oldest = (
            sa.select(ResponseEvent.organization_id, ResponseEvent.response_id, ResponseEvent.sequence_number)
            .where(ResponseEvent.created_at < before)
            .limit(limit)
        )
        key = sa.tuple_(ResponseEvent.organization_id, ResponseEvent.response_id, ResponseEvent.sequence_number)
        result = await self.session.execute(
            sa.delete(ResponseEvent).where(key.in_(oldest)).execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]
