"""Assistants v2 runs and run steps on the wire (api/routes/openai_runs.py); conversions from turns live here.

A run is a turn (`turns/runs.py`): its record is the turn's, and what only a run has (assistant, instructions
used, metadata, the echoed options) is its `StoredTurn.run`.
Threadline does not run tools, so a run never needs action; options that would need tools, another output
format or a sampling knob Threadline lacks are refused with a 400 rather than silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from threadline.api.schemas.common import OutputTokens, ResponseModel, StringMetadata
from threadline.api.schemas.openai import (
    OpenAIList,
    OpenAIMessageCreate,
    OpenAIMessageRead,
    OpenAIRequest,
    OpenAIThreadCreate,
    TextContentRead,
    TextValueRead,
    string_metadata,
    unix,
)
from threadline.domain.messages import ChatMessage, NewMessage
from threadline.domain.turns import StoredTurn
from threadline.errors import ValidationFailed
from threadline.storage.repositories.pagination import Page
from threadline.turns.request import RunOptions, TurnRequest
from threadline.turns.runs import step_id
from threadline.turns.turn import Turn

RunStatus = Literal["queued", "in_progress", "cancelled", "failed", "completed", "incomplete"]
RunStepStatus = Literal["in_progress", "cancelled", "failed", "completed"]


def _unsupported(param: str, why: str) -> ValidationFailed:
    return ValidationFailed(f"'{param}' is not supported: {why}", code="unsupported_parameter", param=param)


class TruncationStrategy(OpenAIRequest):
    type: Literal["auto", "last_messages"]
    last_messages: int | None = Field(default=None, ge=1, le=100_000)


class RunCreate(OpenAIRequest):
    assistant_id: str = Field(max_length=128)
    model: str | None = Field(default=None, max_length=200)
    instructions: str | None = Field(default=None, max_length=256_000)
    additional_instructions: str | None = Field(default=None, max_length=256_000)
    additional_messages: list[OpenAIMessageCreate] | None = Field(default=None, max_length=100)
    tools: list[Any] | None = None
    metadata: StringMetadata | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_prompt_tokens: OutputTokens | None = None
    max_completion_tokens: OutputTokens | None = None
    truncation_strategy: TruncationStrategy | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: str | dict[str, Any] | None = None
    stream: bool | None = None

    def check(self) -> list[NewMessage]:
        """Refuse what a run cannot honour; the additional messages to append."""
        if self.tools:
            raise _unsupported("tools", "Threadline runs no tools; send the run without them.")
        if self.tool_choice not in (None, "none", "auto"):
            raise _unsupported("tool_choice", "Threadline runs no tools; use 'none' or 'auto'.")
        if self.response_format not in (None, "auto", {"type": "text"}):
            raise _unsupported("response_format", "Threadline answers in plain text; use 'auto' or {type: 'text'}.")
        if self.top_p not in (None, 1):
            raise _unsupported("top_p", "nucleus sampling is not available; use temperature.")
        if self.max_prompt_tokens is not None:
            raise _unsupported(
                "max_prompt_tokens", "the prompt is fitted to the model's context window; use truncation_strategy."
            )
        strategy = self.truncation_strategy
        if strategy is not None and strategy.type == "last_messages" and strategy.last_messages is None:
            raise ValidationFailed(
                "truncation_strategy of type 'last_messages' needs 'last_messages'.",
                code="missing_required_parameter",
                param="truncation_strategy.last_messages",
            )
        return [m.new_message(f"additional_messages.{i}.") for i, m in enumerate(self.additional_messages or [])]

    def to_request(self, organization_id: str, thread_id: str) -> TurnRequest:
        new = self.check()
        strategy = self.truncation_strategy
        last_messages = strategy.last_messages if strategy is not None and strategy.type == "last_messages" else None
        record = {
            "metadata": dict(self.metadata or {}),
            "max_completion_tokens": self.max_completion_tokens,
            "top_p": self.top_p,
            "truncation_strategy": strategy.model_dump() if strategy else None,
            "tool_choice": self.tool_choice,
            "parallel_tool_calls": True if self.parallel_tool_calls is None else self.parallel_tool_calls,
            "response_format": self.response_format,
        }
        return TurnRequest(
            organization_id=organization_id,
            inputs=[ChatMessage(role=m.role, content=m.content) for m in new],
            thread_id=thread_id,
            model=self.model,
            max_output_tokens=self.max_completion_tokens,
            temperature=self.temperature,
            # An explicit strategy means OpenAI's: the newest messages that fit. Without one the assistant's
            # (or the server's) thread_context_mode applies.
            context_mode="recent" if strategy is not None else None,
            run=RunOptions(
                assistant_id=self.assistant_id,
                instructions=self.instructions,
                additional_instructions=self.additional_instructions,
                last_messages=last_messages,
                input_metadata=[m.metadata for m in new],
                record=record,
            ),
        )


class ThreadAndRunCreate(RunCreate):
    """`threads.create_and_run`: a new thread (with `thread.messages`), then the run on it."""

    thread: OpenAIThreadCreate | None = None


class RunUpdate(OpenAIRequest):
    metadata: StringMetadata | None = None


class UsageRead(ResponseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class LastErrorRead(ResponseModel):
    code: Literal["server_error", "rate_limit_exceeded", "invalid_prompt"]
    message: str


# Threadline error codes → the few codes a run's `last_error` may carry (the SDK validates the literal).
_LAST_ERROR_CODES = {"rate_limited": "rate_limit_exceeded", "context_length_exceeded": "invalid_prompt"}


def _run_status(turn: StoredTurn) -> RunStatus:
    return "incomplete" if turn.truncated else turn.status


def _usage(turn: StoredTurn) -> UsageRead | None:
    usage = turn.usage
    if usage is None:
        return None
    return UsageRead(
        prompt_tokens=usage.input_tokens, completion_tokens=usage.output_tokens, total_tokens=usage.total_tokens
    )


def _last_error(turn: StoredTurn) -> LastErrorRead | None:
    if turn.error is None:
        return None
    return LastErrorRead(code=_LAST_ERROR_CODES.get(turn.error.code, "server_error"), message=turn.error.message)


class RunRead(ResponseModel):
    id: str
    object: Literal["thread.run"] = "thread.run"
    created_at: int
    thread_id: str
    assistant_id: str
    status: RunStatus
    model: str
    instructions: str
    tools: list[Any] = Field(default_factory=list)
    parallel_tool_calls: bool
    started_at: int | None
    completed_at: int | None
    cancelled_at: int | None
    failed_at: int | None
    expires_at: int | None = None
    required_action: None = None
    last_error: LastErrorRead | None
    incomplete_details: dict[str, str] | None
    usage: UsageRead | None
    metadata: dict[str, str]
    temperature: float | None
    top_p: float | None
    max_prompt_tokens: int | None = None
    max_completion_tokens: int | None
    truncation_strategy: dict[str, Any]
    tool_choice: str | dict[str, Any] | None
    response_format: str | dict[str, Any] | None

    @classmethod
    def of(cls, turn: StoredTurn, status: RunStatus | None = None) -> RunRead:
        """`status` overrides the stored one for the stream's opening events (`queued`)."""
        echo = turn.run.echo if turn.run else {}
        actual = _run_status(turn)
        ended = unix(turn.completed_at) if turn.completed_at else None
        started = unix(turn.created_at)
        return cls(
            id=turn.id,
            created_at=started,
            thread_id=turn.thread_id or "",
            assistant_id=turn.run.assistant_id if turn.run else "",
            status=status or actual,
            model=turn.model,
            instructions=turn.run.instructions if turn.run else "",
            parallel_tool_calls=echo.get("parallel_tool_calls", True),
            started_at=None if status == "queued" else started,
            completed_at=ended if actual in ("completed", "incomplete") else None,
            cancelled_at=ended if actual == "cancelled" else None,
            failed_at=ended if actual == "failed" else None,
            last_error=_last_error(turn),
            incomplete_details={"reason": "max_completion_tokens"} if actual == "incomplete" else None,
            usage=_usage(turn),
            metadata=string_metadata(echo.get("metadata") or {}),
            temperature=turn.temperature,
            top_p=echo.get("top_p"),
            max_completion_tokens=echo.get("max_completion_tokens"),
            truncation_strategy=echo.get("truncation_strategy") or {"type": "auto", "last_messages": None},
            tool_choice=echo.get("tool_choice"),
            response_format=echo.get("response_format") or "auto",
        )


