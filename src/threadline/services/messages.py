"""Message use-cases: page, append, edit (audited), delete."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from threadline.config import Settings
from threadline.domain import threads as rules
from threadline.domain.clock import utcnow
from threadline.domain.messages import NewMessage, check_pairing, validate_content
from threadline.errors import MessageNotFound, ThreadFull
from threadline.ids import new_id
from threadline.services import forks, waiting_runs
from threadline.services.auth import Principal
from threadline.services.conversation import conversation_path, known_calls, pending_calls
from threadline.services.threads import create_thread, get_thread
from threadline.storage.repositories.history import HistoryRepository
from threadline.storage.repositories.messages import MessageRepository
from threadline.storage.repositories.pagination import Page, PageRequest
from threadline.storage.repositories.threads import FreedThread, ThreadRepository
from threadline.storage.tables import Message, MessageEdit, Thread

# Item ids say what the item is, as OpenAI's do: `msg_…`, `fc_…` for a call, `fco_…` for its output, `rs_…` for
# reasoning, `cmp_…` for a compaction.
_ID_PREFIXES = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "reasoning": "rs",
    "compaction": "cmp",
}


async def list_messages(
    session: AsyncSession,
    organization_id: str,
    thread_id: str,
    page: PageRequest,
    *,
    roles: Collection[str] | None = None,
    response_id: str | None = None,
) -> Page[Message]:
    """A page of the thread's messages; `roles`/`response_id` narrow it (the Assistants view shows no system
    messages, a run lists its own)."""
    thread = await get_thread(session, organization_id, thread_id)
    if forks.reads_through(thread):
        spans = await forks.spans_of(session, thread)
        return await HistoryRepository(session).page(organization_id, spans, page, roles=roles, response_id=response_id)
    return await MessageRepository(session).list_page(
        organization_id, thread_id, page, roles=roles, response_id=response_id
    )


async def get_message(
    session: AsyncSession,
    organization_id: str,
    thread_id: str,
    message_id: str,
    *,
    roles: Collection[str] | None = None,
) -> Message:
    """A live message of the thread; with `roles`, a message of another role is as missing as no message."""
    thread = await get_thread(session, organization_id, thread_id)
    if forks.reads_through(thread):
        spans = await forks.spans_of(session, thread)
        message = await HistoryRepository(session).find(organization_id, spans, message_id, roles=roles)
    else:
        message = await MessageRepository(session).get(organization_id, thread_id, message_id, roles=roles)
    if message is None:
        raise MessageNotFound(message_id)
    return message


async def append_messages(
    session: AsyncSession,
    settings: Settings,
    thread: Thread,
    new: Sequence[NewMessage],
    *,
    user_id: str | None,
) -> list[Message]:
    """Append messages to an open thread with consecutive seqs; counts and timestamps follow.

    The caller holds the thread (loaded in this transaction); the seq reservation row-locks it until commit.
    (A model turn's save appends with `insert_reserved` instead.)
    """
    rules.ensure_accepts_messages(thread.id, thread.state)
    await waiting_runs.ensure_no_active_run(session, thread.organization_id, thread.id)
    _check_room(settings, thread.id, thread.message_count + thread.inherited_message_count, len(new))
    now = utcnow()
    first_seq = await ThreadRepository(session).reserve_seqs(thread, len(new), now)
    rows = [Message(**values) for values in _rows(thread.organization_id, thread.id, first_seq, new, user_id, now)]
    await MessageRepository(session).add_all(rows)
    return rows


async def insert_reserved(
    session: AsyncSession,
    settings: Settings,
    thread: FreedThread,
    new: Sequence[NewMessage],
    *,
    user_id: str | None,
    now: datetime,
) -> None:
    """A turn's save: insert its items into the seqs `ThreadRepository.release_lease_returning` handed out (the
    counts there already include them), in one INSERT, with no ORM objects."""
    _check_room(settings, thread.id, thread.message_count + thread.inherited_message_count - len(new), len(new))
    rows = _rows(thread.organization_id, thread.id, thread.first_seq, new, user_id, now)
    await MessageRepository(session).insert(rows)


def _check_room(settings: Settings, thread_id: str, held: int, adding: int) -> None:
    limit = settings.max_messages_per_thread
    if held + adding > limit:
        raise ThreadFull(
            f"Thread '{thread_id}' holds {held} messages; the limit is {limit} per thread.", param="thread"
        )


def _rows(
    organization_id: str,
    thread_id: str,
    first_seq: int,
    new: Sequence[NewMessage],
    user_id: str | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """The rows of `new`, numbered from `first_seq`, by `Message` attribute."""
    return [
        {
            "organization_id": organization_id,
            "id": m.id or new_id(_ID_PREFIXES[m.type]),
            "thread_id": thread_id,
            "seq": first_seq + i,
            "role": m.role,
            "type": m.type,
            "call_id": m.call_id,
            "payload": dict(m.payload) if m.payload is not None else None,
            "content": validate_content(m.content),
            "metadata_": dict(m.metadata),
            "token_count": m.token_count,
            "tokenizer": m.tokenizer,
            "model": m.model,
            "response_id": m.response_id,
            "assistant_id": m.assistant_id,
            "user_id": user_id if m.role == "user" else None,
            "created_at": now,
            "edit_count": 0,
        }
        for i, m in enumerate(new)
    ]


async def add_message(
    session: AsyncSession,
    settings: Settings,
    organization_id: str,
    thread_id: str,
    message: NewMessage,
    *,
    user_id: str | None,
) -> Message:
    """POST /v1/threads/{id}/messages: append one message without a model call."""
    rules.validate_metadata(message.metadata)
    thread = await get_thread(session, organization_id, thread_id, for_update=True)
    (row,) = await append_messages(session, settings, thread, [message], user_id=user_id)
    return row


async def add_messages(
    session: AsyncSession,
    settings: Settings,
    organization_id: str,
    thread_id: str,
    new: Sequence[NewMessage],
    *,
    user_id: str | None,
) -> list[Message]:
    """Append several items at once (OpenAI `conversations.items.create`): all or none. Outputs need their calls
    (earlier in the conversation or in `new`), and a message needs every earlier call answered (docs/items.md)."""
    for i, message in enumerate(new):
        rules.validate_metadata(message.metadata, param=f"items.{i}.metadata")
    thread = await get_thread(session, organization_id, thread_id, for_update=True)
    if not new:
        return []
    segments = await conversation_path(session, thread)
    pending = await pending_calls(session, organization_id, segments)
    known = await known_calls(session, organization_id, segments, pending, new)
    check_pairing(pending, new, known, param="items", all_answered=False)
    return await append_messages(session, settings, thread, new, user_id=user_id)


async def create_thread_with_messages(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    organization_id: str,
    new: Sequence[NewMessage],
    *,
    thread_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    kind: str = "thread",
) -> tuple[Thread, list[Message]]:
    """Create a thread and its first messages in one transaction (OpenAI `threads.create(messages=…)`,
    `conversations.create(items=…)`)."""
    for i, message in enumerate(new):
        rules.validate_metadata(message.metadata, param=f"messages.{i}.metadata")
    check_pairing((), new, param="items", all_answered=False)
    thread = await create_thread(session, principal, organization_id, thread_id=thread_id, metadata=metadata, kind=kind)
    rows = await append_messages(session, settings, thread, new, user_id=principal.user_id) if new else []
    return thread, rows


async def _message_to_change(
    session: AsyncSession, organization_id: str, thread_id: str, message_id: str, roles: Collection[str] | None
) -> tuple[Thread, Message]:
    """The thread (row-locked) and its live message, before an edit or a delete."""
    thread = await get_thread(session, organization_id, thread_id, for_update=True)
    # Locked threads are read-only except for thread-level fields (docs/surfaces.md, lifecycle): history is immutable.
    rules.ensure_accepts_messages(thread.id, thread.state)
    message = await MessageRepository(session).get(organization_id, thread_id, message_id, roles=roles)
    if message is None:
        inherited = await forks.find_item(session, thread, message_id) if forks.reads_through(thread) else None
        if inherited is not None:
            raise forks.inherited_item(thread, inherited)
        raise MessageNotFound(message_id)
    return thread, message


async def update_message(
    session: AsyncSession,
    organization_id: str,
    thread_id: str,
    message_id: str,
    changes: Mapping[str, Any],
    *,
    edited_by: str | None,
    roles: Collection[str] | None = None,
) -> Message:
    """Edit content and/or metadata; the previous version goes to the audit trail."""
    thread, message = await _message_to_change(session, organization_id, thread_id, message_id, roles)
    repo = MessageRepository(session)
    new_content = changes.get("content")
    new_metadata = changes.get("metadata")
    if new_metadata is not None:
        rules.validate_metadata(dict(new_metadata))
    if new_content is None and new_metadata is None:
        return message
    now = utcnow()
    await repo.add_edit(
        MessageEdit(
            organization_id=organization_id,
            id=new_id("edit"),
            thread_id=thread_id,
            message_id=message.id,
            previous_content=message.content,
            previous_metadata=dict(message.metadata_),
            edited_by=edited_by,
            edited_at=now,
        )
    )
    if new_content is not None:
        message.content = validate_content(new_content)
        # The stored count belongs to the old text; the next context build recounts it.
        message.token_count = None
        message.tokenizer = None
    if new_metadata is not None:
        message.metadata_ = dict(new_metadata)
    message.edited_at = now
    message.edit_count += 1
    thread.updated_at = now
    await session.flush()
    return message


async def message_edits(
    session: AsyncSession, organization_id: str, thread_id: str, message_id: str
) -> tuple[Message, list[MessageEdit]]:
    message = await get_message(session, organization_id, thread_id, message_id)
    return message, await MessageRepository(session).edits(organization_id, message_id)


async def delete_message(
    session: AsyncSession,
    organization_id: str,
    thread_id: str,
    message_id: str,
    *,
    roles: Collection[str] | None = None,
) -> Message:
    thread, message = await _message_to_change(session, organization_id, thread_id, message_id, roles)
    repo = MessageRepository(session)
    now = utcnow()
    await repo.soft_delete(message, now)
    await ThreadRepository(session).adjust_message_count(thread, -1, now)
    await forks.items_deleted(session, organization_id, thread_id, message.seq)
    return message


async def delete_message_of_thread(
    session: AsyncSession, organization_id: str, thread_id: str, message_id: str
) -> Thread:
    """Delete a message and return its thread (OpenAI `conversations.items.delete` answers with the parent)."""
    await delete_message(session, organization_id, thread_id, message_id)
    return await get_thread(session, organization_id, thread_id)


async def delete_all_messages(session: AsyncSession, organization_id: str, thread_id: str) -> int:
    thread = await get_thread(session, organization_id, thread_id, for_update=True)
    # Locked threads are read-only except for thread-level fields (docs/surfaces.md, lifecycle): history is immutable.
    rules.ensure_accepts_messages(thread.id, thread.state)
    now = utcnow()
    await forks.all_items_deleted(session, thread)
    deleted = await MessageRepository(session).soft_delete_all(organization_id, thread_id, now)
    await ThreadRepository(session).adjust_message_count(thread, -deleted, now)
    return deleted
