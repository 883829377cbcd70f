"""POST /v1/model/response: one model turn on a thread, in three steps (DESIGN.md §2).

1. `start_turn` — a short transaction: validate, resolve or create the thread (for `previousResponseId`: the
   chain to append to, or a new chain forked from the previous response — see `_lease_chain`), take its lease
   (waiting while another turn holds it), read the history the turn can use, record the response as
   `in_progress`.
2. `run_turn` (services/turns.py) — the model call, with no session open; a heartbeat renews the lease for long turns.
3. a short transaction: save the inputs and the output together, update the thread, complete the response and
   release the lease. On any failure (upstream error, client gone, bug) the response is marked failed and the
   lease released instead: the thread is left exactly as before the turn. A process killed mid-turn saved
   nothing either, and its lease expires: from then on every read sees the thread inactive and the response
   failed (`domain/leases.py`), the next turn takes the thread over, and start-up or the periodic pass of any
   server settles the rows (`services/recovery.py`).

The response id doubles as the lease owner, so a takeover knows which response was interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import anyio
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline import observability
from threadline.config import Settings
from threadline.domain import leases
from threadline.domain import threads as rules
from threadline.domain.clock import utcnow
from threadline.domain.context import ContextMode, PromptMessage
from threadline.domain.messages import (
    ChatMessage,
    ItemReference,
    check_pairing,
    has_images,
    parts_of,
    validate_content,
    validate_role,
)
from threadline.domain.tokens import item_token_count, message_token_count
from threadline.errors import (
    AlreadyExists,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    ThreadBusy,
    ThreadFull,
    ThreadNotFound,
    ValidationFailed,
)
from threadline.ids import new_id, sibling_id
from threadline.providers.base import FunctionTool, GenerationParams, ModelInfo, ToolChoiceFunction
from threadline.providers.registry import ModelRegistry
from threadline.services import rate_limits, recovery, waiting_runs
from threadline.services import threads as thread_service
from threadline.services.auth import Principal
from threadline.services.turn_context import (
    MAX_CHAIN_SEGMENTS,
    conversation_path,
    known_calls,
    pending_calls,
    plan_context,
)
from threadline.services.turns import Turn, TurnDone, TurnObserver, run_turn
from threadline.storage.repositories.assistants import AssistantRepository
from threadline.storage.repositories.messages import MessageRepository
from threadline.storage.repositories.responses import ResponseRepository
from threadline.storage.repositories.threads import ThreadRepository
from threadline.storage.tables import Assistant, Response, Thread


@dataclass(frozen=True)
class RunOptions:
    """What makes a turn an Assistants v2 run (api/routes/openai_runs.py): the assistant is named per run rather
    than taken from the thread, the turn may have no inputs (it answers the thread as it stands), and the run's
    own fields are kept on the response's request record under "run"."""

    assistant_id: str
    # Replaces the assistant's instructions when not None; `additional_instructions` is appended to either.
    instructions: str | None = None
    additional_instructions: str | None = None
    # At most this many messages in the prompt besides the instructions (OpenAI `truncation_strategy`).
    last_messages: int | None = None
    # Metadata of each input (the run's `additional_messages`), saved with them.
    input_metadata: Sequence[Mapping[str, Any]] = ()
    record: Mapping[str, Any] = field(default_factory=dict)
    # The run's own function tools; None: the assistant's (services/runs.py resolves them before the turn).
    tools: tuple[FunctionTool, ...] | None = None


