"""services/background.py: what the app hands over at the end of a request, and how shutdown leaves nothing behind."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest

from threadline.services.background import Background


async def _forever(started: list[str]) -> None:
    started.append("started")
    await asyncio.Event().wait()


def _never_awaited(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "never awaited" in str(w.message)]


async def test_shutdown_cancels_running_work_and_work_that_had_not_started_yet() -> None:
    background = Background()
    started: list[str] = []
    running = background.spawn(_forever(started), name="running")
    await asyncio.sleep(0)  # `running` reaches its wait; the next one is cancelled before its first step
    waiting = background.spawn(_forever(started), name="not started")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await background.aclose()
        assert running is not None and running.cancelled()
        assert waiting is not None and waiting.cancelled()
        del running, waiting
        gc.collect()
    assert started == ["started"] and background.pending == 0
    # A coroutine left unawaited is a warning at garbage collection, an error in any later test (filterwarnings).
    assert _never_awaited(caught) == []


async def test_work_handed_over_during_shutdown_is_not_started() -> None:
    background = Background()
    started: list[str] = []
    await background.aclose()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert background.spawn(_forever(started), name="too late") is None
        gc.collect()
    assert started == [] and background.pending == 0
    assert _never_awaited(caught) == []


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
