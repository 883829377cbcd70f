"""SQL for threads."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from threadline.domain.threads import INACTIVE, STREAMING
from threadline.domain.turns import COMPLETED, REQUIRES_ACTION
from threadline.errors import AlreadyExists
from threadline.storage import driver
from threadline.storage.repositories.pagination import Page, PageRequest, check_cursors, fetch_page
from threadline.storage.statements import constant, json_rows, param, qualified
from threadline.storage.tables import Message, Response, Thread, UTCDateTime, WebhookEndpoint, core_table


@dataclass(frozen=True)
class ThreadFilter:
    organization_id: str
    user_id: str | None = None
    assistant_id: str | None = None
    workflow_id: str | None = None
    visible_in_ui: bool | None = True
    is_pinned: bool | None = None
    include_deleted: bool = False


def thread_conditions(where: ThreadFilter) -> list[sa.ColumnElement[bool]]:
    """The WHERE conditions a filter stands for (the list and the search alike)."""
    conditions = [Thread.organization_id == where.organization_id]
    if where.user_id is not None:
        conditions.append(Thread.user_id == where.user_id)
    if where.assistant_id is not None:
        conditions.append(Thread.assistant_id == where.assistant_id)
    if where.workflow_id is not None:
        conditions.append(Thread.workflow_id == where.workflow_id)
    # `=` rather than `IS`: PostgreSQL only turns `=` into an index condition.
    if where.visible_in_ui is not None:
        conditions.append(Thread.visible_in_ui == where.visible_in_ui)
    if where.is_pinned is not None:
        conditions.append(Thread.is_pinned == where.is_pinned)
    if not where.include_deleted:
        conditions.append(Thread.deleted_at.is_(None))
    return conditions


@dataclass(frozen=True, slots=True)
class LeasedThread:
    """What a turn's start needs of the thread whose lease it took, as the lease's UPDATE … RETURNING hands it
    back: plain values, not an ORM object (building one costs more than reading the row), and two facts looked up
    in the same statement that almost every turn finds false, so the start skips their queries."""

    organization_id: str
    id: str
    assistant_id: str | None
    parent_thread_id: str | None
    state: str
    message_count: int
    inherited_message_count: int
    # An Assistants run of the thread waits for tool outputs (services/waiting_runs.py looks at it).
    run_waiting: bool
    # The thread holds a live compaction item (services/summaries.py reads the newest).
    compacted: bool


@dataclass(frozen=True, slots=True)
class FreedThread:
    """What a turn's save needs of the thread it freed (`release_lease_returning`)."""

    organization_id: str
    id: str
    assistant_id: str | None
    compact_at: float | None
    # Counts after the appended messages, and the first seq handed out to them.
    message_count: int
    inherited_message_count: int
    first_seq: int
    # The organization has an enabled webhook endpoint (else settling the response writes no delivery).
    webhooks: bool


_threads = core_table(Thread)


def _leased(thread_id: sa.ColumnElement[str] | None = None) -> tuple[sa.ColumnElement[Any], ...]:
    """The RETURNING list of `LeasedThread`. (The lookups name the thread by value, `thread_id` (default: the
    parameter): SQLite's RETURNING cannot refer to the updated row from inside a subquery.)"""
    t, responses, messages = _threads.c, core_table(Response).c, core_table(Message).c
    thread_id = param("thread_id") if thread_id is None else thread_id
    run_waiting = sa.exists().where(
        responses.organization_id == param("organization_id"),
        responses.thread_id == thread_id,
        responses.status == constant(REQUIRES_ACTION),
    )
    compacted = sa.exists().where(
        messages.organization_id == param("organization_id"),
        messages.thread_id == thread_id,
        messages.type == constant("compaction"),
        messages.deleted_at.is_(None),
    )
    return (
        t.organization_id,
        t.id,
        t.assistant_id,
        t.parent_thread_id,
        t.state,
        t.message_count,
        t.inherited_message_count,
        run_waiting,
        compacted,
    )