@dataclass(frozen=True)
class ResponseRequest:
    """A validated request for one turn (the wire schema's fields, snake_case)."""

    organization_id: str
    # `ItemReference`s are resolved to the items they name in step 1.
    inputs: Sequence[ChatMessage | ItemReference]
    thread_id: str | None = None
    thread_metadata: dict[str, Any] | None = None
    store: bool = True
    thread_state: str | None = None
    previous_response_id: str | None = None
    model: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    context_mode: ContextMode | None = None
    run: RunOptions | None = None
    # A system message for this turn only (OpenAI `instructions`): always in the context, like an assistant's
    # instructions, but never saved to the thread, so a later turn does not see it.
    instructions: str | None = None
    # True: `thread_id` must name an existing thread (OpenAI `conversation`) instead of creating one.
    thread_must_exist: bool = False
    # Caller fields kept as-is on the response's request record (the OpenAI API echoes `metadata`, …).
    record: dict[str, Any] = field(default_factory=dict)
    # Function tools the model may call, and how (DESIGN.md §6). A model without the `tools` capability refuses.
    tools: tuple[FunctionTool, ...] = ()
    tool_choice: str | ToolChoiceFunction | None = None
    parallel_tool_calls: bool | None = None
    # At most this many function calls are kept of one answer (the rest are dropped, never half-saved).
    max_tool_calls: int | None = None
    # The Assistants run waiting for tool outputs that this turn continues (services/waiting_runs.py): the turn
    # runs under the run's own id, and its inputs are the run's calls and their outputs.
    resume_run: str | None = None


def validate_request(request: ResponseRequest, models: ModelRegistry) -> None:
    """Checks that need no database: done before waiting for a busy thread."""
    if request.previous_response_id is not None and request.thread_id is not None:
        raise InvalidRequest(
            "previousResponseId continues the previous response's own conversation: it cannot be combined with thread.",
            code="thread_with_previous_response",
            param="previous_response_id",
        )
    if not request.inputs and request.run is None:
        raise ValidationFailed("inputs must hold at least one message.", code="empty_inputs", param="inputs")
    for index, message in enumerate(request.inputs):
        if isinstance(message, ItemReference):
            continue
        if message.type == "message":
            validate_role(message.role, param=f"inputs.{index}.role")
        validate_content(message.content, param=f"inputs.{index}.texts")
    if request.instructions is not None:
        validate_content(request.instructions, param="instructions")
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


@dataclass(frozen=True)
class _Lease:
    """The lease this attempt wants: the response id doubles as the owner."""

    owner: str
    now: datetime
    expires_at: datetime
    settings: Settings


async def start_turn(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    models: ModelRegistry,
    principal: Principal,
    request: ResponseRequest,
    observer: TurnObserver | None = None,
) -> Turn:
    """Step 1. Waits (bounded by `thread_busy_timeout_seconds`) while another turn holds the thread.

    `observer` hears about the turn once it is saved (auto-naming). The credential's concurrent-turn slot is taken
    first (429 when none is free) and travels with the turn, which gives it back; a refusal here gives it back."""
    validate_request(request, models)
    watch = observability.current()
    if watch.draining:
        raise ServiceUnavailable("This server is shutting down and starts no new turns; retry the request.")
    slot = await rate_limits.acquire_turn_slot(maker, settings, principal)
    try:
        turn = await _start_turn(maker, settings, models, principal, request, observer)
    except BaseException:
        if slot is not None:
            with anyio.CancelScope(shield=True):
                await rate_limits.release_turn_slot(maker, slot)
        raise
    turn.slot = slot
    return turn


async def _start_turn(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    models: ModelRegistry,
    principal: Principal,
    request: ResponseRequest,
    observer: TurnObserver | None,
) -> Turn:
    watch = observability.current()
    started = time.monotonic()
    deadline = started + settings.thread_busy_timeout_seconds
    pause = 0.01
    waited = False
    with contextlib.ExitStack() as waiting:
        while True:
            async with maker() as session:
                try:
                    turn = await _try_start(session, settings, models, principal, request)
                except (IntegrityError, AlreadyExists):
                    # Two requests created the same new thread id at once; the loser retries and finds it.
                    turn = None
                if turn is not None:
                    await session.commit()
                    if waited:
                        watch.busy_wait(time.monotonic() - started)
                    if observer is not None:
                        turn.after_save = functools.partial(observer.turn_saved, principal)
                    return turn
                await session.rollback()
            if not waited:
                waited = True
                waiting.enter_context(watch.busy_waiting())
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                watch.busy_refused()
                raise ThreadBusy(
                    "Another response is being generated on this thread; retry when it has finished.", param="thread"
                )
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.2)


