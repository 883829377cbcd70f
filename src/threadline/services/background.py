"""Work that outlives the request that started it (auto-naming after a turn), tracked by the app.

Tasks are kept here so the app can cancel them at shutdown (before the engine they use is disposed), and so
tests can wait for them deterministically. A task's failure is logged, never raised to anyone.
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

    def spawn(self, work: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        # The app's observer carries over; the request that started the work does not (it has ended).
        context = contextvars.copy_context()
        context.run(bind_request, None)
        task = asyncio.create_task(self._logged(work, name), name=name, context=context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    async def _logged(work: Coroutine[Any, Any, None], name: str) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("background task %s failed", name)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def wait(self) -> None:
        """Until no task is left, including tasks started by the ones awaited."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel what is still running and wait for it to stop (shutdown)."""
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)
