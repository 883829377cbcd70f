"""What a surface asks of the engine: one validated `TurnRequest` (the wire schema's fields, snake_case)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from threadline.domain import threads as rules
from threadline.domain.context import ContextMode
from threadline.domain.messages import ChatMessage, ItemReference, validate_content, validate_role
from threadline.errors import InvalidRequest, ValidationFailed
from threadline.providers.base import FunctionTool, ToolChoiceFunction
from threadline.providers.registry import ModelRegistry
from threadline.services import threads as thread_service


@dataclass(frozen=True)
class RunOptions:
    """What makes a turn an Assistants v2 run (api/routes/openai_runs.py): the assistant is named per run rather
    than taken from the thread, the turn may have no inputs (it answers the thread as it stands), and the run's
    own fields are kept on the turn's record under "run"."""

    assistant_id: str
    # Replaces the assistant's instructions when not None; `additional_instructions` is appended to either.
    instructions: str | None = None
    additional_instructions: str | None = None
    # At most this many messages in the prompt besides the instructions (OpenAI `truncation_strategy`).
    last_messages: int | None = None
    # Metadata of each input (the run's `additional_messages`), saved with them.
    input_metadata: Sequence[Mapping[str, Any]] = ()
    record: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TurnRequest:
    """A validated request for one turn."""

    organization_id: str
    # `ItemReference`s are resolved to the items they name when the turn starts.
    inputs: Sequence[ChatMessage | ItemReference]
    thread_id: str | None = None
    thread_metadata: dict[str, Any] | None = None
    store: bool = True
    thread_state: str | None = None
    previous_response_id: str | None = None
    model: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    context_mode: ContextMode | None = None
    run: RunOptions | None = None
    # A system message for this turn only (OpenAI `instructions`): always in the context, like an assistant's
    # instructions, but never saved to the thread, so a later turn does not see it.
    instructions: str | None = None
    # True: `thread_id` must name an existing thread (OpenAI `conversation`) instead of creating one.
    thread_must_exist: bool = False
    # Caller fields kept as-is on the turn's record (the OpenAI API echoes `metadata`, …): `StoredTurn.echo`.
    record: dict[str, Any] = field(default_factory=dict)
    # Function tools the model may call, and how (docs/items.md). A model without the `tools` capability refuses.
    tools: tuple[FunctionTool, ...] = ()
    tool_choice: str | ToolChoiceFunction | None = None
    parallel_tool_calls: bool | None = None
    # At most this many function calls are kept of one answer (the rest are dropped, never half-saved).
    max_tool_calls: int | None = None

    @property
    def call_cap(self) -> int | None:
        """How many calls of one answer are kept: `max_tool_calls`, and one when parallel calls are off."""
        caps = [c for c in (self.max_tool_calls, 1 if self.parallel_tool_calls is False else None) if c is not None]
        return min(caps) if caps else None


def validate(request: TurnRequest, models: ModelRegistry) -> None:
    """Checks that need no database: done before waiting for a busy thread."""
    if request.previous_response_id is not None and request.thread_id is not None:
        raise InvalidRequest(
            "previousResponseId continues the previous response's own conversation: it cannot be combined with thread.",
            code="thread_with_previous_response",
            param="previous_response_id",
        )
    if not request.inputs and request.run is None:
        raise ValidationFailed("inputs must hold at least one message.", code="empty_inputs", param="inputs")
    for index, message in enumerate(request.inputs):
        if isinstance(message, ItemReference):
            continue
        if message.type == "message":
            validate_role(message.role, param=f"inputs.{index}.role")
        validate_content(message.content, param=f"inputs.{index}.texts")
    if request.instructions is not None:
        validate_content(request.instructions, param="instructions")
    if request.thread_state is not None and request.thread_state not in rules.THREAD_STATES:
        raise ValidationFailed(
            f"Invalid threadState '{request.thread_state}': use one of open, locked, archived.",
            code="invalid_state",
            param="thread_state",
        )
    if request.thread_id is not None:
        thread_service.validate_thread_id(request.thread_id, param="thread")
    if request.model is not None:
        models.resolve(request.model)


def validate_run(run: RunOptions) -> None:
    """A run's metadata (its own and its messages'), checked before anything else of a run."""
    rules.validate_metadata(dict(run.record.get("metadata") or {}))
    for i, metadata in enumerate(run.input_metadata):
        rules.validate_metadata(dict(metadata), param=f"additional_messages.{i}.metadata")
