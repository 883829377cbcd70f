"""The turn engine: built once at start-up (api/app.py) with the sessions, settings, models and the observer
of saved turns it works with; every surface asks it for turns (docs/ARCHITECTURE.md, "the turn")."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncGenerator

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline.config import Settings
from threadline.providers.registry import ModelRegistry
from threadline.services.auth import Principal
from threadline.storage.repositories.messages import MessageRepository
from threadline.storage.tables import Message
from threadline.turns.request import TurnRequest
from threadline.turns.run import TurnRunner
from threadline.turns.save import TurnSaver
from threadline.turns.start import TurnStarter
from threadline.turns.turn import Turn, TurnDone, TurnEvent, TurnObserver


class TurnEngine:
    def __init__(
        self,
        maker: async_sessionmaker[AsyncSession],
        settings: Settings,
        models: ModelRegistry,
        observer: TurnObserver | None = None,
    ) -> None:
        self.maker = maker
        self.settings = settings
        self.models = models
        # Hears about the saved turns of a caller's request that may be their thread's first exchange
        # (auto-naming); None when nothing listens.
        self.observer = observer
        self._starter = TurnStarter(maker, settings, models)
        self._runner = TurnRunner(maker, settings, TurnSaver(maker, settings))

    async def start(self, principal: Principal, request: TurnRequest, *, observed: bool = False) -> Turn:
        """The start: lease and context plan, the turn recorded `in_progress`. Refusals raise here, before any
        streaming. `observed`: the observer hears about it once saved (Freddy turns: auto-naming follows them),
        unless its context already held an answer of its thread: then it is not the thread's first exchange, and
        the observer's check of that (a session and two reads) is spared."""
        turn = await self._starter.start(principal, request)
        if observed and self.observer is not None and not turn.follows_an_answer:
            turn.after_save = functools.partial(self.observer.turn_saved, principal)
        return turn

    def run(self, turn: Turn) -> AsyncGenerator[TurnEvent, None]:
        """The model call and the save: the answer as it streams, then one `TurnDone` (see turns/run.py)."""
        return self._runner.run(turn)

    async def finish(self, turn: Turn) -> TurnDone:
        """Run a started turn to its end, ignoring the stream."""
        async with contextlib.aclosing(self.run(turn)) as events:
            async for event in events:
                if isinstance(event, TurnDone):
                    return event
        raise AssertionError("the run ended without TurnDone")

    async def answer(self, turn: Turn) -> Message | None:
        """The message a completed turn saved as its answer (None when the answer was only function calls)."""
        async with self.maker() as session:
            return await MessageRepository(session).get(turn.organization_id, turn.thread_id, turn.output_message_id)
