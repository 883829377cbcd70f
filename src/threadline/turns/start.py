"""The start of a turn, in one short transaction: validate, take the thread's lease (turns/lease.py, waiting
while another turn holds it), read the history the turn can use (turns/context.py), check the pairing of
function calls, and record the turn `in_progress`. Nothing is saved to the thread yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline import observability
from threadline.config import Settings
from threadline.domain import threads as rules
from threadline.domain.clock import utcnow
from threadline.domain.compaction import seen_text
from threadline.domain.context import CONTEXT_MODES, ContextMode, ContextPlan, HistoryMessage, PromptMessage
from threadline.domain.messages import ChatMessage, ItemReference, check_pairing, has_images, parts_of
from threadline.domain.tokens import item_token_count, message_token_count
from threadline.domain.turns import IN_PROGRESS
from threadline.errors import (
    AlreadyExists,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    ResponseNotQueued,
    ServiceUnavailable,
    ThreadBusy,
    ThreadFull,
)
from threadline.ids import new_id, sibling_id
from threadline.providers.base import GenerationParams, ModelInfo, Provider, Tokenizer
from threadline.providers.registry import ModelRegistry
from threadline.providers.tokenizers import needs_loading
from threadline.services import rate_limits, waiting_runs
from threadline.services.assistants import get_assistant
from threadline.services.auth import Principal
from threadline.services.conversation import (
    MAX_CHAIN_SEGMENTS,
    Segment,
    known_calls,
    pending_calls,
)
from threadline.services.threads import get_thread
from threadline.storage.repositories.assistants import AssistantRepository
from threadline.storage.repositories.messages import MessageRepository
from threadline.storage.repositories.responses import ResponseRepository
from threadline.storage.repositories.threads import LeasedThread
from threadline.storage.tables import Assistant
from threadline.turns import compaction, sampling, waiting
from threadline.turns.context import RowSizes
from threadline.turns.lease import LeaseAttempt
from threadline.turns.record import RESPONSE_COLUMNS, request_record, row_values, stored_values
from threadline.turns.request import RunOptions, TurnRequest, validate, validate_run
from threadline.turns.turn import Turn


@dataclass(frozen=True)
class _Choices:
    """What the turn runs with once the request's, the assistant's and the server's defaults are merged."""

    assistant: Assistant | None
    provider: Provider
    info: ModelInfo
    tokenizer: Tokenizer
    mode: ContextMode
    max_output: int
    temperature: float | None
    # The assistant's (or a run's) instructions: the first system message of every prompt.
    instructions: str | None


