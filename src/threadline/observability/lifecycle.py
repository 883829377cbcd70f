"""Draining: what a process does between SIGTERM and exit.

Readiness turns 503 and no new turn starts; the requests already running (turns, streams) get up to a grace period
to finish; whatever still runs then is cancelled, which settles its turn as failed and releases its thread's lease
(turns/run.py, turns/save.py), so no thread is left `streaming`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import anyio

logger = logging.getLogger("threadline.lifecycle")

# After the grace: how long cancelled requests get to record their failure before the process goes on exiting.
_SETTLE_SECONDS = 10.0


class Lifecycle:
    def __init__(self) -> None:
        self.draining = False
        self._running: set[anyio.CancelScope] = set()
        self._idle: asyncio.Event | None = None

    @property
    def running(self) -> int:
        return len(self._running)

    @contextlib.contextmanager
    def track(self) -> Iterator[anyio.CancelScope]:
        """Run one request under a cancel scope that `drain` cancels once the grace is over."""
        with anyio.CancelScope() as scope:
            self._running.add(scope)
            try:
                yield scope
            finally:
                self._running.discard(scope)
                if not self._running and self._idle is not None:
                    self._idle.set()

    async def drain(self, grace_seconds: float) -> int:
        """Stop starting turns, let running requests finish for up to `grace_seconds`, then cancel the rest and
        wait (briefly) for them to settle. Returns how many were cancelled."""
        self.draining = True
        self._idle = asyncio.Event()
        if self._running:
            logger.info("draining: waiting up to %gs for %d running request(s)", grace_seconds, len(self._running))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_seconds):
                    await self._idle.wait()
        cancelled = len(self._running)
        if cancelled:
            logger.warning("draining: grace over, stopping %d running request(s)", cancelled)
            for scope in list(self._running):
                scope.cancel()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_SETTLE_SECONDS):
                    await self._idle.wait()
        logger.info("draining: done")
        return cancelled
