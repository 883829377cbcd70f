"""The stored record of a turn: the one place that knows the keys of the `responses` row's JSON columns.

`request` holds what the turn was asked (after defaults: its inputs, mode, budget…, and in `sampling` what it
sampled with), the surface's echoed fields and, for an Assistants run, `run`; `context` holds the context
report, then the answer's `finish_reason`, whether it has a message (`output_message`), its function calls
(`tool_calls`) and the upstream's `usage_details`. Everything else reads `StoredTurn`
(domain/turns.py) from `stored()`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from threadline.domain.context import CONTEXT_MODES, ContextMode
from threadline.domain.messages import ChatMessage
from threadline.domain.turns import (
    CANCELLED,
    COMPLETED,
    EXPIRED,
    FAILED,
    REQUIRES_ACTION,
    TURN_STATUSES,
    OutputCall,
    RunRecord,
    StoredTurn,
    TurnError,
    TurnStatus,
    Usage,
)
from threadline.storage.tables import Response
from threadline.turns.request import TurnRequest

# Fields of `request` the engine writes; everything else there is the surface's echo.
_ENGINE_KEYS = frozenset(
    {"inputs", "instructions", "store", "thread_state", "thread_context_mode", "max_output_tokens", "temperature"}
    | {"output_message_id", "run", "sampling"}
)


# The columns of a `responses` row, by name (the keys of `row_values`).
RESPONSE_COLUMNS = tuple(column.key for column in Response.__table__.columns)


def row_values(row: Response) -> dict[str, Any]:
    """A `responses` row's columns by name: what the turn's start wrote, which its save completes."""
    return {column: getattr(row, column) for column in RESPONSE_COLUMNS}


def stored(row: Response) -> StoredTurn:
    """The typed view of a `responses` row."""
    return stored_values(row_values(row))


def stored_values(row: Mapping[str, Any]) -> StoredTurn:
    """The typed view of a `responses` row given by its columns (the values a turn wrote: no ORM object, no read
    back)."""
    request, context = row["request"], row["context"]
    status: TurnStatus = row["status"] if row["status"] in TURN_STATUSES else FAILED
    completed = status == COMPLETED
    usage = None
    if row["input_tokens"] is not None or row["output_tokens"] is not None:
        details = context.get("usage_details") or {}
        usage = Usage(
            row["input_tokens"] or 0,
            row["output_tokens"] or 0,
            cached_tokens=int(details.get("cached_tokens", 0)),
            reasoning_tokens=int(details.get("reasoning_tokens", 0)),
        )
    error = None
    if row["error"]:
        error = TurnError(str(row["error"].get("code", "error")), str(row["error"].get("message", "")))
    run = request.get("run")
    mode = request.get("thread_context_mode")
    calls = tuple(OutputCall(**c) for c in context.get("tool_calls", []))
    thought = context.get("reasoning")
    first, last = row["input_first_seq"], row["input_last_seq"]
    return StoredTurn(
        organization_id=row["organization_id"],
        id=row["id"],
        thread_id=row["thread_id"],
        previous_response_id=row["previous_response_id"],
        model=row["model"],
        status=status,
        created_at=row["created_at"],
        completed_at=row["completed_at"],
        instructions=request.get("instructions"),
        store=request.get("store", True) is not False,
        context_mode=mode if mode in CONTEXT_MODES else None,
        max_output_tokens=request.get("max_output_tokens"),
        temperature=request.get("temperature"),
        sampling=request.get("sampling") or {},
        echo={k: v for k, v in request.items() if k not in _ENGINE_KEYS},
        run=_run(run) if isinstance(run, Mapping) else None,
        output_message_id=request.get("output_message_id"),
        output_text=row["output_text"] if completed else None,
        output_seq=row["output_seq"],
        has_message=completed and bool(context.get("output_message", True)),
        calls=calls if completed else (),
        reasoning=(thought["id"], thought["text"]) if completed and isinstance(thought, Mapping) else None,
        pending_calls=calls if status in (REQUIRES_ACTION, EXPIRED, CANCELLED) else (),
        finish_reason=context.get("finish_reason"),
        usage=usage,
        error=error,
        context=context,
        input_seqs=(first, last) if first is not None and last is not None else None,
    )


def _run(run: Mapping[str, Any]) -> RunRecord:
    echo = {k: v for k, v in run.items() if k not in ("assistant_id", "instructions")}
    return RunRecord(str(run.get("assistant_id") or ""), str(run.get("instructions") or ""), echo)


def request_record(
    request: TurnRequest,
    items: Sequence[ChatMessage],
    mode: ContextMode,
    max_output: int,
    temperature: float | None,
    output_message_id: str,
    instructions: str | None,
    sampling: Mapping[str, float],
) -> dict[str, Any]:
    """What the turn was asked, kept on its row (the inputs too: a failed turn saves none to the thread), and
    what it samples with."""
    record = {
        **request.record,
        "inputs": [_input_record(m) for m in items],
        "instructions": request.instructions,
        "store": request.store,
        "thread_state": request.thread_state,
        "thread_context_mode": mode,
        "max_output_tokens": max_output,
        "temperature": temperature,
        "output_message_id": output_message_id,
        "sampling": dict(sampling),
    }
    if request.run is not None:
        run = request.run
        record["run"] = {**run.record, "assistant_id": run.assistant_id, "instructions": instructions or ""}
    return record


def with_run_metadata(row: Response, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The row's `request` with the run's metadata replaced (the one field of a run that can change)."""
    record = dict(row.request)
    record["run"] = {**record.get("run", {}), "metadata": dict(metadata)}
    return record


def _input_record(m: ChatMessage) -> dict[str, Any]:
    if m.type == "message":
        record: dict[str, Any] = {"role": m.role, "content": m.content}
        return {**record, "parts": list(m.parts)} if m.parts else record
    record = {"type": m.type, "call_id": m.call_id, "content": m.content}
    return {**record, "name": m.name} if m.name is not None else record


def answer_context(
    context: Mapping[str, Any],
    finish_reason: str | None,
    with_message: bool,
    calls: Sequence[OutputCall],
    usage_details: Mapping[str, int],
    reasoning: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The `context` column of a completed turn: the report, then how the answer ended and what it holds (its
    calls — a waiting run's pending ones too — and its reasoning item), and what the upstream reported of its
    usage beyond the totals (cached and reasoning tokens)."""
    return {
        **context,
        "finish_reason": finish_reason,
        **({} if with_message else {"output_message": False}),
        **({"tool_calls": [_call_record(c) for c in calls]} if calls else {}),
        **({"usage_details": dict(usage_details)} if usage_details else {}),
        **({"reasoning": {"id": reasoning[0], "text": reasoning[1]}} if reasoning else {}),
    }


def _call_record(call: OutputCall) -> dict[str, str]:
    """A call as the turn remembers it (its output items are read without reading the thread)."""
    return {"id": call.id, "call_id": call.call_id, "name": call.name, "arguments": call.arguments}
