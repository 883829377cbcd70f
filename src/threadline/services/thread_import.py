"""Import: the export format (JSON Lines) or ChatGPT's `conversations.json`, streamed, without duplicates.

Each thread carries a stable source id (its header's `source_id`, "threadline:<organization>/<id>", or
"chatgpt:<conversation id>"): a thread already imported from that source is skipped, so re-importing a file
creates nothing new. Threads are read from the body as it arrives (`import_readers.py`) and written in small
batches, one short transaction each; a bad line fails its thread (reported with its line number) and the rest goes
on. With `atomic`, the whole file is one transaction and any error writes nothing (docs/threads-as-data.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline.config import Settings
from threadline.domain.clock import utcnow
from threadline.domain.thread_data import ImportedThread, LineError
from threadline.errors import AlreadyExists, InvalidRequest, ValidationFailed
from threadline.ids import is_valid_client_id, new_id
from threadline.services.auth import Principal
from threadline.services.import_readers import Failure, LimitedBody, chatgpt_threads, threadline_threads
from threadline.storage.repositories.thread_data import ThreadDataRepository

ImportFormat = Literal["threadline", "chatgpt"]
FORMATS: dict[str, ImportFormat] = {"application/x-ndjson": "threadline", "application/json": "chatgpt"}
# Item id prefixes by type, as items created here get them (services/messages.py).
_ID_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}


@dataclass
class ImportReport:
    """Counts of threads; `thread_ids` in file order (created and skipped ones); `errors` say what failed where;
    `warnings` what a source held that was not imported."""

    created: int = 0
    skipped: int = 0
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    thread_ids: list[str] = field(default_factory=list)


Progress = Callable[[ImportReport], Awaitable[None]]


def format_of(content_type: str | None, requested: str | None = None) -> ImportFormat:
    """The format a body is in: `requested` (the CLI's --format), else its Content-Type."""
    if requested is not None:
        if requested not in ("threadline", "chatgpt"):
            raise ValidationFailed(
                f"Unknown import format '{requested}': use threadline or chatgpt.",
                code="unsupported_import_format",
                param="format",
            )
        return "threadline" if requested == "threadline" else "chatgpt"
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in FORMATS:
        raise InvalidRequest(
            f"Content-Type '{media or '(none)'}' is no import format: send the export format as "
            "application/x-ndjson or ChatGPT's conversations.json as application/json.",
            code="unsupported_import_format",
            param="Content-Type",
        )
    return FORMATS[media]


async def import_threads(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    principal: Principal,
    organization_id: str,
    chunks: AsyncIterator[bytes],
    import_format: ImportFormat,
    *,
    atomic: bool = False,
    progress: Progress | None = None,
) -> ImportReport:
    """Import every thread of the body; returns what happened to each. With `atomic`, any error rolls the whole
    import back and is raised as a 400 `import_failed` naming the first error.

    Threads are parsed into small batches (`BATCH_THREADS` threads or `BATCH_ITEMS` items) and each batch is
    written in one transaction, a savepoint per thread: no transaction waits on the client's body."""
    body = LimitedBody(chunks, settings.max_import_bytes)
    report = ImportReport()
    where = "line" if import_format == "threadline" else "conversation"
    threads = (
        threadline_threads(body, settings.max_messages_per_thread)
        if import_format == "threadline"
        else chatgpt_threads(body)
    )
    writer = _Writer(maker, principal, organization_id, report, where, atomic)
    try:
        batch: list[ImportedThread | Failure] = []
        items = 0
        async for thread in threads:
            batch.append(thread)
            items += len(thread.items) if isinstance(thread, ImportedThread) else 0
            if len(batch) >= BATCH_THREADS or items >= BATCH_ITEMS:
                await writer.write(batch)
                batch, items = [], 0
                if progress is not None:
                    await progress(report)
        await writer.write(batch)
        await writer.finish()
    finally:
        await writer.close()
    return report


BATCH_THREADS = 50
BATCH_ITEMS = 2_000


@dataclass
class _Known:
    """What the organization already holds that a batch's threads may name, looked up once per batch and
    updated as the batch's threads are planned (a file may repeat a source, an id, a fork's inherited items)."""

    sources: dict[str, str]
    thread_ids: set[str]
    item_ids: set[str]


@dataclass
class _New:
    thread: ImportedThread
    thread_id: str
    rows: tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]


