"""The run of a turn: the model call, with no session open (docs/ARCHITECTURE.md, "the rules"), then the save.

A heartbeat renews the lease (and the credential's turn slot) while the model generates, so only a dead process
lets it expire. Whatever happens — upstream error, client gone, shutdown, a bug — the turn ends saved or failed,
its lease and slot released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import anyio
from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline import observability
from threadline.config import Settings
from threadline.domain.clock import utcnow
from threadline.domain.turns import OutputCall, StoredTurn
from threadline.errors import ThreadlineError, UpstreamError, UpstreamTimeout
from threadline.ids import new_id
from threadline.observability import TurnRecorder
from threadline.providers.base import (
    Finished,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallArgumentsDelta,
    ToolCallStarted,
)
from threadline.services import rate_limits
from threadline.storage.repositories.threads import ThreadRepository
from threadline.turns import compaction
from threadline.turns.save import TurnSaver
from threadline.turns.turn import (
    OutputCallArguments,
    OutputCallStarted,
    OutputCompaction,
    OutputDelta,
    OutputReasoning,
    Turn,
    TurnDone,
    TurnEvent,
)

logger = logging.getLogger("threadline.turns")


@dataclass
class _Answer:
    """The answer as it streams: its text, and the item ids of its function calls by their index (known from
    each call's first delta)."""

    cap: int | None
    parts: list[str] = field(default_factory=list)
    call_ids: dict[int, str] = field(default_factory=dict)
    finished: Finished | None = None
    # The model's reasoning (docs/items.md), saved as one item under this id.
    thinking: list[str] = field(default_factory=list)
    reasoning_id: str = field(default_factory=lambda: new_id("rs"))

    def reasoning(self) -> tuple[str, str] | None:
        return (self.reasoning_id, "".join(self.thinking)) if self.thinking else None

    def calls(self) -> list[OutputCall]:
        assert self.finished is not None
        return [
            OutputCall(self.call_ids.get(index) or new_id("fc"), call.call_id, call.name, call.arguments)
            for index, call in enumerate(self.finished.tool_calls)
            if self.cap is None or index < self.cap
        ]


class TurnRunner:
    def __init__(self, maker: async_sessionmaker[AsyncSession], settings: Settings, saver: TurnSaver) -> None:
        self.maker = maker
        self.settings = settings
        self.saver = saver

    async def run(self, turn: Turn) -> AsyncGenerator[TurnEvent, None]:
        """Stream the model's answer, then save the turn (or record the failure). Always ends with one
        `TurnDone`, unless the consumer stops early, in which case the turn is recorded as failed."""
        settled = False
        watch = observability.current()
        recorder = watch.turn(turn.info.name)
        heartbeat = _Heartbeat(self.maker, self.settings, turn)
        # A turn that compacts first writes its summary inside this stream (turns/compaction.py).
        stream: AsyncIterator[StreamEvent | compaction.Ready] = (
            compaction.stream(turn)
            if turn.compaction
            else turn.provider.stream(turn.info.name, turn.prompt, turn.params)
        )
        # Not the current span across the yields below (the consumer runs there): current only around each wait
        # for the model, so the upstream call's span is its child.
        model_call = watch.tracer.start_span("turn.model_call", attributes={"model": turn.info.name})
        answer = _Answer(turn.max_tool_calls)
        try:
            error: ThreadlineError | None = None
            try:
                events = self._model_events(stream, model_call, answer, recorder.first_token)
                async with contextlib.aclosing(events):
                    async for event in events:
                        yield event
                if answer.finished is None:
                    raise UpstreamError("The model's stream ended before it finished.", code="upstream_incomplete")
            except ThreadlineError as exc:
                error = exc
                model_call.set_status(trace.StatusCode.ERROR, exc.code)
            _end(model_call)
            await heartbeat.stop()
            record, error = await self._settle(turn, answer, error, recorder)
            settled = True
            # Freed before the last event: a consumer that stops reading at TurnDone does not keep the slot.
            await self._release_slot(turn)
            yield TurnDone(record, error)
        finally:
            _end(model_call)
            with anyio.CancelScope(shield=True):
                await heartbeat.stop()
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
                if not settled:
                    if watch.draining:
                        code, message = "turn_interrupted", "The server shut down before the turn finished."
                    else:
                        code, message = "turn_aborted", "The turn stopped before it finished (client disconnected)."
                    await self.saver.fail(turn, code, message)
                    recorder.finished(code)
                await self._release_slot(turn)

    async def _settle(
        self, turn: Turn, answer: _Answer, error: ThreadlineError | None, recorder: TurnRecorder
    ) -> tuple[StoredTurn, ThreadlineError | None]:
        """Save the answer (span `turn.save`), or record the failure — the model's, or the save's own."""
        watch = observability.current()
        if error is None and answer.finished is not None:
            try:
                with watch.span("turn.save"):
                    record = await self.saver.complete(
                        turn, "".join(answer.parts), answer.finished, answer.calls(), answer.reasoning()
                    )
            except ThreadlineError as exc:
                error = exc
            else:
                usage = record.usage
                recorder.finished(
                    record.status, usage.input_tokens if usage else None, usage.output_tokens if usage else None
                )
                self._after_save(turn, record)
                return record, None
        assert error is not None
        with watch.span("turn.save", outcome=error.code):
            record = await self.saver.fail(turn, error.code, error.message)
        recorder.finished(error.code)
        return record, error

    async def _model_events(
        self,
        stream: AsyncIterator[StreamEvent | compaction.Ready],
        model_call: trace.Span,
        answer: _Answer,
        first_token: Callable[[], None],
    ) -> AsyncGenerator[TurnEvent, None]:
        """The model's events as turn events, collecting the answer."""
        timeout = self.settings.model_idle_timeout_seconds
        cap = answer.cap
        # The upstream call's spans are the model call's children while tracing is on; without it the span is
        # the no-op one, and making it current (~5 µs an event) would change nothing.
        traced = model_call.get_span_context().is_valid
        while True:
            try:
                # Only the wait for the model is timed (never our consumer): a model that goes silent would
                # otherwise hold the thread forever, its lease renewed by the heartbeat.
                async with asyncio.timeout(timeout):
                    with trace.use_span(model_call, end_on_exit=False) if traced else contextlib.nullcontext():
                        event = await anext(stream)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise UpstreamTimeout(
                    f"The model sent nothing for {timeout:g} seconds.", code="upstream_timeout"
                ) from None
            if isinstance(event, TextDelta):
                first_token()
                answer.parts.append(event.text)
                yield OutputDelta(event.text)
            elif isinstance(event, ReasoningDelta):
                first_token()
                answer.thinking.append(event.text)
                yield OutputReasoning(answer.reasoning_id, event.text)
            elif isinstance(event, ToolCallStarted):
                if cap is None or event.index < cap:
                    answer.call_ids[event.index] = new_id("fc")
                    yield OutputCallStarted(event.index, answer.call_ids[event.index], event.call_id, event.name)
            elif isinstance(event, ToolCallArgumentsDelta):
                if event.index in answer.call_ids:
                    yield OutputCallArguments(event.index, answer.call_ids[event.index], event.delta)
            elif isinstance(event, Finished):
                answer.finished = event
            elif isinstance(event, compaction.Ready):
                yield OutputCompaction(event.item_id, event.summary, event.model)

    def _after_save(self, turn: Turn, record: StoredTurn) -> None:
        if turn.after_save is None:
            return
        try:
            turn.after_save(record)
        except Exception:
            # Follow-up work is optional: the turn is saved whatever happens to it.
            logger.exception("after-save hook failed for response %s", turn.id)

    async def _release_slot(self, turn: Turn) -> None:
        slot, turn.slot = turn.slot, None
        if slot is None:
            return
        try:
            await rate_limits.release_turn_slot(self.maker, slot)
        except Exception:
            # Not given back, it still expires with the lease time: the credential gets it back then.
            logger.warning("could not release a turn slot of thread %s", turn.thread_id, exc_info=True)


class _Heartbeat:
    """Keeps the lease alive while the model generates, so only a dead process lets it expire: a beat every third of
    the lease, each in a task of its own started by a timer (a turn shorter than that starts none). `stop` waits
    for a beat under way: it is never cut off inside its transaction (a cancelled SQLite write can leave its
    connection holding the database's write lock)."""

    def __init__(self, maker: async_sessionmaker[AsyncSession], settings: Settings, turn: Turn) -> None:
        self._maker = maker
        self._settings = settings
        self._turn = turn
        self._interval = settings.thread_lease_seconds / 3
        self._stopped = False
        self._beat: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._start_beat)

    def _start_beat(self) -> None:
        self._beat = asyncio.create_task(self._renew())

    async def _renew(self) -> None:
        turn, seconds = self._turn, self._settings.thread_lease_seconds
        try:
            async with self._maker() as session:
                expires_at = utcnow() + timedelta(seconds=seconds)
                await ThreadRepository(session).renew_lease(turn.organization_id, turn.thread_id, turn.id, expires_at)
                if turn.slot is not None:
                    await rate_limits.renew_turn_slot(session, self._settings, turn.slot)
                await session.commit()
        except Exception:
            # A database hiccup must not end the heartbeat: the next beat may succeed before the lease runs out.
            logger.warning("lease heartbeat failed for thread %s", turn.thread_id, exc_info=True)
        if not self._stopped:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._start_beat)

    async def stop(self) -> None:
        """No beat after this; one under way finishes first (its own failures it logs itself)."""
        self._stopped = True
        self._timer.cancel()
        if self._beat is not None and not self._beat.done():
            await asyncio.wait([self._beat])


def _end(span: trace.Span) -> None:
    if span.is_recording():  # not ended yet
        span.end()
