"""SQL for assistants."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from threadline.storage.tables import Assistant


class AssistantRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, organization_id: str, assistant_id: str) -> Assistant | None:
        query = sa.select(Assistant).where(
            Assistant.organization_id == organization_id,
            Assistant.id == assistant_id,
            Assistant.deleted_at.is_(None),
        )
        return (await self.session.execute(query)).scalar_one_or_none()
