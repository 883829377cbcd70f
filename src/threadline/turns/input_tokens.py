"""`POST /v1/responses/input_tokens`: the tokens a response with this body would send the model, counted the way a
turn counts them (the model's tokenizer, its chat framing and request overhead, the tool definitions), over the
context a turn would build (`conversation`, `previous_response_id`, a compaction item among the inputs). Nothing
is saved and no thread is leased.
"""

from __future__ import annotations

import dataclasses
import json

from sqlalchemy.ext.asyncio import AsyncSession

from threadline.config import Settings
from threadline.domain.compaction import seen_text
from threadline.domain.context import PromptMessage
from threadline.domain.tokens import item_token_count, message_token_count
from threadline.errors import InvalidRequest, NotFound, ThreadNotFound
from threadline.providers.registry import ModelRegistry
from threadline.services import summaries
from threadline.services import threads as thread_service
from threadline.services.conversation import Segment, conversation_path
from threadline.storage.repositories.assistants import AssistantRepository
from threadline.storage.repositories.messages import MessageRepository
from threadline.storage.repositories.responses import ResponseRepository
from threadline.storage.repositories.threads import ThreadRepository
from threadline.storage.tables import Assistant, Thread
from threadline.turns import compaction
from threadline.turns.request import TurnRequest, validate


async def count_input_tokens(
    session: AsyncSession, settings: Settings, models: ModelRegistry, request: TurnRequest
) -> int:
    if request.inputs:  # a conversation alone can be counted too
        validate(request, models)
    elif request.thread_id is not None:
        thread_service.validate_thread_id(request.thread_id, param="thread")
    org = request.organization_id
    thread, segments = await _conversation(session, request)
    assistant = await _assistant(session, thread)
    provider, info = models.resolve(request.model or (assistant.model if assistant else None))
    tokenizer = provider.tokenizer(info.name)
    pinned = [
        PromptMessage("system", text, message_token_count(tokenizer, "system", text))
        for text in (assistant.instructions if assistant else None, request.instructions)
        if text
    ]
    inputs = [
        PromptMessage(
            m.role,
            m.content,
            item_token_count(tokenizer, m.role, seen_text(m.type, m.content), m.name),
            type=m.type,
            call_id=m.call_id,
            name=m.name,
        )
        for m in await summaries.resolve_references(MessageRepository(session), org, request.inputs, "inputs")
    ]
    tool_tokens = tokenizer.count(json.dumps([t.as_response_tool() for t in request.tools])) if request.tools else 0
    plan, _, _ = await compaction.plan(
        session,
        org,
        segments=segments,
        tokenizer=tokenizer,
        tokenizer_name=tokenizer.name,
        mode=request.context_mode or settings.default_context_mode,
        window=info.context_window,
        max_output_tokens=request.max_output_tokens or settings.default_max_output_tokens,
        pinned=pinned,
        inputs=inputs,
        full_limit=settings.max_messages_per_thread,
        priming_tokens=info.request_overhead_tokens + tool_tokens,
    )
    # Counted, not saved: the counts a turn would store are left for the turn.
    await session.rollback()
    return plan.report.input_tokens


async def _conversation(session: AsyncSession, request: TurnRequest) -> tuple[Thread | None, list[Segment]]:
    org = request.organization_id
    repo = ThreadRepository(session)
    if request.thread_id is not None:
        thread = await repo.get(org, request.thread_id)
        if thread is None:
            raise ThreadNotFound(request.thread_id, param="thread")
        return thread, await conversation_path(session, thread)
    if request.previous_response_id is None:
        return None, []
    previous = await ResponseRepository(session).get(org, request.previous_response_id)
    if previous is None:
        raise NotFound(
            f"No response found with id '{request.previous_response_id}'.",
            code="previous_response_not_found",
            param="previous_response_id",
        )
    if previous.status != "completed" or previous.thread_id is None or previous.output_seq is None:
        raise InvalidRequest(
            f"Response '{previous.id}' did not complete ({previous.status}); only completed responses can be "
            "continued.",
            code="previous_response_not_completed",
            param="previous_response_id",
        )
    thread = await repo.get(org, previous.thread_id)
    if thread is None:
        raise NotFound(
            f"Response '{previous.id}' belongs to a conversation that was deleted.",
            code="previous_response_not_found",
            param="previous_response_id",
        )
    segments = await conversation_path(session, thread)
    segments[0] = dataclasses.replace(segments[0], last_seq=previous.output_seq)
    return thread, segments


async def _assistant(session: AsyncSession, thread: Thread | None) -> Assistant | None:
    if thread is None or thread.assistant_id is None:
        return None
    return await AssistantRepository(session).get(thread.organization_id, thread.assistant_id)