@dataclass
class _Existing:
    thread_id: str


_Outcome = _New | _Existing | Failure


class _Writer:
    """Writes batches of parsed threads: the lookups of a whole batch in three queries, its rows in bulk inserts,
    one transaction. Should a concurrent import write the same source first, the batch is redone one thread at a
    time under savepoints. In `atomic` mode every batch goes into one transaction that any error ends."""

    def __init__(
        self,
        maker: async_sessionmaker[AsyncSession],
        principal: Principal,
        organization_id: str,
        report: ImportReport,
        where: str,
        atomic: bool,
    ) -> None:
        self.maker = maker
        self.principal = principal
        self.organization_id = organization_id
        self.report = report
        self.where = where
        self.shared: AsyncSession | None = maker() if atomic else None

    async def write(self, batch: list[ImportedThread | Failure]) -> None:
        if not batch:
            return
        session = self.shared or self.maker()
        try:
            try:
                async with session.begin_nested():
                    outcomes = await self._plan_and_insert(session, batch)
            except IntegrityError:
                if self.shared is not None:
                    raise AlreadyExists(
                        "Another import wrote one of these threads at the same time; nothing was imported.",
                        code="thread_exists",
                    ) from None
                outcomes = [await self._one(session, entry) for entry in batch]
            for outcome in outcomes:
                self._record(outcome)
            if self.shared is not None and self.report.errors:
                first = self.report.errors[0]
                raise InvalidRequest(
                    f"Nothing was imported: {self.where} {first[self.where]}: {first['message']}",
                    code="import_failed",
                    param=first["code"],
                )
            if self.shared is None:
                await session.commit()
        finally:
            if self.shared is None:
                await session.close()

    async def _plan_and_insert(self, session: AsyncSession, batch: list[ImportedThread | Failure]) -> list[_Outcome]:
        threads = [t for t in batch if isinstance(t, ImportedThread)]
        known = await _lookup(session, self.organization_id, threads)
        outcomes = [self._plan(known, entry) for entry in batch]
        new = [o for o in outcomes if isinstance(o, _New)]
        await ThreadDataRepository(session).insert(
            [o.rows[0] for o in new],
            [m for o in new for m in o.rows[1]],
            [e for o in new for e in o.rows[2]],
        )
        return outcomes

    async def _one(self, session: AsyncSession, entry: ImportedThread | Failure) -> _Outcome:
        """One thread under a savepoint, with fresh lookups (the batch lost a race with another import)."""
        if not isinstance(entry, ImportedThread):
            return entry
        try:
            async with session.begin_nested():
                (outcome,) = await self._plan_and_insert(session, [entry])
                return outcome
        except IntegrityError:
            found = await ThreadDataRepository(session).threads_of_sources(self.organization_id, [entry.source_id])
            if entry.source_id not in found:
                raise AlreadyExists(
                    f"Thread {entry.source_id} collided with a thread written at the same time.", code="thread_exists"
                ) from None
            return _Existing(found[entry.source_id])

    def _plan(self, known: _Known, entry: ImportedThread | Failure) -> _Outcome:
        if not isinstance(entry, ImportedThread):
            return entry
        try:
            return _plan(known, self.principal, self.organization_id, entry)
        except LineError as exc:
            return Failure(entry.position, exc.code, exc.message, entry.source_id)

    def _record(self, outcome: _Outcome) -> None:
        if isinstance(outcome, Failure):
            _fail(self.report, self.where, outcome)
            return
        self.report.thread_ids.append(outcome.thread_id)
        if isinstance(outcome, _Existing):
            self.report.skipped += 1
            return
        self.report.created += 1
        if outcome.thread.warnings:
            self.report.warnings.append(
                {
                    self.where: outcome.thread.position,
                    "source_id": outcome.thread.source_id,
                    "thread_id": outcome.thread_id,
                    "messages": outcome.thread.warnings,
                }
            )

    async def finish(self) -> None:
        if self.shared is not None:
            await self.shared.commit()

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()


def _fail(report: ImportReport, where: str, failure: Failure) -> None:
    report.failed += 1
    report.errors.append(
        {where: failure.position, "source_id": failure.source_id, "code": failure.code, "message": failure.message}
    )


