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

A run whose model calls functions waits in `requires_action`, holding nothing; `submit_tool_outputs` continues
it with another turn under the same id (services/waiting_runs.py, docs/runs.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline.config import Settings
from threadline.domain import threads as rules
from threadline.domain.clock import utcnow
from threadline.domain.messages import NewMessage
from threadline.errors import InvalidRequest, NotFound
from threadline.providers.base import FunctionTool, ToolChoiceFunction
from threadline.providers.registry import ModelRegistry
from threadline.services import recovery, responses, waiting_runs
from threadline.services.assistants import get_assistant
from threadline.services.auth import Principal
from threadline.services.messages import create_thread_with_messages
from threadline.services.threads import get_thread
from threadline.services.turns import OutputCallArguments, OutputCallStarted, OutputDelta, Turn, TurnDone, run_turn
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


RunEvent = OutputDelta | OutputCallStarted | OutputCallArguments | RunFinished


def step_id(run_id: str) -> str:
    """The id of a run's message_creation step, derived from the run's (its tool_calls steps: see
    `waiting_runs.tool_step_id`)."""
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
        assistant = await get_assistant(session, request.organization_id, request.run.assistant_id)
    run = request.run
    tools = (
        run.tools
        if run.tools is not None
        else tuple(FunctionTool.from_assistants_tool(t) for t in assistant.tools or [])
    )
    _check_tool_choice(request.tool_choice, tools)
    record = {
        **run.record,
        "tools": [t.as_assistants_tool() for t in tools],
        "expiry_seconds": settings.run_expiry_seconds,
    }
    run = dataclasses.replace(run, tools=tools, record=record)
    if tools:
        request = dataclasses.replace(request, tools=tools, run=run)
    else:  # nothing to choose from: the model is asked as without tools
        request = dataclasses.replace(request, run=run, tool_choice=None, parallel_tool_calls=None)
    return await responses.start_turn(maker, settings, models, principal, request)


def _check_tool_choice(choice: str | ToolChoiceFunction | None, tools: Sequence[FunctionTool]) -> None:
    if choice == "required" and not tools:
        raise InvalidRequest(
            "Tool choice 'required' needs tools: give the run or its assistant function tools.",
            code="invalid_value",
            param="tool_choice",
        )
    if isinstance(choice, ToolChoiceFunction) and not any(t.name == choice.name for t in tools):
        raise InvalidRequest(
            f"tool_choice names the function '{choice.name}', which is not among the run's tools.",
            code="invalid_value",
            param="tool_choice.function.name",
        )


async def start_submitted_outputs(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    models: ModelRegistry,
    principal: Principal,
    organization_id: str,
    thread_id: str,
    run_id: str,
    outputs: Sequence[tuple[str, str]],
) -> Turn:
    """`submit_tool_outputs`: step 1 of the turn that continues a waiting run, under the run's own id, with the
    run's calls and these outputs as its inputs and the run's options as they were."""
    async with maker() as session:
        response = await get_run(session, organization_id, thread_id, run_id)
        await session.commit()  # an expiry settled by the read stays settled
    waiting_runs.check_outputs(response, outputs)
    record: dict[str, Any] = response.request
    run: dict[str, Any] = record["run"]
    tools = tuple(FunctionTool.from_assistants_tool(t) for t in run.get("tools") or [])
    choice = run.get("tool_choice")
    strategy = run.get("truncation_strategy") or {}
    request = responses.ResponseRequest(
        organization_id=organization_id,
        inputs=waiting_runs.continuation_inputs(response, outputs),
        thread_id=thread_id,
        model=response.model,
        max_output_tokens=record.get("max_output_tokens"),
        temperature=record.get("temperature"),
        context_mode=record.get("thread_context_mode"),
        run=responses.RunOptions(
            assistant_id=run["assistant_id"],
            instructions=run.get("instructions") or "",
            last_messages=strategy.get("last_messages") if strategy.get("type") == "last_messages" else None,
            record=run,
            tools=tools,
        ),
        tools=tools,
        tool_choice=ToolChoiceFunction(choice["function"]["name"]) if isinstance(choice, dict) else choice,
        parallel_tool_calls=run.get("parallel_tool_calls"),
        resume_run=run_id,
    )
    return await responses.start_turn(maker, settings, models, principal, request)


async def stream_run(
    maker: async_sessionmaker[AsyncSession], settings: Settings, turn: Turn
) -> AsyncGenerator[RunEvent]:
    """The model's text as it comes, then `RunFinished`. A failed run is an outcome here, not an exception."""
    events = run_turn(maker, settings, turn)
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, OutputDelta | OutputCallStarted | OutputCallArguments):
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
    """A whole run without streaming: completed, incomplete (max tokens), requires_action, failed or cancelled."""
    turn = await start_run(maker, settings, models, principal, request)
    return await finish_run(maker, settings, turn)


async def finish_run(maker: async_sessionmaker[AsyncSession], settings: Settings, turn: Turn) -> Response:
    """The rest of a started run, without streaming."""
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
    return await waiting_runs.settle_expired(session, response)


async def list_runs(session: AsyncSession, organization_id: str, thread_id: str, page: PageRequest) -> Page[Response]:
    thread = await get_thread(session, organization_id, thread_id)
    found = await ResponseRepository(session).list_page(organization_id, thread_id, page)
    # A run whose server died is failed here too, not only when it is read by id.
    await recovery.settle_runs(session, thread, found.items)
    for run in found.items:
        await waiting_runs.settle_expired(session, run)
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
    if response.status == waiting_runs.WAITING:
        # Nothing runs and the thread is free: the run ends here, its calls unanswered and never saved.
        await ResponseRepository(session).cancel_if_in_progress(organization_id, run_id, utcnow(), waiting_runs.WAITING)
        await session.refresh(response)
        return response
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
    """The run a step id belongs to: its message_creation step `step_id(run.id)` or one of its tool_calls steps."""
    response = await get_run(session, organization_id, thread_id, run_id)
    rounds = len(waiting_runs.completed_steps(response)) + 1
    if step not in {step_id(response.id), *(waiting_runs.tool_step_id(response.id, i) for i in range(rounds))}:
        raise NotFound(f"No run step found with id '{step}'.", code="run_step_not_found", param="step_id")
    return response
