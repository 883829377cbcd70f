"""SQL for model responses."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from threadline.domain.turns import CANCELLED, FAILED, IN_PROGRESS
from threadline.storage.repositories.pagination import Page, PageRequest, check_cursors, fetch_page
from threadline.storage.tables import Response


class ResponseRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, response: Response) -> Response:
        self.session.add(response)
        await self.session.flush()
        return response

    async def get(self, organization_id: str, response_id: str) -> Response | None:
        query = sa.select(Response).where(Response.organization_id == organization_id, Response.id == response_id)
        return (await self.session.execute(query)).scalar_one_or_none()

    async def update(self, organization_id: str, response_id: str, values: dict[str, Any]) -> Response:
        """Write `values` and return the stored row, in one UPDATE … RETURNING (no read before the write)."""
        result = await self.session.execute(
            sa.update(Response)
            .where(Response.organization_id == organization_id, Response.id == response_id)
            .values(**values)
            .returning(Response),
            execution_options={"populate_existing": True},
        )
        return result.scalar_one()

    async def fail_if_in_progress(
        self, organization_id: str, response_id: str, error: dict[str, Any], now: datetime
    ) -> bool:
        """Mark a response failed unless it already finished (a turn whose lease expired under it)."""
        result = await self.session.execute(
            sa.update(Response)
            .where(
                Response.organization_id == organization_id,
                Response.id == response_id,
                Response.status == IN_PROGRESS,
            )
            .values(status=FAILED, error=error, completed_at=now)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def list_page(self, organization_id: str, thread_id: str, page: PageRequest) -> Page[Response]:
        """One page of a thread's responses (an Assistants thread's runs), by (created_at, id)."""
        query = sa.select(Response).where(Response.organization_id == organization_id, Response.thread_id == thread_id)
        cursors = {
            "after": await self._sort_key(organization_id, thread_id, page.after),
            "before": await self._sort_key(organization_id, thread_id, page.before),
        }
        check_cursors(page, cursors, "run of this thread")
        return await fetch_page(self.session, query, (Response.created_at, Response.id), page, cursors)

    async def _sort_key(self, organization_id: str, thread_id: str, response_id: str | None) -> tuple[Any, ...] | None:
        if response_id is None:
            return None
        row = (
            await self.session.execute(
                sa.select(Response.created_at, Response.id).where(
                    Response.organization_id == organization_id,
                    Response.thread_id == thread_id,
                    Response.id == response_id,
                )
            )
        ).first()
        return tuple(row) if row is not None else None

    async def cancel_if_in_progress(self, organization_id: str, response_id: str, now: datetime) -> bool:
        """Mark a turn cancelled unless it already finished."""
        result = await self.session.execute(
            sa.update(Response)
            .where(
                Response.organization_id == organization_id,
                Response.id == response_id,
                Response.status == IN_PROGRESS,
            )
            .values(status=CANCELLED, completed_at=now)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def delete(self, response: Response) -> None:
        await self.session.delete(response)
        await self.session.flush()
