"""SQL for a thread's whole history when it spans several threads (a fork, docs/threads-as-data.md).

A fork stores only its own items; its history is a *path* of spans, newest first: its own items, then its source's
live items up to the fork point, then the source's source's … (the parent pointer of migration 0003). Seqs grow
along the path (a fork numbers its items on from its fork point), so the spans are disjoint seq ranges and a
keyset page over `seq` reads each span with its own index range scan: O(page) rows per span reached, never the
whole history.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from threadline.ids import new_id
from threadline.storage.repositories.pagination import Page, PageRequest, check_cursors
from threadline.storage.tables import Message, MessageEdit, Thread

_NOT_CHAIN = Thread.kind != sa.literal_column("'chain'")


class Span(NamedTuple):
    """The live items of `thread_id` with `after_seq < seq <= last_seq` (`last_seq` None: to its end)."""

    thread_id: str
    after_seq: int
    last_seq: int | None


def _in_span(span: Span) -> list[sa.ColumnElement[bool]]:
    conditions = [Message.thread_id == span.thread_id, Message.seq > span.after_seq]
    if span.last_seq is not None:
        conditions.append(Message.seq <= span.last_seq)
    return conditions


def _live(organization_id: str, roles: Collection[str] | None) -> list[sa.ColumnElement[bool]]:
    conditions = [Message.organization_id == organization_id, Message.deleted_at.is_(None)]
    if roles is not None:
        conditions += [Message.role.in_(roles), Message.type == "message"]
    return conditions


class HistoryRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def find(
        self, organization_id: str, spans: Sequence[Span], message_id: str, *, roles: Collection[str] | None = None
    ) -> Message | None:
        """The live item `message_id` if it lies on the path."""
        query = sa.select(Message).where(*_live(organization_id, roles), Message.id == message_id)
        message = (await self.session.execute(query)).scalar_one_or_none()
        if message is None or not any(_contains(span, message.thread_id, message.seq) for span in spans):
            return None
        return message

    async def page(
        self,
        organization_id: str,
        spans: Sequence[Span],
        page: PageRequest,
        *,
        roles: Collection[str] | None = None,
        response_id: str | None = None,
    ) -> Page[Message]:
        """One keyset page of the path's live items in `seq` order: the spans are read in the page's direction
        and the walk stops as soon as the page (plus one, for `has_more`) is full."""
        cursors = {"after": await self._seq(organization_id, spans, page.after)}
        cursors["before"] = await self._seq(organization_id, spans, page.before)
        check_cursors(page, cursors, "message of this thread")
        after, before = cursors["after"], cursors["before"]
        descending = page.order == "desc"
        # Walking backwards from `before` (alone) and flipping ends the page right before the cursor.
        reverse = before is not None and after is None
        walk_desc = descending != reverse
        ordered = sorted(spans, key=lambda s: s.after_seq, reverse=walk_desc)
        rows: list[Message] = []
        for span in ordered:
            query = sa.select(Message).where(*_live(organization_id, roles), *_in_span(span))
            if response_id is not None:
                query = query.where(Message.response_id == response_id)
            if after is not None:
                query = query.where(Message.seq < after[0] if descending else Message.seq > after[0])
            if before is not None:
                query = query.where(Message.seq > before[0] if descending else Message.seq < before[0])
            query = query.order_by(Message.seq.desc() if walk_desc else Message.seq.asc())
            rows += (await self.session.execute(query.limit(page.limit + 1 - len(rows)))).scalars()
            if len(rows) > page.limit:
                break
        has_more = len(rows) > page.limit
        rows = rows[: page.limit]
        if reverse:
            rows.reverse()
        total = None
        if page.include_total:
            total = 0
            for span in spans:
                count = sa.select(sa.func.count()).where(*_live(organization_id, roles), *_in_span(span))
                total += int((await self.session.execute(count)).scalar_one())
        return Page(items=rows, has_more=has_more, total=total)

    async def _seq(self, organization_id: str, spans: Sequence[Span], message_id: str | None) -> tuple[Any, ...] | None:
        if message_id is None:
            return None
        query = sa.select(Message.thread_id, Message.seq).where(
            Message.organization_id == organization_id, Message.id == message_id
        )
        row = (await self.session.execute(query)).first()
        if row is None or not any(_contains(span, row[0], row[1]) for span in spans):
            return None
        return (row[1],)

    async def items_of_threads(self, organization_id: str, thread_ids: Sequence[str]) -> dict[str, list[Message]]:
        """Every live item of several threads that are not forks, in `seq` order per thread, in one query (an
        export of many short threads; the caller bounds the total by their counts)."""
        query = (
            sa.select(Message)
            .where(*_live(organization_id, None), Message.thread_id.in_(list(thread_ids)))
            .order_by(Message.thread_id, Message.seq)
        )
        found: dict[str, list[Message]] = {thread_id: [] for thread_id in thread_ids}
        for message in (await self.session.execute(query)).scalars():
            found[message.thread_id].append(message)
        return found

    async def newest_seq(self, organization_id: str, span: Span) -> int | None:
        """The seq of the span's newest live item."""
        query = sa.select(sa.func.max(Message.seq)).where(*_live(organization_id, None), *_in_span(span))
        value = (await self.session.execute(query)).scalar_one_or_none()
        return int(value) if value is not None else None

    async def count(self, organization_id: str, spans: Sequence[Span]) -> int:
        """Live items on the spans (an index range count per span)."""
        total = 0
        for span in spans:
            query = sa.select(sa.func.count()).where(*_live(organization_id, None), *_in_span(span))
            total += int((await self.session.execute(query)).scalar_one())
        return total

    async def forks_of(self, organization_id: str, thread_id: str) -> list[Thread]:
        """The live forks made directly from `thread_id` (response chains are not forks: they keep their own
        rules, migration 0003), row-locked: their history is about to change."""
        query = (
            sa.select(Thread)
            .where(
                Thread.organization_id == organization_id,
                Thread.parent_thread_id == thread_id,
                Thread.deleted_at.is_(None),
                _NOT_CHAIN,
            )
            .order_by(Thread.id)
            .with_for_update()
        )
        return list((await self.session.execute(query)).scalars())

    async def adjust_inherited(self, organization_id: str, fork_ids: Collection[str], delta: int) -> None:
        """Add `delta` to the inherited count of these forks and of every fork made from them, at any depth: all
        of them read the same stretch of the source through these."""
        if not fork_ids or delta == 0:
            return
        start = (
            sa.select(Thread.organization_id, Thread.id)
            .where(Thread.organization_id == organization_id, Thread.id.in_(sorted(fork_ids)))
            .cte("reading", recursive=True)
        )
        child = aliased(Thread)
        step = sa.select(child.organization_id, child.id).join(
            start, sa.and_(child.organization_id == start.c.organization_id, child.parent_thread_id == start.c.id)
        )
        reading = start.union(step)
        await self.session.execute(
            sa.update(Thread)
            .where(
                Thread.organization_id == organization_id,
                Thread.id.in_(sa.select(reading.c.id)),
                _NOT_CHAIN,
            )
            .values(inherited_message_count=Thread.inherited_message_count + delta)
            .execution_options(synchronize_session=False)
        )

    async def children_reading(self, organization_id: str, thread_id: str, seq: int) -> list[str]:
        """The live threads made directly from `thread_id` at or after `seq` (forks and chains alike): their
        history holds the item at `seq`."""
        query = sa.select(Thread.id).where(
            Thread.organization_id == organization_id,
            Thread.parent_thread_id == thread_id,
            Thread.parent_seq >= seq,
            Thread.deleted_at.is_(None),
        )
        return list((await self.session.execute(query)).scalars())

    async def children(self, organization_id: str, thread_id: str) -> list[tuple[str, int]]:
        """(id, fork point) of the live threads made directly from `thread_id`, forks and chains alike."""
        query = sa.select(Thread.id, Thread.parent_seq).where(
            Thread.organization_id == organization_id,
            Thread.parent_thread_id == thread_id,
            Thread.deleted_at.is_(None),
        )
        return [(row[0], int(row[1] or 0)) for row in (await self.session.execute(query)).all()]

    async def copy_items(self, organization_id: str, span: Span, target_thread_id: str, *, batch: int = 1000) -> int:
        """Copy the span's live items (seq, times, edits and all) into `target_thread_id` under new ids, keeping
        their seqs: the target numbers its own items above the span, so they fit below it. A batch at a time, so
        memory stays flat however long the span. Returns how many were copied."""
        copied = 0
        after = span.after_seq
        while True:
            part = Span(span.thread_id, after, span.last_seq)
            query = sa.select(Message).where(*_live(organization_id, None), *_in_span(part))
            sources = list((await self.session.execute(query.order_by(Message.seq).limit(batch))).scalars())
            if not sources:
                return copied
            renamed = {m.id: new_id(m.id.partition("_")[0] or "msg") for m in sources}
            self.session.add_all(_copy(m, renamed[m.id], target_thread_id) for m in sources)
            edits_query = sa.select(MessageEdit).where(
                MessageEdit.organization_id == organization_id, MessageEdit.message_id.in_(list(renamed))
            )
            for edit in (await self.session.execute(edits_query)).scalars():
                self.session.add(
                    MessageEdit(
                        organization_id=organization_id,
                        id=new_id("edit"),
                        thread_id=target_thread_id,
                        message_id=renamed[edit.message_id],
                        previous_content=edit.previous_content,
                        previous_metadata=dict(edit.previous_metadata),
                        edited_by=edit.edited_by,
                        edited_at=edit.edited_at,
                    )
                )
            await self.session.flush()
            copied += len(sources)
            after = sources[-1].seq


def _copy(m: Message, new_message_id: str, thread_id: str) -> Message:
    return Message(
        organization_id=m.organization_id,
        id=new_message_id,
        thread_id=thread_id,
        seq=m.seq,
        role=m.role,
        type=m.type,
        call_id=m.call_id,
        payload=m.payload,
        content=m.content,
        metadata_=dict(m.metadata_),
        token_count=m.token_count,
        tokenizer=m.tokenizer,
        model=m.model,
        response_id=m.response_id,
        assistant_id=m.assistant_id,
        user_id=m.user_id,
        created_at=m.created_at,
        edited_at=m.edited_at,
        edit_count=m.edit_count,
        source_id=m.source_id,
    )


def _contains(span: Span, thread_id: str, seq: int) -> bool:
    return thread_id == span.thread_id and seq > span.after_seq and (span.last_seq is None or seq <= span.last_seq)
