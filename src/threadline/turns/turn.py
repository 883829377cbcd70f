"""A started turn (what the start hands the run) and the events a running turn yields."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from threadline.domain.context import PromptMessage
from threadline.domain.messages import ChatMessage
from threadline.domain.turns import StoredTurn
from threadline.errors import ThreadlineError
from threadline.providers.base import GenerationParams, ModelInfo, Provider, Tokenizer
from threadline.services import rate_limits
from threadline.services.auth import Principal

if TYPE_CHECKING:
    from threadline.turns.compaction import PendingCompaction


class TurnObserver(Protocol):
    """Told about each saved turn that may be its thread's first exchange (auto-naming listens; turns/engine.py ·
    `start`); must return at once, and never holds up the turn."""

    def turn_saved(self, principal: Principal, turn: StoredTurn) -> None: ...


@dataclass
class Turn:
    """Everything the run needs, gathered by the start (no ORM session attached)."""

    # The turn as recorded when it started (`in_progress`): a stream's first events show it.
    record: StoredTurn
    # The same row by column (turns/record.py · `row_values`): the save completes it without reading it back.
    row: dict[str, Any]
    thread_id: str
    user_id: str | None
    assistant_id: str | None
    provider: Provider
    info: ModelInfo
    tokenizer: Tokenizer
    prompt: list[ChatMessage]
    inputs: list[PromptMessage]
    params: GenerationParams
    thread_state: str | None
    # The id the answer is saved under, known up front (an Assistants run streams it before saving).
    output_message_id: str
    # Called once the turn is saved (auto-naming schedules its work here); must return at once, never raise.
    after_save: Callable[[StoredTurn], None] | None = None
    # The context held an answer (an assistant message) of this thread: the turn is not the thread's first exchange.
    follows_an_answer: bool = False
    # Metadata saved with each input (same order as `inputs`; missing entries mean none).
    input_metadata: list[dict[str, Any]] = field(default_factory=list)
    # At most this many function calls of the answer are kept (None: all).
    max_tool_calls: int | None = None
    # An Assistants run: an answer with calls is not saved to the thread but waits for their outputs on the
    # turn's row (status `requires_action`, docs/runs.md).
    defer_calls: bool = False
    # The credential's concurrent-turn slot (services/rate_limits.py), renewed with the lease, freed once settled.
    slot: rate_limits.TurnSlot | None = None
    # A compaction to run before the model call (OpenAI `context_management`, a `compaction_trigger`).
    compaction: PendingCompaction | None = None
    # (the thread's assistant, its `compact_at`) as the start read them: the save's check for a due compaction
    # needs no second read of the assistant. None: not read (no assistant, or a run's other than the thread's).
    assistant_compact_at: tuple[str, float | None] | None = None

    @property
    def id(self) -> str:
        """The turn's id (`resp_…`): its response, its run, and the owner of its thread's lease."""
        return self.record.id

    @property
    def organization_id(self) -> str:
        return self.record.organization_id


@dataclass(frozen=True)
class OutputDelta:
    text: str


@dataclass(frozen=True)
class OutputReasoning:
    """A piece of the model's reasoning; `item_id` (`rs_…`) is the id its reasoning item is saved under."""

    item_id: str
    text: str


@dataclass(frozen=True)
class OutputCallStarted:
    """The model began a function call; `item_id` (`fc_…`) is the id it is saved under."""

    index: int
    item_id: str
    call_id: str
    name: str


@dataclass(frozen=True)
class OutputCallArguments:
    index: int
    item_id: str
    delta: str


@dataclass(frozen=True)
class TurnDone:
    """The last event of a turn: the stored turn (completed or failed) and the error, if it failed."""

    record: StoredTurn
    error: ThreadlineError | None


@dataclass(frozen=True)
class OutputCompaction:
    """The turn compacted first: its compaction item (the first output item) is written (docs/compaction.md)."""

    item_id: str
    summary: str
    model: str


TurnEvent = OutputDelta | OutputReasoning | OutputCallStarted | OutputCallArguments | OutputCompaction | TurnDone