def _this_thread() -> tuple[sa.ColumnElement[bool], ...]:
    t = _threads.c
    return t.organization_id == param("organization_id"), t.id == param("thread_id"), t.deleted_at.is_(None)


@functools.cache
def _acquire(after_seq: bool) -> sa.Update:
    """`acquire_free_lease`'s statement (built once per shape: docs/storage.md)."""
    t = _threads.c
    query = sa.update(_threads).where(*_this_thread(), t.status == constant(INACTIVE))
    if after_seq:
        query = query.where(t.next_seq == param("next_seq"))
    return query.values(
        status=constant(STREAMING), lease_owner=param("owner"), lease_expires_at=param("expires_at", UTCDateTime())
    ).returning(*_leased())


# What `_release` sets itself when messages are appended.
_APPENDING = frozenset({"next_seq", "message_count", "updated_at", "last_message_at"})


@functools.cache
def _release(appended: bool, changed: frozenset[str]) -> sa.Update:
    """`release_lease_returning`'s statement: the columns a turn's save changes, each a parameter."""
    t = _threads.c
    endpoints = core_table(WebhookEndpoint).c
    webhooks = sa.exists().where(
        endpoints.organization_id == param("organization_id"), endpoints.status == constant("enabled")
    )
    values: dict[str, Any] = {"status": constant(INACTIVE), "lease_owner": None, "lease_expires_at": None}
    values |= {name: param(f"set_{name}", t[name].type) for name in sorted(changed)}
    if appended:
        values.update(  # the keys of _APPENDING
            next_seq=t.next_seq + param("appended", sa.Integer()),
            message_count=t.message_count + param("appended", sa.Integer()),
            updated_at=param("now", UTCDateTime()),
            last_message_at=param("now", UTCDateTime()),
        )
    return (
        sa.update(_threads)
        .where(*_this_thread(), t.lease_owner == param("owner"))
        .values(**values)
        .returning(
            t.organization_id,
            t.id,
            t.assistant_id,
            t.compact_at,
            t.message_count,
            t.inherited_message_count,
            t.next_seq - param("appended", sa.Integer()),
            webhooks,
        )
    )


class PathRow(NamedTuple):
    """One thread on a conversation's path (see `ThreadRepository.path`)."""

    id: str
    parent_thread_id: str | None
    parent_seq: int | None
    message_count: int
    # The thread holds a live compaction item (anywhere: a parent's may lie past the fork point).
    compacted: bool


class ChainParent(NamedTuple):
    """The thread a previous response belongs to, as a turn continuing that response needs it (docs/chains.md)."""

    organization_id: str
    id: str
    assistant_id: str | None
    kind: str
    state: str
    next_seq: int


@dataclass(frozen=True, slots=True)
class PreviousResponse:
    """A response a turn continues (`previousResponseId`), its thread and that thread's path, read in one statement
    (`ThreadRepository.previous_response`)."""

    id: str
    created_at: datetime
    status: str
    thread_id: str | None
    output_seq: int | None
    # None: the thread was deleted (or the response has none).
    thread: ChainParent | None
    # The thread's path, the thread first (empty when it was deleted).
    path: list[PathRow]


def lease_expired(now: datetime) -> sa.ColumnElement[bool]:
    """The SQL of `domain.leases.lease_expired`: no expiry, or an expiry before `now`."""
    t = _threads.c
    return sa.or_(t.lease_expires_at.is_(None), t.lease_expires_at < now)


def _streaming_under_expired_lease(holder: str | None, now: datetime) -> tuple[sa.ColumnElement[bool], ...]:
    """A thread still streaming under `holder`'s lease, which has expired: what take-over and settling match on,
    so a lease renewed or taken by someone else since it was read is left alone. (Columns of the table, not of
    the ORM class: the turn's statements stay Core.)"""
    t = _threads.c
    holder_matches = t.lease_owner.is_(None) if holder is None else t.lease_owner == holder
    return t.status == STREAMING, holder_matches, lease_expired(now)


