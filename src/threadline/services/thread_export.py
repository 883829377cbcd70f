"""Export: threads as JSON Lines, a header per thread, then its items in `seq` order (docs/export-format.md).

Streamed and keyset-paged: each page of threads and each page of items is read in its own short transaction and
written out before the next is read, so memory and transaction length stay flat however many threads there are.
A fork's export is its whole history (what it reads from its source included): the file stands on its own.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline.domain.thread_data import FORMAT, VERSION, iso
from threadline.errors import ThreadNotFound
from threadline.services import forks
from threadline.storage.repositories.history import HistoryRepository, Span
from threadline.storage.repositories.pagination import PageRequest
from threadline.storage.repositories.thread_data import ThreadDataRepository
from threadline.storage.repositories.threads import ThreadFilter, ThreadRepository
from threadline.storage.tables import Message, MessageEdit, Thread

THREADS_PER_PAGE = 100
ITEMS_PER_PAGE = 500


async def ensure_exportable(maker: async_sessionmaker[AsyncSession], organization_id: str, thread_id: str) -> None:
    """404 before the stream starts (a stream cannot change its status once it has begun)."""
    async with maker() as session:
        if await ThreadRepository(session).get(organization_id, thread_id) is None:
            raise ThreadNotFound(thread_id)


async def export_thread(
    maker: async_sessionmaker[AsyncSession], organization_id: str, thread_id: str
) -> AsyncIterator[bytes]:
    async with maker() as session:
        thread = await ThreadRepository(session).get(organization_id, thread_id)
        if thread is None:
            raise ThreadNotFound(thread_id)
        spans = await _spans(session, thread)
        chunk, last_id = await _first_items(session, thread, spans)
    yield chunk
    if last_id is not None:
        async for rest in _more_items(maker, thread, spans, last_id):
            yield rest


async def export_threads(maker: async_sessionmaker[AsyncSession], where: ThreadFilter) -> AsyncIterator[bytes]:
    """Every thread the filter selects, oldest first. Short threads that are not forks are read together (up to
    a page of items in all, two queries per group); a fork or a long thread page by page, each page in a
    transaction of its own."""
    after: str | None = None
    while True:
        async with maker() as session:
            page = await ThreadRepository(session).list_page(
                where, PageRequest(limit=THREADS_PER_PAGE, order="asc", after=after)
            )
            spans = [await _spans(session, thread) for thread in page.items]
        for group in _groups(page.items):
            if len(group) > 1 or _short(group[0]):
                async with maker() as session:
                    chunk = await _short_threads(session, group)
                yield chunk
                continue
            thread = group[0]
            thread_spans = spans[page.items.index(thread)]
            async with maker() as session:
                chunk, last_id = await _first_items(session, thread, thread_spans)
            yield chunk
            if last_id is not None:
                async for rest in _more_items(maker, thread, thread_spans, last_id):
                    yield rest
        if not page.has_more or not page.items:
            return
        after = page.items[-1].id


def _short(thread: Thread) -> bool:
    """A thread read with others: not a fork, and its live items (`message_count` is exact) fit in a page."""
    return not forks.reads_through(thread) and thread.message_count <= ITEMS_PER_PAGE


def _groups(threads: Sequence[Thread]) -> list[list[Thread]]:
    """Consecutive short threads with at most a page of items in all; any other thread alone."""
    groups: list[list[Thread]] = []
    current: list[Thread] = []
    items = 0
    for thread in threads:
        if not _short(thread):
            if current:
                groups.append(current)
            groups.append([thread])
            current, items = [], 0
            continue
        if current and items + thread.message_count > ITEMS_PER_PAGE:
            groups.append(current)
            current, items = [], 0
        current.append(thread)
        items += thread.message_count
    if current:
        groups.append(current)
    return groups


async def _short_threads(session: AsyncSession, threads: Sequence[Thread]) -> bytes:
    organization_id = threads[0].organization_id
    items = await HistoryRepository(session).items_of_threads(organization_id, [t.id for t in threads])
    edits = await ThreadDataRepository(session).edits_of(
        organization_id, [m.id for messages in items.values() for m in messages]
    )
    return b"".join(
        _line(header_line(thread))
        + b"".join(_line(item_line(thread.id, m, edits.get(m.id, []))) for m in items[thread.id])
        for thread in threads
    )


async def _spans(session: AsyncSession, thread: Thread) -> list[Span]:
    return await forks.spans_of(session, thread) if forks.reads_through(thread) else [Span(thread.id, 0, None)]


async def _items(
    session: AsyncSession, thread: Thread, spans: Sequence[Span], after: str | None
) -> tuple[bytes, str | None]:
    """One page of the thread's items as lines, and the last one's id if more follow."""
    page = await HistoryRepository(session).page(
        thread.organization_id, spans, PageRequest(limit=ITEMS_PER_PAGE, order="asc", after=after)
    )
    edits = await ThreadDataRepository(session).edits_of(thread.organization_id, [m.id for m in page.items])
    lines = b"".join(_line(item_line(thread.id, m, edits.get(m.id, []))) for m in page.items)
    return lines, page.items[-1].id if page.has_more and page.items else None


async def _first_items(session: AsyncSession, thread: Thread, spans: Sequence[Span]) -> tuple[bytes, str | None]:
    lines, last_id = await _items(session, thread, spans, None)
    return _line(header_line(thread)) + lines, last_id


async def _more_items(
    maker: async_sessionmaker[AsyncSession], thread: Thread, spans: Sequence[Span], after: str
) -> AsyncIterator[bytes]:
    last_id: str | None = after
    while last_id is not None:
        async with maker() as session:
            lines, last_id = await _items(session, thread, spans, last_id)
        yield lines


def _line(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def header_line(thread: Thread) -> dict[str, Any]:
    forked_from = None
    if forks.reads_through(thread):
        forked_from = {"thread_id": thread.parent_thread_id, "seq": thread.parent_seq}
    return {
        "object": "thread",
        "format": FORMAT,
        "version": VERSION,
        "id": thread.id,
        "organization_id": thread.organization_id,
        "source_id": thread.source_id,
        "title": thread.title,
        "metadata": thread.metadata_,
        "assistant_id": thread.assistant_id,
        "workflow_id": thread.workflow_id,
        "space_ids": thread.space_ids,
        "visible_in_ui": thread.visible_in_ui,
        "state": thread.state,
        "is_pinned": thread.is_pinned,
        "pinned_at": iso(thread.pinned_at),
        "last_model_used": thread.last_model_used,
        "message_count": thread.message_count + thread.inherited_message_count,
        "forked_from": forked_from,
        "created_at": iso(thread.created_at),
        "updated_at": iso(thread.updated_at),
        "last_message_at": iso(thread.last_message_at),
        "deleted_at": iso(thread.deleted_at),
    }


def item_line(thread_id: str, message: Message, edits: Sequence[MessageEdit]) -> dict[str, Any]:
    return {
        "object": "thread.item",
        "thread_id": thread_id,
        "id": message.id,
        "source_id": message.source_id,
        "seq": message.seq,
        "type": message.type,
        "role": message.role,
        "content": message.content,
        "call_id": message.call_id,
        "payload": message.payload,
        "metadata": message.metadata_,
        "model": message.model,
        "assistant_id": message.assistant_id,
        "created_at": iso(message.created_at),
        "edited_at": iso(message.edited_at),
        "edits": [
            {
                "previous_content": e.previous_content,
                "previous_metadata": e.previous_metadata,
                "edited_by": e.edited_by,
                "edited_at": iso(e.edited_at),
            }
            for e in edits
        ],
    }
