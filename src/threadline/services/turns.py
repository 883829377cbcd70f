"""Steps 2 and 3 of a model turn: the model call with no session open, then the short saving transaction.

On success the inputs and the output land together with the thread update and the lease release. On any failure
(upstream error, client gone, a bug) the response is marked failed and the lease released instead, so the thread
is left exactly as before the turn. A heartbeat renews the lease while the model generates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import anyio
from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline import observability
from threadline.config import Settings
from threadline.domain.clock import utcnow
from threadline.domain.context import PromptMessage
from threadline.domain.messages import ChatMessage, NewMessage, ToolCall, reasoning_payload
from threadline.domain.tokens import item_token_count, message_token_count
from threadline.errors import ThreadBusy, ThreadlineError, UpstreamError, UpstreamTimeout
from threadline.ids import new_id
from threadline.providers.base import (
    Finished,
    GenerationParams,
    ModelInfo,
    Provider,
    ReasoningDelta,
    TextDelta,
    Tokenizer,
    ToolCallArgumentsDelta,
    ToolCallStarted,
)
from threadline.services import messages as message_service
from threadline.services import rate_limits
from threadline.services import threads as thread_service
from threadline.services.auth import Principal
from threadline.storage.repositories.responses import ResponseRepository
from threadline.storage.repositories.threads import ThreadRepository
from threadline.storage.tables import Response

logger = logging.getLogger("threadline.turns")


class TurnObserver(Protocol):
    """Told about every saved turn (auto-naming listens); must return at once, and never holds up the turn."""

    def turn_saved(self, principal: Principal, response: Response) -> None: ...


@dataclass
class Turn:
    """Everything step 2 needs, gathered in step 1 (no ORM session attached)."""

    response: Response
    organization_id: str
    thread_id: str
    user_id: str | None
    assistant_id: str | None
    provider: Provider
    info: ModelInfo
    tokenizer: Tokenizer
    prompt: list[ChatMessage]
    inputs: list[PromptMessage]
    params: GenerationParams
    thread_state: str | None
    # Called once the turn is saved (auto-naming schedules its work here); must return at once, never raise.
    after_save: Callable[[Response], None] | None = None
    # The id the answer is saved under, known up front (an Assistants run streams it before saving).
    output_message_id: str | None = None
    # Metadata saved with each input (same order as `inputs`; missing entries mean none).
    input_metadata: list[dict[str, Any]] = field(default_factory=list)
    # At most this many function calls of the answer are kept (None: all).
    max_tool_calls: int | None = None
    # An Assistants run: an answer with calls is not saved to the thread but waits for their outputs on the
    # response (status `requires_action`, services/waiting_runs.py).
    defer_calls: bool = False

    # The credential's concurrent-turn slot (services/rate_limits.py), renewed with the lease, freed once settled.
    slot: rate_limits.TurnSlot | None = None


@dataclass(frozen=True)
class OutputDelta:
    text: str


@dataclass(frozen=True)
class OutputReasoning:
    """A piece of the model's reasoning; `item_id` (`rs_…`) is the id its reasoning item is saved under."""

    item_id: str
    text: str


@dataclass(frozen=True)
class OutputCallStarted:
    """The model began a function call; `item_id` (`fc_…`) is the id it is saved under."""

    index: int
    item_id: str
    call_id: str
    name: str


@dataclass(frozen=True)
class OutputCallArguments:
    index: int
    item_id: str
    delta: str


@dataclass(frozen=True)
class TurnDone:
    """The last event of a turn: the stored response (completed or failed) and the error, if it failed."""

    response: Response
    error: ThreadlineError | None


TurnEvent = OutputDelta | OutputReasoning | OutputCallStarted | OutputCallArguments | TurnDone


@dataclass(frozen=True)
class SavedCall:
    """A function call of the answer with the id of its item."""

    item_id: str
    call: ToolCall