def _path(start_where: sa.ColumnElement[bool], *, nesting: bool = False) -> tuple[sa.CTE, sa.ColumnElement[bool]]:
    """A recursive walk up a conversation's path from the thread `start_where` names, and whether each thread on it
    holds a live compaction item. `nesting`: the walk is written inside the subquery that uses it, not hoisted to
    the top of the statement (as SQLAlchemy writes a CTE by default)."""
    t = _threads.c
    columns = (t.organization_id, t.id, t.parent_thread_id, t.parent_seq, t.message_count)
    chain = (t.assistant_id, t.kind, t.state, t.next_seq)
    start = (
        sa.select(*columns, *chain, sa.literal(1, sa.Integer).label("depth"))
        .where(start_where)
        .cte("path", recursive=True, nesting=nesting)
    )
    parent = _threads.alias("parent")
    step = (
        sa.select(*(parent.c[c.key] for c in (*columns, *chain)), start.c.depth + 1)
        .join(
            start,
            sa.and_(parent.c.organization_id == start.c.organization_id, parent.c.id == start.c.parent_thread_id),
        )
        .where(parent.c.deleted_at.is_(None), start.c.depth < param("limit", sa.Integer()))
    )
    path = start.union_all(step)
    messages = core_table(Message).c
    compacted = sa.exists().where(
        messages.organization_id == path.c.organization_id,
        messages.thread_id == path.c.id,
        messages.type == constant("compaction"),  # a constant: the partial index applies (statements.py)
        messages.deleted_at.is_(None),
    )
    return path, compacted


def _path_query(
    start_where: sa.ColumnElement[bool], outer: sa.FromClause | None = None, outer_columns: Sequence[Any] = ()
) -> sa.Select[Any]:
    """The rows of `_path`, built once per use (building a recursive CTE over an aliased table proxies every column
    of the table, which costs more than running it). `outer`: a table the path is LEFT JOINed to (its
    `outer_columns` come first in every row)."""
    t = _threads.c
    path, compacted = _path(start_where)
    selected = [
        *outer_columns,
        path.c.id,
        path.c.parent_thread_id,
        path.c.parent_seq,
        path.c.message_count,
        compacted,
        *(path.c[c.key] for c in (t.organization_id, t.assistant_id, t.kind, t.state, t.next_seq)),
    ]
    query = sa.select(*selected)
    if outer is not None:
        query = query.select_from(outer).outerjoin(path, sa.true())
    return query.order_by(path.c.depth)


_PATH = _path_query(
    sa.and_(_threads.c.organization_id == param("organization_id"), _threads.c.id == param("thread_id"))
)
_responses = core_table(Response)
_PREVIOUS_RESPONSE = _path_query(
    sa.and_(
        _threads.c.organization_id == param("organization_id"),
        _threads.c.id
        == sa.select(_responses.c.thread_id)
        .where(
            _responses.c.organization_id == param("organization_id"),
            _responses.c.id == param("response_id"),
        )
        .scalar_subquery(),
        _threads.c.deleted_at.is_(None),
    ),
    _responses,
    (_responses.c.id, _responses.c.created_at, _responses.c.status, _responses.c.thread_id, _responses.c.output_seq),
).where(_responses.c.organization_id == param("organization_id"), _responses.c.id == param("response_id"))


