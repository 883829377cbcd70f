"""Assistants runs that wait for tool outputs (`requires_action`), see docs/runs.md.

A run whose model called functions ends its model turn like any other (the lease is released), with status
`requires_action` and the calls on its `context` (`tool_calls`), not in the thread: the calls and their outputs
are saved together, as the inputs of the turn that `submit_tool_outputs` starts on the same run. So waiting costs
nothing (no lease, no heartbeat, no process), a run that is cancelled or expires leaves the thread as it was, and
a call is never stored without its output.

While a run waits, the thread takes no new messages and no new turn (OpenAI's rule and wording); the run expires
`run_expiry_seconds` (the setting when the run started) after it was created (OpenAI: ten minutes). Expiry is
settled when the run is next read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from threadline.domain.clock import utcnow
from threadline.domain.messages import ChatMessage
from threadline.errors import InvalidRequest, ValidationFailed
from threadline.storage.repositories.responses import ResponseRepository
from threadline.storage.tables import Response

WAITING = "requires_action"


def expires_at(response: Response) -> datetime:
    """When the run expires if it still waits: its creation plus the expiry in force then (services/runs.py
    records it on the run)."""
    seconds = (response.request.get("run") or {}).get("expiry_seconds", 600)
    return response.created_at + timedelta(seconds=float(seconds))


def tool_step_id(run_id: str, index: int) -> str:
    """The id of a run's `index`-th tool_calls step (its message_creation step is `runs.step_id`)."""
    return f"step_{run_id.removeprefix('resp_')}_{index + 1}"


def pending_calls(response: Response) -> list[dict[str, str]]:
    """The calls a waiting run asks outputs for: `{id, call_id, name, arguments}` each, in the model's order."""
    return list(response.context.get("tool_calls") or []) if response.status == WAITING else []


def completed_steps(response: Response) -> list[dict[str, Any]]:
    """The run's tool_calls steps whose outputs came: `{id, created_at, completed_at, tool_calls}`, oldest first."""
    return list((response.request.get("run") or {}).get("steps") or [])


async def settle_expired(session: AsyncSession, response: Response) -> Response:
    """A waiting run past its expiry is `expired` from now on (written once, by whichever read sees it first)."""
    if response.status == WAITING and utcnow() >= expires_at(response):
        deadline = expires_at(response)
        values = {"status": "expired", "completed_at": deadline}
        await ResponseRepository(session).move(response.organization_id, response.id, WAITING, values)
        await session.refresh(response)
    return response


async def active_run(session: AsyncSession, organization_id: str, thread_id: str) -> str | None:
    """The id of the thread's run waiting for tool outputs, if one still waits."""
    found = await ResponseRepository(session).waiting_run(organization_id, thread_id)
    if found is None:
        return None
    await settle_expired(session, found)
    return found.id if found.status == WAITING else None


async def ensure_no_active_run(
    session: AsyncSession, organization_id: str, thread_id: str, *, new_run: bool = False
) -> None:
    """Refuse new messages (or, with `new_run`, a new run) while a run of the thread waits for tool outputs."""
    run_id = await active_run(session, organization_id, thread_id)
    if run_id is None:
        return
    if new_run:
        message = f"Thread {thread_id} already has an active run {run_id}."
    else:
        message = f"Can't add messages to {thread_id} while a run {run_id} is active."
    raise InvalidRequest(message, code="run_active", param="thread_id")


def not_accepting(response: Response) -> InvalidRequest:
    return InvalidRequest(
        f'Runs in status "{response.status}" do not accept tool outputs.', code="run_not_waiting", param="run_id"
    )


def check_outputs(response: Response, outputs: Sequence[tuple[str, str]]) -> None:
    """Every call of the waiting run gets exactly one output, and nothing else does (OpenAI's rule)."""
    if response.status != WAITING:
        raise not_accepting(response)
    expected = [c["call_id"] for c in pending_calls(response)]
    given = [call_id for call_id, _ in outputs]
    if sorted(given) != sorted(expected) or len(set(given)) != len(given):
        raise ValidationFailed(
            f"Expected tool outputs for call_ids {expected}, got {given}.",
            code="invalid_tool_outputs",
            param="tool_outputs",
        )


def continuation_inputs(response: Response, outputs: Sequence[tuple[str, str]]) -> list[ChatMessage]:
    """The inputs of the turn that continues a waiting run: its calls, then their outputs in the calls' order."""
    by_call = dict(outputs)
    calls = pending_calls(response)
    return [
        *(ChatMessage("assistant", c["arguments"], "function_call", c["call_id"], c["name"]) for c in calls),
        *(ChatMessage("tool", by_call[c["call_id"]], "function_call_output", c["call_id"]) for c in calls),
    ]


async def resume(
    session: AsyncSession,
    organization_id: str,
    run_id: str,
    inputs: Sequence[ChatMessage],
    context: Mapping[str, Any],
    output_message_id: str,
    now: datetime,
) -> Response:
    """Step 1 of the continuing turn, under the thread's lease: the waiting run becomes `in_progress` again, its
    answered calls a completed tool_calls step. Refused unless the run still waits (another submission or a
    cancel came first)."""
    repo = ResponseRepository(session)
    response = await repo.get(organization_id, run_id)
    assert response is not None
    await settle_expired(session, response)  # it may have expired while this submission waited for the thread
    if response.status != WAITING:
        raise not_accepting(response)
    outputs = {m.call_id: m.content for m in inputs if m.type == "function_call_output"}
    calls = pending_calls(response)
    step = {
        "id": tool_step_id(run_id, len(completed_steps(response))),
        "created_at": int((response.completed_at or now).timestamp()),
        "completed_at": int(now.timestamp()),
        "tool_calls": [{**c, "output": outputs.get(c["call_id"], "")} for c in calls],
    }
    record = dict(response.request)
    record["run"] = {**record.get("run", {}), "steps": [*completed_steps(response), step]}
    record["output_message_id"] = output_message_id
    values = {"status": "in_progress", "request": record, "context": dict(context), "completed_at": None}
    if not await repo.move(organization_id, run_id, WAITING, values):
        await session.refresh(response)
        raise not_accepting(response)
    await session.refresh(response)
    return response
