"""Assistants runs that call functions (docs/runs.md): the run's tools, the calls it waits for, and the turn that
continues it once their outputs come.

A run whose model called functions ends its model turn like any other (the lease is released), with status
`requires_action` and the calls on its row (`context.tool_calls`), not in the thread: the calls and their outputs
are saved together, as the inputs of the turn that `submit_tool_outputs` starts under the same run id. So waiting
costs nothing (no lease, no heartbeat, no process), a run that is cancelled or expires leaves the thread as it
was, and a call is never stored without its output. The thread's guard meanwhile is services/waiting_runs.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from threadline.domain.messages import ChatMessage
from threadline.domain.turns import IN_PROGRESS, REQUIRES_ACTION, StoredTurn
from threadline.errors import InvalidRequest, ValidationFailed
from threadline.providers.base import FunctionTool, ToolChoiceFunction
from threadline.services import waiting_runs
from threadline.storage.repositories.responses import ResponseRepository
from threadline.storage.tables import Assistant, Response
from threadline.turns.request import RunOptions, TurnRequest


def tool_step_id(run_id: str, index: int) -> str:
    """The id of a run's `index`-th tool_calls step (its message_creation step is `runs.step_id`)."""
    return f"step_{run_id.removeprefix('resp_')}_{index + 1}"


def run_echo(turn: StoredTurn) -> Mapping[str, Any]:
    return turn.run.echo if turn.run is not None else {}


def completed_steps(turn: StoredTurn) -> list[dict[str, Any]]:
    """The run's tool_calls steps whose outputs came: `{id, created_at, completed_at, tool_calls}`, oldest first."""
    return list(run_echo(turn).get("steps") or [])


def expires_at(turn: StoredTurn) -> datetime:
    return waiting_runs.expires_at(turn.created_at, run_echo(turn).get("expiry_seconds"))


def with_run_tools(request: TurnRequest, assistant: Assistant, expiry_seconds: float) -> TurnRequest:
    """The run's tools (its own, else its assistant's) on the request, checked against `tool_choice`, and kept
    on the run with its expiry."""
    run = request.run
    assert run is not None
    if run.tools is not None:
        tools = run.tools
    else:
        tools = tuple(FunctionTool.from_assistants_tool(t) for t in assistant.tools or [])
    _check_tool_choice(request.tool_choice, tools)
    record = {**run.record, "tools": [t.as_assistants_tool() for t in tools], "expiry_seconds": expiry_seconds}
    run = dataclasses.replace(run, tools=tools, record=record)
    if tools:
        return dataclasses.replace(request, tools=tools, run=run)
    # Nothing to choose from: the model is asked as without tools.
    return dataclasses.replace(request, run=run, tool_choice=None, parallel_tool_calls=None)


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


def check_outputs(turn: StoredTurn, outputs: Sequence[tuple[str, str]]) -> None:
    """Every call of the waiting run gets exactly one output, and nothing else does (OpenAI's rule)."""
    if turn.status != REQUIRES_ACTION:
        raise waiting_runs.not_accepting(turn.status)
    expected = [c.call_id for c in turn.pending_calls]
    given = [call_id for call_id, _ in outputs]
    if sorted(given) != sorted(expected) or len(set(given)) != len(given):
        raise ValidationFailed(
            f"Expected tool outputs for call_ids {expected}, got {given}.",
            code="invalid_tool_outputs",
            param="tool_outputs",
        )


def continuation(turn: StoredTurn, outputs: Sequence[tuple[str, str]]) -> TurnRequest:
    """The request of the turn that continues a waiting run: its calls, then their outputs in the calls' order,
    with the run's options as they were."""
    check_outputs(turn, outputs)
    assert turn.run is not None and turn.thread_id is not None
    by_call = dict(outputs)
    calls = turn.pending_calls
    inputs = [
        *(ChatMessage("assistant", c.arguments, "function_call", c.call_id, c.name) for c in calls),
        *(ChatMessage("tool", by_call[c.call_id], "function_call_output", c.call_id) for c in calls),
    ]
    echo = run_echo(turn)
    tools = tuple(FunctionTool.from_assistants_tool(t) for t in echo.get("tools") or [])
    choice = echo.get("tool_choice")
    strategy = echo.get("truncation_strategy") or {}
    return TurnRequest(
        organization_id=turn.organization_id,
        inputs=inputs,
        thread_id=turn.thread_id,
        model=turn.model,
        max_output_tokens=turn.max_output_tokens,
        temperature=turn.temperature,
        context_mode=turn.context_mode,
        run=RunOptions(
            assistant_id=turn.run.assistant_id,
            instructions=turn.run.instructions,
            last_messages=strategy.get("last_messages") if strategy.get("type") == "last_messages" else None,
            record=dict(echo),
            tools=tools,
        ),
        tools=tools,
        tool_choice=ToolChoiceFunction(choice["function"]["name"]) if isinstance(choice, dict) else choice,
        parallel_tool_calls=echo.get("parallel_tool_calls"),
        resume_run=turn.id,
    )


async def resume(
    session: AsyncSession,
    organization_id: str,
    run_id: str,
    inputs: Sequence[ChatMessage],
    context: Mapping[str, Any],
    output_message_id: str,
    now: datetime,
) -> Response:
    """The start of the continuing turn, under the thread's lease: the waiting run becomes `in_progress` again,
    its answered calls a completed tool_calls step. Refused unless the run still waits (another submission or a
    cancel came first, or it expired meanwhile)."""
    repo = ResponseRepository(session)
    response = await repo.get(organization_id, run_id)
    assert response is not None
    await waiting_runs.settle_expired(session, response)
    if response.status != REQUIRES_ACTION:
        raise waiting_runs.not_accepting(response.status)
    outputs = {m.call_id: m.content for m in inputs if m.type == "function_call_output"}
    run = dict(response.request.get("run") or {})
    steps = list(run.get("steps") or [])
    calls = list(response.context.get("tool_calls") or [])
    steps.append(
        {
            "id": tool_step_id(run_id, len(steps)),
            "created_at": int((response.completed_at or now).timestamp()),
            "completed_at": int(now.timestamp()),
            "tool_calls": [{**c, "output": outputs.get(c["call_id"], "")} for c in calls],
        }
    )
    record = {**response.request, "run": {**run, "steps": steps}, "output_message_id": output_message_id}
    values = {"status": IN_PROGRESS, "request": record, "context": dict(context), "completed_at": None}
    if not await repo.move(organization_id, run_id, REQUIRES_ACTION, values):
        await session.refresh(response)
        raise waiting_runs.not_accepting(response.status)
    await session.refresh(response)
    return response
