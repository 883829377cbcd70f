"""SQL for exports and imports: source ids, free item ids, edits by the page."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from threadline.storage.tables import Base, Message, MessageEdit, Thread


class ThreadDataRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def threads_of_sources(self, organization_id: str, source_ids: Collection[str]) -> dict[str, str]:
        """source id → the thread imported from it (deleted ones too: a re-import does not bring them back)."""
        found: dict[str, str] = {}
        wanted = sorted(set(source_ids))
        for start in range(0, len(wanted), 500):
            query = sa.select(Thread.source_id, Thread.id).where(
                Thread.organization_id == organization_id, Thread.source_id.in_(wanted[start : start + 500])
            )
            found.update({str(source): thread_id for source, thread_id in (await self.session.execute(query)).all()})
        return found

    async def taken_thread_ids(self, organization_id: str, ids: Collection[str]) -> set[str]:
        """Which of `ids` already name a thread of the organization (deleted ones too)."""
        wanted = sorted(set(ids))
        taken: set[str] = set()
        for start in range(0, len(wanted), 500):
            query = sa.select(Thread.id).where(
                Thread.organization_id == organization_id, Thread.id.in_(wanted[start : start + 500])
            )
            taken.update((await self.session.execute(query)).scalars())
        return taken

    async def taken_message_ids(self, organization_id: str, ids: Collection[str]) -> set[str]:
        """Which of `ids` already name an item of the organization."""
        taken: set[str] = set()
        wanted = sorted(set(ids))
        for start in range(0, len(wanted), 500):
            query = sa.select(Message.id).where(
                Message.organization_id == organization_id, Message.id.in_(wanted[start : start + 500])
            )
            taken.update((await self.session.execute(query)).scalars())
        return taken

    async def edits_of(self, organization_id: str, message_ids: Sequence[str]) -> dict[str, list[MessageEdit]]:
        """The audit trail of a page of items, oldest edit first, in one query."""
        if not message_ids:
            return {}
        query = (
            sa.select(MessageEdit)
            .where(MessageEdit.organization_id == organization_id, MessageEdit.message_id.in_(list(message_ids)))
            .order_by(MessageEdit.message_id, MessageEdit.edited_at, MessageEdit.id)
        )
        found: dict[str, list[MessageEdit]] = {}
        for edit in (await self.session.execute(query)).scalars():
            found.setdefault(edit.message_id, []).append(edit)
        return found

    async def insert(
        self, threads: Sequence[dict[str, Any]], messages: Sequence[dict[str, Any]], edits: Sequence[dict[str, Any]]
    ) -> None:
        """Bulk inserts of rows keyed by column name: Core executemany, no ORM objects (an import writes many)."""
        connection = await self.session.connection()
        for name, rows in (("threads", threads), ("messages", messages), ("message_edits", edits)):
            table = Base.metadata.tables[name]
            for start in range(0, len(rows), 1000):
                await connection.execute(sa.insert(table), list(rows[start : start + 1000]))
