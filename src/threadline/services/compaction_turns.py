"""Compaction inside a turn (docs/compaction.md): a compaction item among a turn's inputs.

A compaction item sent as input (the output of `POST /v1/responses/compact`, sent back) stands for every item
before it, the conversation's history and the inputs before it alike: the model sees its summary, then the
inputs after it. Everything is still saved to the thread, in order.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from threadline.domain.compaction import framed
from threadline.domain.context import ContextMode, ContextPlan, PromptMessage, Summary, build_context
from threadline.domain.tokens import TokenCounter, message_token_count
from threadline.services.turn_context import Segment, plan_context
from threadline.storage.tables import Thread


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
    thread: Thread,
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
) -> tuple[ContextPlan, list[str] | None]:
    """`plan_context`, unless the inputs hold a compaction item: then no history is read."""
    summary, shown = input_summary(inputs, tokenizer)
    if summary is None:
        return await plan_context(
            session,
            thread,
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
        )
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
    return plan, None
