"""A conversation's path: the threads whose messages make it up, and the function calls still waiting in it.

A conversation is a *path* of segments (docs/chains.md). A plain thread is one segment. A `previousResponseId`
chain forked from a turn of another thread is its own messages, then the parent's live messages up to the fork
point, then the grandparent's … The path comes from one recursive query. Forks add segments, and a turn may need
one query per segment, so their number is bounded (`MAX_CHAIN_SEGMENTS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from threadline.domain.messages import ChatMessage, NewMessage, unanswered_calls
from threadline.storage.repositories.messages import MessageRepository
from threadline.storage.repositories.threads import LeasedThread, PathRow, ThreadRepository
from threadline.storage.tables import Thread

# Threads on one conversation's path: a turn may need one query per segment, so forks are bounded.
MAX_CHAIN_SEGMENTS = 100


@dataclass(frozen=True)
class Segment:
    """A stretch of the conversation stored in one thread: its live messages with `after_seq < seq <= last_seq`."""

    thread_id: str
    # The thread's own messages are numbered above this (0 for a thread that is not a chain).
    after_seq: int
    # None: up to the thread's end (the turn's own thread).
    last_seq: int | None
    # Live messages of the whole thread.
    message_count: int
    # Whether the thread may hold a live compaction item (False: the path's statement saw none).
    compacted: bool = True

    @property
    def before_seq(self) -> int | None:
        return None if self.last_seq is None else self.last_seq + 1

    def estimated_count(self) -> int:
        """Live messages in the segment, for a segment not read whole: exact for the turn's own thread; for a
        parent, exact unless some of its messages were deleted (counting them would read the whole parent)."""
        if self.last_seq is None:
            return self.message_count
        return min(self.message_count, max(self.last_seq - self.after_seq, 0))


async def conversation_path(
    session: AsyncSession, thread: Thread | LeasedThread, limit: int = MAX_CHAIN_SEGMENTS + 1
) -> list[Segment]:
    """The segments of `thread`'s conversation, newest first (at most `limit`)."""
    if thread.parent_thread_id is None:
        return [Segment(thread.id, 0, None, thread.message_count)]
    return segments_of(await ThreadRepository(session).path(thread.organization_id, thread.id, limit))


def segments_of(rows: Sequence[PathRow]) -> list[Segment]:
    """The segments of a path read by `ThreadRepository.path` (the thread first): each parent's ends where its
    child forked."""
    segments: list[Segment] = []
    last_seq: int | None = None
    for row in rows:
        segments.append(Segment(row.id, row.parent_seq or 0, last_seq, row.message_count, row.compacted))
        last_seq = row.parent_seq
    return segments


# Items read from the conversation's end to find the calls still waiting for their output.
PENDING_WINDOW = 64


async def pending_calls(session: AsyncSession, organization_id: str, segments: Sequence[Segment]) -> list[str]:
    """The calls of the conversation's last turn still waiting for their output, oldest first."""
    repo = MessageRepository(session)
    newest_first: list[tuple[str, str | None]] = []
    for segment in segments:
        rows = await repo.tail_kinds(organization_id, segment.thread_id, PENDING_WINDOW, before_seq=segment.before_seq)
        newest_first += rows
        if len(newest_first) >= PENDING_WINDOW or any(kind == "message" for kind, _ in rows):
            break
    return unanswered_calls(newest_first)


async def known_calls(
    session: AsyncSession,
    organization_id: str,
    segments: Sequence[Segment],
    pending: Sequence[str],
    items: Sequence[ChatMessage | NewMessage],
) -> set[str]:
    """Which of the call ids `items`' outputs answer are calls earlier in the conversation (found by index)."""
    in_items = {m.call_id for m in items if m.type == "function_call"}
    wanted = {
        m.call_id
        for m in items
        if m.type == "function_call_output" and m.call_id is not None and m.call_id not in pending
    } - in_items
    found: set[str] = set()
    repo = MessageRepository(session)
    for call_id in wanted:
        for segment in segments:
            if await repo.find_call(organization_id, segment.thread_id, call_id, before_seq=segment.before_seq):
                found.add(call_id)
                break
    return found
