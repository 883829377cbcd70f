"""SQL for the retention sweeper: which rows are due, and deleting them a bounded batch at a time.

The purge categories are mutually exclusive by construction (each excludes the ones before it), so a dry run's
counts are exactly what a real sweep would purge. Literals (not bound parameters) in `kind = 'chain'` and
`message_count > 0` let SQLite use the partial indexes of migration 0002.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from threadline.storage.tables import Message, MessageEdit, Response, Thread

ThreadCategory = Literal["deleted_threads", "expired_threads", "expired_chains"]

_CHAIN = Thread.kind == sa.literal_column("'chain'")


@dataclass(frozen=True)
class Cutoffs:
    """Everything older than these instants is due."""

    now: datetime
    deleted_before: datetime  # soft-deleted threads and messages, after the grace period
    created_before: datetime  # threads past the maximum age
    chain_before: datetime  # previousResponseId chains (hidden `kind = 'chain'` threads) and their responses
    inactive_before: datetime  # messages of threads with no new message since


def _kept_after_delete(c: Cutoffs) -> sa.ColumnElement[bool]:
    return sa.or_(Thread.deleted_at.is_(None), Thread.deleted_at >= c.deleted_before)


def _idle_chain(c: Cutoffs) -> sa.ColumnElement[bool]:
    return sa.and_(
        _CHAIN, Thread.last_message_at < c.chain_before, _kept_after_delete(c), Thread.created_at >= c.created_before
    )


def _has_live_child(c: Cutoffs) -> sa.ColumnElement[bool]:
    """A chain forked from this thread that no earlier category purges: its reads go through this thread."""
    child = aliased(Thread)
    return (
        sa.exists()
        .where(
            child.organization_id == Thread.organization_id,
            child.parent_thread_id == Thread.id,
            child.deleted_at.is_(None),
            child.created_at >= c.created_before,
        )
        .correlate(Thread)
    )


def _kept_chains(c: Cutoffs) -> sa.CTE:
    """(organization_id, id) of every thread a chain in use reads through: the ancestors of the active chains,
    along live threads. What a sweep keeps of the idle chains, computed in one recursive query (dry runs)."""
    kept = (
        sa.select(Thread.organization_id.label("organization_id"), Thread.parent_thread_id.label("id"))
        .where(
            _CHAIN,
            Thread.last_message_at >= c.chain_before,
            Thread.deleted_at.is_(None),
            Thread.created_at >= c.created_before,
            Thread.parent_thread_id.is_not(None),
        )
        .cte("kept_chains", recursive=True)
    )
    link = aliased(Thread)
    step = (
        sa.select(link.organization_id, link.parent_thread_id)
        .join(kept, sa.and_(link.organization_id == kept.c.organization_id, link.id == kept.c.id))
        .where(link.parent_thread_id.is_not(None), link.deleted_at.is_(None), link.created_at >= c.created_before)
    )
    return kept.union(step)


def _in_kept_chains(c: Cutoffs) -> sa.ColumnElement[bool]:
    kept = _kept_chains(c)
    return sa.tuple_(Thread.organization_id, Thread.id).in_(sa.select(kept.c.organization_id, kept.c.id))


def thread_condition(category: ThreadCategory, c: Cutoffs, *, counting: bool = False) -> sa.ColumnElement[bool]:
    """Threads purged whole (messages, edits, responses and the thread row).

    An idle chain is kept while a live chain forks from it (its reads go through it). The sweep purges idle chains
    leaf first: each batch takes the idle chains without a live child, which frees their parents for the next
    batch. A dry run (`counting`) cannot purge, so it counts that fixpoint directly: idle chains that no active
    chain reads through (a recursive query).
    """
    if category == "deleted_threads":
        return sa.and_(Thread.deleted_at.is_not(None), Thread.deleted_at < c.deleted_before)
    if category == "expired_threads":
        return sa.and_(Thread.created_at < c.created_before, _kept_after_delete(c))
    if counting:
        return sa.and_(_idle_chain(c), sa.not_(_in_kept_chains(c)))
    return sa.and_(_idle_chain(c), sa.not_(_has_live_child(c)))


def inactive_condition(c: Cutoffs) -> sa.ColumnElement[bool]:
    """Threads kept, whose messages are purged: no new message since `inactive_before`, and some left."""
    return sa.and_(
        Thread.last_message_at < c.inactive_before,
        Thread.message_count > sa.literal_column("0"),
        _kept_after_delete(c),
        Thread.created_at >= c.created_before,
        sa.not_(sa.and_(_CHAIN, Thread.last_message_at < c.chain_before)),
    )


def _kept_chain_condition(c: Cutoffs, *, counting: bool) -> sa.ColumnElement[bool]:
    """Chains the thread categories leave: active ones, and idle ones a live chain still reads through."""
    active = sa.and_(
        _CHAIN, Thread.last_message_at >= c.chain_before, _kept_after_delete(c), Thread.created_at >= c.created_before
    )
    # In a sweep this runs after the idle chains were purged: those left all have a live child.
    read_through = _in_kept_chains(c) if counting else _has_live_child(c)
    return sa.or_(active, sa.and_(_idle_chain(c), read_through))


def _thread_of_message() -> sa.ColumnElement[bool]:
    return sa.and_(Thread.organization_id == Message.organization_id, Thread.id == Message.thread_id)


def _deleted_messages_condition(c: Cutoffs, *, counting: bool = False) -> sa.ColumnElement[bool]:
    """Soft-deleted messages past the grace period, in threads no category above purges."""
    return sa.and_(
        Message.deleted_at.is_not(None),
        Message.deleted_at < c.deleted_before,
        sa.not_(
            sa.or_(
                thread_condition("deleted_threads", c),
                thread_condition("expired_threads", c),
                thread_condition("expired_chains", c, counting=counting),
                inactive_condition(c),
            )
        ),
    )


def _chain_responses_condition(c: Cutoffs, *, counting: bool = False) -> sa.ColumnElement[bool]:
    return sa.and_(_kept_chain_condition(c, counting=counting), Response.created_at < c.chain_before)


def _response_thread() -> sa.ColumnElement[bool]:
    return sa.and_(Thread.organization_id == Response.organization_id, Thread.id == Response.thread_id)


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


class RetentionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def _count(self, query: sa.Select[Any]) -> int:
        return int((await self.session.execute(query)).scalar_one())

    # Counting (dry runs)

    async def count_threads(self, category: ThreadCategory, c: Cutoffs) -> int:
        condition = thread_condition(category, c, counting=True)
        return await self._count(sa.select(sa.func.count()).select_from(Thread).where(condition))

    async def count_inactive_messages(self, c: Cutoffs) -> int:
        query = (
            sa.select(sa.func.count())
            .select_from(Message)
            .join(Thread, _thread_of_message())
            .where(inactive_condition(c), Message.created_at < c.inactive_before)
        )
        return await self._count(query)

    async def count_deleted_messages(self, c: Cutoffs) -> int:
        query = (
            sa.select(sa.func.count())
            .select_from(Message)
            .join(Thread, _thread_of_message())
            .where(_deleted_messages_condition(c, counting=True))
        )
        return await self._count(query)

    async def count_chain_responses(self, c: Cutoffs) -> int:
        query = (
            sa.select(sa.func.count())
            .select_from(Response)
            .join(Thread, _response_thread())
            .where(_chain_responses_condition(c, counting=True))
        )
        return await self._count(query)

    # Finding work

    async def due_threads(
        self, condition: sa.ColumnElement[bool], limit: int, skip: Sequence[tuple[str, str]] = ()
    ) -> list[tuple[str, str]]:
        query = sa.select(Thread.organization_id, Thread.id).where(condition)
        if skip:
            query = query.where(sa.tuple_(Thread.organization_id, Thread.id).not_in(list(skip)))
        rows = (await self.session.execute(query.limit(limit))).all()
        return [(r[0], r[1]) for r in rows]

    # Deleting, one bounded batch per call (the caller commits between calls)

    async def purge_messages(
        self, organization_id: str, thread_ids: Sequence[str], limit: int, *, created_before: datetime | None = None
    ) -> int:
        """Delete up to `limit` messages of the threads (and their edit history); returns how many."""
        query = sa.select(Message.id).where(
            Message.organization_id == organization_id, Message.thread_id.in_(thread_ids)
        )
        if created_before is not None:
            query = query.where(Message.created_at < created_before)
        ids = list((await self.session.execute(query.limit(limit))).scalars())
        if ids:
            await self._delete_messages(organization_id, ids)
        return len(ids)

    async def _delete_messages(self, organization_id: str, message_ids: Sequence[str]) -> None:
        await self.session.execute(
            sa.delete(MessageEdit).where(
                MessageEdit.organization_id == organization_id, MessageEdit.message_id.in_(message_ids)
            )
        )
        await self.session.execute(
            sa.delete(Message).where(Message.organization_id == organization_id, Message.id.in_(message_ids))
        )

    async def purge_responses(
        self, organization_id: str, thread_ids: Sequence[str], limit: int, *, created_before: datetime | None = None
    ) -> int:
        batch = sa.select(Response.id).where(
            Response.organization_id == organization_id, Response.thread_id.in_(thread_ids)
        )
        if created_before is not None:
            batch = batch.where(Response.created_at < created_before)
        result = await self.session.execute(
            sa.delete(Response).where(Response.organization_id == organization_id, Response.id.in_(batch.limit(limit)))
        )
        return _rowcount(result)

    async def delete_threads(
        self, organization_id: str, thread_ids: Sequence[str], condition: sa.ColumnElement[bool]
    ) -> int:
        """Delete the thread rows that are still due (what was appended meanwhile goes with them)."""
        due = sa.and_(Thread.organization_id == organization_id, Thread.id.in_(thread_ids), condition)
        # Rows that arrived since the batches above (no foreign key on these two tables).
        ids = list((await self.session.execute(sa.select(Thread.id).where(due))).scalars())
        if not ids:
            return 0
        await self.session.execute(
            sa.delete(MessageEdit).where(MessageEdit.organization_id == organization_id, MessageEdit.thread_id.in_(ids))
        )
        await self.session.execute(
            sa.delete(Response).where(Response.organization_id == organization_id, Response.thread_id.in_(ids))
        )
        result = await self.session.execute(
            sa.delete(Thread).where(Thread.organization_id == organization_id, Thread.id.in_(ids))
        )
        return _rowcount(result)

    async def recount_messages(self, organization_id: str, thread_ids: Sequence[str]) -> None:
        """Set message_count to the live messages left. The row lock first, then the count in its own
        statement, so a message appended concurrently is counted (PostgreSQL: a fresh snapshot per statement)."""
        for thread_id in thread_ids:
            key = sa.and_(Thread.organization_id == organization_id, Thread.id == thread_id)
            await self.session.execute(sa.select(Thread.id).where(key).with_for_update())
            live = await self._count(
                sa.select(sa.func.count())
                .select_from(Message)
                .where(
                    Message.organization_id == organization_id,
                    Message.thread_id == thread_id,
                    Message.deleted_at.is_(None),
                )
            )
            await self.session.execute(
                sa.update(Thread).where(key).values(message_count=live).execution_options(synchronize_session=False)
            )

    async def purge_deleted_messages(self, c: Cutoffs, limit: int) -> int:
        query = (
            sa.select(Message.organization_id, Message.id)
            .join(Thread, _thread_of_message())
            .where(_deleted_messages_condition(c))
            .limit(limit)
        )
        rows = (await self.session.execute(query)).all()
        by_org: dict[str, list[str]] = {}
        for organization_id, message_id in rows:
            by_org.setdefault(organization_id, []).append(message_id)
        for organization_id, ids in by_org.items():
            await self._delete_messages(organization_id, ids)
        return len(rows)

    async def purge_chain_responses(self, c: Cutoffs, limit: int) -> int:
        batch = (
            sa.select(Response.organization_id, Response.id)
            .join(Thread, _response_thread())
            .where(_chain_responses_condition(c))
            .limit(limit)
        )
        result = await self.session.execute(
            sa.delete(Response).where(sa.tuple_(Response.organization_id, Response.id).in_(batch))
        )
        return _rowcount(result)
