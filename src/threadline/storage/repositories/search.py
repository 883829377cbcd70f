"""SQL for thread search, through each database's full-text index (never a table scan).

SQLite: the external-content FTS5 tables `messages_fts` and `threads_fts` of migration 0002, joined to their
content tables by rowid. PostgreSQL: the GIN-indexed generated columns `messages.content_tsv` and
`threads.title_tsv` of migration 0002 (not mapped in `tables.py`: they exist on PostgreSQL only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from threadline.storage.repositories.pagination import Page, PageRequest, fetch_page
from threadline.storage.repositories.threads import ThreadFilter, ThreadRepository, thread_conditions
from threadline.storage.tables import Message, Thread

_SIMPLE: sa.ColumnElement[Any] = sa.literal_column("'simple'::regconfig")
_MESSAGES_FTS = sa.table("messages_fts", sa.column("rowid"))
_THREADS_FTS = sa.table("threads_fts", sa.column("rowid"))
# Threads found by title, under their own name: the outer query selects from `threads` too.
_TITLED = sa.alias(Thread.__table__, name="titled")


def _fts_match(table: str, terms: Sequence[str]) -> sa.TextClause:
    """`<fts table> MATCH '"t1"* "t2"*'`: every term, each as a quoted (literal) prefix."""
    query = " ".join(f'"{t}"*' for t in terms)
    return sa.text(f"{table} MATCH :{table}_q").bindparams(sa.bindparam(f"{table}_q", query, type_=sa.String))


@dataclass(frozen=True)
class MessageHit:
    thread_id: str
    message_id: str
    content: str


class SearchRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.sqlite = session.get_bind().dialect.name == "sqlite"

    # Match conditions, one per dialect. Terms are letters and digits only (domain.search.parse_query), so
    # quoting them is enough to keep them literal in either query language.

    def _message_match(self, terms: Sequence[str]) -> sa.ColumnElement[bool]:
        if self.sqlite:
            fts = sa.select(_MESSAGES_FTS.c.rowid).where(_fts_match("messages_fts", terms))
            return sa.literal_column("messages.rowid").in_(fts)
        vector: sa.ColumnElement[Any] = sa.literal_column("messages.content_tsv")
        return vector.bool_op("@@")(sa.func.to_tsquery(_SIMPLE, " & ".join(f"{t}:*" for t in terms)))

    def _title_match(self, terms: Sequence[str]) -> sa.ColumnElement[bool]:
        if self.sqlite:
            fts = sa.select(_THREADS_FTS.c.rowid).where(_fts_match("threads_fts", terms))
            return sa.literal_column(f"{_TITLED.name}.rowid").in_(fts)
        vector: sa.ColumnElement[Any] = sa.literal_column(f"{_TITLED.name}.title_tsv")
        return vector.bool_op("@@")(sa.func.to_tsquery(_SIMPLE, " & ".join(f"{t}:*" for t in terms)))

    def _same(self, column: Any, value: str) -> sa.ColumnElement[bool]:
        """`column = value`, but on SQLite as an expression no index serves: the planner must then start from
        the full-text hits (rowid lookups) instead of walking the organization's whole index."""
        return (sa.cast(column, sa.Text) if self.sqlite else column) == value

    def _sort_columns(self) -> tuple[Any, ...]:
        """(created_at, id), the list's order. On SQLite as expressions, for the same reason as `_same`: sorting
        the hits beats walking every thread of the organization in index order to find them."""
        if not self.sqlite:
            return (Thread.created_at, Thread.id)
        return (
            sa.type_coerce(sa.cast(Thread.created_at, sa.Text), Thread.created_at.type),
            sa.cast(Thread.id, sa.Text),
        )

    def matching_threads(self, where: ThreadFilter, terms: Sequence[str]) -> sa.Select[Any]:
        """Threads whose title, or one of whose live messages, contains every term."""
        by_message = sa.select(Message.thread_id).where(
            self._same(Message.organization_id, where.organization_id),
            Message.deleted_at.is_(None),
            self._message_match(terms),
        )
        by_title = sa.select(_TITLED.c.id).where(
            self._same(_TITLED.c.organization_id, where.organization_id), self._title_match(terms)
        )
        return sa.select(Thread).where(*thread_conditions(where), Thread.id.in_(sa.union(by_message, by_title)))

    async def search_page(self, where: ThreadFilter, terms: Sequence[str], page: PageRequest) -> Page[Thread]:
        """One page in the list's order; a cursor that names no thread is a 400."""
        cursors = await ThreadRepository(self.session).cursors(where, page)
        query = self.matching_threads(where, terms)
        return await fetch_page(self.session, query, self._sort_columns(), page, cursors)

    async def latest_hits(
        self, organization_id: str, thread_ids: Sequence[str], terms: Sequence[str]
    ) -> dict[str, MessageHit]:
        """Per thread, its newest live message that matches (for the result's snippet)."""
        if not thread_ids:
            return {}
        newest = (
            sa.select(Message.thread_id, sa.func.max(Message.seq).label("seq"))
            .where(
                Message.organization_id == organization_id,
                Message.thread_id.in_(thread_ids),
                Message.deleted_at.is_(None),
                self._message_match(terms),
            )
            .group_by(Message.thread_id)
            .subquery()
        )
        query = sa.select(Message.thread_id, Message.id, Message.content).join(
            newest,
            sa.and_(
                Message.organization_id == organization_id,
                Message.thread_id == newest.c.thread_id,
                Message.seq == newest.c.seq,
            ),
        )
        rows = (await self.session.execute(query)).all()
        return {r.thread_id: MessageHit(r.thread_id, r.id, r.content) for r in rows}

    async def explain(self, where: ThreadFilter, terms: Sequence[str]) -> str:
        """The database's plan for the search query (tests check that it goes through the full-text index)."""
        query = self.matching_threads(where, terms).order_by(*(c.desc() for c in self._sort_columns())).limit(21)
        compiled = query.compile(self.session.get_bind(), compile_kwargs={"literal_binds": True})
        prefix = "EXPLAIN QUERY PLAN " if self.sqlite else "EXPLAIN "
        rows = (await self.session.execute(sa.text(prefix + str(compiled)))).all()
        return "\n".join(" ".join(str(c) for c in row) for row in rows)
