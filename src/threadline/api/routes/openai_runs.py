"""Assistants v2 runs and run steps: /v1/threads/{id}/runs… and /v1/threads/runs (create and run).

A run is a model turn on the thread (turns/runs.py): its id is the turn's response id (`resp_…`), it runs in
the request that creates it, and the assistant message it saves carries `run_id` and `assistant_id`. Like the
threads and messages of this dialect, these routes exist only for requests with `OpenAI-Beta: assistants=v2`
(`AssistantsRoute`). This router is included before `openai_threads`: `POST /v1/threads/runs` must not be read as
an update of a thread called "runs".
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, get_args

from fastapi import APIRouter
from fastapi import Response as HTTPResponse
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from threadline.api.deps import OrganizationDep, OrganizationQuery, SessionDep, TurnPrincipalDep, TurnsDep
from threadline.api.idempotency import Idempotent
from threadline.api.routes.openai_threads import AssistantsRoute
from threadline.api.schemas.freddy import IdPath, ThreadIdPath
from threadline.api.schemas.openai import OpenAIMessageRead, OpenAIPageQueryDep, OpenAIThreadCreate, OpenAIThreadRead
from threadline.api.schemas.openai_runs import (
    RunCreate,
    RunList,
    RunRead,
    RunStatus,
    RunStepList,
    RunStepRead,
    RunStepStatus,
    RunUpdate,
    ThreadAndRunCreate,
    answer_in_progress,
    answer_incomplete,
    message_delta,
)
from threadline.api.sse import sse_response
from threadline.api.statuses import CONFLICT, MODEL_CALL, streamed
from threadline.turns import runs
from threadline.turns.engine import TurnEngine
from threadline.turns.turn import OutputDelta, Turn, TurnDone

router = APIRouter(prefix="/v1/threads", tags=["openai"], route_class=AssistantsRoute, include_in_schema=False)

# How long the SDK's poll helper waits between GETs of a run (it reads this header; the default is 1 s). A run
# normally finishes inside the request that creates it, so polls only happen for one started elsewhere.
POLL_AFTER_MS = "500"
# What `_sse` sends: the run's and its step's status changes, the answer's message events, then `done`.
RUN_EVENTS = streamed(
    [
        "thread.created",
        *(f"thread.run.{status}" for status in ("created", *get_args(RunStatus))),
        *(f"thread.run.step.{status}" for status in ("created", *get_args(RunStepStatus))),
        *(f"thread.message.{name}" for name in ("created", "in_progress", "delta", "completed", "incomplete")),
        "done",
    ]
)


@router.post("/runs", response_model=RunRead, dependencies=[Idempotent], responses=MODEL_CALL | RUN_EVENTS)
async def create_thread_and_run(
    body: ThreadAndRunCreate,
    principal: TurnPrincipalDep,
    turns: TurnsDep,
    organization_id: OrganizationQuery = None,
) -> RunRead | StreamingResponse:
    org = principal.organization(organization_id)
    thread_body = body.thread or OpenAIThreadCreate()
    new_messages = thread_body.new_messages()
    body.check()  # the run's own fields, before anything is created
    thread = await runs.create_thread_for_run(
        turns.maker, turns.settings, principal, org, body.assistant_id, new_messages, thread_body.metadata
    )
    request = body.to_request(org, thread.id)
    turn = await turns.start(principal, request)
    if not body.stream:
        return RunRead.of((await turns.finish(turn)).record)  # a failed run is an outcome, not an error
    return sse_response(_sse(turns, turn, OpenAIThreadRead.of(thread)))


@router.post("/{thread_id}/runs", response_model=RunRead, dependencies=[Idempotent], responses=MODEL_CALL | RUN_EVENTS)
async def create_run(
    thread_id: ThreadIdPath,
    body: RunCreate,
    principal: TurnPrincipalDep,
    turns: TurnsDep,
    organization_id: OrganizationQuery = None,
) -> RunRead | StreamingResponse:
    request = body.to_request(principal.organization(organization_id), thread_id)
    # Refusals found before the model is called (unknown assistant, locked or busy thread…) answer as JSON errors.
    turn = await turns.start(principal, request)
    if not body.stream:
        return RunRead.of((await turns.finish(turn)).record)  # a failed run is an outcome, not an error
    return sse_response(_sse(turns, turn, None))


@router.get("/{thread_id}/runs", response_model=RunList)
async def list_runs(
    thread_id: ThreadIdPath,
    session: SessionDep,
    organization_id: OrganizationDep,
    page: OpenAIPageQueryDep,
) -> RunList:
    return RunList.of(await runs.list_runs(session, organization_id, thread_id, page))


@router.get("/{thread_id}/runs/{run_id}", response_model=RunRead)
async def get_run(
    thread_id: ThreadIdPath,
    run_id: IdPath,
    session: SessionDep,
    organization_id: OrganizationDep,
    response: HTTPResponse,
) -> RunRead:
    response.headers["openai-poll-after-ms"] = POLL_AFTER_MS
    return RunRead.of(await runs.get_run(session, organization_id, thread_id, run_id))


@router.post("/{thread_id}/runs/{run_id}", response_model=RunRead)
async def update_run(
    thread_id: ThreadIdPath, run_id: IdPath, body: RunUpdate, session: SessionDep, organization_id: OrganizationDep
) -> RunRead:
    return RunRead.of(await runs.update_run(session, organization_id, thread_id, run_id, body.metadata))


@router.post("/{thread_id}/runs/{run_id}/cancel", response_model=RunRead, responses=CONFLICT)
async def cancel_run(
    thread_id: ThreadIdPath, run_id: IdPath, session: SessionDep, organization_id: OrganizationDep
) -> RunRead:
    return RunRead.of(await runs.cancel_run(session, organization_id, thread_id, run_id))


@router.get("/{thread_id}/runs/{run_id}/steps", response_model=RunStepList)
async def list_steps(
    thread_id: ThreadIdPath, run_id: IdPath, session: SessionDep, organization_id: OrganizationDep
) -> RunStepList:
    return RunStepList.of(await runs.get_run(session, organization_id, thread_id, run_id))


@router.get("/{thread_id}/runs/{run_id}/steps/{step_id}", response_model=RunStepRead)
async def get_step(
    thread_id: ThreadIdPath, run_id: IdPath, step_id: IdPath, session: SessionDep, organization_id: OrganizationDep
) -> RunStepRead:
    return RunStepRead.of(await runs.get_step(session, organization_id, thread_id, run_id, step_id))


def _frame(name: str, data: BaseModel | dict[str, Any]) -> str:
    """Assistants SSE: an `event:` line naming the event and the bare object as `data` (as OpenAI streams runs)."""
    payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
    return f"event: {name}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _sse(turns: TurnEngine, turn: Turn, thread: OpenAIThreadRead | None) -> AsyncIterator[str]:
    """The event order of OpenAI's streamed runs, which the SDK's `runs.stream` helper relies on."""
    if thread is not None:
        yield _frame("thread.created", thread)
    queued = RunRead.of(turn.record, status="queued")
    yield _frame("thread.run.created", queued)
    yield _frame("thread.run.queued", queued)
    yield _frame("thread.run.in_progress", RunRead.of(turn.record))
    step = RunStepRead.of(turn.record)
    yield _frame("thread.run.step.created", step)
    yield _frame("thread.run.step.in_progress", step)
    answer = answer_in_progress(turn)
    yield _frame("thread.message.created", answer)
    yield _frame("thread.message.in_progress", answer)
    parts: list[str] = []
    events = turns.run(turn)
    # aclosing: when the client goes away, the turn's cleanup (fail it, free the thread) runs now.
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, OutputDelta):
                parts.append(event.text)
                yield _frame("thread.message.delta", message_delta(answer.id, event.text))
            elif isinstance(event, TurnDone):
                run = RunRead.of(event.record)
                step = RunStepRead.of(event.record)
                message = await turns.answer(turn) if event.error is None else None
                if message is not None:
                    yield _frame("thread.message.completed", OpenAIMessageRead.of(message))
                else:
                    reason = "run_cancelled" if run.status == "cancelled" else "run_failed"
                    yield _frame("thread.message.incomplete", answer_incomplete(turn, "".join(parts), reason))
                yield _frame(f"thread.run.step.{step.status}", step)
                yield _frame(f"thread.run.{run.status}", run)
    yield "event: done\ndata: [DONE]\n\n"
