"""SQL for exports and imports: source ids, free item ids, edits by the page."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from threadline.storage.tables import Message, MessageEdit, Thread


class ThreadDataRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def thread_of_source(self, organization_id: str, source_id: str) -> str | None:
        """The thread imported from `source_id` (deleted ones too: a re-import does not bring it back)."""
        query = sa.select(Thread.id).where(Thread.organization_id == organization_id, Thread.source_id == source_id)
        return (await self.session.execute(query)).scalar_one_or_none()

    async def taken_message_ids(self, organization_id: str, ids: Collection[str]) -> set[str]:
        """Which of `ids` already name an item of the organization."""
        taken: set[str] = set()
        wanted = sorted(ids)
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

    async def insert_items(self, messages: Sequence[dict[str, Any]], edits: Sequence[dict[str, Any]]) -> None:
        """Bulk inserts (one statement per batch, no ORM objects): an import writes many rows."""
        for start in range(0, len(messages), 1000):
            await self.session.execute(sa.insert(Message), list(messages[start : start + 1000]))
        for start in range(0, len(edits), 1000):
            await self.session.execute(sa.insert(MessageEdit), list(edits[start : start + 1000]))
