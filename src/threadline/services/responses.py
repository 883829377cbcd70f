"""POST /v1/model/response: one model turn on a thread, in three steps (DESIGN.md §2).

1. `start_turn` — a short transaction: validate, resolve or create the thread, take its lease (waiting while
   another turn holds it), read the history the turn can use, record the response as `in_progress`.
2. `run_turn` (services/turns.py) — the model call, with no session open; a heartbeat renews the lease for long turns.
3. a short transaction: save the inputs and the output together, update the thread, complete the response and
   release the lease. On any failure (upstream error, client gone, bug) the response is marked failed and the
   lease released instead: the thread is left exactly as before the turn. A process killed mid-turn saved
   nothing either, and its lease expires, so the next turn takes the thread over.

The response id doubles as the lease owner, so a takeover knows which response was interrupted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline.config import Settings
from threadline.domain import threads as rules
from threadline.domain.clock import utcnow
from threadline.domain.context import ContextMode, PromptMessage
from threadline.domain.messages import ChatMessage, validate_content, validate_role
from threadline.domain.tokens import message_token_count
from threadline.errors import (
    AlreadyExists,
    InvalidRequest,
    NotFound,
    ThreadBusy,
    ThreadFull,
    ThreadNotFound,
    ValidationFailed,
)
from threadline.ids import new_id
from threadline.providers.base import GenerationParams
from threadline.providers.registry import ModelRegistry
from threadline.services import threads as thread_service
from threadline.services.auth import Principal
from threadline.services.turn_context import plan_context
from threadline.services.turns import Turn, TurnDone, run_turn
from threadline.storage.repositories.assistants import AssistantRepository
from threadline.storage.repositories.responses import ResponseRepository
from threadline.storage.repositories.threads import ThreadRepository
from threadline.storage.tables import Assistant, Response, Thread


@dataclass(frozen=True)
class ResponseRequest:
    """A validated request for one turn (the wire schema's fields, snake_case)."""

    organization_id: str
    inputs: Sequence[ChatMessage]
    thread_id: str | None = None
    thread_metadata: dict[str, Any] | None = None
    store: bool = True
    thread_state: str | None = None
    previous_response_id: str | None = None
    model: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    context_mode: ContextMode | None = None


def validate_request(request: ResponseRequest, models: ModelRegistry) -> None:
    """Checks that need no database: done before waiting for a busy thread."""
    if request.previous_response_id is not None and request.thread_id is not None:
        raise InvalidRequest(
            "previousResponseId continues the previous response's own conversation: it cannot be combined with thread.",
            code="thread_with_previous_response",
            param="previous_response_id",
        )
    if not request.inputs:
        raise ValidationFailed("inputs must hold at least one message.", code="empty_inputs", param="inputs")
    for index, message in enumerate(request.inputs):
        validate_role(message.role, param=f"inputs.{index}.role")
        validate_content(message.content, param=f"inputs.{index}.texts")
    if request.thread_state is not None and request.thread_state not in rules.THREAD_STATES:
        raise ValidationFailed(
            f"Invalid threadState '{request.thread_state}': use one of open, locked, archived.",
            code="invalid_state",
            param="thread_state",
        )
    if request.thread_id is not None:
        thread_service.validate_thread_id(request.thread_id, param="thread")
    if request.model is not None:
        models.resolve(request.model)


async def start_turn(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    models: ModelRegistry,
    principal: Principal,
    request: ResponseRequest,
) -> Turn:
    """Step 1. Waits (bounded by `thread_busy_timeout_seconds`) while another turn holds the thread."""
    validate_request(request, models)
    deadline = time.monotonic() + settings.thread_busy_timeout_seconds
    pause = 0.01
    while True:
        async with maker() as session:
            try:
                turn = await _try_start(session, settings, models, principal, request)
            except (IntegrityError, AlreadyExists):
                # Two requests created the same new thread id at once; the loser retries and finds it.
                turn = None
            if turn is not None:
                await session.commit()
                return turn
            await session.rollback()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ThreadBusy(
                "Another response is being generated on this thread; retry when it has finished.", param="thread"
            )
        await asyncio.sleep(min(pause, remaining))
        pause = min(pause * 2, 0.2)


async def _resolve_thread(
    session: AsyncSession, principal: Principal, request: ResponseRequest
) -> tuple[Thread, Response | None]:
    org = request.organization_id
    if request.previous_response_id is not None:
        previous = await _chain_start(session, org, request.previous_response_id)
        assert previous.thread_id is not None
        return await thread_service.get_thread(session, org, previous.thread_id), previous
    if request.thread_id is not None:
        repo = ThreadRepository(session)
        found = await repo.get(org, request.thread_id)
        if found is None and await repo.exists(org, request.thread_id):
            # Either another request created it a moment ago, or it was deleted (its id stays taken).
            found = await repo.get(org, request.thread_id)
            if found is None:
                raise ThreadNotFound(request.thread_id, param="thread")
        if found is not None:
            return found, None
    if request.store:
        created = await thread_service.create_thread(
            session, principal, org, thread_id=request.thread_id, metadata=request.thread_metadata
        )
    else:
        created = await thread_service.create_hidden_thread(
            session, principal, org, thread_id=request.thread_id, metadata=request.thread_metadata
        )
    return created, None


async def _chain_start(session: AsyncSession, org: str, response_id: str) -> Response:
    previous = await ResponseRepository(session).get(org, response_id)
    if previous is None:
        raise NotFound(
            f"No response found with id '{response_id}'.",
            code="previous_response_not_found",
            param="previous_response_id",
        )
    return previous


async def _try_start(
    session: AsyncSession,
    settings: Settings,
    models: ModelRegistry,
    principal: Principal,
    request: ResponseRequest,
) -> Turn | None:
    org = request.organization_id
    now = utcnow()
    thread, previous = await _resolve_thread(session, principal, request)
    if previous is not None:
        _check_chainable(previous, settings, now)
    rules.ensure_accepts_messages(thread.id, thread.state)

    threads = ThreadRepository(session)
    interrupted = _expired_owner(thread, now)
    owner = new_id("resp")
    expires_at = now + timedelta(seconds=settings.thread_lease_seconds)
    if not await threads.try_acquire_lease(org, thread.id, owner, now, expires_at):
        return None
    # Re-read under the lease: a turn that finished between our first read and the lease changed the counts.
    await session.refresh(thread)
    if interrupted is not None:
        await ResponseRepository(session).fail_if_in_progress(
            org,
            interrupted,
            {"code": "turn_interrupted", "message": "The server handling this turn stopped before it finished."},
            now,
        )
    rules.ensure_accepts_messages(thread.id, thread.state)
    if request.thread_state is not None:
        rules.check_transition(thread.id, thread.state, request.thread_state)
    if previous is not None and previous.output_seq != thread.next_seq - 1:
        raise InvalidRequest(
            f"Response '{previous.id}' is no longer the latest turn of its conversation; continue from the latest "
            "response instead.",
            code="previous_response_superseded",
            param="previous_response_id",
        )
    if thread.message_count + len(request.inputs) + 1 > settings.max_messages_per_thread:
        raise ThreadFull(
            f"Thread '{thread.id}' holds {thread.message_count} messages; the limit is "
            f"{settings.max_messages_per_thread} per thread.",
            param="thread",
        )

    assistant = await _assistant_of(session, thread)
    provider, info = models.resolve(request.model or (assistant.model if assistant else None))
    tokenizer = provider.tokenizer(info.name)
    mode: ContextMode = request.context_mode or _mode(assistant) or settings.default_context_mode
    max_output = request.max_output_tokens or (assistant.max_output_tokens if assistant else None)
    max_output = max_output or settings.default_max_output_tokens
    temperature = request.temperature
    if temperature is None and assistant is not None:
        temperature = assistant.temperature

    pinned = []
    if assistant is not None and assistant.instructions:
        text = assistant.instructions
        pinned.append(PromptMessage("system", text, message_token_count(tokenizer, "system", text)))
    inputs = [
        PromptMessage(m.role, m.content, message_token_count(tokenizer, m.role, m.content)) for m in request.inputs
    ]
    plan = await plan_context(
        session,
        thread,
        tokenizer=tokenizer,
        tokenizer_name=tokenizer.name,
        mode=mode,
        window=info.context_window,
        max_output_tokens=max_output,
        pinned=pinned,
        inputs=inputs,
        full_limit=settings.max_messages_per_thread,
    )
    response = await ResponseRepository(session).add(
        Response(
            organization_id=org,
            id=owner,
            thread_id=thread.id,
            previous_response_id=request.previous_response_id,
            user_id=principal.user_id,
            model=info.name,
            status="in_progress",
            request=_request_record(request, mode, max_output, temperature),
            context={**plan.report.as_dict(), "tokenizer": tokenizer.name},
            created_at=now,
        )
    )
    return Turn(
        response=response,
        organization_id=org,
        thread_id=thread.id,
        user_id=principal.user_id,
        assistant_id=thread.assistant_id,
        provider=provider,
        info=info,
        tokenizer=tokenizer,
        prompt=[ChatMessage(role=m.role, content=m.content) for m in plan.messages],  # type: ignore[arg-type]
        inputs=inputs,
        params=GenerationParams(max_output_tokens=max_output, temperature=temperature),
        thread_state=request.thread_state,
    )


def _check_chainable(previous: Response, settings: Settings, now: Any) -> None:
    if now - previous.created_at > timedelta(hours=settings.response_chain_hours):
        raise InvalidRequest(
            f"Response '{previous.id}' is older than {settings.response_chain_hours:g} hours and can no longer be "
            "continued; start a thread instead.",
            code="previous_response_expired",
            param="previous_response_id",
        )
    if previous.status != "completed" or previous.thread_id is None:
        raise InvalidRequest(
            f"Response '{previous.id}' did not complete ({previous.status}); only completed responses can be "
            "continued.",
            code="previous_response_not_completed",
            param="previous_response_id",
        )


def _expired_owner(thread: Thread, now: Any) -> str | None:
    expired = thread.lease_expires_at is not None and thread.lease_expires_at < now
    return thread.lease_owner if thread.status == "streaming" and expired else None


async def _assistant_of(session: AsyncSession, thread: Thread) -> Assistant | None:
    if thread.assistant_id is None:
        return None
    return await AssistantRepository(session).get(thread.organization_id, thread.assistant_id)


def _mode(assistant: Assistant | None) -> ContextMode | None:
    value = assistant.thread_context_mode if assistant is not None else None
    return value if value in ("recent", "smart", "full") else None  # type: ignore[return-value]


def _request_record(request: ResponseRequest, mode: str, max_output: int, temperature: float | None) -> dict[str, Any]:
    """What the turn was asked, kept on the response (the inputs too: a failed turn saves none to the thread)."""
    return {
        "inputs": [{"role": m.role, "content": m.content} for m in request.inputs],
        "store": request.store,
        "thread_state": request.thread_state,
        "thread_context_mode": mode,
        "max_output_tokens": max_output,
        "temperature": temperature,
    }


async def create_response(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    models: ModelRegistry,
    principal: Principal,
    request: ResponseRequest,
) -> Response:
    """A whole turn without streaming. An upstream failure is recorded, then raised (502/504)."""
    turn = await start_turn(maker, settings, models, principal, request)
    async for event in run_turn(maker, settings, turn):
        if isinstance(event, TurnDone):
            if event.error is not None:
                raise event.error
            return event.response
    raise AssertionError("run_turn ended without TurnDone")


async def get_response(session: AsyncSession, organization_id: str, response_id: str) -> Response:
    found = await ResponseRepository(session).get(organization_id, response_id)
    if found is None:
        raise NotFound(f"No response found with id '{response_id}'.", code="response_not_found", param="response_id")
    return found