async def run_turn(
    maker: async_sessionmaker[AsyncSession], settings: Settings, turn: Turn
) -> AsyncGenerator[TurnEvent, None]:
    """Step 2 and 3: stream the model's answer, then save the turn (or record the failure). Always ends with
    one `TurnDone`, unless the consumer stops early, in which case the turn is recorded as failed."""
    settled = False
    watch = observability.current()
    recorder = watch.turn(turn.info.name)
    heartbeat = asyncio.create_task(_heartbeat(maker, settings, turn))
    stream = turn.provider.stream(turn.info.name, turn.prompt, turn.params)
    parts: list[str] = []
    thinking: list[str] = []
    reasoning_id = new_id("rs")
    # Not the current span across the yields below (the consumer runs there): current only around each wait for
    # the model, so the upstream call's span is its child.
    model_call = watch.tracer.start_span("turn.model_call", attributes={"model": turn.info.name})
    # Item ids of the answer's function calls, by their index (known from the call's first delta).
    call_ids: dict[int, str] = {}
    cap = turn.max_tool_calls
    try:
        error: ThreadlineError | None = None
        finished: Finished | None = None
        try:
            while True:
                try:
                    # Only the wait for the model is timed (never our consumer): a model that goes silent would
                    # otherwise hold the thread forever, its lease renewed by the heartbeat.
                    async with asyncio.timeout(settings.model_idle_timeout_seconds):
                        with trace.use_span(model_call, end_on_exit=False):
                            event = await anext(stream)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise UpstreamTimeout(
                        f"The model sent nothing for {settings.model_idle_timeout_seconds:g} seconds.",
                        code="upstream_timeout",
                    ) from None
                if isinstance(event, TextDelta):
                    recorder.first_token()
                    parts.append(event.text)
                    yield OutputDelta(event.text)
                elif isinstance(event, ReasoningDelta):
                    recorder.first_token()
                    thinking.append(event.text)
                    yield OutputReasoning(reasoning_id, event.text)
                elif isinstance(event, ToolCallStarted):
                    if cap is None or event.index < cap:
                        call_ids[event.index] = new_id("fc")
                        yield OutputCallStarted(event.index, call_ids[event.index], event.call_id, event.name)
                elif isinstance(event, ToolCallArgumentsDelta):
                    if event.index in call_ids:
                        yield OutputCallArguments(event.index, call_ids[event.index], event.delta)
                elif isinstance(event, Finished):
                    finished = event
            if finished is None:
                raise UpstreamError("The model's stream ended before it finished.", code="upstream_incomplete")
        except ThreadlineError as exc:
            error = exc
            model_call.set_status(trace.StatusCode.ERROR, exc.code)
        _end(model_call)
        heartbeat.cancel()
        if error is None and finished is not None:
            try:
                calls = [
                    SavedCall(call_ids.get(index) or new_id("fc"), call)
                    for index, call in enumerate(finished.tool_calls)
                    if cap is None or index < cap
                ]
                reasoning = (reasoning_id, "".join(thinking)) if thinking else None
                with watch.span("turn.save"):
                    response = await _complete(maker, settings, turn, "".join(parts), finished, calls, reasoning)
            except ThreadlineError as exc:
                error = exc
        if error is not None:
            with watch.span("turn.save", outcome=error.code):
                response = await _fail(maker, turn, error.code, error.message)
            recorder.finished(error.code)
        else:
            recorder.finished(response.status, response.input_tokens, response.output_tokens)
            if turn.after_save is not None:
                try:
                    turn.after_save(response)
                except Exception:
                    # Follow-up work is optional: the turn is saved whatever happens to it.
                    logger.exception("after-save hook failed for response %s", turn.response.id)
        settled = True
        # Freed before the last event: a consumer that stops reading at TurnDone does not keep the slot.
        await _release_slot(maker, turn)
        yield TurnDone(response, error)
    finally:
        heartbeat.cancel()
        _end(model_call)
        with anyio.CancelScope(shield=True):
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            if not settled:
                if watch.draining:
                    code, message = "turn_interrupted", "The server shut down before the turn finished."
                else:
                    code, message = "turn_aborted", "The turn stopped before it finished (client disconnected)."
                await _fail(maker, turn, code, message)
                recorder.finished(code)
            await _release_slot(maker, turn)


