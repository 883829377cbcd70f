"""Compaction (docs/compaction.md): a model writes the summary of a conversation, stored as a `compaction` item.

Like a turn, in three steps, never with a transaction open across the model call (docs/ARCHITECTURE.md): a short
transaction reads what to summarise (the newest summary and the items after it), the model writes the new summary
with no session open, and a short transaction appends the compaction item. A failed summary saves nothing.

A summary is written in rolling passes: the items are cut into chunks that fit the summarising model's window,
and each pass summarises the summary so far plus the next chunk. So any history can be summarised by any model,
and a conversation compacted often costs each summary only the items since the last one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline.config import Settings
from threadline.domain import threads as rules
from threadline.domain.compaction import (
    MIN_SUMMARY_TOKENS,
    SUMMARY_FRAME,
    SUMMARY_PROMPT,
    CompactionRecord,
    SourceItem,
    framed,
    safe_cut,
    transcript,
    transcript_line,
)
from threadline.domain.context import Summary
from threadline.domain.messages import ChatMessage, NewMessage
from threadline.domain.tokens import message_token_count
from threadline.errors import InvalidRequest, UpstreamError, UpstreamTimeout
from threadline.providers.base import Finished, GenerationParams, ModelInfo, Provider, TextDelta, Tokenizer
from threadline.providers.registry import ModelRegistry
from threadline.services import summaries
from threadline.services import threads as thread_service
from threadline.services.conversation import Segment, conversation_path
from threadline.services.messages import append_messages
from threadline.storage.repositories.assistants import AssistantRepository
from threadline.storage.repositories.messages import MessageRepository
from threadline.storage.tables import Assistant, Message, Thread

# Items read per query while collecting what to summarise.
READ_PAGE = 500


@dataclass(frozen=True)
class WrittenSummary:
    text: str
    model: str
    # What the summarising calls cost, all passes together.
    input_tokens: int
    output_tokens: int
    passes: int


def choose_model(
    models: ModelRegistry,
    settings: Settings,
    *,
    requested: str | None = None,
    assistant: Assistant | None = None,
    turn_model: str | None = None,
) -> tuple[Provider, ModelInfo]:
    """The model that writes a summary: the one asked for, else the assistant's summary model, else the server's
    (`THREADLINE_SUMMARY_MODEL`), else the turn's own."""
    name = requested or (assistant.summary_model if assistant else None) or settings.summary_model or turn_model
    return models.resolve(name)