async def _lookup(session: AsyncSession, organization_id: str, threads: list[ImportedThread]) -> _Known:
    data = ThreadDataRepository(session)
    return _Known(
        sources=await data.threads_of_sources(organization_id, [t.source_id for t in threads]),
        thread_ids=await data.taken_thread_ids(organization_id, [t.id for t in threads if t.id is not None]),
        item_ids=await data.taken_message_ids(
            organization_id, [i.id for t in threads for i in t.items if i.id is not None]
        ),
    )


def _plan(known: _Known, principal: Principal, organization_id: str, imported: ImportedThread) -> _New | _Existing:
    """The rows of a new thread, or the thread an earlier import (or this file) already made of the source."""
    found = known.sources.get(imported.source_id)
    if found is not None:
        return _Existing(found)
    # An export read back into its own organization: the thread it came from is that source.
    own_source = imported.source_id == f"threadline:{organization_id}/{imported.id}"
    if imported.id is not None and imported.id in known.thread_ids and own_source:
        return _Existing(imported.id)
    if imported.visible_in_ui is False and principal.auth_method != "user_token":
        raise LineError("user_token_required", "A hidden thread (visible_in_ui false) is imported with a user token.")
    thread_id = imported.id
    if thread_id is None or not is_valid_client_id(thread_id) or thread_id in known.thread_ids:
        thread_id = new_id("thread")
    known.sources[imported.source_id] = thread_id
    known.thread_ids.add(thread_id)
    now = utcnow()
    items = imported.items
    seqs = _seqs([i.seq for i in items])
    created_at = imported.created_at or (items[0].created_at if items and items[0].created_at else now)
    thread = {
        "organization_id": organization_id,
        "id": thread_id,
        "user_id": principal.user_id,
        "title": imported.title,
        "metadata": imported.metadata,
        "assistant_id": imported.assistant_id,
        "workflow_id": imported.workflow_id,
        "space_ids": imported.space_ids,
        "visible_in_ui": imported.visible_in_ui,
        "kind": "thread",
        "state": imported.state,
        "status": "inactive",
        "is_pinned": imported.is_pinned,
        "pinned_at": imported.pinned_at,
        "message_count": len(items),
        "inherited_message_count": 0,
        "next_seq": (seqs[-1] if seqs else 0) + 1,
        "last_model_used": imported.last_model_used,
        "source_id": imported.source_id,
        "created_at": created_at,
        "updated_at": imported.updated_at or created_at,
        "last_message_at": imported.last_message_at or (items[-1].created_at if items else None) or created_at,
        "deleted_at": imported.deleted_at,
    }
    messages: list[dict[str, Any]] = []
    edits: list[dict[str, Any]] = []
    for item, seq in zip(items, seqs, strict=True):
        keep_id = item.id is not None and item.id not in known.item_ids
        message_id = item.id if keep_id and item.id is not None else new_id(_ID_PREFIXES.get(item.type, "item"))
        known.item_ids.add(message_id)
        messages.append(
            {
                "organization_id": organization_id,
                "id": message_id,
                "thread_id": thread_id,
                "seq": seq,
                "role": item.role,
                "type": item.type,
                "call_id": item.call_id,
                "payload": item.payload,
                "content": item.content,
                "metadata": item.metadata,
                "model": item.model,
                "assistant_id": item.assistant_id,
                "user_id": principal.user_id if item.role == "user" else None,
                "created_at": item.created_at or created_at,
                "edited_at": item.edited_at,
                "edit_count": len(item.edits),
                # An id that had to change is remembered as where the item came from.
                "source_id": item.source_id or (None if keep_id else item.id),
            }
        )
        edits += [
            {
                "organization_id": organization_id,
                "id": new_id("edit"),
                "thread_id": thread_id,
                "message_id": message_id,
                "previous_content": edit.previous_content,
                "previous_metadata": edit.previous_metadata,
                "edited_by": edit.edited_by,
                "edited_at": edit.edited_at,
            }
            for edit in item.edits
        ]
    return _New(imported, thread_id, (thread, messages, edits))


def _seqs(given: list[int | None]) -> list[int]:
    """The seqs the file gave (they rise: checked when read), else 1, 2, 3 …"""
    if given and all(s is not None for s in given):
        return [s for s in given if s is not None]
    return list(range(1, len(given) + 1))
