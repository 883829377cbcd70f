"""Compaction, the pure part (docs/compaction.md): the summary prompt, how a conversation is written out for the
summarising model, how a summary is shown to the answering model, and where a compaction may cut.

A `compaction` item stands for the items up to the seq it covers (`covers`: first and last seq). The context
builder starts from the newest one: the model sees its summary, then the items after the range it covers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from threadline.domain.messages import TOOL_ITEM_TYPES

# The instructions the summarising model gets, fixed in code so every summary is written to the same brief.
SUMMARY_PROMPT = (
    "You write the running summary of a conversation, so that it can continue after the messages you summarise "
    "are no longer shown. Write a compact summary in plain sentences, in the conversation's language. Keep every "
    "fact that was stated, with its exact names, numbers, dates, quantities and identifiers; every decision and "
    "agreement; what each participant wants or asked for; the results of tool calls that later messages rely "
    "on; and every question that is still open. Leave out greetings, repetition and wording. Do not invent "
    "anything, do not answer open questions, and do not address the reader: write only the summary."
)
# The user message that carries the transcript; an earlier summary leads it when there is one.
TRANSCRIPT_HEADER = "Summarise this conversation:\n\n"
EARLIER_SUMMARY_LABEL = "Summary of what came before"
# How the answering model sees a summary: a system message that says what it is.
SUMMARY_FRAME = "Summary of the earlier conversation (it replaces the messages before this point):\n"
# Below this, a summary cannot keep much: a compaction is refused rather than written this short.
MIN_SUMMARY_TOKENS = 32


@dataclass(frozen=True)
class CompactionOptions:
    """What a turn request asks (OpenAI `context_management`, a `compaction_trigger` input): compact past
    `threshold` tokens (None: only when what follows the last summary does not fit), or now (`trigger`)."""

    threshold: int | None = None
    trigger: bool = False


def framed(summary: str) -> str:
    """The text the answering model sees for a compaction item (its token count is this text's)."""
    return SUMMARY_FRAME + summary


def seen_text(item_type: str, content: str) -> str:
    """What the model sees of an item's text: a compaction item's summary framed, any other item's as it is."""
    return framed(content) if item_type == "compaction" else content


@dataclass(frozen=True)
class SourceItem:
    """An item to summarise, as the transcript writes it."""

    seq: int
    role: str
    content: str
    type: str = "message"
    name: str | None = None
    call_id: str | None = None
    # The stored item's id (None for an input not saved yet).
    id: str | None = None


_SPEAKERS = {"user": "User", "assistant": "Assistant", "system": "System", "tool": "Tool"}


def transcript_line(item: SourceItem) -> str:
    """One item as a line of the transcript: who said it, and what."""
    if item.type == "function_call":
        return f"Assistant called the tool {item.name or '?'} with {item.content}"
    if item.type == "function_call_output":
        return f"Tool result: {item.content}"
    if item.type == "compaction":
        return f"{EARLIER_SUMMARY_LABEL}: {item.content}"
    return f"{_SPEAKERS.get(item.role, item.role.capitalize())}: {item.content}"


def transcript(previous_summary: str | None, items: Sequence[SourceItem]) -> str:
    """The summarising model's user message: the earlier summary (if any), then the items, one per paragraph."""
    lines = [f"{EARLIER_SUMMARY_LABEL}: {previous_summary}"] if previous_summary else []
    lines += [transcript_line(item) for item in items]
    return TRANSCRIPT_HEADER + "\n\n".join(lines)


def safe_cut(items: Sequence[SourceItem], keep_from: int) -> int:
    """The index where a compaction may end (exclusive) at or before `keep_from`: never inside a unit of function
    calls and outputs (docs/items.md), so the model never sees an output whose call was summarised away."""
    cut = max(0, min(keep_from, len(items)))
    while 0 < cut < len(items) and items[cut].type in TOOL_ITEM_TYPES and items[cut - 1].type in TOOL_ITEM_TYPES:
        cut -= 1
    # A trailing unit still waiting for an output cannot be summarised either.
    while cut > 0 and items[cut - 1].type == "function_call":
        cut -= 1
    return cut


def compaction_due(
    report: Mapping[str, Any], *, mode: str, window: int, compact_at: float | None, smart_summaries: bool
) -> bool:
    """Whether a saved turn's context report asks for a new summary (written in the background, for the next
    turns): its prompt passed `compact_at` of the window, or a `smart` prompt left out items no summary covers."""
    if compact_at is not None and int(report.get("input_tokens", 0)) > compact_at * window:
        return True
    return smart_summaries and mode == "smart" and int(report.get("unsummarized_omitted", 0)) > 0


@dataclass(frozen=True)
class CompactionRecord:
    """What a compaction item's payload holds: the range it covers, who wrote it, how long it is."""

    first_seq: int
    last_seq: int
    model: str
    summary_tokens: int
    # Why it was written: "request" (an explicit compaction), "threshold", "trigger", "background".
    reason: str
    input_tokens: int = 0

    def payload(self) -> dict[str, Any]:
        return {
            "covers": [self.first_seq, self.last_seq],
            "model": self.model,
            "summary_tokens": self.summary_tokens,
            "input_tokens": self.input_tokens,
            "reason": self.reason,
        }

    @classmethod
    def of(cls, payload: dict[str, Any] | None, seq: int) -> CompactionRecord:
        """The record of the compaction item at `seq`. One a client sent (a Responses input, a conversation item)
        has none: it stands for every item before it."""
        payload = payload or {}
        covers = payload.get("covers")
        if not (isinstance(covers, list) and len(covers) == 2 and all(isinstance(c, int) for c in covers)):
            covers = [1, seq - 1]
        return cls(
            first_seq=int(covers[0]),
            last_seq=int(covers[1]),
            model=str(payload.get("model", "")),
            summary_tokens=int(payload.get("summary_tokens", 0)),
            reason=str(payload.get("reason", "")),
            input_tokens=int(payload.get("input_tokens", 0)),
        )
