"""Compaction inside a turn (docs/compaction.md): compaction items among a turn's inputs, and a turn that compacts
first (OpenAI `context_management`, a `compaction_trigger` input).

- A compaction item sent as input (the output of `POST /v1/responses/compact`, sent back) stands for every item
  before it, the conversation's history and the inputs before it alike: the model sees its summary, then the
  inputs after it. Everything is still saved to the thread, in order.
- `context_management: [{"type": "compaction", "compact_threshold": N}]`: when the prompt would pass N tokens (or
  would not fit at all), the summary of the history is written first, with no session open (docs/ARCHITECTURE.md), and
  the model answers from it and the inputs; the compaction item is saved after the inputs (covering the history
  before them) and is the first item of the response's output. A failed summary leaves the prompt as the mode
  built it, and the report says so (`compaction_fallback`); where the mode could not build one (`truncation:
  disabled` over the window) the turn fails as it would have without compaction.
- A `compaction_trigger` (the last input) compacts everything, the inputs before it included; the response's
  output is the compaction item alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from threadline.config import Settings
from threadline.domain.compaction import CompactionOptions, CompactionRecord, SourceItem, framed
from threadline.domain.context import ContextMode, ContextPlan, PromptMessage, Summary, build_context
from threadline.domain.messages import ChatMessage, NewMessage
from threadline.domain.tokens import TokenCounter, message_token_count
from threadline.errors import ContextLengthExceeded, InvalidRequest, ThreadlineError
from threadline.ids import sibling_id
from threadline.providers.base import Finished, ModelInfo, Provider, StreamEvent
from threadline.providers.registry import ModelRegistry
from threadline.services import compaction
from threadline.services.conversation import Segment
from threadline.storage.tables import Assistant
from threadline.turns.context import RowSizes, plan_context

if TYPE_CHECKING:
    from threadline.turns.turn import Turn


@dataclass(frozen=True)
class CompactionContext:
    """What choosing the summary model needs, from the turn being started."""

    options: CompactionOptions
    models: ModelRegistry
    settings: Settings
    assistant: Assistant | None
    turn_model: str


@dataclass(frozen=True)
class Ready:
    """The summary is written (a stream event ahead of the model's): the compaction item's id and summary."""

    item_id: str
    summary: str
    model: str


@dataclass
class PendingCompaction:
    """A compaction the turn runs before its model call (turns/run.py streams `stream`)."""

    provider: Provider
    info: ModelInfo
    previous_summary: str | None
    first_seq: int
    last_seq: int
    items: list[SourceItem]
    trigger: bool
    # The prompt without compaction (None: the mode cannot build one), and the parts of the compacted one.
    fallback: list[ChatMessage] | None
    pinned: list[ChatMessage]
    shown: list[ChatMessage]
    tokenizer: TokenCounter
    max_tokens: int
    idle_timeout: float
    written: compaction.WrittenSummary | None = None


def input_summary(inputs: Sequence[PromptMessage], tokenizer: TokenCounter) -> tuple[Summary | None, int]:
    """The newest compaction item among the inputs as a summary, and the index of the inputs shown after it."""
    for index in range(len(inputs) - 1, -1, -1):
        item = inputs[index]
        if item.type == "compaction":
            text = framed(item.content)
            tokens = message_token_count(tokenizer, "system", text)
            return Summary("", None, 1, 0, text, tokens), index + 1
    return None, 0


async def plan(
    session: AsyncSession,
    organization_id: str,
    *,
    segments: Sequence[Segment],
    tokenizer: TokenCounter,
    tokenizer_name: str,
    mode: ContextMode,
    window: int,
    max_output_tokens: int,
    pinned: Sequence[PromptMessage],
    inputs: Sequence[PromptMessage],
    full_limit: int,
    priming_tokens: int,
    last_messages: int | None = None,
    compacting: CompactionContext | None = None,
    summarized: bool = True,
    row_sizes: RowSizes | None = None,
) -> tuple[ContextPlan, list[str] | None, PendingCompaction | None]:
    """`plan_context` (`summarized` and `row_sizes` as there), unless the inputs hold a compaction item (then no
    history is read); with `compacting`, also the compaction the turn must run first, if any."""
    summary, shown = input_summary(inputs, tokenizer)
    if summary is not None:
        return _from_input_summary(
            mode, window, max_output_tokens, pinned, inputs, shown, summary, tokenizer, priming_tokens
        )
    options = compacting.options if compacting is not None else None
    if options is not None:
        fixed = sum(m.tokens for m in (*pinned, *inputs)) + priming_tokens
        if options.threshold is not None and options.threshold < fixed:
            raise InvalidRequest(
                f"compact_threshold {options.threshold} is below the fixed part of the prompt ({fixed} tokens: "
                "instructions, input and tool definitions), so every turn would compact.",
                code="invalid_value",
                param="context_management.0.compact_threshold",
            )
    try:
        plain, pending = await plan_context(
            session,
            organization_id,
            segments=segments,
            tokenizer=tokenizer,
            tokenizer_name=tokenizer_name,
            mode=mode,
            window=window,
            max_output_tokens=max_output_tokens,
            pinned=pinned,
            inputs=inputs,
            full_limit=full_limit,
            priming_tokens=priming_tokens,
            last_messages=last_messages,
            summarized=summarized,
            row_sizes=row_sizes,
        )
    except ContextLengthExceeded as exc:
        if compacting is None or exc.param != "thread_context_mode":
            raise
        # The history does not fit whole: the summary is what lets the turn run at all.
        plain, pending = _inputs_only(mode, window, max_output_tokens, pinned, inputs, tokenizer, priming_tokens), None
        fallback_error: ContextLengthExceeded | None = exc
    else:
        fallback_error = None
    if compacting is None or options is None:
        return plain, pending, None
    report = plain.report
    wanted = options.trigger or fallback_error is not None
    if options.threshold is not None:
        wanted = wanted or report.input_tokens > options.threshold
    else:  # no threshold: only when the prompt cannot hold what came after the last summary
        wanted = wanted or report.unsummarized_omitted > 0
    if not wanted:
        return plain, pending, None
    previous, items = await compaction.read_source(session, organization_id, segments, full_limit)
    history_last = items[-1].seq if items else (previous.last_seq if previous else 0)
    if options.trigger:
        items += [SourceItem(0, m.role, m.content, m.type, m.name, m.call_id) for m in inputs]
    if not items:
        if fallback_error is not None:
            raise fallback_error
        return plain, pending, None  # nothing to summarise yet
    provider, info = compaction.choose_model(
        compacting.models, compacting.settings, assistant=compacting.assistant, turn_model=compacting.turn_model
    )
    as_chat = [_chat(m) for m in plain.messages]
    compacted = PendingCompaction(
        provider=provider,
        info=info,
        previous_summary=compaction.raw_summary(previous) if previous else None,
        first_seq=previous.first_seq if previous else (items[0].seq or 1),
        last_seq=history_last,
        items=items,
        trigger=options.trigger,
        fallback=None if fallback_error is not None else as_chat,
        pinned=[_chat(m) for m in pinned],
        shown=[] if options.trigger else [_chat(m) for m in inputs],
        tokenizer=tokenizer,
        max_tokens=compacting.settings.summary_max_tokens,
        idle_timeout=compacting.settings.model_idle_timeout_seconds,
    )
    return plain, pending, compacted


def _from_input_summary(
    mode: ContextMode,
    window: int,
    max_output_tokens: int,
    pinned: Sequence[PromptMessage],
    inputs: Sequence[PromptMessage],
    shown: int,
    summary: Summary,
    tokenizer: TokenCounter,
    priming_tokens: int,
) -> tuple[ContextPlan, list[str] | None, PendingCompaction | None]:
    plan = build_context(
        mode=mode,
        window=window,
        max_output_tokens=max_output_tokens,
        pinned=pinned,
        inputs=inputs[shown:],
        tail=[],
        history_total=0,
        count_note=lambda text: message_token_count(tokenizer, "system", text),
        priming_tokens=priming_tokens,
        summary=summary,
        after_summary=0,
    )
    return plan, None, None


def _inputs_only(
    mode: ContextMode,
    window: int,
    max_output_tokens: int,
    pinned: Sequence[PromptMessage],
    inputs: Sequence[PromptMessage],
    tokenizer: TokenCounter,
    priming_tokens: int,
) -> ContextPlan:
    """A placeholder plan (pinned + inputs) for a turn that can only run compacted: its report is replaced once the
    summary is written."""
    return build_context(
        mode=mode,
        window=window,
        max_output_tokens=max_output_tokens,
        pinned=pinned,
        inputs=inputs,
        tail=[],
        history_total=0,
        count_note=lambda text: message_token_count(tokenizer, "system", text),
        priming_tokens=priming_tokens,
    )


def _chat(m: PromptMessage) -> ChatMessage:
    return ChatMessage(m.role, m.content, m.type, m.call_id, m.name)  # type: ignore[arg-type]


async def stream(turn: Turn) -> AsyncIterator[StreamEvent | Ready]:
    """The turn's model stream, after its compaction: `Ready` once the summary is written, then the model's answer
    from the summary (none for a `compaction_trigger`). A failed summary falls back to the mode's prompt."""
    pending = turn.compaction
    assert pending is not None
    prompt = pending.fallback
    try:
        written = await compaction.write_summary(
            pending.provider,
            pending.info,
            pending.previous_summary,
            pending.items,
            max_tokens=pending.max_tokens,
            idle_timeout=pending.idle_timeout,
        )
    except ThreadlineError as exc:
        if prompt is None:
            raise ContextLengthExceeded(
                f"The conversation does not fit the model's window and its summary failed ({exc.message}).",
                param="truncation",
            ) from exc
        _report(turn, compaction_fallback=f"summary_failed: {exc.code}")
        pending.trigger = False  # nothing was compacted: the turn answers as without compaction
    else:
        pending.written = written
        item_id = sibling_id("cmp", turn.id)
        text = framed(written.text)
        summary = ChatMessage("system", text, "compaction")
        prompt = [*pending.pinned, summary, *pending.shown]
        tokens = sum(message_token_count(pending.tokenizer, m.role, m.content) for m in prompt)
        _report(
            turn,
            compaction={
                "id": item_id,
                "covers": [pending.first_seq, pending.last_seq],
                "model": written.model,
                "tokens": message_token_count(pending.tokenizer, "system", text),
                "input_tokens": written.input_tokens,
                "output_tokens": written.output_tokens,
            },
            compaction_item={"id": item_id, "summary": written.text, "model": written.model},
            input_tokens=tokens + turn.info.request_overhead_tokens,
            **({"output_message": False} if pending.trigger else {}),
        )
        yield Ready(item_id, written.text, written.model)
        if pending.trigger:
            yield Finished("stop", input_tokens=written.input_tokens, output_tokens=written.output_tokens)
            return
    async for event in turn.provider.stream(turn.info.name, prompt, turn.params):
        yield event


def _report(turn: Turn, **changes: Any) -> None:
    """Update the turn's context report (saved with its answer) with what its compaction did."""
    turn.record = dataclasses.replace(turn.record, context={**turn.record.context, **changes})


def items_to_save(turn: Turn) -> list[NewMessage]:
    """The compaction item a turn saves right after its inputs (none if it wrote no summary). It covers the history
    before the inputs, or (a `compaction_trigger`) everything before it."""
    pending = turn.compaction
    if pending is None or pending.written is None:
        return []
    written = pending.written
    tokenizer = pending.provider.tokenizer(pending.info.name)
    record = CompactionRecord(
        pending.first_seq,
        pending.last_seq,
        written.model,
        tokenizer.count(written.text),
        "trigger" if pending.trigger else "threshold",
        written.input_tokens,
    )
    item = compaction.compaction_item(written.text, record, tokenizer, item_id=sibling_id("cmp", turn.id))
    if pending.trigger:
        # It stands for everything before it, this turn's inputs included: its own seq says where that ends.
        item = dataclasses.replace(item, payload={**record.payload(), "covers": None})
    return [dataclasses.replace(item, response_id=turn.id)]


def answers_nothing(turn: Turn) -> bool:
    """A `compaction_trigger` turn whose summary was written saves no answer."""
    return turn.compaction is not None and turn.compaction.trigger and turn.compaction.written is not None
