"""SQL for assistants."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from threadline.storage.repositories.pagination import Page, PageRequest, check_cursors, fetch_page
from threadline.storage.tables import Assistant


class AssistantRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, organization_id: str, assistant_id: str, *, for_update: bool = False) -> Assistant | None:
        query = sa.select(Assistant).where(
            Assistant.organization_id == organization_id,
            Assistant.id == assistant_id,
            Assistant.deleted_at.is_(None),
        )
        if for_update:
            query = query.with_for_update()
        return (await self.session.execute(query)).scalar_one_or_none()

    async def add(self, assistant: Assistant) -> Assistant:
        self.session.add(assistant)
        await self.session.flush()
        return assistant

    async def list_page(self, organization_id: str, page: PageRequest) -> Page[Assistant]:
        query = sa.select(Assistant).where(Assistant.organization_id == organization_id, Assistant.deleted_at.is_(None))
        cursors = {
            "after": await self._sort_key(organization_id, page.after),
            "before": await self._sort_key(organization_id, page.before),
        }
        check_cursors(page, cursors, "assistant")
        return await fetch_page(self.session, query, (Assistant.created_at, Assistant.id), page, cursors)

    async def _sort_key(self, organization_id: str, assistant_id: str | None) -> tuple[Any, ...] | None:
        if assistant_id is None:
            return None
        row = (
            await self.session.execute(
                sa.select(Assistant.created_at, Assistant.id).where(
                    Assistant.organization_id == organization_id, Assistant.id == assistant_id
                )
            )
        ).first()
        return tuple(row) if row is not None else None