class TurnStarter:
    def __init__(self, maker: async_sessionmaker[AsyncSession], settings: Settings, models: ModelRegistry) -> None:
        self.maker = maker
        self.settings = settings
        self.models = models
        self.row_sizes = RowSizes()

    async def start(self, principal: Principal, request: TurnRequest) -> Turn:
        """Waits (bounded by `thread_busy_timeout_seconds`) while another turn holds the thread.

        The credential's concurrent-turn slot is taken first (429 when none is free) and travels with the turn,
        which gives it back; a refusal here gives it back."""
        if request.run is not None:
            request = await self._check_run(request, request.run)
        validate(request, self.models)
        await self._load_tokenizer(request.model)
        if observability.current().draining:
            raise ServiceUnavailable("This server is shutting down and starts no new turns; retry the request.")
        slot = await rate_limits.acquire_turn_slot(self.maker, self.settings, principal)
        try:
            turn = await self._wait_for_thread(principal, request)
        except BaseException:
            if slot is not None:
                with anyio.CancelScope(shield=True):
                    await rate_limits.release_turn_slot(self.maker, slot)
            raise
        turn.slot = slot
        return turn

    async def _load_tokenizer(self, model: str | None) -> None:
        """Tokenizers load on first use (an idle server stays small): the first turn of a model loads its tables
        here, off the event loop and before any transaction. (A model named only by an assistant loads on its
        first count instead.)"""
        try:
            provider, info = self.models.resolve(model)
        except ModelNotFound:
            return  # no default model: the assistant names it (and the start says so if it does not)
        tokenizer = provider.tokenizer(info.name)
        if needs_loading(tokenizer):
            await asyncio.to_thread(tokenizer.count, "load")

    async def _check_run(self, request: TurnRequest, run: RunOptions) -> TurnRequest:
        """A run needs an existing thread (a turn would create a missing one) and an assistant of the
        organization: both are checked first, so neither waits on a busy thread. The request comes back with
        the run's tools resolved (its own, else its assistant's; docs/runs.md)."""
        assert request.thread_id is not None
        validate_run(run)
        async with self.maker() as session:
            await get_thread(session, request.organization_id, request.thread_id)
            assistant = await get_assistant(session, request.organization_id, run.assistant_id)
        if request.resume_run is not None:
            return request  # a continued run keeps the tools it started with
        return waiting.with_run_tools(request, assistant, self.settings.run_expiry_seconds)

    async def _wait_for_thread(self, principal: Principal, request: TurnRequest) -> Turn:
        """Attempt the start until the thread is free, backing off from 10 ms to 200 ms between attempts."""
        watch = observability.current()
        started = time.monotonic()
        deadline = started + self.settings.thread_busy_timeout_seconds
        pause = 0.01
        waited = False
        with contextlib.ExitStack() as waiting:
            while True:
                async with self.maker() as session:
                    try:
                        turn = await self._attempt(session, principal, request)
                    except AlreadyExists:
                        # Two requests created the same new thread id at once; the loser retries and finds it.
                        turn = None
                    if turn is not None:
                        await session.commit()
                        if waited:
                            watch.busy_wait(time.monotonic() - started)
                        return turn
                    await session.rollback()
                if not waited:
                    waited = True
                    waiting.enter_context(watch.busy_waiting())
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    watch.busy_refused()
                    raise ThreadBusy(
                        "Another response is being generated on this thread; retry when it has finished.",
                        param="thread",
                    )
                await asyncio.sleep(min(pause, remaining))
                pause = min(pause * 2, 0.2)

    async def _attempt(self, session: AsyncSession, principal: Principal, request: TurnRequest) -> Turn | None:
        """One try, in one transaction: None while another live turn holds the thread."""
        watch = observability.current()
        items = await _resolve_references(session, request.organization_id, request.inputs)
        owner = request.resume_run or request.response_id or new_id("resp")
        lease = LeaseAttempt(session, self.settings, principal, request, owner, utcnow())
        with watch.span("turn.lease"):
            taken = await lease.take()
        if taken is None:
            return None
        thread, segments = taken
        self._check_thread(thread, request, items, segments)
        if request.resume_run is None and thread.run_waiting:
            # A run waiting for tool outputs holds no lease: its thread refuses other turns by this check.
            await waiting_runs.ensure_no_active_run(
                session, request.organization_id, thread.id, new_run=request.run is not None
            )
        choices = await self._choose(session, thread, request)
        pinned, inputs = _prompt_parts(choices, request, items)
        with watch.span("turn.context", mode=choices.mode):
            plan, pending, compacting = await compaction.plan(
                session,
                thread.organization_id,
                segments=segments,
                tokenizer=choices.tokenizer,
                tokenizer_name=choices.tokenizer.name,
                mode=choices.mode,
                window=choices.info.context_window,
                max_output_tokens=choices.max_output,
                pinned=pinned,
                inputs=inputs,
                full_limit=self.settings.max_messages_per_thread,
                priming_tokens=choices.info.request_overhead_tokens + _tool_tokens(choices.tokenizer, request),
                last_messages=request.run.last_messages if request.run else None,
                compacting=compaction.CompactionContext(
                    request.compaction, self.models, self.settings, choices.assistant, choices.info.name
                )
                if request.compaction
                else None,
                # A compaction item is looked up only where the lease's or the path's statement saw one.
                summarized=thread.compacted or any(s.compacted for s in segments[1:]),
                row_sizes=self.row_sizes,
            )
        # Pairing (docs/items.md): outputs need their calls, a new user turn needs every call answered. The
        # history the plan read usually shows the calls still waiting; otherwise they are looked up.
        org = request.organization_id
        _check_vision(plan.messages, choices.info)
        if pending is None:
            pending = await pending_calls(session, org, segments)
        check_pairing(pending, items, await known_calls(session, org, segments, pending, items))
        row = await self._record(session, principal, request, thread, lease.owner, lease.now, items, choices, plan)
        turn = _turn(row, thread, principal, request, choices, plan, inputs)
        turn.compaction = compacting
        if choices.assistant is not None and choices.assistant.id == thread.assistant_id:
            turn.assistant_compact_at = (choices.assistant.id, choices.assistant.compact_at)
        return turn

    def _check_thread(
        self, thread: LeasedThread, request: TurnRequest, items: Sequence[ChatMessage], segments: Sequence[Segment]
    ) -> None:
        rules.ensure_accepts_messages(thread.id, thread.state)
        if request.thread_state is not None:
            rules.check_transition(thread.id, thread.state, request.thread_state)
        if len(segments) > MAX_CHAIN_SEGMENTS:
            raise InvalidRequest(
                f"The conversation of response '{request.previous_response_id}' already branches across "
                f"{MAX_CHAIN_SEGMENTS} threads; continue it in a thread instead.",
                code="previous_response_chain_too_deep",
                param="previous_response_id",
            )
        limit = self.settings.max_messages_per_thread
        # A fork's whole history counts: what it reads from its source too (docs/threads-as-data.md).
        held = thread.message_count + thread.inherited_message_count
        if held + len(items) + 1 > limit:
            raise ThreadFull(
                f"Thread '{thread.id}' holds {held} messages; the limit is {limit} per thread.",
                param="thread",
            )

    async def _choose(self, session: AsyncSession, thread: LeasedThread, request: TurnRequest) -> _Choices:
        """The assistant (a run's, else the thread's), the model and the sampling, each from the request first."""
        settings = self.settings
        if request.run is not None:
            assistant: Assistant | None = await _run_assistant(session, request.organization_id, request.run)
        elif thread.assistant_id is not None:
            assistant = await AssistantRepository(session).get(thread.organization_id, thread.assistant_id)
        else:
            assistant = None
        provider, info = self.models.resolve(request.model or (assistant.model if assistant else None))
        if request.tools and not info.tools:
            raise InvalidRequest(
                f"The model '{info.name}' does not support tools (function calling): use a model whose "
                "configuration allows tools, or send the request without 'tools'.",
                code="tools_not_supported",
                param="tools",
            )
        sampling.check_capabilities(request, info)
        assistant_mode = assistant.thread_context_mode if assistant is not None else None
        mode: ContextMode = (
            request.context_mode
            or (assistant_mode if assistant_mode in CONTEXT_MODES else None)
            or settings.default_context_mode
        )
        max_output = request.max_output_tokens or (assistant.max_output_tokens if assistant else None)
        temperature = request.temperature
        if temperature is None and assistant is not None:
            temperature = assistant.temperature
        return _Choices(
            assistant=assistant,
            provider=provider,
            info=info,
            tokenizer=provider.tokenizer(info.name),
            mode=mode,
            max_output=max_output or settings.default_max_output_tokens,
            temperature=temperature,
            instructions=_instructions(assistant, request.run),
        )

    async def _record(
        self,
        session: AsyncSession,
        principal: Principal,
        request: TurnRequest,
        thread: LeasedThread,
        owner: str,
        now: datetime,
        items: Sequence[ChatMessage],
        choices: _Choices,
        plan: ContextPlan,
    ) -> dict[str, Any]:
        """The turn's row, `in_progress`, by column (`turns/record.py` · `row_values`). The answer's id is known
        before the answer exists (streams and runs announce it) and derived from the turn's id, so the OpenAI
        output item, the conversation item and the Freddy message share one id. A continued run (`resume_run`)
        keeps its row: it becomes `in_progress` again (turns/waiting.py)."""
        output_message_id = sibling_id("msg", owner) if request.resume_run is None else new_id("msg")
        context = {**plan.report.as_dict(), "tokenizer": choices.tokenizer.name}
        org = request.organization_id
        if request.resume_run is not None:
            return row_values(await waiting.resume(session, org, owner, items, context, output_message_id, now))
        record = request_record(
            request,
            items,
            choices.mode,
            choices.max_output,
            choices.temperature,
            output_message_id,
            choices.instructions,
            sampling.used(_params(choices, request), choices.info),
        )
        repo = ResponseRepository(session)
        if request.response_id is not None:
            # A background response (turns/background.py): its queued row starts, unless it was cancelled meanwhile.
            values = {"thread_id": thread.id, "model": choices.info.name, "status": IN_PROGRESS}
            started = await repo.start_queued(org, owner, {**values, "request": record, "context": context})
            if started is None:
                raise ResponseNotQueued(f"Response '{owner}' is no longer queued (it was cancelled).")
            return row_values(started)
        row = {
            **dict.fromkeys(RESPONSE_COLUMNS),
            "organization_id": org,
            "id": owner,
            "thread_id": thread.id,
            "previous_response_id": request.previous_response_id,
            "user_id": principal.user_id,
            "model": choices.info.name,
            "status": IN_PROGRESS,
            "request": record,
            "context": context,
            "created_at": now,
        }
        await repo.insert(row)
        return row


