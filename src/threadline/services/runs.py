"""Assistants v2 runs (the official SDK's `beta.threads.runs`): a run IS a model turn on the thread.

The run id is the turn's response id (`resp_…`): `GET /v1/model/response/{id}` shows the same turn with its
context report, and every message the run saved (its `additional_messages` and its answer) carries it as
`run_id`. Every turn of a thread is one of its runs, whichever API started it.

A run executes inside the request that creates it: a non-streaming create answers once the run is finished
(the SDK's `create_and_poll` then finds it terminal on its first poll), a streaming one streams it. So no run sits
queued waiting for a worker that a restart would lose; a process killed mid-run leaves an `in_progress` turn that
is failed once its lease expires, like any turn: every read of it (get, list, steps) says so and settles it
(`services/recovery.py`).

Cancelling a run in progress marks it cancelled and frees the thread's lease: the turn, still generating in the
request that created it, then finds its lease gone and saves nothing (the thread stays as before the run).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline.config import Settings
from threadline.domain import threads as rules
from threadline.domain.clock import utcnow
from threadline.domain.messages import NewMessage
from threadline.errors import InvalidRequest, NotFound
from threadline.providers.registry import ModelRegistry
from threadline.services import recovery, responses
from threadline.services.assistants import get_assistant
from threadline.services.auth import Principal
from threadline.services.messages import create_thread_with_messages
from threadline.services.threads import get_thread
from threadline.services.turns import OutputDelta, Turn, TurnDone, run_turn
from threadline.storage.repositories.messages import MessageRepository
from threadline.storage.repositories.pagination import Page, PageRequest
from threadline.storage.repositories.responses import ResponseRepository
from threadline.storage.repositories.threads import ThreadRepository
from threadline.storage.tables import Message, Response, Thread


@dataclass(frozen=True)
class RunFinished:
    """The last event of a run: the stored turn and, when it completed, the saved answer."""

    response: Response
    message: Message | None


RunEvent = OutputDelta | RunFinished


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


async def start_run(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    models: ModelRegistry,
    principal: Principal,
    request: responses.ResponseRequest,
) -> Turn:
    """Step 1 of the turn (lease, context, the run recorded in progress); refusals raise before any streaming.

    A run needs an existing thread (a turn would create a missing one) and an assistant of the organization:
    both are checked first, so neither waits on a busy thread."""
    assert request.thread_id is not None and request.run is not None
    rules.validate_metadata(dict(request.run.record.get("metadata") or {}))
    for i, metadata in enumerate(request.run.input_metadata):
        rules.validate_metadata(dict(metadata), param=f"additional_messages.{i}.metadata")
    async with maker() as session:
        await get_thread(session, request.organization_id, request.thread_id)
        await get_assistant(session, request.organization_id, request.run.assistant_id)
    return await responses.start_turn(maker, settings, models, principal, request)


async def stream_run(
    maker: async_sessionmaker[AsyncSession], settings: Settings, turn: Turn
) -> AsyncGenerator[RunEvent]:
    """The model's text as it comes, then `RunFinished`. A failed run is an outcome here, not an exception."""
    events = run_turn(maker, settings, turn)
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, OutputDelta):
                yield event
            elif isinstance(event, TurnDone):
                message = None
                if event.error is None and turn.output_message_id is not None:
                    async with maker() as session:
                        message = await MessageRepository(session).get(
                            turn.organization_id, turn.thread_id, turn.output_message_id
                        )
                yield RunFinished(event.response, message)


async def create_run(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    models: ModelRegistry,
    principal: Principal,
    request: responses.ResponseRequest,
) -> Response:
    """A whole run without streaming: completed, incomplete (max tokens), failed or cancelled."""
    turn = await start_run(maker, settings, models, principal, request)
    async for event in stream_run(maker, settings, turn):
        if isinstance(event, RunFinished):
            return event.response
    raise AssertionError("stream_run ended without RunFinished")


def _run_not_found(run_id: str) -> NotFound:
    return NotFound(f"No run found with id '{run_id}'.", code="run_not_found", param="run_id")


async def get_run(session: AsyncSession, organization_id: str, thread_id: str, run_id: str) -> Response:
    await get_thread(session, organization_id, thread_id)
    try:
        # get_response also settles a turn whose server died (its lease is gone) as failed.
        response = await responses.get_response(session, organization_id, run_id)
    except NotFound:
        raise _run_not_found(run_id) from None
    if response.thread_id != thread_id:
        raise _run_not_found(run_id)
    return response


async def list_runs(session: AsyncSession, organization_id: str, thread_id: str, page: PageRequest) -> Page[Response]:
    thread = await get_thread(session, organization_id, thread_id)
    found = await ResponseRepository(session).list_page(organization_id, thread_id, page)
    # A run whose server died is failed here too, not only when it is read by id.
    await recovery.settle_runs(session, thread, found.items)
    return found


async def update_run(
    session: AsyncSession, organization_id: str, thread_id: str, run_id: str, metadata: Mapping[str, Any] | None
) -> Response:
    """Only metadata can change; `null` clears it."""
    values = dict(metadata or {})
    rules.validate_metadata(values)
    response = await get_run(session, organization_id, thread_id, run_id)
    record = dict(response.request)
    record["run"] = {**record.get("run", {}), "metadata": values}
    response.request = record  # reassigned: JSON columns do not track in-place changes
    await session.flush()
    return response


async def cancel_run(session: AsyncSession, organization_id: str, thread_id: str, run_id: str) -> Response:
    response = await get_run(session, organization_id, thread_id, run_id)
    if response.status != "in_progress":
        raise InvalidRequest(
            f"Cannot cancel run '{run_id}': it is already {response.status}.", code="run_not_cancellable"
        )
    # Free the thread now; the turn still generating finds its lease gone and saves nothing. The thread row
    # first, then the response row: the order in which the turn's saving transaction takes them, so the two
    # cannot deadlock. A turn that released the lease first is saving its answer: it completes, not cancelled.
    if await ThreadRepository(session).release_lease(organization_id, thread_id, run_id):
        await ResponseRepository(session).cancel_if_in_progress(organization_id, run_id, utcnow())
    await session.refresh(response)
    return response


async def get_step(session: AsyncSession, organization_id: str, thread_id: str, run_id: str, step: str) -> Response:
    """The run a step id belongs to (each run has the one step `step_id(run.id)`)."""
    response = await get_run(session, organization_id, thread_id, run_id)
    if step != step_id(response.id):
        raise NotFound(f"No run step found with id '{step}'.", code="run_step_not_found", param="step_id")
    return response