async def _release_slot(maker: async_sessionmaker[AsyncSession], turn: Turn) -> None:
    slot, turn.slot = turn.slot, None
    if slot is None:
        return
    try:
        await rate_limits.release_turn_slot(maker, slot)
    except Exception:
        # Not given back, it still expires with the lease time: the credential gets it back then.
        logger.warning("could not release a turn slot of thread %s", turn.thread_id, exc_info=True)


def _end(span: trace.Span) -> None:
    if span.is_recording():  # not ended yet
        span.end()


async def _heartbeat(maker: async_sessionmaker[AsyncSession], settings: Settings, turn: Turn) -> None:
    """Keep the lease alive while the model generates, so only a dead process lets it expire."""
    interval = settings.thread_lease_seconds / 3
    while True:
        await asyncio.sleep(interval)
        try:
            async with maker() as session:
                expires_at = utcnow() + timedelta(seconds=settings.thread_lease_seconds)
                await ThreadRepository(session).renew_lease(
                    turn.organization_id, turn.thread_id, turn.response.id, expires_at
                )
                if turn.slot is not None:
                    await rate_limits.renew_turn_slot(session, settings, turn.slot)
                await session.commit()
        except Exception:
            # A database hiccup must not end the heartbeat: the next beat may succeed before the lease runs out.
            logger.warning("lease heartbeat failed for thread %s", turn.thread_id, exc_info=True)