def _turn(
    row: dict[str, Any],
    thread: LeasedThread,
    principal: Principal,
    request: TurnRequest,
    choices: _Choices,
    plan: ContextPlan,
    inputs: list[PromptMessage],
) -> Turn:
    record = stored_values(row)
    assert record.output_message_id is not None
    return Turn(
        record=record,
        row=row,
        thread_id=thread.id,
        user_id=principal.user_id,
        assistant_id=request.run.assistant_id if request.run else thread.assistant_id,
        provider=choices.provider,
        info=choices.info,
        tokenizer=choices.tokenizer,
        prompt=[
            ChatMessage(m.role, m.content, m.type, m.call_id, m.name, m.parts)  # type: ignore[arg-type]
            for m in plan.messages
            # Reasoning goes back only to a model that takes it, as OpenAI treats it (docs/items.md).
            if m.type != "reasoning" or choices.info.reasoning
        ],
        inputs=inputs,
        params=_params(choices, request),
        max_tool_calls=request.call_cap,
        thread_state=request.thread_state,
        output_message_id=record.output_message_id,
        input_metadata=[dict(m) for m in request.run.input_metadata] if request.run else [],
        defer_calls=request.run is not None,
        follows_an_answer=_follows_an_answer(plan, thread.id),
    )


def _follows_an_answer(plan: ContextPlan, thread_id: str) -> bool:
    """Whether the context holds an answer stored in this thread (a chain's context also holds its ancestors'),
    read from the newest end, where the last answer most often is."""
    return any(
        isinstance(m, HistoryMessage) and m.role == "assistant" and m.type == "message" and m.thread_id == thread_id
        for m in reversed(plan.messages)
    )