class RunList(OpenAIList):
    data: list[RunRead]

    @classmethod
    def of(cls, page: Page[StoredTurn]) -> RunList:
        return cls.of_data([RunRead.of(r) for r in page.items], page.has_more)


class MessageCreationRead(ResponseModel):
    message_id: str


class StepDetailsRead(ResponseModel):
    type: Literal["message_creation"] = "message_creation"
    message_creation: MessageCreationRead


class StepLastErrorRead(ResponseModel):
    code: Literal["server_error", "rate_limit_exceeded"]
    message: str


class RunStepRead(ResponseModel):
    id: str
    object: Literal["thread.run.step"] = "thread.run.step"
    created_at: int
    assistant_id: str
    thread_id: str
    run_id: str
    type: Literal["message_creation"] = "message_creation"
    status: RunStepStatus
    step_details: StepDetailsRead
    completed_at: int | None
    cancelled_at: int | None
    failed_at: int | None
    expired_at: int | None = None
    last_error: StepLastErrorRead | None
    usage: UsageRead | None
    metadata: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def of(cls, turn: StoredTurn) -> RunStepRead:
        run = RunRead.of(turn)
        status: RunStepStatus = (
            "completed" if run.status == "incomplete" else run.status  # type: ignore[assignment]
        )
        error = run.last_error
        return cls(
            id=step_id(turn.id),
            created_at=run.created_at,
            assistant_id=run.assistant_id,
            thread_id=run.thread_id,
            run_id=run.id,
            status=status,
            step_details=StepDetailsRead(message_creation=MessageCreationRead(message_id=turn.output_message_id or "")),
            completed_at=run.completed_at,
            cancelled_at=run.cancelled_at,
            failed_at=run.failed_at,
            last_error=StepLastErrorRead(
                code="rate_limit_exceeded" if error.code == "rate_limit_exceeded" else "server_error",
                message=error.message,
            )
            if error
            else None,
            usage=run.usage,
        )


