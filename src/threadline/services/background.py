"""Work that outlives the request that started it (auto-naming after a turn), tracked by the app.

Tasks are kept here so the app can cancel them at shutdown (before the engine they use is disposed), and so
tests can wait for them deterministically. A task's failure is logged, never raised to anyone. Once shutdown
has begun nothing new starts: work handed over then (a turn that finished while the server stopped) is dropped,
so no task outlives the app and its engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Coroutine
from typing import Any

from threadline.observability.logs import bind_request

logger = logging.getLogger("threadline.background")


class Background:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    def spawn(self, work: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None] | None:
        """Run `work` in a task of its own; None (and `work` closed unstarted) once shutdown has begun."""
        if self._closing:
            work.close()
            return None
        # The app's observer carries over; the request that started the work does not (it has ended).
        context = contextvars.copy_context()
        context.run(bind_request, None)
        # The task runs `work` itself, so a task cancelled before its first step still closes the coroutine.
        task = asyncio.create_task(work, name=name, context=context)
        self._tasks.add(task)
        task.add_done_callback(self._finished, context=context)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("background task %s failed", task.get_name(), exc_info=error)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def wait(self) -> None:
        """Until no task is left, including tasks started by the ones awaited."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        """Start nothing more, cancel what is still running and wait for it to stop (shutdown)."""
        self._closing = True
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)