async def _lease_thread(
    session: AsyncSession, principal: Principal, request: ResponseRequest, lease: _Lease
) -> Thread | None:
    """Find or create the turn's thread and take its lease; None while another live turn holds it.

    Fast path (an existing, idle thread): one UPDATE … RETURNING. Otherwise read the thread to tell apart a
    missing thread (create it), a busy one (wait) and one whose holder died (take the lease over).
    """
    if request.previous_response_id is not None:
        return await _lease_chain(session, principal, request, lease)
    org = request.organization_id
    repo = ThreadRepository(session)
    thread_id = request.thread_id
    if thread_id is not None:
        leased = await repo.acquire_free_lease(org, thread_id, lease.owner, lease.expires_at)
        if leased is not None:
            return leased
        found = await repo.get(org, thread_id)
        if found is not None:
            return await _take_over(session, found, lease)
        if await repo.exists(org, thread_id):
            # Deleted (its id stays taken) — or created by a concurrent request a moment ago: retry to tell.
            if await repo.get(org, thread_id) is None:
                raise ThreadNotFound(thread_id, param="thread")
            return None
    if thread_id is not None and request.thread_must_exist:
        raise ThreadNotFound(thread_id, param="thread")
    creator = thread_service.create_thread if request.store else thread_service.create_hidden_thread
    created = await creator(session, principal, org, thread_id=thread_id, metadata=request.thread_metadata)
    leased = await repo.acquire_free_lease(org, created.id, lease.owner, lease.expires_at)
    assert leased is not None, "a thread created in this transaction is free"
    return leased


async def _lease_chain(session: AsyncSession, principal: Principal, request: ResponseRequest, lease: _Lease) -> Thread:
    """`previousResponseId = R`: the turn's context is R's conversation up to and including R's output.

    When R is the latest turn of an idle chain thread, the turn is appended to that chain. Otherwise (R in a plain
    or `store=false` thread, an earlier turn of a chain, a chain busy with another continuation of R) a new hidden
    chain thread forks from R: it records (R's thread, R's output seq) as its parent and copies nothing. So a
    branch never waits for another, and a linear chain stays one thread.
    """
    org = request.organization_id
    assert request.previous_response_id is not None
    previous = await _chain_start(session, org, request.previous_response_id)
    output_seq = _check_chainable(previous, lease.settings, lease.now)
    repo = ThreadRepository(session)
    parent = await repo.get(org, previous.thread_id or "")
    if parent is None:
        # The conversation R belongs to was deleted.
        raise NotFound(
            f"Response '{previous.id}' belongs to a conversation that was deleted.",
            code="previous_response_not_found",
            param="previous_response_id",
        )
    if parent.kind == "chain" and parent.state == "open" and output_seq == parent.next_seq - 1:
        # The lease is taken only while nothing was appended since R (the condition is part of the UPDATE).
        leased = await repo.acquire_free_lease(org, parent.id, lease.owner, lease.expires_at, next_seq=output_seq + 1)
        if leased is not None:
            return leased
    chain = await thread_service.create_chain_thread(session, principal, parent, output_seq)
    leased = await repo.acquire_free_lease(org, chain.id, lease.owner, lease.expires_at)
    assert leased is not None, "a thread created in this transaction is free"
    return leased


