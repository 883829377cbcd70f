"""SQL for model responses."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from threadline.domain.turns import CANCELLED, FAILED, IN_PROGRESS, REQUIRES_ACTION
from threadline.storage import driver
from threadline.storage.repositories.pagination import Page, PageRequest, check_cursors, fetch_page
from threadline.storage.statements import param
from threadline.storage.tables import Response, core_table

_responses = core_table(Response)
# A turn's statements are built once (docs/storage.md): the columns to write are the parameters' other keys.
_INSERT = sa.insert(_responses)


@functools.cache
def _update(read: tuple[str, ...]) -> sa.Update:
    r = _responses.c
    query = sa.update(_responses).where(r.organization_id == param("organization_id"), r.id == param("id"))
    return query.returning(*(r[name] for name in read)) if read else query


class ResponseRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, response: Response) -> Response:
        self.session.add(response)
        await self.session.flush()
        return response

    async def insert(self, values: Mapping[str, Any]) -> None:
        """Insert a row given by its columns: one Core INSERT, no ORM object (a turn's start)."""
        await driver.rows(self.session, _INSERT, values)

    async def get(self, organization_id: str, response_id: str) -> Response | None:
        query = sa.select(Response).where(Response.organization_id == organization_id, Response.id == response_id)
        return (await self.session.execute(query)).scalar_one_or_none()

    async def update(
        self, organization_id: str, response_id: str, values: Mapping[str, Any], *, read: Sequence[str] = ()
    ) -> dict[str, Any]:
        """Write `values` in one Core UPDATE, with no read before the write; returns the columns named in `read` as
        stored after it (the caller has the rest)."""
        key = {"p_organization_id": organization_id, "p_id": response_id}
        found = await driver.rows(self.session, _update(tuple(read)), {**values, **key})
        if not read:
            return {}
        if len(found) != 1:  # as SQLAlchemy's `Result.one()` did
            raise sa.exc.NoResultFound(f"response '{response_id}' to update: {len(found)} rows")
        return dict(zip(read, found[0], strict=True))

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

    async def cancel_if_in_progress(
        self, organization_id: str, response_id: str, now: datetime, status: str = IN_PROGRESS
    ) -> bool:
        """Mark a turn cancelled unless it already finished (or, for `status="requires_action"`, a run that
        waits for tool outputs, unless they came)."""
        return await self.move(organization_id, response_id, status, {"status": CANCELLED, "completed_at": now})

    async def move(self, organization_id: str, response_id: str, status: str, values: dict[str, Any]) -> bool:
        """Write `values` only while the response has `status` (one conditional UPDATE): whether it did."""
        result = await self.session.execute(
            sa.update(Response)
            .where(
                Response.organization_id == organization_id,
                Response.id == response_id,
                Response.status == status,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def start_queued(self, organization_id: str, response_id: str, values: dict[str, Any]) -> Response | None:
        """A queued (background) response's turn starts: `values` written only while it is still queued (it may
        have been cancelled meanwhile); the stored row, or None."""
        result = await self.session.execute(
            sa.update(Response)
            .where(
                Response.organization_id == organization_id,
                Response.id == response_id,
                Response.status == "queued",
            )
            .values(**values)
            .returning(Response),
            execution_options={"populate_existing": True},
        )
        return result.scalar_one_or_none()

    async def finish_queued(
        self,
        organization_id: str,
        response_id: str,
        status: str,
        now: datetime,
        error: dict[str, Any] | None = None,
    ) -> Response | None:
        """A queued response that will never run: `cancelled`, or `failed` with `error`; None if it was not queued."""
        return await self.start_queued(
            organization_id, response_id, {"status": status, "error": error, "completed_at": now}
        )

    async def waiting_run(self, organization_id: str, thread_id: str) -> Response | None:
        """The thread's run waiting for tool outputs, if any (at most one: no run starts while one waits)."""
        query = (
            sa.select(Response)
            .where(
                Response.organization_id == organization_id,
                Response.thread_id == thread_id,
                Response.status == REQUIRES_ACTION,
            )
            .limit(1)
        )
        return (await self.session.execute(query)).scalar_one_or_none()

    async def delete(self, response: Response) -> None:
        await self.session.delete(response)
        await self.session.flush()
