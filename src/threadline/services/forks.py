"""Forks: a new thread whose history is another's up to one item, then its own — copying nothing.

A fork records its source and fork point in the parent pointer response chains use (migration 0003), so forking a
10,000-item thread writes one row, like forking a 10-item one. It reads its source as the source is now: an item
deleted or edited there is deleted or edited in the fork's history too. When the source is deleted (or the
retention sweeper purges it or its items), the fork first gets its own copy of what it read from it, in the same
transaction, and points past it (docs/threads-as-data.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from threadline.domain import threads as rules
from threadline.domain.clock import utcnow
from threadline.errors import Conflict, InvalidRequest, MessageNotFound, ThreadNotFound
from threadline.ids import new_id
from threadline.services.auth import Principal
from threadline.services.conversation import MAX_CHAIN_SEGMENTS, conversation_path
from threadline.storage.repositories.history import HistoryRepository, Span
from threadline.storage.repositories.threads import ThreadRepository
from threadline.storage.tables import Message, Thread


def reads_through(thread: Thread) -> bool:
    """Whether the thread's history spans other threads (a fork). A response chain's messages are its own turns
    only on the thread surfaces; its context still reads its parents (migration 0003)."""
    return thread.parent_thread_id is not None and thread.kind != "chain"


async def spans_of(session: AsyncSession, thread: Thread) -> list[Span]:
    """The spans of the thread's history, newest first."""
    return [Span(s.thread_id, s.after_seq, s.last_seq) for s in await conversation_path(session, thread)]


async def fork_thread(
    session: AsyncSession,
    principal: Principal,
    organization_id: str,
    thread_id: str,
    *,
    message_id: str | None = None,
    title: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    visible_in_ui: bool | None = None,
) -> Thread:
    """POST /v1/threads/{id}/fork: a new open thread whose history is the source's up to `message_id` (default:
    its newest item). Locked and archived sources can be forked: the source is only read."""
    if visible_in_ui is False:
        principal.require_user_token("visible_in_ui")
    meta = dict(metadata or {})
    rules.validate_metadata(meta)
    source = await ThreadRepository(session).get(organization_id, thread_id)
    if source is None:
        raise ThreadNotFound(thread_id)
    spans = await spans_of(session, source)
    history = HistoryRepository(session)
    point = await _fork_point(history, organization_id, spans, message_id)
    parent_id, parent_seq, inherited = None, None, 0
    if point is not None:
        index, seq = point
        if len(spans) - index + 1 > MAX_CHAIN_SEGMENTS:
            raise InvalidRequest(
                f"Thread '{thread_id}' is a fork {len(spans)} levels deep; a fork may be at most "
                f"{MAX_CHAIN_SEGMENTS - 1} deep (fork an earlier thread of the path instead).",
                code="fork_too_deep",
                param="thread_id",
            )
        parent_id, parent_seq = spans[index].thread_id, seq
        inherited = await _inherited_count(history, organization_id, source, spans, index, seq)
    now = utcnow()
    fork = Thread(
        organization_id=organization_id,
        id=new_id("thread"),
        user_id=principal.user_id,
        title=rules.validate_title(title if title is not None else source.title),
        metadata_=meta,
        assistant_id=source.assistant_id,
        workflow_id=source.workflow_id,
        space_ids=list(source.space_ids),
        visible_in_ui=True if visible_in_ui is None else visible_in_ui,
        kind="thread",
        parent_thread_id=parent_id,
        parent_seq=parent_seq,
        inherited_message_count=inherited,
        state="open",
        status="inactive",
        is_pinned=False,
        message_count=0,
        next_seq=(parent_seq or 0) + 1,
        created_at=now,
        updated_at=now,
        last_message_at=now,
    )
    return await ThreadRepository(session).add(fork)