async def _take_over(session: AsyncSession, thread: Thread, lease: _Lease) -> Thread | None:
    """Take the lease of a thread whose holder stopped renewing it (a crashed server); None if it is alive."""
    holder = thread.lease_owner
    if leases.thread_status(thread.status, thread.lease_expires_at, lease.now) == thread.status:
        return None  # busy (a live lease), or freed a moment ago: the next attempt's fast path takes it
    repo = ThreadRepository(session)
    org = thread.organization_id
    if not await repo.take_over_lease(org, thread.id, holder, lease.owner, lease.now, lease.expires_at):
        return None
    if holder is not None:
        await ResponseRepository(session).fail_if_in_progress(org, holder, leases.interrupted_error(), lease.now)
    await session.refresh(thread)
    return thread


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
    items = await _resolve_references(session, org, request.inputs)
    now = utcnow()
    owner = request.resume_run or new_id("resp")
    lease = _Lease(owner, now, now + timedelta(seconds=settings.thread_lease_seconds), settings)
    with observability.current().span("turn.lease"):
        thread = await _lease_thread(session, principal, request, lease)
    if thread is None:
        return None
    rules.ensure_accepts_messages(thread.id, thread.state)
    if request.resume_run is None:
        # A run waiting for tool outputs holds no lease: its thread refuses other turns by this check.
        await waiting_runs.ensure_no_active_run(session, org, thread.id, new_run=request.run is not None)
    if request.thread_state is not None:
        rules.check_transition(thread.id, thread.state, request.thread_state)
    segments = await conversation_path(session, thread)
    if len(segments) > MAX_CHAIN_SEGMENTS:
        raise InvalidRequest(
            f"The conversation of response '{request.previous_response_id}' already branches across "
            f"{MAX_CHAIN_SEGMENTS} threads; continue it in a thread instead.",
            code="previous_response_chain_too_deep",
            param="previous_response_id",
        )
    if thread.message_count + len(items) + 1 > settings.max_messages_per_thread:
        raise ThreadFull(
            f"Thread '{thread.id}' holds {thread.message_count} messages; the limit is "
            f"{settings.max_messages_per_thread} per thread.",
            param="thread",
        )

    assistant = await _run_assistant(session, org, request.run) if request.run else await _assistant_of(session, thread)
    provider, info = models.resolve(request.model or (assistant.model if assistant else None))
    _check_capabilities(request, info)
    tokenizer = provider.tokenizer(info.name)
    mode: ContextMode = request.context_mode or _mode(assistant) or settings.default_context_mode
    max_output = request.max_output_tokens or (assistant.max_output_tokens if assistant else None)
    max_output = max_output or settings.default_max_output_tokens
    temperature = request.temperature
    if temperature is None and assistant is not None:
        temperature = assistant.temperature

    pinned = []
    instructions = _instructions(assistant, request.run)
    if instructions:
        text = instructions
        pinned.append(PromptMessage("system", text, message_token_count(tokenizer, "system", text)))
    if request.instructions:
        text = request.instructions
        pinned.append(PromptMessage("system", text, message_token_count(tokenizer, "system", text)))
    inputs = [
        PromptMessage(
            m.role,
            m.content,
            item_token_count(tokenizer, m.role, m.content, m.name, m.parts),
            type=m.type,
            call_id=m.call_id,
            name=m.name,
            parts=m.parts,
        )
        for m in items
    ]
    # Tool definitions are sent with every request: they count against the window like the priming does.
    tool_tokens = tokenizer.count(json.dumps([t.as_response_tool() for t in request.tools])) if request.tools else 0
    with observability.current().span("turn.context", mode=mode):
        plan, pending = await plan_context(
            session,
            thread,
            segments=segments,
            tokenizer=tokenizer,
            tokenizer_name=tokenizer.name,
            mode=mode,
            window=info.context_window,
            max_output_tokens=max_output,
            pinned=pinned,
            inputs=inputs,
            full_limit=settings.max_messages_per_thread,
            priming_tokens=info.request_overhead_tokens + tool_tokens,
            last_messages=request.run.last_messages if request.run else None,
        )
    _check_vision(plan.messages, info)
    # Pairing (DESIGN.md §6): outputs need their calls, a new user turn needs every call answered. The history
    # the plan read usually shows the calls still waiting; otherwise they are looked up.
    if pending is None:
        pending = await pending_calls(session, org, segments)
    check_pairing(pending, items, await known_calls(session, org, segments, pending, items))
    # Known before the answer exists (streams and runs announce it) and derived from the response id, so the
    # OpenAI output item, the conversation item and the Freddy message share one id.
    output_message_id = sibling_id("msg", owner) if request.resume_run is None else new_id("msg")
    context = {**plan.report.as_dict(), "tokenizer": tokenizer.name}
    record = _request_record(request, items, mode, max_output, temperature)
    record["output_message_id"] = output_message_id
    if request.run is not None:
        run = request.run
        record["run"] = {**run.record, "assistant_id": run.assistant_id, "instructions": instructions or ""}
    if request.resume_run is not None:
        response = await waiting_runs.resume(session, org, owner, items, context, output_message_id, now)
    else:
        response = await ResponseRepository(session).add(
            Response(
                organization_id=org,
                id=owner,
                thread_id=thread.id,
                previous_response_id=request.previous_response_id,
                user_id=principal.user_id,
                model=info.name,
                status="in_progress",
                request=record,
                context=context,
                created_at=now,
            )
        )
    return Turn(
        response=response,
        organization_id=org,
        thread_id=thread.id,
        user_id=principal.user_id,
        assistant_id=request.run.assistant_id if request.run else thread.assistant_id,
        provider=provider,
        info=info,
        tokenizer=tokenizer,
        prompt=[
            ChatMessage(m.role, m.content, m.type, m.call_id, m.name, m.parts)  # type: ignore[arg-type]
            for m in plan.messages
            # Reasoning goes back only to a model that takes it, as OpenAI treats it (docs/items.md).
            if m.type != "reasoning" or info.reasoning
        ],
        inputs=inputs,
        params=GenerationParams(
            max_output_tokens=max_output,
            temperature=temperature,
            tools=request.tools,
            tool_choice=request.tool_choice,
            parallel_tool_calls=request.parallel_tool_calls,
        ),
        max_tool_calls=_call_cap(request),
        thread_state=request.thread_state,
        output_message_id=output_message_id,
        input_metadata=[dict(m) for m in request.run.input_metadata] if request.run else [],
        defer_calls=request.run is not None,
    )


