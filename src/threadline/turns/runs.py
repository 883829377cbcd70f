"""Assistants v2 runs (the official SDK's `beta.threads.runs`): a run IS a turn on the thread.

The run id is the turn's id (`resp_…`): `GET /v1/model/response/{id}` shows the same turn with its context
report, and every message the run saved (its `additional_messages` and its answer) carries it as `run_id`. Every
turn of a thread is one of its runs, whichever API started it. A run is started like any turn (`TurnEngine.start`
with `TurnRequest.run` set); what is here is the rest of a run's life.

A run executes inside the request that creates it: a non-streaming create answers once the run is finished
(the SDK's `create_and_poll` then finds it terminal on its first poll), a streaming one streams it. So no run sits
queued waiting for a worker that a restart would lose; a process killed mid-run leaves an `in_progress` turn that
is failed once its lease expires, like any turn: every read of it (get, list, steps) says so and settles it
(`services/recovery.py`).

Cancelling a run in progress marks it cancelled and frees the thread's lease: the turn, still generating in the
request that created it, then finds its lease gone and saves nothing (the thread stays as before the run).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline.config import Settings
from threadline.domain import threads as rules
from threadline.domain.clock import utcnow
from threadline.domain.messages import NewMessage
from threadline.domain.turns import IN_PROGRESS, StoredTurn
from threadline.errors import InvalidRequest, NotFound
from threadline.services import recovery
from threadline.services.assistants import get_assistant
from threadline.services.auth import Principal
from threadline.services.messages import create_thread_with_messages
from threadline.services.threads import get_thread
from threadline.storage.repositories.pagination import Page, PageRequest
from threadline.storage.repositories.responses import ResponseRepository
from threadline.storage.repositories.threads import ThreadRepository
from threadline.storage.tables import Response, Thread
from threadline.turns.record import stored, with_run_metadata
from threadline.turns.stored import get_row


def step_id(run_id: str) -> str:
    """A run has exactly one step (the creation of its answer): its id is derived from the run's."""
    return f"step_{run_id.removeprefix('resp_')}"


async def create_thread_for_run(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    principal: Principal,
    organization_id: str,
    assistant_id: str,
    new: Sequence[NewMessage],
    metadata: Mapping[str, Any] | None,
) -> Thread:
    """`threads.create_and_run`: the new thread and its messages, committed before the run starts (the turn takes
    the thread's lease in a transaction of its own). An unknown assistant is refused before anything is created."""
    async with maker() as session:
        await get_assistant(session, organization_id, assistant_id)
        thread, _ = await create_thread_with_messages(
            session, settings, principal, organization_id, new, metadata=metadata
        )
        await session.commit()
    return thread


def _run_not_found(run_id: str) -> NotFound:
    return NotFound(f"No run found with id '{run_id}'.", code="run_not_found", param="run_id")


async def _run_row(session: AsyncSession, organization_id: str, thread_id: str, run_id: str) -> Response:
    await get_thread(session, organization_id, thread_id)
    try:
        # get_row also settles a turn whose server died (its lease is gone) as failed.
        row = await get_row(session, organization_id, run_id)
    except NotFound:
        raise _run_not_found(run_id) from None
    if row.thread_id != thread_id:
        raise _run_not_found(run_id)
    return row


async def get_run(session: AsyncSession, organization_id: str, thread_id: str, run_id: str) -> StoredTurn:
    return stored(await _run_row(session, organization_id, thread_id, run_id))


async def list_runs(session: AsyncSession, organization_id: str, thread_id: str, page: PageRequest) -> Page[StoredTurn]:
    thread = await get_thread(session, organization_id, thread_id)
    found = await ResponseRepository(session).list_page(organization_id, thread_id, page)
    # A run whose server died is failed here too, not only when it is read by id.
    await recovery.settle_runs(session, thread, found.items)
    return Page(items=[stored(row) for row in found.items], has_more=found.has_more)


async def update_run(
    session: AsyncSession, organization_id: str, thread_id: str, run_id: str, metadata: Mapping[str, Any] | None
) -> StoredTurn:
    """Only metadata can change; `null` clears it."""
    values = dict(metadata or {})
    rules.validate_metadata(values)
    row = await _run_row(session, organization_id, thread_id, run_id)
    row.request = with_run_metadata(row, values)  # reassigned: JSON columns do not track in-place changes
    await session.flush()
    return stored(row)


async def cancel_run(session: AsyncSession, organization_id: str, thread_id: str, run_id: str) -> StoredTurn:
    row = await _run_row(session, organization_id, thread_id, run_id)
    if row.status != IN_PROGRESS:
        raise InvalidRequest(f"Cannot cancel run '{run_id}': it is already {row.status}.", code="run_not_cancellable")
    # Free the thread now; the turn still generating finds its lease gone and saves nothing. The thread row
    # first, then the response row: the order in which the turn's saving transaction takes them, so the two
    # cannot deadlock. A turn that released the lease first is saving its answer: it completes, not cancelled.
    if await ThreadRepository(session).release_lease(organization_id, thread_id, run_id):
        await ResponseRepository(session).cancel_if_in_progress(organization_id, run_id, utcnow())
    await session.refresh(row)
    return stored(row)


async def get_step(session: AsyncSession, organization_id: str, thread_id: str, run_id: str, step: str) -> StoredTurn:
    """The run a step id belongs to (each run has the one step `step_id(run.id)`)."""
    turn = await get_run(session, organization_id, thread_id, run_id)
    if step != step_id(turn.id):
        raise NotFound(f"No run step found with id '{step}'.", code="run_step_not_found", param="step_id")
    return turn
