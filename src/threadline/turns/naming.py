"""AI thread names: POST /v1/threads/{id}/generateName, and naming threads after their first exchange.

A user of the turn engine: the title is asked of the model as a real turn on a new hidden (`store=false`) thread
(docs/naming.md), so nothing is added to the thread being named and the turn machinery (lease, context,
streaming, failure handling) is the one every response uses. Only then, in a short transaction of its own, is the
cleaned title saved with the rename rules. The thread being named is never leased: its next turn is not held up
by its naming.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline.domain import threads as rules
from threadline.domain.naming import EXCERPT_MESSAGES, ExcerptMessage, TitlePreview, clean_title, naming_prompt
from threadline.domain.turns import StoredTurn
from threadline.errors import InvalidRequest, ThreadlineError, UpstreamError
from threadline.services import threads as thread_service
from threadline.services.auth import Principal
from threadline.services.background import Background
from threadline.storage.repositories.messages import MessageRepository
from threadline.storage.repositories.threads import ThreadRepository
from threadline.storage.tables import Thread
from threadline.turns.engine import TurnEngine
from threadline.turns.request import TurnRequest
from threadline.turns.turn import OutputDelta, Turn, TurnDone

logger = logging.getLogger("threadline.naming")

PURPOSE = "generate_name"
# A title is a few words: a small budget keeps a rambling model short, a low temperature keeps it on topic.
DEFAULT_MAX_OUTPUT_TOKENS = 24
DEFAULT_TEMPERATURE = 0.2


@dataclass(frozen=True)
class NameRequest:
    organization_id: str
    thread_id: str
    # None: the model that last answered on the thread if it is still served, else the default model.
    model: str | None = None
    max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS
    temperature: float | None = DEFAULT_TEMPERATURE


@dataclass(frozen=True)
class Naming:
    """A naming turn, started on its hidden thread and ready to run."""

    request: NameRequest
    turn: Turn


@dataclass(frozen=True)
class NameDelta:
    text: str


@dataclass(frozen=True)
class NameDone:
    """The last event: the renamed thread, or the error (the title is then unchanged)."""

    thread: Thread | None
    error: ThreadlineError | None


NameEvent = NameDelta | NameDone


async def start_naming(engine: TurnEngine, principal: Principal, request: NameRequest) -> Naming:
    """Check the thread can be named (404, 409 archived, 400 `thread_empty`), then start the hidden turn."""
    models = engine.models
    async with engine.maker() as session:
        thread = await thread_service.get_thread(session, request.organization_id, request.thread_id)
        rules.ensure_writable(thread.id, thread.state)
        rows = await MessageRepository(session).head(
            request.organization_id, thread.id, EXCERPT_MESSAGES, roles=("user", "assistant")
        )
        last_model = thread.last_model_used
    if not rows:
        raise InvalidRequest(
            f"Thread '{request.thread_id}' has no user or assistant messages yet: there is nothing to name.",
            code="thread_empty",
            param="thread_id",
        )
    model = request.model
    if model is None and last_model is not None and last_model in {info.name for info in models.models()}:
        model = last_model
    turn_request = TurnRequest(
        organization_id=request.organization_id,
        inputs=naming_prompt([ExcerptMessage(row.role, row.content) for row in rows]),
        store=False,
        thread_metadata={"purpose": PURPOSE, "source_thread_id": request.thread_id},
        model=model,
        max_output_tokens=request.max_output_tokens,
        temperature=request.temperature,
    )
    turn = await engine.start(principal, turn_request)
    return Naming(request, turn)


async def run_naming(
    engine: TurnEngine,
    naming: Naming,
    *,
    only_if_untitled: bool = False,
) -> AsyncGenerator[NameEvent, None]:
    """Stream the title as it is generated, then save it. Always ends with one `NameDone`.

    `only_if_untitled` (auto-naming) leaves alone a thread that got a title meanwhile: then `NameDone.thread`
    is None and nothing was saved."""
    preview = TitlePreview()
    async with contextlib.aclosing(engine.run(naming.turn)) as events:
        async for event in events:
            if isinstance(event, OutputDelta):
                delta = preview.feed(event.text)
                if delta:
                    yield NameDelta(delta)
            elif isinstance(event, TurnDone):
                if event.error is not None:
                    yield NameDone(None, event.error)
                    return
                try:
                    thread = await _save(engine.maker, naming.request, event.record, only_if_untitled)
                except ThreadlineError as exc:
                    yield NameDone(None, exc)
                    return
                yield NameDone(thread, None)
                return
    raise AssertionError("the run ended without TurnDone")


async def _save(
    maker: async_sessionmaker[AsyncSession], request: NameRequest, turn: StoredTurn, only_if_untitled: bool
) -> Thread | None:
    title = clean_title(turn.output_text or "")
    if not title:
        raise UpstreamError(
            f"The model's answer held no usable title (response '{turn.id}'); the title is unchanged.",
            code="generated_name_empty",
        )
    async with maker() as session:
        if only_if_untitled:
            current = await ThreadRepository(session).get(request.organization_id, request.thread_id, for_update=True)
            if current is None or current.title is not None or current.state == "archived":
                return None
        # The thread may have been archived or deleted while the model wrote: the rename rules answer that.
        thread = await thread_service.rename_thread(session, request.organization_id, request.thread_id, title)
        await session.commit()
    return thread


async def generate_name(engine: TurnEngine, principal: Principal, request: NameRequest) -> Thread:
    """Name the thread and return it; an upstream failure or an unusable answer is a 502 (title unchanged)."""
    naming = await start_naming(engine, principal, request)
    async for event in run_naming(engine, naming):
        if isinstance(event, NameDone):
            if event.error is not None:
                raise event.error
            assert event.thread is not None
            return event.thread
    raise AssertionError("run_naming ended without NameDone")


class AutoNamer:
    """Names a thread after its first exchange (`Settings.auto_name_threads`), in the background.

    A `TurnObserver`: told about every saved turn, it starts a task and returns. The task holds no session
    across the model call, and its failures are logged only: the turn it follows is already saved.
    """

    def __init__(self, engine: TurnEngine, background: Background) -> None:
        self.engine = engine
        self.background = background

    def turn_saved(self, principal: Principal, turn: StoredTurn) -> None:
        if turn.thread_id is None or turn.output_seq is None:
            return
        self.background.spawn(
            self.name_if_first_exchange(principal, turn.organization_id, turn.thread_id, turn.output_seq),
            name=f"auto-name {turn.thread_id}",
        )

    async def name_if_first_exchange(
        self, principal: Principal, organization_id: str, thread_id: str, output_seq: int
    ) -> None:
        engine = self.engine
        async with engine.maker() as session:
            thread = await ThreadRepository(session).get(organization_id, thread_id)
            if thread is None or thread.title is not None or not thread.visible_in_ui or thread.state == "archived":
                return  # hidden threads (naming turns among them) are never named
            if await MessageRepository(session).has_role_before(organization_id, thread_id, "assistant", output_seq):
                return  # not the first exchange
        request = NameRequest(organization_id, thread_id)
        try:
            naming = await start_naming(engine, principal, request)
            done: NameDone | None = None
            async for event in run_naming(engine, naming, only_if_untitled=True):
                if isinstance(event, NameDone):
                    done = event
        except ThreadlineError as exc:
            logger.warning("auto-naming thread %s failed before the model call: %s (%s)", thread_id, exc, exc.code)
            return
        if done is not None and done.error is not None:
            logger.warning("auto-naming thread %s failed: %s (%s)", thread_id, done.error, done.error.code)