async def _resolve_references(
    session: AsyncSession, organization_id: str, inputs: Sequence[ChatMessage | ItemReference]
) -> list[ChatMessage]:
    """Inputs with every `item_reference` replaced by the stored item it names (any live item of the
    organization); a reference to nothing is a 404."""
    resolved: list[ChatMessage] = []
    repo = MessageRepository(session)
    for index, item in enumerate(inputs):
        if not isinstance(item, ItemReference):
            resolved.append(item)
            continue
        found = await repo.get_any(organization_id, item.id)
        if found is None:
            raise NotFound(f"Item with id '{item.id}' not found.", code="item_not_found", param=f"inputs.{index}.id")
        name = (found.payload or {}).get("name")
        resolved.append(
            ChatMessage(
                found.role,  # type: ignore[arg-type]
                found.content,
                found.type,  # type: ignore[arg-type]
                found.call_id,
                name,
                parts_of(found.payload),
            )
        )
    return resolved


def _check_capabilities(request: ResponseRequest, info: ModelInfo) -> None:
    if request.tools and not info.tools:
        raise InvalidRequest(
            f"The model '{info.name}' does not support tools (function calling): use a model whose configuration "
            "allows tools, or send the request without 'tools'.",
            code="tools_not_supported",
            param="tools",
        )


def _check_vision(prompt: Sequence[PromptMessage], info: ModelInfo) -> None:
    """Images in what the model would see (this turn's inputs or the history it gets) need the `vision`
    capability."""
    if not info.vision and any(has_images(m.parts) for m in prompt):
        raise InvalidRequest(
            f"The model '{info.name}' does not accept images: use a model whose configuration has vision, or "
            "send the request without image parts.",
            code="vision_not_supported",
            param="input",
        )


