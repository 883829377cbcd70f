"""Thread use-cases: create, read, list, modify, lifecycle, soft delete."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from threadline.domain import threads as rules
from threadline.domain.clock import utcnow
from threadline.errors import AlreadyExists, ThreadNotFound, ValidationFailed
from threadline.ids import is_valid_client_id, new_id
from threadline.services import forks
from threadline.services.assistants import get_assistant
from threadline.services.auth import Principal
from threadline.storage.repositories.pagination import Page, PageRequest
from threadline.storage.repositories.threads import ChainParent, ThreadFilter, ThreadRepository
from threadline.storage.tables import Thread

_UPDATABLE = {
    "metadata",
    "title",
    "assistant_id",
    "visible_in_ui",
    "is_pinned",
    "state",
    "workflow_id",
    "space_ids",
    "compact_at",
}
_NOT_NULLABLE = {"visible_in_ui", "is_pinned", "state"}


async def get_thread(
    session: AsyncSession, organization_id: str, thread_id: str, *, for_update: bool = False
) -> Thread:
    thread = await ThreadRepository(session).get(organization_id, thread_id, for_update=for_update)
    if thread is None:
        raise ThreadNotFound(thread_id)
    return thread


async def ensure_assistant(session: AsyncSession, organization_id: str, assistant_id: str | None) -> None:
    """An assistant of another organization is as missing as one that never existed."""
    if assistant_id is not None:
        await get_assistant(session, organization_id, assistant_id)


def validate_thread_id(thread_id: str, param: str = "id") -> None:
    if not is_valid_client_id(thread_id):
        raise ValidationFailed(
            "Thread ids are 1 to 128 characters: letters, digits, '_', '-', '.', ':' (starting with a letter or "
            "digit).",
            code="invalid_thread_id",
            param=param,
        )


async def create_thread(
    session: AsyncSession,
    principal: Principal,
    organization_id: str,
    *,
    thread_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    title: str | None = None,
    assistant_id: str | None = None,
    visible_in_ui: bool | None = None,
    workflow_id: str | None = None,
    space_ids: list[str] | None = None,
    kind: str = "thread",
) -> Thread:
    """Create a thread. `visible_in_ui=False` from an API key is refused (docs/surfaces.md, auth); internal callers
    (hidden `store=false` threads, response chains) pass `kind`/visibility through `create_hidden_thread`."""
    if visible_in_ui is False:
        principal.require_user_token("visible_in_ui")
    return await _insert_thread(
        session,
        principal,
        organization_id,
        thread_id=thread_id,
        metadata=metadata,
        title=title,
        assistant_id=assistant_id,
        visible_in_ui=True if visible_in_ui is None else visible_in_ui,
        workflow_id=workflow_id,
        space_ids=space_ids,
        kind=kind,
    )


async def create_hidden_thread(
    session: AsyncSession,
    principal: Principal,
    organization_id: str,
    *,
    thread_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    kind: str = "thread",
) -> Thread:
    """A `store=false` thread or a response chain: stored, reachable by id, absent from default lists."""
    return await _insert_thread(
        session,
        principal,
        organization_id,
        thread_id=thread_id,
        metadata=metadata,
        visible_in_ui=False,
        kind=kind,
    )


async def create_chain_thread(
    session: AsyncSession, principal: Principal, parent: Thread | ChainParent, parent_seq: int
) -> Thread:
    """A hidden `previousResponseId` chain forked from `parent` after seq `parent_seq` (docs/chains.md).

    Nothing is copied: the chain's history is the parent's live messages up to `parent_seq`, then its own, which
    are numbered on from there. It keeps the parent's assistant (its instructions and defaults still apply).
    """
    now = utcnow()
    thread = Thread(
        organization_id=parent.organization_id,
        id=new_id("thread"),
        user_id=principal.user_id,
        metadata_={},
        assistant_id=parent.assistant_id,
        space_ids=[],
        visible_in_ui=False,
        kind="chain",
        parent_thread_id=parent.id,
        parent_seq=parent_seq,
        state="open",
        status=rules.INACTIVE,
        is_pinned=False,
        message_count=0,
        next_seq=parent_seq + 1,
        created_at=now,
        updated_at=now,
        last_message_at=now,
    )
    return await ThreadRepository(session).add(thread)


async def _insert_thread(
    session: AsyncSession,
    principal: Principal,
    organization_id: str,
    *,
    thread_id: str | None,
    metadata: Mapping[str, Any] | None,
    visible_in_ui: bool,
    kind: str,
    title: str | None = None,
    assistant_id: str | None = None,
    workflow_id: str | None = None,
    space_ids: list[str] | None = None,
) -> Thread:
    repo = ThreadRepository(session)
    if thread_id is not None:
        validate_thread_id(thread_id)
        if await repo.exists(organization_id, thread_id):
            raise AlreadyExists(f"A thread with id '{thread_id}' already exists.", code="thread_exists", param="id")
    meta = dict(metadata or {})
    rules.validate_metadata(meta)
    await ensure_assistant(session, organization_id, assistant_id)
    now = utcnow()
    thread = Thread(
        organization_id=organization_id,
        id=thread_id or new_id("thread"),
        user_id=principal.user_id,
        title=rules.validate_title(title),
        metadata_=meta,
        assistant_id=assistant_id,
        workflow_id=workflow_id,
        space_ids=list(space_ids or []),
        visible_in_ui=visible_in_ui,
        kind=kind,
        state="open",
        status=rules.INACTIVE,
        is_pinned=False,
        message_count=0,
        next_seq=1,
        created_at=now,
        updated_at=now,
        last_message_at=now,
    )
    return await repo.add(thread)


async def list_threads(session: AsyncSession, where: ThreadFilter, page: PageRequest) -> Page[Thread]:
    """One keyset page; an unknown `after`/`before` id is a 400 `invalid_cursor`."""
    return await ThreadRepository(session).list_page(where, page)


async def update_thread(
    session: AsyncSession,
    principal: Principal,
    organization_id: str,
    thread_id: str,
    changes: Mapping[str, Any],
) -> Thread:
    """Apply the given fields (only those present). Archived threads take only no-op changes."""
    # These fields cannot be null: an explicit null means "leave unchanged".
    changes = {k: v for k, v in changes.items() if not (v is None and k in _NOT_NULLABLE)}
    rules.reject_unknown_fields(changes, _UPDATABLE)
    thread = await get_thread(session, organization_id, thread_id, for_update=True)
    if "visible_in_ui" in changes and changes["visible_in_ui"] != thread.visible_in_ui:
        principal.require_user_token("visible_in_ui")
    target_state = changes.get("state")
    if target_state is not None:
        rules.check_transition(thread.id, thread.state, target_state)
    # Archived: read-only. The only write still allowed is the (idempotent) archive itself.
    if thread.state == "archived" and any(key != "state" and changes[key] != _current(thread, key) for key in changes):
        rules.ensure_writable(thread.id, thread.state)
    now = utcnow()
    if "metadata" in changes:
        meta = dict(changes["metadata"] or {})
        rules.validate_metadata(meta)
        thread.metadata_ = meta
    if "title" in changes:
        thread.title = rules.validate_title(changes["title"])
    if "assistant_id" in changes:
        await ensure_assistant(session, organization_id, changes["assistant_id"])
        thread.assistant_id = changes["assistant_id"]
    if "workflow_id" in changes:
        thread.workflow_id = changes["workflow_id"]
    if "compact_at" in changes:  # the share of the window past which it is compacted (docs/compaction.md)
        thread.compact_at = changes["compact_at"]
    if "space_ids" in changes:
        thread.space_ids = list(changes["space_ids"] or [])
    if "visible_in_ui" in changes and changes["visible_in_ui"] is not None:
        thread.visible_in_ui = bool(changes["visible_in_ui"])
    if "is_pinned" in changes and changes["is_pinned"] is not None:
        pinned = bool(changes["is_pinned"])
        if pinned != thread.is_pinned:
            thread.is_pinned = pinned
            thread.pinned_at = now if pinned else None
    if target_state is not None:
        thread.state = target_state
    thread.updated_at = now
    await session.flush()
    return thread


def _current(thread: Thread, key: str) -> Any:
    return thread.metadata_ if key == "metadata" else getattr(thread, key)


async def patch_metadata(
    session: AsyncSession, organization_id: str, thread_id: str, patch: Mapping[str, Any]
) -> Thread:
    """Merge keys into the metadata; a None value removes its key. Allowed on locked threads."""
    thread = await get_thread(session, organization_id, thread_id, for_update=True)
    rules.ensure_writable(thread.id, thread.state)
    merged = rules.merge_metadata(thread.metadata_, dict(patch))
    rules.validate_metadata(merged)
    thread.metadata_ = merged
    thread.updated_at = utcnow()
    await session.flush()
    return thread


async def rename_thread(session: AsyncSession, organization_id: str, thread_id: str, title: str | None) -> Thread:
    thread = await get_thread(session, organization_id, thread_id, for_update=True)
    rules.ensure_writable(thread.id, thread.state)
    thread.title = rules.validate_title(title)
    thread.updated_at = utcnow()
    await session.flush()
    return thread


async def delete_thread(session: AsyncSession, organization_id: str, thread_id: str) -> Thread:
    """Soft delete: 404 from now on, listed only with include_deleted; the sweeper purges it later."""
    thread = await get_thread(session, organization_id, thread_id, for_update=True)
    now = utcnow()
    thread.deleted_at = now
    thread.updated_at = now
    await session.flush()
    # Its forks read it: they keep their own copy of what they read (docs/threads-as-data.md).
    await forks.detach_forks(session, organization_id, thread_id)
    return thread
