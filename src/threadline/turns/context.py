"""The context plan of a turn: read the part of its conversation it can use, and choose the prompt (via the pure
`domain.context.build_context`).

A turn costs O(window), not O(conversation length): the tail is read newest-first in growing pages until the
history budget is full, segment by segment along the conversation's path (services/conversation.py), stopping
as soon as the budget is full; smart mode also reads the head. Token counts are taken from the rows; rows counted
by another tokenizer (or never counted) are counted once here and the counts are stored for the next turn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from threadline.domain.compaction import seen_text
from threadline.domain.context import (
    ContextMode,
    ContextPlan,
    HistoryMessage,
    PromptMessage,
    build_context,
    history_budget,
)
from threadline.domain.messages import parts_of, unanswered_calls
from threadline.domain.tokens import TokenCounter, item_token_count, message_token_count
from threadline.errors import ContextLengthExceeded
from threadline.services import summaries
from threadline.services.conversation import Segment
from threadline.storage.repositories.messages import ContextRow, MessageRepository

FIRST_PAGE = 64
MAX_PAGE = 1024
# How many threads `RowSizes` remembers (~100 bytes each).
ROW_SIZES_KEPT = 10_000
# Smart mode's anchor is the leading system messages and the first exchange: a short head is enough.
HEAD_LIMIT = 16


class _Counter:
    """Counts rows once per tokenizer and remembers which counts are new, to store them."""

    def __init__(self, tokenizer: TokenCounter, tokenizer_name: str) -> None:
        self.tokenizer = tokenizer
        self.name = tokenizer_name
        self.fresh: dict[str, int] = {}

    def tokens(self, row: ContextRow) -> int:
        if row.token_count is not None and row.tokenizer == self.name:
            return row.token_count
        if row.id not in self.fresh:
            # A compaction item is seen framed as a summary (docs/compaction.md).
            content = seen_text(row.type, row.content)
            self.fresh[row.id] = item_token_count(self.tokenizer, row.role, content, _name(row), parts_of(row.payload))
        return self.fresh[row.id]

    def history(self, rows: Sequence[ContextRow], thread_id: str) -> list[HistoryMessage]:
        # Runs for every row a turn reads: the plain text message (no payload, counted already) is the fast path.
        out = []
        name = self.name
        for row in rows:
            if row.type == "compaction":
                continue  # only the newest one counts, and it is read on its own (services/summaries.py)
            tokens = row.token_count if row.token_count is not None and row.tokenizer == name else self.tokens(row)
            payload = row.payload
            out.append(
                HistoryMessage(
                    row.role,
                    row.content,
                    tokens,
                    row.seq,
                    row.type,
                    row.call_id,
                    _name(row) if payload else None,
                    parts_of(payload) if payload else None,
                    thread_id,
                )
            )
        return out


def _next_page(page: int, remaining: int, used: int, counted: int) -> int:
    """Rows enough for the `remaining` tokens at the tokens per row read so far, a quarter more to spare: the next
    read most often ends the tail, and it reads far fewer rows than doubling the page did (up to twice what the
    window holds)."""
    if used <= 0:
        return min(page * 2, MAX_PAGE)  # no counted rows yet (compaction items only): nothing to estimate from
    return max(FIRST_PAGE, min(math.ceil(remaining * counted / used * 1.25) + 1, MAX_PAGE))


def _name(row: ContextRow) -> str | None:
    name = (row.payload or {}).get("name")
    return name if isinstance(name, str) else None


class RowSizes:
    """The tokens per row a thread's last tail read found, by thread, for the process's most recent threads: the
    next read's first page is what the budget holds at that size (a quarter more), when that is under FIRST_PAGE.
    A thread of long messages then reads the few rows its window takes, not FIRST_PAGE of them. Only page sizes
    follow from it, never the plan: a page that falls short is followed by another read."""

    def __init__(self, kept: int = ROW_SIZES_KEPT) -> None:
        self._tokens_per_row: dict[tuple[str, str], float] = {}
        self._kept = kept

    def first_page(self, thread: tuple[str, str], budget: int) -> int:
        per_row = self._tokens_per_row.get(thread)
        if per_row is None:
            return FIRST_PAGE
        return max(1, min(FIRST_PAGE, math.ceil(max(budget, 0) / per_row * 1.25) + 1))

    def learn(self, thread: tuple[str, str], used: int, counted: int) -> None:
        if counted == 0:
            return
        sizes = self._tokens_per_row
        sizes.pop(thread, None)  # re-inserted last: the dict's order is the order of use
        if len(sizes) >= self._kept:
            del sizes[next(iter(sizes))]
        sizes[thread] = max(used / counted, 1.0)


class _PathReader:
    """Reads a conversation's segments; remembers which segments it read whole, to count the history exactly."""

    def __init__(
        self,
        repo: MessageRepository,
        counter: _Counter,
        org: str,
        segments: Sequence[Segment],
        sizes: RowSizes | None = None,
    ) -> None:
        self.repo = repo
        self.counter = counter
        self.org = org
        self.segments = segments
        self.whole: dict[int, int] = {}
        self.sizes = sizes

    async def tail(self, budget: int) -> tuple[list[HistoryMessage], bool]:
        """Newest messages, page by page and segment by segment, until they exceed the budget or the
        conversation's start is reached (then True)."""
        chunks: list[list[HistoryMessage]] = []
        used = counted = 0
        page = FIRST_PAGE if self.sizes is None or not self.segments else self.sizes.first_page(self._thread, budget)
        last = len(self.segments) - 1
        for index, segment in enumerate(self.segments):
            before = segment.before_seq
            read = 0
            while True:
                rows = await self.repo.context_rows(
                    self.org, segment.thread_id, page, newest=True, before_seq=before, after_seq=segment.after_seq
                )
                history = self.counter.history(rows, segment.thread_id)
                chunks.append(history)
                used += sum(m.tokens for m in history)
                counted += len(history)
                read += len(rows)
                # Seqs of a segment start right above `after_seq`: reaching it means nothing older is left.
                if len(rows) < page or rows[0].seq <= segment.after_seq + 1:
                    self.whole[index] = read
                    break
                if used > budget:
                    return self._read(chunks, used, counted, reached_start=False)
                before = rows[0].seq
                page = _next_page(page, budget - used, used, counted)
            if used > budget and index < last:
                return self._read(chunks, used, counted, reached_start=False)
        return self._read(chunks, used, counted, reached_start=True)

    @property
    def _thread(self) -> tuple[str, str]:
        """The thread whose rows come first (the newest segment's)."""
        return self.org, self.segments[0].thread_id

    def _read(
        self, chunks: list[list[HistoryMessage]], used: int, counted: int, *, reached_start: bool
    ) -> tuple[list[HistoryMessage], bool]:
        if self.sizes is not None and self.segments:
            self.sizes.learn(self._thread, used, counted)
        return _oldest_first(chunks), reached_start

    async def head(self, limit: int, segments: Sequence[Segment] | None = None) -> list[HistoryMessage]:
        """The conversation's oldest `limit` messages: the root segment's head (and the next ones' if it is short).
        `segments`: the whole path, when this reader reads only the part after a summary."""
        out: list[HistoryMessage] = []
        for segment in reversed(segments or self.segments):
            rows = await self.repo.context_rows(
                self.org, segment.thread_id, limit - len(out), newest=False, before_seq=segment.before_seq
            )
            out += self.counter.history(rows, segment.thread_id)
            if len(out) >= limit:
                break
        return out

    async def newest(self, count: int) -> list[HistoryMessage]:
        """The conversation's newest `count` messages, segment by segment."""
        chunks: list[list[HistoryMessage]] = []
        left = count
        for segment in self.segments:
            if left <= 0:
                break
            rows = await self.repo.context_rows(
                self.org,
                segment.thread_id,
                left,
                newest=True,
                before_seq=segment.before_seq,
                after_seq=segment.after_seq,
            )
            chunks.append(self.counter.history(rows, segment.thread_id))
            left -= len(rows)
        return _oldest_first(chunks)

    async def everything(self, limit: int) -> list[HistoryMessage]:
        """The whole conversation for `full` mode; more than `limit` messages is refused, never cut."""
        chunks: list[list[HistoryMessage]] = []
        total = 0
        for segment in self.segments:
            rows = await self.repo.context_rows(
                self.org,
                segment.thread_id,
                limit - total + 1,
                newest=False,
                before_seq=segment.before_seq,
                after_seq=segment.after_seq,
            )
            total += len(rows)
            if total > limit:
                raise ContextLengthExceeded(
                    f"Full context would need all of this conversation's history, more than {limit} messages. Use "
                    "threadContextMode 'recent' or 'smart'.",
                    param="thread_context_mode",
                )
            chunks.append(self.counter.history(rows, segment.thread_id))
        return _oldest_first(chunks)

    def total(self) -> int:
        """Live messages in the conversation: counted where read whole, else from the thread rows."""
        return sum(self.whole.get(i, s.estimated_count()) for i, s in enumerate(self.segments))


