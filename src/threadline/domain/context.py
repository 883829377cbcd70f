"""The context builder: which messages of a thread go into a model call. Pure: no I/O, no clock.

Vocabulary: the *window* ("neuron capacity") is the model's context size in tokens. Out of it come the reply
reserve (`max_output_tokens`), the reply priming, the *pinned* messages (an assistant's instructions: they
always stay) and this turn's *inputs* (they always stay too: a request whose inputs do not fit is refused, never
cut). What is left is the *budget* for history.

Modes (docs/context.md):
- ``recent``: the newest history messages that fit: always a suffix of the thread.
- ``smart``: the thread's start (leading system messages and the first exchange) plus the newest messages that
  fit; when messages are left out between them, a short system note marks the gap (its tokens count).
- ``full``: all history, or `ContextLengthExceeded` naming the sizes: never silent truncation.

With a *summary* (the newest `compaction` item, docs/compaction.md) the history is the summary, then the items
after the range it covers; `smart` keeps the conversation's start before it. A summary that does not fit is left
out and the mode works as without one, saying so in the report (`compaction_fallback`).

Function calls and their outputs are one unit (docs/items.md): a run of consecutive `function_call` /
`function_call_output` items is kept or dropped whole, so the model never sees an output without its call.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from threadline.domain.messages import TOOL_ITEM_TYPES, ContentParts
from threadline.domain.tokens import REPLY_PRIMING_TOKENS
from threadline.errors import ContextLengthExceeded

ContextMode = Literal["recent", "smart", "full"]
CONTEXT_MODES: tuple[ContextMode, ...] = ("recent", "smart", "full")


# Built for every history row of every turn: plain slotted classes (a frozen dataclass's __init__ costs twice as
# much), treated as values all the same.
@dataclass(slots=True)
class PromptMessage:
    """An item of the prompt; `seq` is None for items that are not (yet) in the thread."""

    role: str
    content: str
    tokens: int
    seq: int | None = None
    type: str = "message"
    call_id: str | None = None
    name: str | None = None
    # A message with images (docs/items.md): all its content parts in order.
    parts: ContentParts | None = None


@dataclass(slots=True)
class HistoryMessage(PromptMessage):
    """A stored message of the conversation with its token count (content + framing); it goes into the prompt
    as it is.

    `seq` is the message's position in the conversation. A chain thread numbers its messages on from where it
    forked (docs/chains.md), so seqs rise along the whole path even when it spans several threads; `thread_id`
    says which thread holds the row.
    """

    seq: int = 0
    thread_id: str = ""


def _is_tool_item(message: HistoryMessage) -> bool:
    return message.type in TOOL_ITEM_TYPES


@dataclass(frozen=True)
class Summary:
    """The newest compaction item of a conversation: it stands for the items with seqs `first_seq..last_seq`.
    `content` is what the model sees (the framed summary) and `tokens` its count."""

    item_id: str
    # None: a compaction item among this turn's inputs (not saved yet).
    seq: int | None
    first_seq: int
    last_seq: int
    content: str
    tokens: int
    model: str = ""
    thread_id: str = ""

    def as_prompt(self) -> PromptMessage:
        return PromptMessage("system", self.content, self.tokens, self.seq, "compaction")

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.item_id,
            "thread_id": self.thread_id,
            "seq": self.seq,
            "covers": [self.first_seq, self.last_seq],
            "model": self.model,
            "tokens": self.tokens,
        }


@dataclass(frozen=True)
class ContextReport:
    mode: ContextMode
    window: int
    max_output_tokens: int
    history_budget: int
    input_tokens: int
    messages_included: int
    messages_omitted: int
    gap_marked: bool
    seq_ranges: tuple[tuple[int, int], ...] = field(default=())
    # (thread id, first seq, last seq): where each run of `seq_ranges` is stored, so any answer can be traced.
    segments: tuple[tuple[str, int, int], ...] = field(default=())
    # The history items and inputs in the prompt, counted by item type.
    items_by_type: tuple[tuple[str, int], ...] = field(default=())
    # The compaction item the prompt starts from, if any; why none was used although one was wanted.
    summary: Summary | None = None
    compaction_fallback: str | None = None
    # Items after the summary (or, without one, in the whole history) the prompt leaves out: what a new summary
    # would save from being lost.
    unsummarized_omitted: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "compaction": self.summary.as_dict() if self.summary is not None else None,
            "compaction_fallback": self.compaction_fallback,
            "unsummarized_omitted": self.unsummarized_omitted,
            "mode": self.mode,
            "window": self.window,
            "max_output_tokens": self.max_output_tokens,
            "history_budget": self.history_budget,
            "input_tokens": self.input_tokens,
            "messages_included": self.messages_included,
            "messages_omitted": self.messages_omitted,
            "gap_marked": self.gap_marked,
            "seq_ranges": [list(r) for r in self.seq_ranges],
            "context_segments": [
                {"thread_id": thread_id, "first_seq": first, "last_seq": last}
                for thread_id, first, last in self.segments
            ],
            "items_by_type": dict(self.items_by_type),
        }


@dataclass(frozen=True)
class ContextPlan:
    messages: tuple[PromptMessage, ...]
    report: ContextReport


def gap_note(omitted: int) -> str:
    noun = "message" if omitted == 1 else "messages"
    return f"[… {omitted} earlier {noun} omitted …]"


def history_budget(
    window: int,
    max_output_tokens: int,
    pinned_tokens: int,
    input_tokens: int,
    priming_tokens: int = REPLY_PRIMING_TOKENS,
) -> int:
    """Tokens left for history; raises when the fixed parts alone do not fit the window.

    `priming_tokens` is what every request costs besides its messages (the model's `request_overhead_tokens`:
    the reply priming, plus e.g. a chat template's default system prompt)."""
    fixed = max_output_tokens + priming_tokens + pinned_tokens + input_tokens
    if fixed > window:
        raise ContextLengthExceeded(
            f"This request needs {fixed} tokens before any history (instructions {pinned_tokens}, inputs "
            f"{input_tokens}, reply reserve {max_output_tokens}, priming {priming_tokens}), but the model's "
            f"context window is {window} tokens. Shorten the inputs or lower max_output_tokens.",
            param="inputs",
        )
    return window - fixed


def anchor_of(head: Sequence[HistoryMessage]) -> list[HistoryMessage]:
    """The conversation's start: its leading system messages, then the first user message and its answer."""
    anchor: list[HistoryMessage] = []
    seen_user = False
    for message in head:
        if not seen_user and message.role == "system":
            anchor.append(message)
        elif not seen_user and message.role == "user":
            anchor.append(message)
            seen_user = True
        elif seen_user and message.role == "assistant" and message.type == "message":
            anchor.append(message)
            break
        else:
            break
    return anchor


def build_context(
    *,
    mode: ContextMode,
    window: int,
    max_output_tokens: int,
    pinned: Sequence[PromptMessage],
    inputs: Sequence[PromptMessage],
    tail: Sequence[HistoryMessage],
    history_total: int,
    head: Sequence[HistoryMessage] = (),
    count_note: Callable[[str], int] = lambda text: len(text),
    priming_tokens: int = REPLY_PRIMING_TOKENS,
    summary: Summary | None = None,
    after_summary: int | None = None,
    compaction_fallback: str | None = None,
) -> ContextPlan:
    """Choose the prompt for one turn.

    `tail` is the newest part of the history (oldest first), `head` its oldest part (smart mode); they may
    overlap. `history_total` is the number of live messages in the conversation, so the report can say how many
    were left out. In `full` mode `tail` must be the whole history. `count_note` prices the gap note (content +
    framing) with the model's tokenizer.

    With a `summary`, `tail` holds only items after the range it covers (`after_summary` of them in all) and
    `head` is still the conversation's start.
    """
    pinned_tokens = sum(m.tokens for m in pinned)
    input_tokens = sum(m.tokens for m in inputs)
    budget = history_budget(window, max_output_tokens, pinned_tokens, input_tokens, priming_tokens)
    if summary is not None and summary.tokens > budget:
        summary, compaction_fallback = None, "summary_too_large"
    if summary is not None:
        return _with_summary(
            mode,
            window,
            max_output_tokens,
            pinned,
            inputs,
            tail,
            head,
            history_total,
            count_note,
            priming_tokens,
            summary,
            len(tail) if after_summary is None else after_summary,
            budget,
        )

    anchor: list[HistoryMessage] = []
    note: PromptMessage | None = None
    if mode == "full":
        if len(tail) < history_total:
            raise ValueError("full mode needs the whole history")
        needed = sum(m.tokens for m in tail)
        if needed > budget:
            raise ContextLengthExceeded(
                f"Full context needs {needed} tokens of history ({len(tail)} messages) but only {budget} of the "
                f"model's {window}-token window are left after the inputs ({input_tokens}), instructions "
                f"({pinned_tokens}) and reply reserve ({max_output_tokens}). Use threadContextMode 'recent' or "
                "'smart', or a model with a larger window.",
                param="thread_context_mode",
            )
        chosen = list(tail)
    else:
        if mode == "smart":
            anchor = anchor_of(head)
        anchor, chosen_rest, note = _smart_or_recent(anchor, tail, history_total, budget, count_note)
        chosen = anchor + chosen_rest

    history_part: list[PromptMessage] = list(anchor)
    if note is not None:
        history_part.append(note)
    history_part += chosen[len(anchor) :]
    return _plan(
        mode,
        window,
        max_output_tokens,
        budget,
        pinned,
        history_part,
        inputs,
        chosen,
        history_total,
        note is not None,
        priming_tokens,
        None,
        compaction_fallback,
        max(history_total - len(chosen), 0),
    )


def _with_summary(
    mode: ContextMode,
    window: int,
    max_output_tokens: int,
    pinned: Sequence[PromptMessage],
    inputs: Sequence[PromptMessage],
    tail: Sequence[HistoryMessage],
    head: Sequence[HistoryMessage],
    history_total: int,
    count_note: Callable[[str], int],
    priming_tokens: int,
    summary: Summary,
    after_summary: int,
    budget: int,
) -> ContextPlan:
    """The summary, then the items after it: all of them (`full`), the newest that fit (`recent`), or the
    conversation's start before the summary and a gap note before the newest when some are left out (`smart`)."""
    rest_budget = budget - summary.tokens
    anchor: list[HistoryMessage] = []
    note: PromptMessage | None = None
    if mode == "full":
        if len(tail) < after_summary:
            raise ValueError("full mode needs the whole history after the summary")
        needed = sum(m.tokens for m in tail)
        if needed > rest_budget:
            raise ContextLengthExceeded(
                f"Full context needs {needed + summary.tokens} tokens of history (a summary and the {len(tail)} "
                f"messages after it) but only {budget} of the model's {window}-token window are left. Use "
                "threadContextMode 'recent' or 'smart', or compact the thread again.",
                param="thread_context_mode",
            )
        newest = list(tail)
    else:
        if mode == "smart":
            # The start as it was said, when the summary stands for it (items after it are in `tail`).
            anchor = [m for m in anchor_of(head) if m.seq <= summary.last_seq]
        anchor, newest, note = _smart_or_recent(anchor, tail, after_summary + len(anchor), rest_budget, count_note)
    history_part = [*anchor, summary.as_prompt()]
    if note is not None:
        history_part.append(note)
    history_part += newest
    return _plan(
        mode,
        window,
        max_output_tokens,
        budget,
        pinned,
        history_part,
        inputs,
        [*anchor, *newest],
        max(history_total, len(anchor) + len(newest)),
        note is not None,
        priming_tokens,
        summary,
        None,
        max(after_summary - len(newest), 0),
    )


def _plan(
    mode: ContextMode,
    window: int,
    max_output_tokens: int,
    budget: int,
    pinned: Sequence[PromptMessage],
    history_part: Sequence[PromptMessage],
    inputs: Sequence[PromptMessage],
    chosen: Sequence[HistoryMessage],
    history_total: int,
    gap_marked: bool,
    priming_tokens: int,
    summary: Summary | None,
    compaction_fallback: str | None,
    unsummarized_omitted: int,
) -> ContextPlan:
    messages = (*pinned, *history_part, *inputs)
    total = sum(m.tokens for m in messages) + priming_tokens
    report = ContextReport(
        mode=mode,
        window=window,
        max_output_tokens=max_output_tokens,
        history_budget=budget,
        input_tokens=total,
        messages_included=len(chosen),
        messages_omitted=max(history_total - len(chosen), 0),
        gap_marked=gap_marked,
        seq_ranges=seq_ranges([m.seq for m in chosen]),
        segments=context_segments(chosen),
        items_by_type=_count_types([*chosen, *inputs, *([summary.as_prompt()] if summary else [])]),
        summary=summary,
        compaction_fallback=compaction_fallback,
        unsummarized_omitted=unsummarized_omitted,
    )
    return ContextPlan(messages=messages, report=report)


def _count_types(items: Sequence[HistoryMessage | PromptMessage]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(Counter(item.type for item in items).items()))


def _smart_or_recent(
    anchor: list[HistoryMessage],
    tail: Sequence[HistoryMessage],
    history_total: int,
    budget: int,
    count_note: Callable[[str], int],
) -> tuple[list[HistoryMessage], list[HistoryMessage], PromptMessage | None]:
    """(anchor kept, newest messages after it, gap note). Without an anchor this is plain `recent`."""
    anchor_tokens = sum(m.tokens for m in anchor)
    if anchor and anchor_tokens <= budget:
        rest = [m for m in tail if m.seq > anchor[-1].seq]
        newest = _newest_that_fit(rest, budget - anchor_tokens)
        if len(anchor) + len(newest) >= history_total:
            return anchor, newest, None  # everything fits: no gap to mark
        # Reserve room for the widest note this turn could need, then price the real one.
        reserve = count_note(gap_note(history_total))
        if anchor_tokens + reserve <= budget:
            newest = _newest_that_fit(rest, budget - anchor_tokens - reserve)
            while True:
                text = gap_note(history_total - len(anchor) - len(newest))
                note_tokens = count_note(text)
                used = anchor_tokens + note_tokens + sum(m.tokens for m in newest)
                if used <= budget or not newest:
                    break
                newest = newest[1:]
            if used <= budget:
                return anchor, newest, PromptMessage(role="system", content=text, tokens=note_tokens)
    # The start (with its note) does not fit: the newest messages matter more.
    return [], _newest_that_fit(tail, budget), None


def _newest_that_fit(messages: Sequence[HistoryMessage], budget: int) -> list[HistoryMessage]:
    """The longest suffix of `messages` whose tokens fit in `budget` and that holds tool items only in whole
    units: a call and its output are kept or dropped together."""
    used = 0
    start = len(messages)
    for index in range(len(messages) - 1, -1, -1):
        if used + messages[index].tokens > budget:
            break
        used += messages[index].tokens
        start = index
    # A cut inside a unit of tool items drops the unit's rest too.
    while 0 < start < len(messages) and _is_tool_item(messages[start]) and _is_tool_item(messages[start - 1]):
        start += 1
    return _without_orphans(list(messages[start:]))


def _without_orphans(chosen: list[HistoryMessage]) -> list[HistoryMessage]:
    """Drop a leading unit of tool items that holds an output whose call is not there (the part of the history
    that was read began inside the unit)."""
    end = 0
    while end < len(chosen) and _is_tool_item(chosen[end]):
        end += 1
    calls = {m.call_id for m in chosen[:end] if m.type == "function_call"}
    if any(m.type == "function_call_output" and m.call_id not in calls for m in chosen[:end]):
        return chosen[end:]
    return chosen


def seq_ranges(seqs: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Sorted seqs as inclusive runs: [1, 2, 3, 7, 8] → ((1, 3), (7, 8))."""
    runs: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if runs and seq == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return tuple(runs)


def context_segments(messages: Sequence[HistoryMessage]) -> tuple[tuple[str, int, int], ...]:
    """Runs of consecutive seqs stored in one thread, in conversation order: where the chosen history lives."""
    runs: list[tuple[str, int, int]] = []
    for message in sorted(messages, key=lambda m: m.seq):
        if runs and runs[-1][0] == message.thread_id and message.seq == runs[-1][2] + 1:
            runs[-1] = (message.thread_id, runs[-1][1], message.seq)
        else:
            runs.append((message.thread_id, message.seq, message.seq))
    return tuple(runs)
