"""`POST /v1/responses/compact` (docs/compaction.md): the summary of a Responses conversation, as a stored
response whose output is the conversation's user messages and one compaction item.

The conversation is `input`, or `previous_response_id`'s conversation followed by `input`. The compacted response
is kept like any response (docs/chains.md): a hidden chain thread holds the inputs and the compaction item (forked
from the previous response's thread, nothing copied), so its id can be continued with `previous_response_id`, and
its output can be sent back as `input` (the compaction item then stands for everything before it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline.config import Settings
from threadline.domain.clock import utcnow
from threadline.domain.compaction import CompactionRecord, SourceItem
from threadline.domain.messages import ChatMessage, ItemReference, NewMessage, validate_content
from threadline.errors import InvalidRequest, NotFound, ValidationFailed
from threadline.ids import new_id
from threadline.providers.registry import ModelRegistry
from threadline.services import compaction, summaries
from threadline.services import threads as thread_service
from threadline.services.auth import Principal
from threadline.services.conversation import Segment, conversation_path
from threadline.services.messages import append_messages
from threadline.storage.repositories.messages import MessageRepository
from threadline.storage.repositories.responses import ResponseRepository
from threadline.storage.repositories.threads import ThreadRepository
from threadline.storage.tables import Message, Response, Thread


@dataclass(frozen=True)
class CompactRequest:
    organization_id: str
    model: str | None
    inputs: Sequence[ChatMessage | ItemReference] = ()
    previous_response_id: str | None = None
    instructions: str | None = None


@dataclass(frozen=True)
class Compacted:
    """The stored response, the user messages of what it summarised, and its compaction item."""

    response: Response
    user_messages: list[Message]
    item: Message


async def compact(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    models: ModelRegistry,
    principal: Principal,
    request: CompactRequest,
) -> Compacted:
    if not request.model:
        raise ValidationFailed(
            "Missing required parameter 'model': the model that writes the summary.",
            code="missing_required_parameter",
            param="model",
        )
    if not request.inputs and request.previous_response_id is None:
        raise ValidationFailed(
            "Give 'input', 'previous_response_id' or both: the conversation to compact.",
            code="missing_required_parameter",
            param="input",
        )
    if request.instructions is not None:
        validate_content(request.instructions, param="instructions")
    provider, info = compaction.choose_model(models, settings, requested=request.model)
    org = request.organization_id
    inputs = await _resolved(maker, org, request.inputs)
    # A compaction item among the inputs stands for everything before it, the history included.
    last_compaction = max((i for i, m in enumerate(inputs) if m.type == "compaction"), default=None)
    previous_summary: str | None = None
    history: list[SourceItem] = []
    previous: Response | None = None
    async with maker() as session:
        if request.previous_response_id is not None:
            previous = await _continuable(session, settings, org, request.previous_response_id)
            if last_compaction is None:
                segments = await _segments_of(session, previous)
                summary, history = await compaction.read_source(
                    session, org, segments, settings.max_messages_per_thread
                )
                previous_summary = compaction.raw_summary(summary) if summary else None
    shown = inputs
    if last_compaction is not None:
        previous_summary, shown = inputs[last_compaction].content, inputs[last_compaction + 1 :]
    source = list(history)
    if request.instructions:
        source.insert(0, SourceItem(0, "system", request.instructions))
    source += [SourceItem(0, m.role, m.content, m.type, m.name, m.call_id) for m in shown]
    if not source and previous_summary is None:
        raise InvalidRequest("There is nothing to compact.", code="nothing_to_compact", param="input")
    written = await compaction.write_summary(
        provider,
        info,
        previous_summary,
        source,
        max_tokens=settings.summary_max_tokens,
        idle_timeout=settings.model_idle_timeout_seconds,
    )
    tokenizer = provider.tokenizer(info.name)
    async with maker() as session:
        thread = await _new_thread(session, principal, org, previous)
        rows = await append_messages(
            session,
            settings,
            thread,
            [_new_message(m) for m in inputs],
            user_id=principal.user_id,
        )
        last_seq = rows[-1].seq if rows else (thread.parent_seq or 0)
        record = CompactionRecord(
            1, last_seq, info.name, tokenizer.count(written.text), "request", written.input_tokens
        )
        (item,) = await append_messages(
            session, settings, thread, [compaction.compaction_item(written.text, record, tokenizer)], user_id=None
        )
        now = utcnow()
        response = await ResponseRepository(session).add(
            Response(
                organization_id=org,
                id=new_id("resp"),
                thread_id=thread.id,
                previous_response_id=request.previous_response_id,
                user_id=principal.user_id,
                model=info.name,
                status="completed",
                request={"object": "response.compaction", "instructions": request.instructions, "store": True},
                # Read back like a turn that compacted first: its output is the compaction item.
                context={
                    "output_message": False,
                    "compaction_item": {"id": item.id, "summary": written.text, "model": info.name},
                    "summary_passes": written.passes,
                },
                input_first_seq=rows[0].seq if rows else None,
                input_last_seq=rows[-1].seq if rows else None,
                output_seq=item.seq,
                input_tokens=written.input_tokens,
                output_tokens=written.output_tokens,
                created_at=now,
                completed_at=now,
            )
        )
        users = await _user_messages(session, org, history, rows)
        await session.commit()
        return Compacted(response, users, item)


async def _resolved(
    maker: async_sessionmaker[AsyncSession], organization_id: str, inputs: Sequence[ChatMessage | ItemReference]
) -> list[ChatMessage]:
    async with maker() as session:
        return await summaries.resolve_references(MessageRepository(session), organization_id, inputs, "input")


async def _continuable(session: AsyncSession, settings: Settings, organization_id: str, response_id: str) -> Response:
    previous = await ResponseRepository(session).get(organization_id, response_id)
    if previous is None:
        raise NotFound(
            f"No response found with id '{response_id}'.",
            code="previous_response_not_found",
            param="previous_response_id",
        )
    if utcnow() - previous.created_at > timedelta(hours=settings.response_chain_hours):
        raise InvalidRequest(
            f"Response '{previous.id}' is older than {settings.response_chain_hours:g} hours and can no longer be "
            "continued.",
            code="previous_response_expired",
            param="previous_response_id",
        )
    if previous.status != "completed" or previous.thread_id is None or previous.output_seq is None:
        raise InvalidRequest(
            f"Response '{previous.id}' did not complete ({previous.status}); only completed responses can be "
            "compacted.",
            code="previous_response_not_completed",
            param="previous_response_id",
        )
    return previous


async def _parent(session: AsyncSession, previous: Response) -> Thread:
    parent = await ThreadRepository(session).get(previous.organization_id, previous.thread_id or "")
    if parent is None:
        raise NotFound(
            f"Response '{previous.id}' belongs to a conversation that was deleted.",
            code="previous_response_not_found",
            param="previous_response_id",
        )
    return parent


async def _segments_of(session: AsyncSession, previous: Response) -> list[Segment]:
    """The previous response's conversation: its thread's path, up to and including its output."""
    segments = await conversation_path(session, await _parent(session, previous))
    segments[0] = dataclasses.replace(segments[0], last_seq=previous.output_seq)
    return segments


async def _new_thread(
    session: AsyncSession, principal: Principal, organization_id: str, previous: Response | None
) -> Thread:
    if previous is None:
        return await thread_service.create_hidden_thread(session, principal, organization_id, kind="chain")
    assert previous.output_seq is not None
    return await thread_service.create_chain_thread(
        session, principal, await _parent(session, previous), previous.output_seq
    )


def _new_message(m: ChatMessage) -> NewMessage:
    return NewMessage(
        role=m.role,
        content=m.content,
        type=m.type,
        call_id=m.call_id,
        payload={"name": m.name} if m.name is not None else None,
    )


async def _user_messages(
    session: AsyncSession, organization_id: str, history: Sequence[SourceItem], saved: Sequence[Message]
) -> list[Message]:
    """The user messages of what was compacted, oldest first: the history's (read back by id) and the inputs'."""
    ids = [i.id for i in history if i.role == "user" and i.type == "message" and i.id is not None]
    found = await MessageRepository(session).get_many(organization_id, ids)
    return sorted(found, key=lambda m: m.seq) + [m for m in saved if m.role == "user" and m.type == "message"]
