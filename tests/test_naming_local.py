"""generateName end to end with the real embedded model (SmolLM2-135M through llama.cpp), on both backends."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Caller
from tests.responses_helpers import sse_events, thread_messages, turn
from threadline.domain.threads import TITLE_MAX_CHARS

pytestmark = [pytest.mark.slow, pytest.mark.app_settings(local_model_enabled=True, local_context_window=2048)]


async def test_the_embedded_model_names_a_real_conversation(client: httpx.AsyncClient, caller: Caller) -> None:
    answered = await turn(
        client, caller, "How do I bake sourdough bread at home?", thread="bread", maxOutputTokens=32, temperature=0
    )
    assert answered.status_code == 200, answered.text
    assert answered.json()["model"] == "smollm2-135m-instruct"
    before = await client.get("/v1/threads/bread", headers=caller.headers)
    assert before.json()["title"] is None
    messages = await thread_messages(client, caller, "bread")

    response = await client.post("/v1/threads/bread/generateName", json={"stream": True}, headers=caller.headers)

    assert response.status_code == 200, response.text
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names[-1] == "thread.name.completed", events[-1]
    assert set(names[:-1]) <= {"thread.name.delta"}
    title = events[-1][1]["thread"]["title"]
    assert isinstance(title, str) and 0 < len(title) <= TITLE_MAX_CHARS
    assert title == title.strip() and "\n" not in title
    saved = (await client.get("/v1/threads/bread", headers=caller.headers)).json()
    assert saved["title"] == title != before.json()["title"]
    assert await thread_messages(client, caller, "bread") == messages