async def _complete(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    turn: Turn,
    text: str,
    finished: Finished,
    calls: list[SavedCall],
    reasoning: tuple[str, str] | None = None,
) -> Response:
    """Step 3: inputs and output land together, with the thread update and the lease release. The output is the
    model's reasoning item (`reasoning`: its id and text, when the upstream sent any), the answer's text as an
    assistant message (left out when the answer is only function calls), then its calls."""
    output_tokens = finished.output_tokens
    if output_tokens is None:
        output_tokens = turn.tokenizer.count(text)
    input_tokens = finished.input_tokens or int(turn.response.context.get("input_tokens", 0))
    async with maker() as session:
        now = utcnow()
        changes: dict[str, Any] = {"last_model_used": turn.info.name, "updated_at": now}
        if turn.thread_state is not None:
            changes["state"] = turn.thread_state
        # One UPDATE … RETURNING frees the thread and reads it (no SELECT first); it matches only while this turn
        # holds the lease on a live thread. Otherwise tell the two apart: deleted meanwhile, or lease lost.
        thread = await ThreadRepository(session).release_lease_returning(
            turn.organization_id, turn.thread_id, turn.response.id, changes
        )
        if thread is None:
            await thread_service.get_thread(session, turn.organization_id, turn.thread_id)  # ThreadNotFound
            raise ThreadBusy(
                "This turn lost its lease on the thread (it ran past the lease without renewing it); nothing was "
                "saved.",
                code="lease_lost",
            )
        new = [
            NewMessage(
                role=m.role,  # type: ignore[arg-type]
                content=m.content,
                token_count=m.tokens,
                tokenizer=turn.tokenizer.name,
                response_id=turn.response.id,
                metadata=turn.input_metadata[i] if i < len(turn.input_metadata) else {},
                type=m.type,  # type: ignore[arg-type]
                call_id=m.call_id,
                payload=_input_payload(m),
            )
            for i, m in enumerate(turn.inputs)
        ]
        if reasoning is not None:
            item_id, thought = reasoning
            new.append(
                NewMessage(
                    id=item_id,
                    role="assistant",
                    type="reasoning",
                    content=thought,
                    payload=reasoning_payload(thought),
                    token_count=message_token_count(turn.tokenizer, "assistant", thought),
                    tokenizer=turn.tokenizer.name,
                    model=turn.info.name,
                    response_id=turn.response.id,
                    assistant_id=turn.assistant_id,
                )
            )
        with_message = bool(text) or not calls
        if with_message:
            new.append(
                NewMessage(
                    id=turn.output_message_id,
                    role="assistant",
                    content=text,
                    token_count=message_token_count(turn.tokenizer, "assistant", text),
                    tokenizer=turn.tokenizer.name,
                    model=turn.info.name,
                    response_id=turn.response.id,
                    assistant_id=turn.assistant_id,
                )
            )
        waiting = turn.defer_calls and bool(calls)
        for saved in [] if waiting else calls:
            call = saved.call
            new.append(
                NewMessage(
                    id=saved.item_id,
                    role="assistant",
                    type="function_call",
                    call_id=call.call_id,
                    content=call.arguments,
                    payload={"name": call.name, "status": "completed"},
                    token_count=item_token_count(turn.tokenizer, "assistant", call.arguments, call.name),
                    tokenizer=turn.tokenizer.name,
                    model=turn.info.name,
                    response_id=turn.response.id,
                    assistant_id=turn.assistant_id,
                )
            )
        rows = (
            await message_service.append_messages(
                session, settings, thread, new, user_id=turn.user_id, check_state=False
            )
            if new
            else []
        )
        # Written without reading it back first: step 1 recorded it and only this turn (holding the lease) writes
        # it until now. The message INSERTs are flushed first (autoflush), keeping the response's seq links valid.
        # A run continued after tool outputs (services/waiting_runs.py) adds this turn's usage to what it used.
        values: dict[str, Any] = {
            "status": "requires_action" if waiting else "completed",
            "output_text": text,
            "input_tokens": input_tokens + (turn.response.input_tokens or 0),
            "output_tokens": output_tokens + (turn.response.output_tokens or 0),
            "context": {
                **turn.response.context,
                "finish_reason": finished.finish_reason,
                **({} if with_message else {"output_message": False}),
                **({"tool_calls": [_call_record(c) for c in calls]} if calls else {}),
                **({"reasoning": {"id": reasoning[0], "text": reasoning[1]}} if reasoning else {}),
            },
            "completed_at": now,
        }
        if rows:
            values["output_seq"] = rows[-1].seq
        if turn.inputs:  # an Assistants run may have none: it answers the thread as it stands
            if turn.response.input_first_seq is None:  # a continued run keeps its first inputs' start
                values["input_first_seq"] = rows[0].seq
            values["input_last_seq"] = rows[len(turn.inputs) - 1].seq
        response = await ResponseRepository(session).update(turn.organization_id, turn.response.id, values)
        await session.commit()
        return response


def _input_payload(m: PromptMessage) -> dict[str, Any] | None:
    """The structure stored next to an input's text (docs/items.md): a call's name, a message's parts."""
    payload: dict[str, Any] = {}
    if m.name is not None:
        payload["name"] = m.name
    if m.parts:
        payload["content"] = list(m.parts)
    return payload or None


def _call_record(saved: SavedCall) -> dict[str, str]:
    """A call as the response remembers it (its output items are read without reading the thread)."""
    call = saved.call
    return {"id": saved.item_id, "call_id": call.call_id, "name": call.name, "arguments": call.arguments}


async def _fail(maker: async_sessionmaker[AsyncSession], turn: Turn, code: str, message: str) -> Response:
    """Record the failure and free the thread; the thread's messages are untouched."""
    async with maker() as session:
        now = utcnow()
        await ResponseRepository(session).fail_if_in_progress(
            turn.organization_id, turn.response.id, {"code": code, "message": message}, now
        )
        await ThreadRepository(session).release_lease(turn.organization_id, turn.thread_id, turn.response.id)
        response = await _stored(session, turn)
        await session.commit()
        return response


async def _stored(session: AsyncSession, turn: Turn) -> Response:
    found = await ResponseRepository(session).get(turn.organization_id, turn.response.id)
    assert found is not None
    return found
