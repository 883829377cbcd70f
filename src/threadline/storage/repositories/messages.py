"""SQL for messages and their edit history."""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from threadline.storage import driver
from threadline.storage.repositories.pagination import Page, PageRequest, check_cursors, fetch_page
from threadline.storage.statements import constant, param
from threadline.storage.tables import Message, MessageEdit, core_table


def _live(organization_id: str, thread_id: str, roles: Collection[str] | None = None) -> list[sa.ColumnElement[bool]]:
    """A thread's live (not deleted) items, optionally only `message` items of some roles."""
    conditions = [
        Message.organization_id == organization_id,
        Message.thread_id == thread_id,
        Message.deleted_at.is_(None),
    ]
    if roles is not None:
        conditions += [Message.role.in_(roles), Message.type == "message"]
    return conditions


_messages = core_table(Message)
# A `Message` attribute's column name (they differ where the attribute would shadow a name, as `metadata_`).
_INSERT = sa.insert(_messages)  # built once (docs/storage.md)
_COLUMN_OF = {attribute.key: attribute.columns[0].key for attribute in Message.__mapper__.column_attrs}


@functools.cache
def _context_query(newest: bool, before: bool, after: bool) -> sa.Select[Any]:
    """`MessageRepository.context_rows`'s statement, built once per shape (docs/storage.md)."""
    m = _messages.c
    query = sa.select(m.id, m.seq, m.role, m.content, m.token_count, m.tokenizer, m.type, m.call_id, m.payload)
    query = query.where(
        m.organization_id == param("organization_id"), m.thread_id == param("thread_id"), m.deleted_at.is_(None)
    )
    if before:
        query = query.where(m.seq < param("before_seq"))
    if after:
        query = query.where(m.seq > param("after_seq"))
    return query.order_by(m.seq.desc() if newest else m.seq.asc()).limit(param("limit", sa.Integer()))


class ContextRow(NamedTuple):
    id: str
    seq: int
    role: str
    content: str
    token_count: int | None
    tokenizer: str | None
    type: str
    call_id: str | None
    payload: dict[str, Any] | None


class MessageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_all(self, messages: Sequence[Message]) -> None:
        self.session.add_all(messages)
        await self.session.flush()

    async def insert(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert rows given by `Message` attribute (as `Message(**row)` takes them) in one Core INSERT: no ORM
        objects, no unit-of-work flush (a turn's save)."""
        await driver.execute_many(
            self.session, _INSERT, [{_COLUMN_OF[key]: value for key, value in row.items()} for row in rows]
        )

    async def get(
        self, organization_id: str, thread_id: str, message_id: str, *, roles: Collection[str] | None = None
    ) -> Message | None:
        query = sa.select(Message).where(*_live(organization_id, thread_id, roles), Message.id == message_id)
        return (await self.session.execute(query)).scalar_one_or_none()

    async def list_page(
        self,
        organization_id: str,
        thread_id: str,
        page: PageRequest,
        *,
        roles: Collection[str] | None = None,
        response_id: str | None = None,
        seqs: tuple[int, int] | None = None,
    ) -> Page[Message]:
        """One page of live messages, optionally only some roles, one response's messages or a seq range."""
        query = sa.select(Message).where(*_live(organization_id, thread_id, roles))
        if response_id is not None:
            query = query.where(Message.response_id == response_id)
        if seqs is not None:
            query = query.where(Message.seq.between(*seqs))
        cursors = {
            "after": await self._sort_key(organization_id, thread_id, page.after),
            "before": await self._sort_key(organization_id, thread_id, page.before),
        }
        check_cursors(page, cursors, "message of this thread")
        return await fetch_page(self.session, query, (Message.seq,), page, cursors)

    async def _sort_key(self, organization_id: str, thread_id: str, message_id: str | None) -> tuple[Any, ...] | None:
        if message_id is None:
            return None
        seq = (
            await self.session.execute(
                sa.select(Message.seq).where(
                    Message.organization_id == organization_id,
                    Message.thread_id == thread_id,
                    Message.id == message_id,
                )
            )
        ).scalar_one_or_none()
        return (seq,) if seq is not None else None

    async def tail(
        self, organization_id: str, thread_id: str, limit: int, *, before_seq: int | None = None
    ) -> list[Message]:
        """The newest `limit` live messages (optionally below `before_seq`), oldest first."""
        query = sa.select(Message).where(*_live(organization_id, thread_id))
        if before_seq is not None:
            query = query.where(Message.seq < before_seq)
        rows = list((await self.session.execute(query.order_by(Message.seq.desc()).limit(limit))).scalars())
        rows.reverse()
        return rows

    async def context_rows(
        self,
        organization_id: str,
        thread_id: str,
        limit: int,
        *,
        newest: bool,
        before_seq: int | None = None,
        after_seq: int = 0,
    ) -> list[ContextRow]:
        """What the context builder needs of the newest (or oldest) `limit` live messages, oldest first.

        Plain rows, not ORM objects, from a statement built once per shape (`_context_query`): a turn reads
        hundreds of rows, and building entities, or the statement, would cost more than the query.
        """
        values = {"p_organization_id": organization_id, "p_thread_id": thread_id, "p_limit": limit}
        if before_seq is not None:
            values["p_before_seq"] = before_seq
        if after_seq:
            values["p_after_seq"] = after_seq
        query = _context_query(newest, before_seq is not None, bool(after_seq))
        rows = list(map(ContextRow._make, await driver.rows(self.session, query, values)))
        if newest:
            rows.reverse()
        return rows

    async def newest_compaction(
        self, organization_id: str, ranges: Sequence[tuple[str, int, int | None]]
    ) -> tuple[str, ContextRow] | None:
        """The newest live `compaction` item in any of `ranges` (thread id, after seq, before seq or None), with its
        thread: one query over the partial index. Seqs rise along a conversation's path, so the newest is the one
        with the highest seq."""
        if not ranges:
            return None
        conditions = [
            sa.and_(
                Message.thread_id == thread_id,
                Message.seq > after_seq,
                *([Message.seq < before_seq] if before_seq is not None else []),
            )
            for thread_id, after_seq, before_seq in ranges
        ]
        query = sa.select(
            Message.thread_id,
            Message.id,
            Message.seq,
            Message.role,
            Message.content,
            Message.token_count,
            Message.tokenizer,
            Message.type,
            Message.call_id,
            Message.payload,
        ).where(
            Message.organization_id == organization_id,
            Message.type == constant("compaction"),
            Message.deleted_at.is_(None),
            sa.or_(*conditions),
        )
        row = (await self.session.execute(query.order_by(Message.seq.desc()).limit(1))).first()
        return (row[0], ContextRow(*row[1:])) if row is not None else None

    async def count_after(
        self, organization_id: str, thread_id: str, after_seq: int, before_seq: int | None = None
    ) -> int:
        """Live items of the thread with `after_seq < seq < before_seq`, compaction items left out."""
        query = sa.select(sa.func.count()).where(
            *_live(organization_id, thread_id), Message.seq > after_seq, Message.type != "compaction"
        )
        if before_seq is not None:
            query = query.where(Message.seq < before_seq)
        return int((await self.session.execute(query)).scalar_one())

    async def get_any(self, organization_id: str, message_id: str) -> Message | None:
        """A live item of any thread of the organization, by id."""
        query = sa.select(Message).where(
            Message.organization_id == organization_id, Message.id == message_id, Message.deleted_at.is_(None)
        )
        return (await self.session.execute(query)).scalar_one_or_none()

    async def get_many(self, organization_id: str, message_ids: Sequence[str]) -> list[Message]:
        """The live items of the organization with these ids (in no particular order)."""
        if not message_ids:
            return []
        query = sa.select(Message).where(
            Message.organization_id == organization_id, Message.id.in_(message_ids), Message.deleted_at.is_(None)
        )
        return list((await self.session.execute(query)).scalars())

    async def tail_kinds(
        self, organization_id: str, thread_id: str, limit: int, *, before_seq: int | None = None
    ) -> list[tuple[str, str | None]]:
        """(type, call_id) of the newest `limit` live items (optionally below `before_seq`), newest first."""
        query = sa.select(Message.type, Message.call_id).where(*_live(organization_id, thread_id))
        if before_seq is not None:
            query = query.where(Message.seq < before_seq)
        rows = (await self.session.execute(query.order_by(Message.seq.desc()).limit(limit))).all()
        return [(row[0], row[1]) for row in rows]

    async def find_call(
        self, organization_id: str, thread_id: str, call_id: str, *, before_seq: int | None = None
    ) -> Message | None:
        """The live `function_call` item with `call_id` (optionally below `before_seq`), if any."""
        query = sa.select(Message).where(
            *_live(organization_id, thread_id), Message.call_id == call_id, Message.type == "function_call"
        )
        if before_seq is not None:
            query = query.where(Message.seq < before_seq)
        return (await self.session.execute(query.limit(1))).scalar_one_or_none()

    async def head(
        self, organization_id: str, thread_id: str, limit: int, *, roles: Collection[str] | None = None
    ) -> list[Message]:
        """The oldest `limit` live messages (optionally only some roles), oldest first."""
        query = sa.select(Message).where(*_live(organization_id, thread_id, roles))
        query = query.order_by(Message.seq.asc()).limit(limit)
        return list((await self.session.execute(query)).scalars())

    async def has_role_before(self, organization_id: str, thread_id: str, role: str, before_seq: int) -> bool:
        """Whether a live message of `role` precedes `before_seq`."""
        query = (
            sa.select(Message.seq)
            .where(
                Message.organization_id == organization_id,
                Message.thread_id == thread_id,
                Message.role == role,
                Message.type == "message",
                Message.seq < before_seq,
                Message.deleted_at.is_(None),
            )
            .limit(1)
        )
        return (await self.session.execute(query)).first() is not None

    async def store_token_counts(self, organization_id: str, counts: Sequence[tuple[str, int]], tokenizer: str) -> None:
        """Remember counts computed while building a context, so the next turn does not recount them."""
        if not counts:
            return
        await self.session.execute(
            sa.update(Message),
            [
                {"organization_id": organization_id, "id": message_id, "token_count": count, "tokenizer": tokenizer}
                for message_id, count in counts
            ],
        )

    async def soft_delete(self, message: Message, now: datetime) -> None:
        message.deleted_at = now
        await self.session.flush()

    async def soft_delete_all(self, organization_id: str, thread_id: str, now: datetime) -> int:
        result = await self.session.execute(
            sa.update(Message)
            .where(*_live(organization_id, thread_id))
            .values(deleted_at=now)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def add_edit(self, edit: MessageEdit) -> None:
        self.session.add(edit)
        await self.session.flush()

    async def edits(self, organization_id: str, message_id: str) -> list[MessageEdit]:
        query = (
            sa.select(MessageEdit)
            .where(MessageEdit.organization_id == organization_id, MessageEdit.message_id == message_id)
            .order_by(MessageEdit.edited_at.asc(), MessageEdit.id.asc())
        )
        return list((await self.session.execute(query)).scalars())