def _params(choices: _Choices, request: TurnRequest) -> GenerationParams:
    return GenerationParams(
        max_output_tokens=choices.max_output,
        temperature=choices.temperature,
        top_p=request.top_p,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        response_format=request.response_format,
        reasoning_effort=request.reasoning_effort,
        tools=request.tools,
        tool_choice=request.tool_choice,
        parallel_tool_calls=request.parallel_tool_calls,
    )


def _prompt_parts(
    choices: _Choices, request: TurnRequest, items: Sequence[ChatMessage]
) -> tuple[list[PromptMessage], list[PromptMessage]]:
    """The pinned system messages (the assistant's instructions, then the turn's own) and the counted inputs."""
    tokenizer = choices.tokenizer
    pinned = [
        PromptMessage("system", text, message_token_count(tokenizer, "system", text))
        for text in (choices.instructions, request.instructions)
        if text
    ]
    inputs = [
        PromptMessage(
            m.role,
            m.content,
            item_token_count(tokenizer, m.role, seen_text(m.type, m.content), m.name, m.parts),
            type=m.type,
            call_id=m.call_id,
            name=m.name,
            parts=m.parts,
        )
        for m in items
    ]
    return pinned, inputs


def _tool_tokens(tokenizer: Tokenizer, request: TurnRequest) -> int:
    """Tool definitions are sent with every request: they count against the window like the priming does."""
    if not request.tools:
        return 0
    return tokenizer.count(json.dumps([t.as_response_tool() for t in request.tools]))


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


def _check_vision(prompt: Sequence[PromptMessage], info: ModelInfo) -> None:
    """Images in what the model would see (this turn's inputs or the history it gets) need the `vision`
    capability."""
    # Most items have no parts: the check looks only at those that do (it runs for every item of the prompt).
    if not info.vision and any(has_images(m.parts) for m in prompt if m.parts):
        raise InvalidRequest(
            f"The model '{info.name}' does not accept images: use a model whose configuration has vision, or "
            "send the request without image parts.",
            code="vision_not_supported",
            param="input",
        )


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