async def write_summary(
    provider: Provider,
    info: ModelInfo,
    previous: str | None,
    items: Sequence[SourceItem],
    *,
    max_tokens: int,
    idle_timeout: float,
) -> WrittenSummary:
    """The summary of `previous` (an earlier summary) and `items`, in as many passes as the model's window needs.
    Raises `UpstreamError` (nothing is saved by the callers then)."""
    tokenizer = provider.tokenizer(info.name)
    fixed = (
        message_token_count(tokenizer, "system", SUMMARY_PROMPT)
        + message_token_count(tokenizer, "user", transcript(None, []))
        + info.request_overhead_tokens
    )
    max_tokens = min(max_tokens, (info.context_window - fixed) // 3)
    if max_tokens < MIN_SUMMARY_TOKENS:
        raise InvalidRequest(
            f"The model '{info.name}' has a {info.context_window}-token window: too small to write summaries in. "
            "Name a summary model with a larger window.",
            code="summary_model_too_small",
            param="model",
        )
    # Room for the transcript: the window less the prompt, the reply and the summary carried into the pass.
    room = info.context_window - fixed - 2 * max_tokens
    summary, spent_in, spent_out, passes = previous, 0, 0, 0
    pending = list(items)
    while pending:
        chunk, pending = _chunk(pending, room, tokenizer)
        prompt = [ChatMessage("system", SUMMARY_PROMPT), ChatMessage("user", transcript(summary, chunk))]
        text, used_in, used_out = await _ask(provider, info, prompt, max_tokens, idle_timeout)
        summary, passes = text, passes + 1
        spent_in, spent_out = spent_in + used_in, spent_out + used_out
    if summary is None:
        raise InvalidRequest("There is nothing to summarise.", code="nothing_to_compact")
    return WrittenSummary(summary, info.name, spent_in, spent_out, passes)


def _chunk(items: list[SourceItem], room: int, tokenizer: Tokenizer) -> tuple[list[SourceItem], list[SourceItem]]:
    """The items (oldest first) whose transcript lines fit in `room` tokens, and the rest. An item too long for
    a pass of its own is cut to fit (its start is kept)."""
    used = 0
    for index, item in enumerate(items):
        cost = tokenizer.count(transcript_line(item)) + 2
        if used + cost > room:
            if index > 0:
                return items[:index], items[index:]
            return [_cut(item, room, tokenizer)], items[1:]
        used += cost
    return items, []


def _cut(item: SourceItem, room: int, tokenizer: Tokenizer) -> SourceItem:
    content = item.content
    while content and tokenizer.count(transcript_line(SourceItem(item.seq, item.role, content, item.type))) > room:
        content = content[: int(len(content) * 0.8)]
    return SourceItem(item.seq, item.role, content + " […]", item.type, item.name, item.call_id)


async def _ask(
    provider: Provider, info: ModelInfo, prompt: list[ChatMessage], max_tokens: int, idle_timeout: float
) -> tuple[str, int, int]:
    """One summarising call: (text, input tokens, output tokens)."""
    stream = provider.stream(info.name, prompt, GenerationParams(max_output_tokens=max_tokens, temperature=0.0))
    parts: list[str] = []
    finished: Finished | None = None
    try:
        while True:
            try:
                async with asyncio.timeout(idle_timeout):
                    event = await anext(stream)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise UpstreamTimeout(
                    f"The summary model sent nothing for {idle_timeout:g} seconds.", code="upstream_timeout"
                ) from None
            if isinstance(event, TextDelta):
                parts.append(event.text)
            elif isinstance(event, Finished):
                finished = event
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
    text = "".join(parts).strip()
    if finished is None or not text:
        raise UpstreamError(f"The model '{info.name}' wrote an empty summary.", code="summary_failed")
    tokenizer = provider.tokenizer(info.name)
    used_in = finished.input_tokens or sum(message_token_count(tokenizer, m.role, m.content) for m in prompt)
    return text, used_in, finished.output_tokens or tokenizer.count(text)


def raw_summary(summary: Summary) -> str:
    """The summary's own text (what the model wrote), without the frame the answering model sees."""
    return summary.content.removeprefix(SUMMARY_FRAME)


async def read_source(
    session: AsyncSession, organization_id: str, segments: Sequence[Segment], limit: int
) -> tuple[Summary | None, list[SourceItem]]:
    """The conversation's newest summary and every live item after the range it covers, oldest first (compaction
    items left out). At most `limit` items: a longer history is refused, never cut."""
    repo = MessageRepository(session)
    summary = await summaries.newest_summary(repo, organization_id, segments, lambda row: row.token_count or 0)
    view = summaries.after(segments, summary.last_seq) if summary is not None else list(segments)
    items: list[SourceItem] = []
    for segment in reversed(view):
        after = segment.after_seq
        while True:
            rows = await repo.context_rows(
                organization_id,
                segment.thread_id,
                READ_PAGE,
                newest=False,
                before_seq=segment.before_seq,
                after_seq=after,
            )
            items += [
                SourceItem(r.seq, r.role, r.content, r.type, (r.payload or {}).get("name"), r.call_id, r.id)
                for r in rows
                if r.type != "compaction"
            ]
            if len(items) > limit:
                raise InvalidRequest(
                    f"This conversation has more than {limit} items since its last summary; compact it in parts.",
                    code="compaction_too_long",
                )
            if len(rows) < READ_PAGE:
                break
            after = rows[-1].seq
    return summary, items


def keep_from(items: Sequence[SourceItem], keep_tokens: int, tokenizer: Tokenizer) -> int:
    """The index from which the newest items, `keep_tokens` of them at most, stay as they were said."""
    used = 0
    index = len(items)
    while index > 0:
        used += tokenizer.count(items[index - 1].content) + 4
        if used > keep_tokens:
            break
        index -= 1
    return index


@dataclass(frozen=True)
class ThreadCompaction:
    """`POST /v1/threads/{id}/compact`, or a background compaction."""

    organization_id: str
    thread_id: str
    model: str | None = None
    # The newest items worth this many tokens stay as they are (after the summary); 0: the summary stands for all.
    keep_tokens: int = 0
    reason: str = "request"


async def compact_thread(
    maker: async_sessionmaker[AsyncSession], settings: Settings, models: ModelRegistry, request: ThreadCompaction
) -> Message:
    """Summarise the thread's conversation up to its newest items and append the compaction item; returns it."""
    org = request.organization_id
    async with maker() as session:
        thread = await thread_service.get_thread(session, org, request.thread_id)
        rules.ensure_accepts_messages(thread.id, thread.state)
        segments = await conversation_path(session, thread)
        previous, items = await read_source(session, org, segments, settings.max_messages_per_thread)
        assistant = await _assistant(session, thread)
        turn_model = _served(models, thread.last_model_used) or (assistant.model if assistant else None)
    provider, info = choose_model(models, settings, requested=request.model, assistant=assistant, turn_model=turn_model)
    tokenizer = provider.tokenizer(info.name)
    cut = safe_cut(items, keep_from(items, request.keep_tokens, tokenizer))
    if cut == 0:
        raise InvalidRequest(
            "There is nothing to compact: no items since the last summary (or only the newest, which stay).",
            code="nothing_to_compact",
        )
    covered = items[:cut]
    written = await write_summary(
        provider,
        info,
        raw_summary(previous) if previous else None,
        covered,
        max_tokens=settings.summary_max_tokens,
        idle_timeout=settings.model_idle_timeout_seconds,
    )
    first = previous.first_seq if previous else covered[0].seq
    record = CompactionRecord(
        first, covered[-1].seq, info.name, tokenizer.count(written.text), request.reason, written.input_tokens
    )
    async with maker() as session:
        thread = await thread_service.get_thread(session, org, request.thread_id, for_update=True)
        found_newer = await MessageRepository(session).newest_compaction(org, [(thread.id, 0, None)])
        newer = found_newer[1] if found_newer else None
        if newer is not None and CompactionRecord.of(newer.payload, newer.seq).last_seq >= record.last_seq:
            # Another compaction got there first and covers as much: keep that one (summaries are written once).
            found = await MessageRepository(session).get(org, thread.id, newer.id)
            assert found is not None
            return found
        (row,) = await append_messages(
            session, settings, thread, [compaction_item(written.text, record, tokenizer)], user_id=None
        )
        await session.commit()
        return row


def compaction_item(
    text: str, record: CompactionRecord, tokenizer: Tokenizer, item_id: str | None = None
) -> NewMessage:
    """The item to append: the summary as its searchable text, the range and the model in its payload."""
    return NewMessage(
        id=item_id,
        role="system",
        type="compaction",
        content=text,
        payload=record.payload(),
        token_count=message_token_count(tokenizer, "system", framed(text)),
        tokenizer=tokenizer.name,
        model=record.model,
    )


def _served(models: ModelRegistry, name: str | None) -> str | None:
    if name is None:
        return None
    return name if any(info.name == name for info in models.models()) else None


async def _assistant(session: AsyncSession, thread: Thread) -> Assistant | None:
    if thread.assistant_id is None:
        return None
    return await AssistantRepository(session).get(thread.organization_id, thread.assistant_id)
