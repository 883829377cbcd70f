"""POST /v1/threads/{id}/generateName end to end, on SQLite and PostgreSQL, with a scripted FakeProvider."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Caller
from tests.helpers import refused
from tests.responses_helpers import sse_events, thread_messages, turn
from threadline.domain.naming import INSTRUCTION
from threadline.providers.fake import FakeProvider, Script

pytestmark = pytest.mark.fake_model(model_names=("fake-model", "fake-small"))


async def _conversation(client: httpx.AsyncClient, caller: Caller, thread_id: str = "chat-1") -> str:
    for text in ("What is Python?", "Show me a loop"):
        response = await turn(client, caller, text, thread=thread_id)
        assert response.status_code == 200, response.text
    return thread_id


async def _name(client: httpx.AsyncClient, caller: Caller, thread_id: str, **body: Any) -> httpx.Response:
    return await client.post(f"/v1/threads/{thread_id}/generateName", json=body, headers=caller.headers)


async def _thread(client: httpx.AsyncClient, caller: Caller, thread_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/threads/{thread_id}", headers=caller.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _hidden_threads(client: httpx.AsyncClient, caller: Caller) -> list[dict[str, Any]]:
    response = await client.get("/v1/threads", params={"visible_in_ui": "false"}, headers=caller.headers)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def test_generate_name_saves_a_clean_title_asked_on_a_hidden_thread(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    thread_id = await _conversation(client, caller)
    before = await thread_messages(client, caller, thread_id)
    fake.script(Script(reply='**"Python loops for beginners."**'))

    response = await _name(client, caller, thread_id)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == thread_id and body["object"] == "thread"
    assert body["title"] == "Python loops for beginners"
    assert (await _thread(client, caller, thread_id))["title"] == "Python loops for beginners"
    # The model was asked with the instruction and the conversation's start, with a small budget, cool.
    prompt = fake.calls[-1]
    assert [m.role for m in prompt] == ["system", "user"]
    assert prompt[0].content == INSTRUCTION
    assert "User: What is Python?" in prompt[1].content
    assert "Assistant: echo: What is Python?" in prompt[1].content
    assert "User: Show me a loop" in prompt[1].content
    assert fake.params[-1].max_output_tokens == 24 and fake.params[-1].temperature == 0.2
    # Nothing visible was added: the thread has its messages only, and no new thread is listed.
    assert await thread_messages(client, caller, thread_id) == before
    listed = (await client.get("/v1/threads", headers=caller.headers)).json()["data"]
    assert [t["id"] for t in listed] == [thread_id]
    # The naming turn lives on a hidden thread that says what it is for.
    hidden = await _hidden_threads(client, caller)
    assert len(hidden) == 1
    assert hidden[0]["visible_in_ui"] is False
    assert hidden[0]["metadata"] == {"purpose": "generate_name", "source_thread_id": thread_id}
    saved = await thread_messages(client, caller, hidden[0]["id"])
    assert [m["role"] for m in saved] == ["system", "user", "assistant"]
    assert saved[-1]["content"] == '**"Python loops for beginners."**'


async def test_request_options_reach_the_model(client: httpx.AsyncClient, caller: Caller, fake: FakeProvider) -> None:
    thread_id = await _conversation(client, caller)
    fake.script(Script(reply="Loops"))
    response = await _name(client, caller, thread_id, model="fake-small", maxOutputTokens=5, temperature=0)
    assert response.status_code == 200, response.text
    assert fake.params[-1].max_output_tokens == 5 and fake.params[-1].temperature == 0
    hidden = await _hidden_threads(client, caller)
    assert hidden[0]["last_model_used"] == "fake-small"


async def test_without_a_model_the_threads_last_model_names_it(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    assert (await turn(client, caller, "hello", thread="small-chat", model="fake-small")).status_code == 200
    fake.script(Script(reply="Greetings"))
    assert (await _name(client, caller, "small-chat")).status_code == 200
    hidden = await _hidden_threads(client, caller)
    assert hidden[0]["last_model_used"] == "fake-small"


async def test_renaming_again_replaces_the_title(client: httpx.AsyncClient, caller: Caller, fake: FakeProvider) -> None:
    thread_id = await _conversation(client, caller)
    fake.script(Script(reply="First title"), Script(reply="Second title"))
    assert (await _name(client, caller, thread_id)).json()["title"] == "First title"
    assert (await _name(client, caller, thread_id)).json()["title"] == "Second title"
    assert len(await _hidden_threads(client, caller)) == 2


@pytest.mark.parametrize("reply", ["", '"" **', "..."])
async def test_an_answer_without_a_title_is_a_502_and_saves_nothing(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider, reply: str
) -> None:
    thread_id = await _conversation(client, caller)
    await client.put(f"/v1/threads/{thread_id}/rename", json={"title": "Kept"}, headers=caller.headers)
    fake.script(Script(reply=reply))
    response = await _name(client, caller, thread_id)
    refused(response, 502, "generated_name_empty")
    assert (await _thread(client, caller, thread_id))["title"] == "Kept"


@pytest.mark.parametrize("fail", ["before", "mid"])
async def test_an_upstream_failure_is_a_502_and_leaves_the_title(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider, fail: str
) -> None:
    thread_id = await _conversation(client, caller)
    await client.put(f"/v1/threads/{thread_id}/rename", json={"title": "Kept"}, headers=caller.headers)
    fake.script(Script(reply="A new title", fail=fail))  # type: ignore[arg-type]
    response = await _name(client, caller, thread_id)
    refused(response, 502, "upstream_error")
    assert (await _thread(client, caller, thread_id))["title"] == "Kept"
    # The naming turn is recorded as failed on its hidden thread, which kept no messages.
    hidden = await _hidden_threads(client, caller)
    assert await thread_messages(client, caller, hidden[0]["id"]) == []
    assert hidden[0]["status"] == "inactive"


async def test_streaming_sends_the_title_as_it_is_generated_then_the_thread(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    thread_id = await _conversation(client, caller)
    fake.script(Script(reply='"Python loops explained."'))
    response = await _name(client, caller, thread_id, stream=True)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names == ["thread.name.delta"] * (len(events) - 1) + ["thread.name.completed"]
    assert len(events) >= 3  # the title arrived in pieces, before the end
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert all(data["type"] == name for name, data in events)
    deltas = "".join(data["delta"] for _, data in events[:-1])
    assert deltas == "Python loops explained"
    completed = events[-1][1]["thread"]
    assert completed["id"] == thread_id and completed["title"] == "Python loops explained"
    assert (await _thread(client, caller, thread_id))["title"] == "Python loops explained"


async def test_a_failed_stream_ends_with_an_error_and_leaves_the_title(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    thread_id = await _conversation(client, caller)
    fake.script(Script(reply="Half a title", fail="mid", fail_after_tokens=2))
    response = await _name(client, caller, thread_id, stream=True)
    assert response.status_code == 200
    events = sse_events(response.text)
    assert [name for name, _ in events] == ["thread.name.delta", "thread.name.delta", "thread.name.failed"]
    failed = events[-1][1]
    assert failed["error"]["code"] == "upstream_error"
    assert failed["error"]["type"] == "api_error"
    assert set(failed["error"]) == {"message", "type", "param", "code"}
    assert (await _thread(client, caller, thread_id))["title"] is None


async def test_a_stream_whose_answer_holds_no_title_fails(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    thread_id = await _conversation(client, caller)
    fake.script(Script(reply="..."))
    events = sse_events((await _name(client, caller, thread_id, stream=True)).text)
    assert [name for name, _ in events] == ["thread.name.failed"]
    assert events[0][1]["error"]["code"] == "generated_name_empty"


async def test_errors_found_before_the_model_answer_as_json_when_streaming(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    await client.post("/v1/threads", json={"id": "empty"}, headers=caller.headers)
    response = await _name(client, caller, "empty", stream=True)
    refused(response, 400, "thread_empty")
    assert fake.calls == []


async def test_a_thread_without_conversation_is_a_400(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    await client.post("/v1/threads", json={"id": "empty"}, headers=caller.headers)
    response = await _name(client, caller, "empty")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "thread_empty" and error["param"] == "thread_id"
    # A system message alone is no conversation either.
    added = await client.post(
        "/v1/threads/empty/messages", json={"role": "system", "content": "Be brief."}, headers=caller.headers
    )
    assert added.status_code == 200, added.text
    assert (await _name(client, caller, "empty")).json()["error"]["code"] == "thread_empty"
    assert fake.calls == []
    assert await _hidden_threads(client, caller) == []


async def test_missing_and_other_organizations_threads_are_404(
    client: httpx.AsyncClient, caller: Caller, other_caller: Caller, fake: FakeProvider
) -> None:
    thread_id = await _conversation(client, caller)
    calls = len(fake.calls)
    for who, target in ((other_caller, thread_id), (caller, "no-such-thread")):
        response = await _name(client, who, target)
        refused(response, 404, "thread_not_found")
    assert len(fake.calls) == calls


async def test_archived_threads_are_409_and_locked_ones_can_be_named(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    locked = await _conversation(client, caller, "locked-chat")
    await client.patch(f"/v1/threads/{locked}", json={"state": "locked"}, headers=caller.headers)
    fake.script(Script(reply="Locked but named"))
    response = await _name(client, caller, locked)
    assert response.status_code == 200, response.text
    assert response.json()["title"] == "Locked but named" and response.json()["state"] == "locked"

    archived = await _conversation(client, caller, "archived-chat")
    await client.patch(f"/v1/threads/{archived}", json={"state": "archived"}, headers=caller.headers)
    calls = len(fake.calls)
    response = await _name(client, caller, archived)
    refused(response, 409, "thread_archived")
    assert len(fake.calls) == calls


async def test_an_unknown_model_is_a_404_naming_the_served_ones(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    thread_id = await _conversation(client, caller)
    response = await _name(client, caller, thread_id, model="gpt-9")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and "fake-model" in error["message"]


async def test_bad_bodies_are_400(client: httpx.AsyncClient, caller: Caller) -> None:
    thread_id = await _conversation(client, caller)
    for body in ({"maxOutputTokens": 0}, {"temperature": 3}, {"title": "x"}):
        response = await _name(client, caller, thread_id, **body)
        assert response.status_code == 400, body


async def test_no_body_at_all_is_fine(client: httpx.AsyncClient, caller: Caller, fake: FakeProvider) -> None:
    thread_id = await _conversation(client, caller)
    fake.script(Script(reply="Bodiless"))
    response = await client.post(f"/v1/threads/{thread_id}/generateName", headers=caller.headers)
    assert response.status_code == 200, response.text
    assert response.json()["title"] == "Bodiless"


async def test_an_idempotency_key_names_once(client: httpx.AsyncClient, caller: Caller, fake: FakeProvider) -> None:
    thread_id = await _conversation(client, caller)
    fake.script(Script(reply="Named once"), Script(reply="Named twice"))
    headers = {**caller.headers, "Idempotency-Key": "name-1"}
    first = await client.post(f"/v1/threads/{thread_id}/generateName", json={}, headers=headers)
    calls = len(fake.calls)
    again = await client.post(f"/v1/threads/{thread_id}/generateName", json={}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and first.json()["title"] == "Named once"
    assert len(fake.calls) == calls
