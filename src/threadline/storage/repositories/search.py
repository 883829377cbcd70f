"""SQL for thread search, through each database's full-text index (never a table scan).

SQLite: the external-content FTS5 tables `messages_fts` and `threads_fts` of migration 0002, joined to their
content tables by rowid. PostgreSQL: the generated columns `messages.content_tsv` and `threads.title_tsv`
of migration 0002 (not mapped in `tables.py`: they exist on PostgreSQL only), in the GIN indexes on
(organization_id, tsvector) of migration 0005, with query shapes whose plan holds without statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from threadline.storage.repositories.pagination import Page, PageRequest, fetch_page
from threadline.storage.repositories.threads import ThreadFilter, ThreadRepository, thread_conditions
from threadline.storage.tables import Message, Thread

_SIMPLE: sa.ColumnElement[Any] = sa.literal_column("'simple'::regconfig")
_MESSAGES_FTS = sa.table("messages_fts", sa.column("rowid"))
_THREADS_FTS = sa.table("threads_fts", sa.column("rowid"))
# Threads found by title, under their own name: the outer query selects from `threads` too.
_TITLED = sa.alias(Thread.__table__, name="titled")


def _in_c(column: Any) -> sa.ColumnElement[Any]:
    """PostgreSQL: the organization as the full-text indexes of migration 0005 hold it (collation "C"). No
    b-tree serves this expression, so the planner cannot leave those indexes for one, statistics or not."""
    return sa.collate(column, "C")


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
        """SQLite: `column = value` as an expression no index serves: the planner must then start from the
        full-text hits (rowid lookups) instead of walking the organization's whole index."""
        return sa.cast(column, sa.Text) == value

    def _sort_columns(self) -> tuple[Any, ...]:
        """(created_at, id), the list's order. On SQLite as expressions, for the same reason as `_same`: sorting
        the hits beats walking every thread of the organization in index order to find them."""
        return (
            sa.type_coerce(sa.cast(Thread.created_at, sa.Text), Thread.created_at.type),
            sa.cast(Thread.id, sa.Text),
        )

    def _reach(self, organization_id: str, terms: Sequence[str], same: Any) -> sa.CTE:
        """(thread_id, seq, stored_in) of every live matching message, for its own thread and for every fork
        that reads it (docs/threads-as-data.md): a fork made at or after the message's seq, then the forks of
        that fork, along the partial index of children (migration 0003). Response chains are not searched
        through (their messages are their own turns only)."""
        seed = sa.select(
            Message.thread_id.label("thread_id"), Message.seq.label("seq"), Message.thread_id.label("stored_in")
        ).where(
            same(Message.organization_id, organization_id), Message.deleted_at.is_(None), self._message_match(terms)
        )
        reach = seed.cte("reach", recursive=True)
        child = aliased(Thread, name="reader")
        step = (
            sa.select(child.id, reach.c.seq, reach.c.stored_in)
            .join(
                reach,
                sa.and_(
                    child.organization_id == organization_id,
                    child.parent_thread_id == reach.c.thread_id,
                    child.parent_seq >= reach.c.seq,
                ),
            )
            .where(child.deleted_at.is_(None), child.kind != sa.literal_column("'chain'"))
        )
        return reach.union_all(step)

    def matching_threads(self, where: ThreadFilter, terms: Sequence[str]) -> sa.Select[Any]:
        """SQLite: threads whose title, or one of whose live messages (its own or read from its source),
        contains every term."""
        reach = self._reach(where.organization_id, terms, self._same)
        by_message = sa.select(reach.c.thread_id)
        by_title = sa.select(_TITLED.c.id).where(
            self._same(_TITLED.c.organization_id, where.organization_id), self._title_match(terms)
        )
        return sa.select(Thread).where(*thread_conditions(where), Thread.id.in_(sa.union(by_message, by_title)))

    def _hits(self, where: ThreadFilter, terms: Sequence[str]) -> sa.Subquery:
        """PostgreSQL: each matching thread once, with the seq of its newest live matching message and the thread
        that stores it (NULL when only its title matches). One pass over the matches, straight from the full-text
        indexes (and along the children index for the forks that read them)."""
        reach = self._reach(where.organization_id, terms, lambda column, value: _in_c(column) == value)
        by_message = sa.select(reach.c.thread_id, reach.c.seq, reach.c.stored_in)
        by_title = sa.select(_TITLED.c.id, sa.cast(sa.null(), sa.Integer), sa.cast(sa.null(), sa.String)).where(
            _in_c(_TITLED.c.organization_id) == where.organization_id, self._title_match(terms)
        )
        matches = sa.union_all(by_message, by_title).subquery("matches")
        # The newest match per thread: DISTINCT ON keeps the first row of each thread in this order.
        return (
            sa.select(matches.c.thread_id, matches.c.seq, matches.c.stored_in)
            .ext(postgresql.distinct_on(matches.c.thread_id))
            .order_by(matches.c.thread_id, matches.c.seq.desc().nulls_last())
            .subquery("hits")
        )

    def _page_query(self, where: ThreadFilter, terms: Sequence[str]) -> tuple[sa.Select[Any], tuple[Any, ...]]:
        """The search as a list query (before keyset conditions, order and limit) and its sort columns.

        PostgreSQL: the plan must not depend on statistics, which a young database does not have (autovacuum
        has not analyzed it yet, or is off). With its default guesses every table looks like one row, and the
        planner once looped over a whole grouped scan for every message (seconds for a few hundred messages).
        So each matching thread is fetched by primary key in a LATERAL subquery (its LIMIT keeps it from being
        flattened into a join the planner could reorder): the hits drive the loop, whatever the estimates.
        """
        if self.sqlite:
            return self.matching_threads(where, terms), self._sort_columns()
        hits = self._hits(where, terms)
        by_id = (
            sa.select(Thread).where(*thread_conditions(where), Thread.id == hits.c.thread_id).limit(1).lateral("found")
        )
        found = aliased(Thread, by_id)
        query = sa.select(found, hits.c.seq, hits.c.stored_in).select_from(hits).join(by_id, sa.true())
        return query, (found.created_at, found.id)

    async def search(
        self, where: ThreadFilter, terms: Sequence[str], page: PageRequest
    ) -> tuple[Page[Thread], dict[str, MessageHit]]:
        """One page of matching threads in the list's order, and per thread its newest live matching message
        (for the snippet). A cursor that names no thread is a 400."""
        cursors = await ThreadRepository(self.session).cursors(where, page)
        query, sort = self._page_query(where, terms)
        if self.sqlite:
            found = await fetch_page(self.session, query, sort, page, cursors)
            return found, await self.latest_hits(where.organization_id, [t.id for t in found.items], terms)
        rows = await fetch_page(self.session, query, sort, page, cursors, scalars=False)
        newest = {thread.id: (stored_in, seq) for thread, seq, stored_in in rows.items if seq is not None}
        threads = Page(items=[thread for thread, _, _ in rows.items], has_more=rows.has_more, total=rows.total)
        return threads, await self._messages_at(where.organization_id, newest)

    async def _messages_at(self, organization_id: str, at_seqs: dict[str, tuple[str, int]]) -> dict[str, MessageHit]:
        """PostgreSQL: per thread, the live message at (the thread storing it, seq), each by its unique key
        (LATERAL, for the same reason as in `_page_query`)."""
        if not at_seqs:
            return {}
        wanted = sa.values(
            sa.column("thread_id", sa.String),
            sa.column("stored_in", sa.String),
            sa.column("seq", sa.Integer),
            name="wanted",
        ).data([(thread_id, stored_in, seq) for thread_id, (stored_in, seq) in at_seqs.items()])
        at = (
            sa.select(Message.id, Message.content)
            .where(
                Message.organization_id == organization_id,
                Message.thread_id == wanted.c.stored_in,
                Message.seq == wanted.c.seq,
                Message.deleted_at.is_(None),
            )
            .limit(1)
            .lateral("at")
        )
        query = sa.select(wanted.c.thread_id, at.c.id, at.c.content).select_from(wanted).join(at, sa.true())
        rows = (await self.session.execute(query)).all()
        return {r.thread_id: MessageHit(r.thread_id, r.id, r.content) for r in rows}

    async def latest_hits(
        self, organization_id: str, thread_ids: Sequence[str], terms: Sequence[str]
    ) -> dict[str, MessageHit]:
        """SQLite: per thread, its newest live message that matches, its own or read from its source (for the
        result's snippet)."""
        if not thread_ids:
            return {}
        reach = self._reach(organization_id, terms, self._same)
        # SQLite's bare columns: with max(), `stored_in` comes from the row holding the maximum.
        newest = (
            sa.select(reach.c.thread_id, sa.func.max(reach.c.seq).label("seq"), reach.c.stored_in)
            .where(reach.c.thread_id.in_(thread_ids))
            .group_by(reach.c.thread_id)
            .subquery()
        )
        query = sa.select(newest.c.thread_id, Message.id, Message.content).join(
            newest,
            sa.and_(
                Message.organization_id == organization_id,
                Message.thread_id == newest.c.stored_in,
                Message.seq == newest.c.seq,
            ),
        )
        rows = (await self.session.execute(query)).all()
        return {r.thread_id: MessageHit(r.thread_id, r.id, r.content) for r in rows}

    async def explain(self, where: ThreadFilter, terms: Sequence[str]) -> str:
        """The database's plan for the search's page query (tests check that it goes through the full-text
        index)."""
        query, sort = self._page_query(where, terms)
        query = query.order_by(*(c.desc() for c in sort)).limit(21)
        compiled = query.compile(self.session.get_bind(), compile_kwargs={"literal_binds": True})
        prefix = "EXPLAIN QUERY PLAN " if self.sqlite else "EXPLAIN "
        rows = (await self.session.execute(sa.text(prefix + str(compiled)))).all()
        return "\n".join(" ".join(str(c) for c in row) for row in rows)