@functools.cache
def _continue_chain() -> sa.Update:
    """`continue_chain`'s statement: the lease of the chain thread whose latest turn is the response R, and that
    thread's path as one JSON column. R is named by value throughout (SQLite's RETURNING cannot refer to the
    updated row from inside a subquery)."""
    t, r = _threads.c, _responses.c

    def of_previous(column: sa.ColumnElement[Any]) -> sa.ScalarSelect[Any]:
        return (
            sa.select(column)
            .where(
                r.organization_id == param("organization_id"),
                r.id == param("response_id"),
                r.status == constant(COMPLETED),
                r.created_at >= param("created_after", UTCDateTime()),
            )
            .scalar_subquery()
        )

    thread_id = of_previous(r.thread_id)
    path, compacted = _path(
        sa.and_(t.organization_id == param("organization_id"), t.id == thread_id, t.deleted_at.is_(None)),
        nesting=True,
    )
    path_rows = sa.select(
        json_rows(path.c.depth, path.c.id, path.c.parent_thread_id, path.c.parent_seq, path.c.message_count, compacted)
    ).scalar_subquery()
    return (
        sa.update(_threads)
        .where(
            t.organization_id == param("organization_id"),
            t.id == thread_id,
            t.deleted_at.is_(None),
            t.status == constant(INACTIVE),
            t.kind == constant("chain"),
            t.state == constant("open"),
            # Nothing appended since R: R's output is the thread's last message.
            t.next_seq == of_previous(r.output_seq + 1),
        )
        .values(
            status=constant(STREAMING), lease_owner=param("owner"), lease_expires_at=param("expires_at", UTCDateTime())
        )
        .returning(*_leased(thread_id), qualified(path_rows))
    )


class ThreadRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(
        self, organization_id: str, thread_id: str, *, include_deleted: bool = False, for_update: bool = False
    ) -> Thread | None:
        query = sa.select(Thread).where(Thread.organization_id == organization_id, Thread.id == thread_id)
        if not include_deleted:
            query = query.where(Thread.deleted_at.is_(None))
        if for_update:
            query = query.with_for_update()
        return (await self.session.execute(query)).scalar_one_or_none()

    async def exists(self, organization_id: str, thread_id: str) -> bool:
        """Whether the id is taken in the organization, deleted threads included."""
        query = sa.select(sa.literal(1)).where(Thread.organization_id == organization_id, Thread.id == thread_id)
        return (await self.session.execute(query)).first() is not None

    async def add(self, thread: Thread) -> Thread:
        """Insert; a concurrent insert of the same (organization, id) becomes `thread_exists`, not a crash."""
        self.session.add(thread)
        try:
            await self.session.flush()
        except IntegrityError as exc:
            raise AlreadyExists(
                f"A thread with id '{thread.id}' already exists.", code="thread_exists", param="id"
            ) from exc
        return thread

    async def list_page(self, where: ThreadFilter, page: PageRequest) -> Page[Thread]:
        query = sa.select(Thread).where(*thread_conditions(where))
        return await fetch_page(
            self.session, query, (Thread.created_at, Thread.id), page, await self.cursors(where, page)
        )

    async def cursors(self, where: ThreadFilter, page: PageRequest) -> dict[str, tuple[Any, ...] | None]:
        """The sort keys of the page's `after`/`before` threads; a cursor that names no thread is a 400."""
        cursors = {
            "after": await self.sort_key(where.organization_id, page.after),
            "before": await self.sort_key(where.organization_id, page.before),
        }
        check_cursors(page, cursors, "thread")
        return cursors

    async def sort_key(self, organization_id: str, thread_id: str | None) -> tuple[Any, ...] | None:
        if thread_id is None:
            return None
        row = (
            await self.session.execute(
                sa.select(Thread.created_at, Thread.id).where(
                    Thread.organization_id == organization_id, Thread.id == thread_id
                )
            )
        ).first()
        return tuple(row) if row is not None else None

    async def reserve_seqs(self, thread: Thread, count: int, now: datetime) -> int:
        """Hand out `count` consecutive message seqs; returns the first. Row-locks the thread until commit."""
        result = await self.session.execute(
            sa.update(Thread)
            .where(Thread.organization_id == thread.organization_id, Thread.id == thread.id)
            .values(
                next_seq=Thread.next_seq + count,
                message_count=Thread.message_count + count,
                updated_at=now,
                last_message_at=now,
            )
            .returning(Thread.next_seq, Thread.message_count)
            .execution_options(synchronize_session=False)
        )
        next_seq, message_count = result.one()
        # The row already holds these values: record them as loaded, so the next flush does not write them again.
        for name, value in (("next_seq", next_seq), ("message_count", message_count)):
            set_committed_value(thread, name, value)
        set_committed_value(thread, "updated_at", now)
        set_committed_value(thread, "last_message_at", now)
        return int(next_seq) - count

    async def path(self, organization_id: str, thread_id: str, limit: int) -> list[PathRow]:
        """The thread, then its parent, grandparent … (at most `limit` rows), in one recursive query.

        The walk stops at a parent that is deleted or already purged: a chain's reads end at that gap.
        """
        params = {"p_organization_id": organization_id, "p_thread_id": thread_id, "p_limit": limit}
        return [PathRow(*row[:5]) for row in (await self.session.execute(_PATH, params)).all()]

    async def previous_response(self, organization_id: str, response_id: str, limit: int) -> PreviousResponse | None:
        """The response, its (live) thread and that thread's path (at most `limit` rows) in one statement: what a
        turn continuing it needs before it takes a lease (docs/chains.md). None: no such response."""
        params = {"p_organization_id": organization_id, "p_response_id": response_id, "p_limit": limit}
        rows = (await self.session.execute(_PREVIOUS_RESPONSE, params)).all()
        if not rows:
            return None
        first = rows[0]
        path = [PathRow(*row[5:10]) for row in rows if row[5] is not None]
        thread = ChainParent(first[10], first[5], *first[11:]) if path else None
        response_id, created_at, status, thread_id, output_seq = first[:5]
        return PreviousResponse(response_id, created_at, status, thread_id, output_seq, thread, path)

    async def continue_chain(
        self,
        organization_id: str,
        response_id: str,
        owner: str,
        expires_at: datetime,
        created_after: datetime,
        limit: int,
    ) -> tuple[LeasedThread, list[PathRow]] | None:
        """A chain's fast path in one statement (docs/chains.md): when the completed response `response_id`, made
        at or after `created_after`, is the latest turn of an idle, open chain thread, take that thread's lease
        and return it with its path (at most `limit` rows). None otherwise; `previous_response` then tells why."""
        values = {
            "p_organization_id": organization_id,
            "p_response_id": response_id,
            "p_owner": owner,
            "p_expires_at": expires_at,
            "p_created_after": created_after,
            "p_limit": limit,
        }
        row = await driver.first(self.session, _continue_chain(), values)
        if row is None:
            return None
        path = [
            PathRow(thread_id, parent_id, parent_seq, count, bool(compacted))  # SQLite's JSON has 0/1 for booleans
            for _depth, thread_id, parent_id, parent_seq, count, compacted in sorted(row[-1], key=lambda r: r[0])
        ]
        return LeasedThread(*row[:-1]), path

    async def acquire_free_lease(
        self,
        organization_id: str,
        thread_id: str,
        owner: str,
        expires_at: datetime,
        *,
        next_seq: int | None = None,
    ) -> LeasedThread | None:
        """Take the turn lease of an idle thread in one conditional UPDATE; returns the thread, or None.

        The database row is the lock, so this works across processes and hosts. With `next_seq`, only while the
        thread has had no message since (a chain continued from its latest turn).
        """
        values: dict[str, Any] = {"p_organization_id": organization_id, "p_thread_id": thread_id, "p_owner": owner}
        values["p_expires_at"] = expires_at
        if next_seq is not None:
            values["p_next_seq"] = next_seq
        row = await driver.first(self.session, _acquire(next_seq is not None), values)
        return LeasedThread(*row) if row is not None else None

    async def take_over_lease(
        self,
        organization_id: str,
        thread_id: str,
        holder: str | None,
        owner: str,
        now: datetime,
        expires_at: datetime,
    ) -> LeasedThread | None:
        """Take a lease that `holder` let expire (a crashed server); only if nobody else took it first."""
        result = await self.session.execute(
            sa.update(_threads)
            .where(*_this_thread(), *_streaming_under_expired_lease(holder, now))
            .values(lease_owner=owner, lease_expires_at=expires_at)
            .returning(*_leased()),
            {"p_organization_id": organization_id, "p_thread_id": thread_id},
        )
        row = result.first()
        return LeasedThread(*row) if row is not None else None

    async def settle_expired_lease(
        self, organization_id: str, thread_id: str, holder: str | None, now: datetime
    ) -> bool:
        """Free a thread whose lease `holder` let expire (its server died), without a new holder: status back to
        inactive, lease cleared. Only while the lease is still that expired one: a lease renewed or taken over
        since the caller read the row is left alone. Deleted threads too (a turn may outlive its thread's delete).
        """
        result = await self.session.execute(
            sa.update(Thread)
            .where(
                Thread.organization_id == organization_id,
                Thread.id == thread_id,
                *_streaming_under_expired_lease(holder, now),
            )
            .values(status=INACTIVE, lease_owner=None, lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def expired_leases(self, now: datetime, limit: int) -> list[tuple[str, str, str | None]]:
        """(organization, thread, holder) of up to `limit` threads still streaming under an expired lease, the
        longest expired first. Every organization: this serves the start-up and periodic settling. Reads the
        small partial index of streaming threads (migration 0004), never the whole table."""
        query = (
            sa.select(Thread.organization_id, Thread.id, Thread.lease_owner)
            .where(Thread.status == constant(STREAMING), lease_expired(now))  # the partial index: statements.py
            .order_by(Thread.lease_expires_at)
            .limit(limit)
        )
        return [(org, thread_id, owner) for org, thread_id, owner in (await self.session.execute(query)).all()]

    async def renew_lease(self, organization_id: str, thread_id: str, owner: str, expires_at: datetime) -> bool:
        """Heartbeat: push the expiry out, only while `owner` still holds the lease."""
        result = await self.session.execute(
            sa.update(Thread)
            .where(Thread.organization_id == organization_id, Thread.id == thread_id, Thread.lease_owner == owner)
            .values(lease_expires_at=expires_at)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def release_lease(
        self, organization_id: str, thread_id: str, owner: str, changes: dict[str, Any] | None = None
    ) -> bool:
        """Free the thread (status back to inactive) with optional other column changes, if `owner` holds it."""
        result = await self.session.execute(
            sa.update(Thread)
            .where(Thread.organization_id == organization_id, Thread.id == thread_id, Thread.lease_owner == owner)
            .values(status=INACTIVE, lease_owner=None, lease_expires_at=None, **(changes or {}))
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def release_lease_returning(
        self, organization_id: str, thread_id: str, owner: str, changes: dict[str, Any], appended: int, now: datetime
    ) -> FreedThread | None:
        """`release_lease` for a turn's save, in the one statement: hands out `appended` consecutive message seqs
        (counts and timestamps follow; the row stays locked until commit) and returns what the save needs of the
        thread. None if `owner` no longer holds it (or the thread was deleted)."""
        values: dict[str, Any] = {"p_organization_id": organization_id, "p_thread_id": thread_id, "p_owner": owner}
        values["p_appended"] = appended
        if appended:
            values["p_now"] = now
            changes = {name: value for name, value in changes.items() if name not in _APPENDING}
        values |= {f"p_set_{name}": value for name, value in changes.items()}
        row = await driver.first(self.session, _release(appended > 0, frozenset(changes)), values)
        return FreedThread(*row) if row is not None else None

    async def adjust_message_count(self, thread: Thread, delta: int, now: datetime) -> None:
        result = await self.session.execute(
            sa.update(Thread)
            .where(Thread.organization_id == thread.organization_id, Thread.id == thread.id)
            .values(message_count=Thread.message_count + delta, updated_at=now)
            .returning(Thread.message_count)
            .execution_options(synchronize_session=False)
        )
        thread.message_count = int(result.scalar_one())
        thread.updated_at = now