def _call_cap(request: ResponseRequest) -> int | None:
    """How many calls of one answer are kept: `max_tool_calls`, and one when parallel calls are off."""
    caps = [c for c in (request.max_tool_calls, 1 if request.parallel_tool_calls is False else None) if c is not None]
    return min(caps) if caps else None


def _check_chainable(previous: Response, settings: Settings, now: datetime) -> int:
    """Raise unless `previous` can be continued; returns the seq of its output (where its conversation ends)."""
    if now - previous.created_at > timedelta(hours=settings.response_chain_hours):
        raise InvalidRequest(
            f"Response '{previous.id}' is older than {settings.response_chain_hours:g} hours and can no longer be "
            "continued; start a thread instead.",
            code="previous_response_expired",
            param="previous_response_id",
        )
    if previous.status != "completed" or previous.thread_id is None or previous.output_seq is None:
        raise InvalidRequest(
            f"Response '{previous.id}' did not complete ({previous.status}); only completed responses can be "
            "continued.",
            code="previous_response_not_completed",
            param="previous_response_id",
        )
    return previous.output_seq


async def _assistant_of(session: AsyncSession, thread: Thread) -> Assistant | None:
    if thread.assistant_id is None:
        return None
    return await AssistantRepository(session).get(thread.organization_id, thread.assistant_id)


async def _run_assistant(session: AsyncSession, organization_id: str, run: RunOptions) -> Assistant:
    found = await AssistantRepository(session).get(organization_id, run.assistant_id)
    if found is None:
        raise NotFound(
            f"No assistant found with id '{run.assistant_id}'.", code="assistant_not_found", param="assistant_id"
        )
    return found


def _instructions(assistant: Assistant | None, run: RunOptions | None) -> str | None:
    """The turn's system prompt: the assistant's instructions, or a run's replacement, plus a run's addition."""
    base = assistant.instructions if assistant is not None else None
    if run is None:
        return base
    if run.instructions is not None:
        base = run.instructions
    parts = [text for text in (base, run.additional_instructions) if text]
    return "\n\n".join(parts) or None


def _mode(assistant: Assistant | None) -> ContextMode | None:
    value = assistant.thread_context_mode if assistant is not None else None
    return value if value in ("recent", "smart", "full") else None  # type: ignore[return-value]


def _request_record(
    request: ResponseRequest, items: Sequence[ChatMessage], mode: str, max_output: int, temperature: float | None
) -> dict[str, Any]:
    """What the turn was asked, kept on the response (the inputs too: a failed turn saves none to the thread)."""
    return {
        **request.record,
        "inputs": [_input_record(m) for m in items],
        "instructions": request.instructions,
        "store": request.store,
        "thread_state": request.thread_state,
        "thread_context_mode": mode,
        "max_output_tokens": max_output,
        "temperature": temperature,
    }


def _input_record(m: ChatMessage) -> dict[str, Any]:
    if m.type == "message":
        record: dict[str, Any] = {"role": m.role, "content": m.content}
        return {**record, "parts": list(m.parts)} if m.parts else record
    record = {"type": m.type, "call_id": m.call_id, "content": m.content}
    return {**record, "name": m.name} if m.name is not None else record


async def create_response(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    models: ModelRegistry,
    principal: Principal,
    request: ResponseRequest,
    observer: TurnObserver | None = None,
) -> Response:
    """A whole turn without streaming. An upstream failure is recorded, then raised (502/504)."""
    turn = await start_turn(maker, settings, models, principal, request, observer)
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
    if found.status == "in_progress":
        # A turn whose server died cannot finish once its lease is gone: say so now (and free its thread)
        # instead of leaving it in progress until the next turn on the thread takes over.
        thread = None
        if found.thread_id is not None:
            thread = await ThreadRepository(session).get(organization_id, found.thread_id, include_deleted=True)
        await recovery.settle_response(session, found, thread)
    return found