async def _fork_point(
    history: HistoryRepository, organization_id: str, spans: Sequence[Span], message_id: str | None
) -> tuple[int, int] | None:
    """(index of the span holding the fork point, its seq); None for an empty history. The fork points at the
    thread that stores the item, so its path never holds an empty span."""
    if message_id is not None:
        message = await history.find(organization_id, spans, message_id)
        if message is None:
            raise MessageNotFound(message_id)
        index = next(i for i, s in enumerate(spans) if s.thread_id == message.thread_id)
        return index, message.seq
    for index, span in enumerate(spans):
        seq = await history.newest_seq(organization_id, span)
        if seq is not None:
            return index, seq
    return None


async def _inherited_count(
    history: HistoryRepository, organization_id: str, source: Thread, spans: Sequence[Span], index: int, seq: int
) -> int:
    """Live items of the source's history up to the fork point. From the source's kept count minus what follows
    the point, or by counting the prefix, whichever side is shorter: forking from the newest item reads nothing."""
    span = spans[index]
    after = [*spans[:index], Span(span.thread_id, seq, span.last_seq)]
    prefix = [Span(span.thread_id, span.after_seq, seq), *spans[index + 1 :]]
    newest = source.next_seq - 1
    if newest - seq <= seq:
        total = source.message_count + source.inherited_message_count
        return total - await history.count(organization_id, after)
    return await history.count(organization_id, prefix)


async def find_item(session: AsyncSession, thread: Thread, message_id: str) -> Message | None:
    """A live item of the thread's whole history."""
    return await HistoryRepository(session).find(thread.organization_id, await spans_of(session, thread), message_id)


def inherited_item(thread: Thread, message: Message) -> Conflict:
    """Editing or deleting an item a fork reads from its source would change the source: refused."""
    return Conflict(
        f"Message '{message.id}' belongs to thread '{message.thread_id}', which fork '{thread.id}' reads it from; "
        "change it there.",
        code="message_inherited",
        param="message_id",
    )


async def items_deleted(session: AsyncSession, organization_id: str, thread_id: str, seq: int) -> None:
    """One item of `thread_id` (at `seq`) was deleted: the forks that read it count one item less."""
    history = HistoryRepository(session)
    await history.adjust_inherited(organization_id, await history.children_reading(organization_id, thread_id, seq), -1)


async def all_items_deleted(session: AsyncSession, thread: Thread) -> None:
    """Before the thread's own items are all deleted: each fork made from it loses what it read of them. A fork
    whose history is emptied stops reading its source too (the source keeps its items), so the forks made from
    it also lose what they read through it."""
    history = HistoryRepository(session)
    own = thread.parent_seq or 0
    through = thread.inherited_message_count if reads_through(thread) else 0
    for child_id, point in await history.children(thread.organization_id, thread.id):
        lost = await history.count(thread.organization_id, [Span(thread.id, own, point)])
        await history.adjust_inherited(thread.organization_id, [child_id], -(lost + through))
    if reads_through(thread):
        thread.parent_thread_id = None
        thread.parent_seq = None
        thread.inherited_message_count = 0
        await session.flush()


async def detach_forks(session: AsyncSession, organization_id: str, thread_id: str) -> int:
    """Give each fork made from `thread_id` its own copy of what it reads from it, and point it at the thread's
    own source instead (the thread is being deleted or purged). Returns the items copied."""
    thread = await ThreadRepository(session).get(organization_id, thread_id, include_deleted=True)
    if thread is None:
        return 0
    history = HistoryRepository(session)
    own_start = thread.parent_seq or 0
    copied = 0
    for fork in await history.forks_of(organization_id, thread_id):
        count = await history.copy_items(organization_id, Span(thread.id, own_start, fork.parent_seq), fork.id)
        fork.parent_thread_id = thread.parent_thread_id
        fork.parent_seq = thread.parent_seq if thread.parent_thread_id is not None else None
        fork.message_count += count
        fork.inherited_message_count -= count
        copied += count
    await session.flush()
    return copied
