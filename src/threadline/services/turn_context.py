"""Reading the part of a thread a turn can use, and turning it into a prompt (via the pure `build_context`).

A turn costs O(window), not O(thread length): the tail is read newest-first in growing pages until the history
budget is full; smart mode also reads the head. Token counts are taken from the rows; rows counted by another
tokenizer (or never counted) are counted once here and the counts are stored for the next turn.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from threadline.domain.context import (
    ContextMode,
    ContextPlan,
    HistoryMessage,
    PromptMessage,
    build_context,
    history_budget,
)
from threadline.domain.tokens import TokenCounter, message_token_count
from threadline.storage.repositories.messages import ContextRow, MessageRepository
from threadline.storage.tables import Thread

FIRST_PAGE = 64
MAX_PAGE = 1024
# Smart mode's anchor is the leading system messages and the first exchange: a short head is enough.
HEAD_LIMIT = 16


class _Counter:
    """Counts rows once per tokenizer and remembers which counts are new, to store them."""

    def __init__(self, tokenizer: TokenCounter, tokenizer_name: str) -> None:
        self.tokenizer = tokenizer
        self.name = tokenizer_name
        self.fresh: dict[str, int] = {}

    def history(self, rows: Sequence[ContextRow]) -> list[HistoryMessage]:
        out = []
        for row in rows:
            if row.token_count is not None and row.tokenizer == self.name:
                tokens = row.token_count
            elif row.id in self.fresh:
                tokens = self.fresh[row.id]
            else:
                tokens = message_token_count(self.tokenizer, row.role, row.content)
                self.fresh[row.id] = tokens
            out.append(HistoryMessage(seq=row.seq, role=row.role, content=row.content, tokens=tokens))
        return out


async def plan_context(
    session: AsyncSession,
    thread: Thread,
    *,
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
) -> ContextPlan:
    """Read what the turn needs of `thread` and choose the prompt; stores newly computed token counts.

    `last_messages` (an Assistants run's `truncation_strategy`) caps the prompt at that many messages, inputs
    included: only the newest `last_messages - len(inputs)` history messages are candidates."""
    budget = history_budget(
        window, max_output_tokens, sum(m.tokens for m in pinned), sum(m.tokens for m in inputs), priming_tokens
    )
    repo = MessageRepository(session)
    counter = _Counter(tokenizer, tokenizer_name)
    org, thread_id = thread.organization_id, thread.id
    head: list[HistoryMessage] = []
    if last_messages is not None:
        allowed = max(last_messages - len(inputs), 0)
        rows = await repo.context_rows(org, thread_id, allowed, newest=True) if allowed else []
        tail = counter.history(rows)
        history_total = max(thread.message_count, len(tail))
        if mode == "full":
            history_total = len(tail)  # full of what the run allows
    elif mode == "full":
        tail = counter.history(await repo.context_rows(org, thread_id, full_limit, newest=False))
        history_total = len(tail)
    else:
        tail, reached_start = await _read_tail(repo, counter, org, thread_id, budget)
        history_total = len(tail) if reached_start else max(thread.message_count, len(tail))
        if mode == "smart":
            head = (
                tail[:HEAD_LIMIT]
                if reached_start
                else counter.history(await repo.context_rows(org, thread_id, HEAD_LIMIT, newest=False))
            )
    plan = build_context(
        mode=mode,
        window=window,
        max_output_tokens=max_output_tokens,
        pinned=pinned,
        inputs=inputs,
        tail=tail,
        head=head,
        history_total=history_total,
        count_note=lambda text: message_token_count(tokenizer, "system", text),
        priming_tokens=priming_tokens,
    )
    await repo.store_token_counts(org, sorted(counter.fresh.items()), tokenizer_name)
    return plan


async def _read_tail(
    repo: MessageRepository, counter: _Counter, org: str, thread_id: str, budget: int
) -> tuple[list[HistoryMessage], bool]:
    """Newest messages, page by page, until they exceed the budget or the thread's start is reached."""
    collected: list[HistoryMessage] = []
    used = 0
    before: int | None = None
    page = FIRST_PAGE
    while True:
        rows = await repo.context_rows(org, thread_id, page, newest=True, before_seq=before)
        history = counter.history(rows)
        collected = history + collected
        used += sum(m.tokens for m in history)
        if len(rows) < page:
            return collected, True
        if used > budget:
            return collected, False
        before = rows[0].seq
        page = min(page * 2, MAX_PAGE)
