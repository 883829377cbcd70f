"""`auto_name_threads`: a thread is named in the background after its first exchange (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import Caller
from tests.responses_helpers import sse_events, thread_messages, turn
from threadline.config import Settings
from threadline.providers.fake import FakeProvider, Script
from threadline.services.background import Background

pytestmark = [pytest.mark.fake_model(), pytest.mark.app_settings(auto_name_threads=True)]


def _background(app: FastAPI) -> Background:
    background: Background = app.state.background
    return background


async def _until_calls(fake: FakeProvider, count: int) -> None:
    """Wait (bounded) until the model has been called `count` times: the background turn is in flight."""
    for _ in range(1000):
        if len(fake.calls) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the model was called {len(fake.calls)} times, not {count}")


async def _title(client: httpx.AsyncClient, caller: Caller, thread_id: str) -> str | None:
    response = await client.get(f"/v1/threads/{thread_id}", headers=caller.headers)
    assert response.status_code == 200, response.text
    title: str | None = response.json()["title"]
    return title


async def test_the_first_exchange_names_the_thread(
    app: FastAPI, client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    fake.script(Script(reply="Sure, here is how."), Script(reply='"Cooking pasta at home."'))
    response = await turn(client, caller, "How do I cook pasta?")
    assert response.status_code == 200, response.text
    assert response.json()["output_text"] == "Sure, here is how."  # the turn's own answer is untouched
    thread_id = response.json()["thread_id"]

    await _background(app).wait()

    assert await _title(client, caller, thread_id) == "Cooking pasta at home"
    assert "User: How do I cook pasta?" in fake.calls[-1][1].content
    assert [m["role"] for m in await thread_messages(client, caller, thread_id)] == ["user", "assistant"]
    hidden = (await client.get("/v1/threads", params={"visibleInUi": "false"}, headers=caller.headers)).json()
    assert [t["metadata"]["source_thread_id"] for t in hidden["data"]] == [thread_id]


async def test_later_turns_and_titled_threads_are_not_named(
    app: FastAPI, client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    # A thread created with a title keeps it.
    await client.post("/v1/threads", json={"id": "titled", "title": "Mine"}, headers=caller.headers)
    assert (await turn(client, caller, "hello", thread="titled")).status_code == 200
    await _background(app).wait()
    assert await _title(client, caller, "titled") == "Mine"
    assert len(fake.calls) == 1

    # A thread whose first exchange is over is not named on its next turns, even untitled.
    fake.script(Script(reply="answer"), Script(reply="Auto title"))
    assert (await turn(client, caller, "first", thread="chat")).status_code == 200
    await _background(app).wait()
    assert await _title(client, caller, "chat") == "Auto title"
    await client.put("/v1/threads/chat/rename", json={"title": None}, headers=caller.headers)
    calls = len(fake.calls)
    assert (await turn(client, caller, "second", thread="chat")).status_code == 200
    await _background(app).wait()
    assert await _title(client, caller, "chat") is None
    assert len(fake.calls) == calls + 1  # the turn only


async def test_hidden_threads_are_not_named(
    app: FastAPI, client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    response = await turn(client, caller, "background job", store=False)
    assert response.status_code == 200
    await _background(app).wait()
    assert await _title(client, caller, response.json()["thread_id"]) is None
    assert len(fake.calls) == 1


async def test_a_streamed_first_exchange_is_named_too(
    app: FastAPI, client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    fake.script(Script(reply="Streaming answer"), Script(reply="Streamed chat"))
    response = await turn(client, caller, "stream please", stream=True)
    events = sse_events(response.text)
    assert events[-1][0] == "response.completed"
    thread_id = events[-1][1]["response"]["thread_id"]
    await _background(app).wait()
    assert await _title(client, caller, thread_id) == "Streamed chat"


async def test_a_failed_naming_is_logged_and_leaves_the_turn_alone(
    app: FastAPI, client: httpx.AsyncClient, caller: Caller, fake: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    fake.script(Script(reply="fine answer"), Script(fail="before"))
    response = await turn(client, caller, "hello")
    assert response.status_code == 200 and response.json()["status"] == "completed"
    thread_id = response.json()["thread_id"]
    await _background(app).wait()
    assert await _title(client, caller, thread_id) is None
    assert any("auto-naming thread" in record.getMessage() for record in caplog.records)
    # The thread is free: the next turn runs at once.
    assert (await turn(client, caller, "again", thread=thread_id)).status_code == 200


async def test_a_title_set_while_naming_runs_wins(
    app: FastAPI, client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    fake.script(Script(reply="answer"), Script(reply="Slow auto title", delay_per_token=0.05))
    response = await turn(client, caller, "hello", thread="raced")
    assert response.status_code == 200
    await _until_calls(fake, 2)  # the naming turn has reached the model
    renamed = await client.put("/v1/threads/raced/rename", json={"title": "User's choice"}, headers=caller.headers)
    assert renamed.status_code == 200
    await _background(app).wait()
    assert await _title(client, caller, "raced") == "User's choice"


async def test_the_users_next_turn_is_not_blocked_by_naming(
    app: FastAPI, client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    fake.script(Script(reply="answer"), Script(fail="hang"), Script(reply="second answer"))
    assert (await turn(client, caller, "first", thread="busy")).status_code == 200
    await _until_calls(fake, 2)  # the naming turn hangs in the model…
    second = await turn(client, caller, "second", thread="busy")
    assert second.status_code == 200, second.text  # …and the thread itself is free
    assert second.json()["output_text"] == "second answer"
    assert len(fake.calls) == 3 and await _title(client, caller, "busy") is None
    # The hung naming turn is still running: shutting the app down cancels it (the fixture's teardown).
    assert _background(app).pending >= 1


@pytest.mark.app_settings(auto_name_threads=False)
async def test_off_by_default_nothing_is_named(
    app: FastAPI, client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    assert Settings.model_fields["auto_name_threads"].default is False
    response = await turn(client, caller, "hello")
    await _background(app).wait()
    assert await _title(client, caller, response.json()["thread_id"]) is None
    assert len(fake.calls) == 1
    assert app.state.turns.observer is None


async def test_only_turns_that_follow_no_answer_of_their_thread_reach_the_namer(
    app: FastAPI, client: httpx.AsyncClient, caller: Caller, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn whose context held an answer of its own thread is no first exchange: the namer is not told (no
    session, no reads). A fork's first turn is told, though its context holds its source's answers."""
    namer = app.state.turns.observer
    heard: list[str | None] = []

    def turn_saved(principal: Any, stored: Any) -> None:
        heard.append(stored.thread_id)
        original(principal, stored)

    original = namer.turn_saved
    monkeypatch.setattr(namer, "turn_saved", turn_saved)
    fake.script(Script(reply="answer"), Script(reply="Auto title"), Script(reply="again"))
    assert (await turn(client, caller, "first", thread="chat")).status_code == 200
    await _background(app).wait()
    assert await _title(client, caller, "chat") == "Auto title"
    assert (await turn(client, caller, "second", thread="chat")).status_code == 200
    await _background(app).wait()
    assert heard == ["chat"]

    fake.script(Script(reply="forked answer"), Script(reply="Fork title"))
    forked = await client.post("/v1/threads/chat/fork", json={}, headers=caller.headers)
    assert forked.status_code == 200, forked.text
    fork_id = forked.json()["id"]
    await client.put(f"/v1/threads/{fork_id}/rename", json={"title": None}, headers=caller.headers)  # it took chat's
    assert (await turn(client, caller, "on the fork", thread=fork_id)).status_code == 200
    await _background(app).wait()
    assert heard == ["chat", fork_id]
    assert await _title(client, caller, fork_id) == "Fork title"
