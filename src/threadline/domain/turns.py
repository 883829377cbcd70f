"""A stored turn as every surface reads it: statuses, outcome, usage, error and output items, typed.

The `responses` row of a turn (storage/tables.py) keeps what the turn was asked and what it produced partly in
JSON columns; `threadline.turns.record` is the one place that reads and writes those keys and hands out this view.
The three API surfaces (Freddy `/v1/model/response`, OpenAI Responses, Assistants v2 runs) project it, each in a
few lines (docs/ARCHITECTURE.md, "the three surfaces").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from threadline.domain.context import ContextMode

# The states of a turn (a response, an Assistants run). A turn is `in_progress` while its lease is live
# (domain/leases.py); it ends `completed`, `failed` (upstream error, client gone, lease lost) or `cancelled`
# (an Assistants run cancelled while it ran).
TurnStatus = Literal["in_progress", "completed", "failed", "cancelled"]
IN_PROGRESS: Final = "in_progress"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
TURN_STATUSES: tuple[TurnStatus, ...] = (IN_PROGRESS, COMPLETED, FAILED, CANCELLED)

# How a completed turn's answer ended, when it was cut: the model's `finish_reason`.
TRUNCATED_BY_LENGTH: Final = "length"
TRUNCATED_BY_FILTER: Final = "content_filter"


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class TurnError:
    """Threadline's error code (`upstream_error`, `turn_interrupted`, …) and its message."""

    code: str
    message: str


@dataclass(frozen=True)
class OutputCall:
    """A function call of the answer: `id` is its item id (`fc_…`), `call_id` the model's."""

    id: str
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class RunRecord:
    """What only an Assistants v2 run has: its assistant, the instructions it used, the run's echoed fields."""

    assistant_id: str
    instructions: str
    # The run's own wire fields, kept as the surface gave them (metadata, truncation_strategy, …).
    echo: Mapping[str, Any]


@dataclass(frozen=True)
class StoredTurn:
    """One turn as stored. `output_text`, `has_message` and `calls` describe the answer of a completed turn."""

    organization_id: str
    id: str
    thread_id: str | None
    previous_response_id: str | None
    model: str
    status: TurnStatus
    created_at: datetime
    completed_at: datetime | None
    # The request side: what the turn used (after defaults), and the surface's echoed fields.
    instructions: str | None
    store: bool
    context_mode: ContextMode | None
    max_output_tokens: int | None
    temperature: float | None
    echo: Mapping[str, Any]
    run: RunRecord | None
    # The id the answer's message is saved under (known before the answer exists).
    output_message_id: str | None
    # The answer.
    output_text: str | None
    output_seq: int | None
    has_message: bool
    calls: tuple[OutputCall, ...]
    finish_reason: str | None
    usage: Usage | None
    error: TurnError | None
    # The context report (what the model saw; docs/context.md), as stored.
    context: Mapping[str, Any]
    # Seqs of the inputs the turn saved in its thread (None for a turn that saved none).
    input_seqs: tuple[int, int] | None

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED

    @property
    def truncated(self) -> bool:
        """A completed answer cut by `max_output_tokens`."""
        return self.completed and self.finish_reason == TRUNCATED_BY_LENGTH