def _oldest_first(newest_first_chunks: list[list[HistoryMessage]]) -> list[HistoryMessage]:
    """Chunks were read newest first, each in ascending order: one ascending list."""
    return [message for chunk in reversed(newest_first_chunks) for message in chunk]


async def plan_context(
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
    summarized: bool = True,
    row_sizes: RowSizes | None = None,
) -> tuple[ContextPlan, list[str] | None]:
    """Read what the turn needs of the conversation `segments` (from `conversation_path`) and choose the prompt;
    stores newly computed token counts. Also returns the calls still waiting for their output when the history
    read shows them (it reached a message or the conversation's start), else None (`pending_calls` finds them).

    `last_messages` (an Assistants run's `truncation_strategy`) caps the prompt at that many messages, inputs
    included: only the newest `last_messages - len(inputs)` history messages are candidates. `summarized=False`
    says the conversation holds no compaction item (the start knows it from the lease's statement): no lookup.
    `row_sizes`: what sizes the tail's first page (and learns from this read)."""
    budget = history_budget(
        window, max_output_tokens, sum(m.tokens for m in pinned), sum(m.tokens for m in inputs), priming_tokens
    )
    repo = MessageRepository(session)
    counter = _Counter(tokenizer, tokenizer_name)
    org = organization_id
    # The context starts from the newest compaction item (docs/compaction.md); an Assistants run's message cap
    # counts messages, so it sees none.
    look = summarized and last_messages is None
    summary = await summaries.newest_summary(repo, org, segments, counter.tokens) if look else None
    fallback = None
    if summary is not None and summary.tokens > budget:
        summary, fallback = None, "summary_too_large"
    view = summaries.after(segments, summary.last_seq) if summary is not None else list(segments)
    reader = _PathReader(repo, counter, org, view, row_sizes)
    head: list[HistoryMessage] = []
    whole = False
    after_summary: int | None = None
    if last_messages is not None:
        allowed = max(last_messages - len(inputs), 0)
        tail = await reader.newest(allowed) if allowed else []
        # In full mode the run's cap is the whole of what it may see.
        history_total = len(tail) if mode == "full" else max(reader.total(), len(tail))
    elif mode == "full":
        tail = await reader.everything(full_limit)
        history_total = len(tail)
        whole = True
    else:
        tail, whole = await reader.tail(budget)
        history_total = len(tail) if whole else max(reader.total(), len(tail))
        if mode == "smart":
            head = tail[:HEAD_LIMIT] if whole and summary is None else await reader.head(HEAD_LIMIT, segments)
    if summary is not None:
        # The report counts the whole conversation; the gap note the items after the summary.
        after_summary = len(tail)
        if not whole:
            after_summary = sum([await repo.count_after(org, s.thread_id, s.after_seq, s.before_seq) for s in view])
        history_total = max(_PathReader(repo, counter, org, segments).total(), after_summary)
    pending: list[str] | None = None
    if whole or any(m.type == "message" for m in tail):
        pending = unanswered_calls((m.type, m.call_id) for m in reversed(tail))
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
        summary=summary,
        after_summary=after_summary,
        compaction_fallback=fallback,
    )
    await repo.store_token_counts(org, sorted(counter.fresh.items()), tokenizer_name)
    return plan, pending
