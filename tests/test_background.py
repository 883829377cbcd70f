"""services/background.py: what the app hands over at the end of a request, and how shutdown leaves nothing behind."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from threadline.services.background import Background


async def _forever(started: list[str]) -> None:
    started.append("started")
    await asyncio.Event().wait()


async def test_shutdown_cancels_running_work_and_work_that_had_not_started_yet() -> None:
    background = Background()
    started: list[str] = []
    running, waiting = _forever(started), _forever(started)
    assert background.spawn(running, name="running") is not None
    await asyncio.sleep(0)  # `running` reaches its wait; `waiting` is cancelled before its first step
    assert background.spawn(waiting, name="not started") is not None
    await background.aclose()
    assert started == ["started"] and background.pending == 0
    # Both coroutines are closed: one never started would be "never awaited" when collected (a RuntimeWarning,
    # an error in whatever test is running then, under filterwarnings = error).
    assert inspect.getcoroutinestate(running) == inspect.CORO_CLOSED
    assert inspect.getcoroutinestate(waiting) == inspect.CORO_CLOSED


async def test_work_handed_over_during_shutdown_is_not_started() -> None:
    background = Background()
    started: list[str] = []
    await background.aclose()
    late = _forever(started)
    assert background.spawn(late, name="too late") is None
    assert inspect.getcoroutinestate(late) == inspect.CORO_CLOSED
    assert started == [] and background.pending == 0


async def test_a_failure_is_logged_and_the_task_forgotten(caplog: pytest.LogCaptureFixture) -> None:
    background = Background()

    async def fails() -> None:
        raise RuntimeError("boom")

    background.spawn(fails(), name="failing")
    await background.wait()
    (record,) = [r for r in caplog.records if r.name == "threadline.background"]
    assert record.getMessage() == "background task failing failed"
    assert record.exc_info is not None and str(record.exc_info[1]) == "boom"
    assert background.pending == 0