class RunStepList(OpenAIList):
    data: list[RunStepRead]

    @classmethod
    def of(cls, turn: StoredTurn) -> RunStepList:
        return cls.of_data([RunStepRead.of(turn)], has_more=False)


def answer_in_progress(turn: Turn) -> OpenAIMessageRead:
    """The run's answer before it is saved (streamed `thread.message.created`/`in_progress`), under its final id."""
    return OpenAIMessageRead(
        id=turn.output_message_id,
        created_at=unix(turn.record.created_at),
        thread_id=turn.thread_id,
        role="assistant",
        content=[],
        status="in_progress",
        assistant_id=turn.assistant_id,
        run_id=turn.id,
        metadata={},
        completed_at=None,
    )


def answer_incomplete(turn: Turn, text: str, reason: str) -> OpenAIMessageRead:
    """The answer of a run that failed or was cancelled: what was streamed, never saved."""
    message = answer_in_progress(turn)
    message.status = "incomplete"
    message.content = [TextContentRead(text=TextValueRead(value=text))] if text else []
    message.incomplete_at = unix(turn.record.created_at)
    message.incomplete_details = {"reason": reason}
    return message


def message_delta(message_id: str, text: str) -> dict[str, Any]:
    return {
        "id": message_id,
        "object": "thread.message.delta",
        "delta": {"content": [{"index": 0, "type": "text", "text": {"value": text, "annotations": []}}]},
    }
