"""POST /v1/model/response end to end, on SQLite and PostgreSQL, with a scripted FakeProvider."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from tests.conftest import Caller
from tests.helpers import refused
from tests.responses_helpers import prefill, thread_messages, turn, user
from threadline.domain.clock import utcnow
from threadline.providers.fake import FakeProvider
from threadline.storage.repositories.messages import MessageRepository
from threadline.storage.tables import Assistant, Message, Response

pytestmark = pytest.mark.fake_model()


async def test_turn_without_thread_creates_one_and_saves_both_sides(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    response = await turn(client, caller, "Hello there")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("resp_")
    assert body["object"] == "response"
    assert body["status"] == "completed"
    assert body["model"] == "fake-model"
    assert body["created_at"].endswith("Z") and body["completed_at"].endswith("Z")  # Freddy: ISO-8601 UTC
    assert body["output"] == [{"role": "assistant", "texts": [{"text": "echo: Hello there"}]}]
    # words: "Hello there" = 2 + 4 framing + 1 for the role, +3 priming; output "echo: Hello there" = 3 words
    assert body["usage"] == {"input_tokens": 10, "output_tokens": 3, "total_tokens": 13}
    assert body["context"]["mode"] == "recent"
    assert body["context"]["window"] == 1000
    assert body["context"]["messages_included"] == 0

    thread = (await client.get(f"/v1/threads/{body['thread_id']}", headers=caller.headers)).json()
    assert thread["message_count"] == 2
    assert thread["last_model_used"] == "fake-model"
    assert thread["status"] == "inactive"
    assert thread["visible_in_ui"] is True
    saved = await thread_messages(client, caller, body["thread_id"])
    assert [(m["role"], m["content"]) for m in saved] == [("user", "Hello there"), ("assistant", "echo: Hello there")]
    assert [m["token_count"] for m in saved] == [7, 8]
    assert all(m["response_id"] == body["id"] for m in saved)

    again = await client.get(f"/v1/model/response/{body['id']}", headers=caller.headers)
    assert again.status_code == 200
    assert again.json() == body


async def test_get_response_is_scoped_to_the_organization(
    client: httpx.AsyncClient, caller: Caller, other_caller: Caller
) -> None:
    body = (await turn(client, caller, "hi")).json()
    response = await client.get(f"/v1/model/response/{body['id']}", headers=other_caller.headers)
    refused(response, 404, "response_not_found")


async def test_thread_id_string_is_created_then_continued_with_history(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    first = await turn(client, caller, "What is Python?", thread="thread_chat_001")
    assert first.status_code == 200, first.text
    assert first.json()["thread_id"] == "thread_chat_001"
    second = await turn(client, caller, "Show an example", thread="thread_chat_001", maxOutputTokens=50)
    assert second.status_code == 200, second.text
    assert [(m.role, m.content) for m in fake.calls[1]] == [
        ("user", "What is Python?"),
        ("assistant", "echo: What is Python?"),
        ("user", "Show an example"),
    ]
    assert fake.params[1].max_output_tokens == 50
    assert second.json()["context"]["messages_included"] == 2
    assert len(await thread_messages(client, caller, "thread_chat_001")) == 4


async def test_thread_object_sets_metadata_and_store_false_hides_the_thread(
    client: httpx.AsyncClient, caller: Caller
) -> None:
    created = await turn(
        client, caller, "hi", thread={"id": "support_user123_t789", "metadata": {"userId": "user_123"}}
    )
    assert created.status_code == 200, created.text
    thread = (await client.get("/v1/threads/support_user123_t789", headers=caller.headers)).json()
    assert thread["metadata"] == {"userId": "user_123"}

    hidden = (await turn(client, caller, "Generate a title", store=False)).json()
    fetched = await client.get(f"/v1/threads/{hidden['thread_id']}", headers=caller.headers)
    assert fetched.status_code == 200 and fetched.json()["visible_in_ui"] is False
    listed = (await client.get("/v1/threads", headers=caller.headers)).json()["data"]
    assert [t["id"] for t in listed] == ["support_user123_t789"]
    hidden_list = (await client.get("/v1/threads?visibleInUi=false", headers=caller.headers)).json()["data"]
    assert [t["id"] for t in hidden_list] == [hidden["thread_id"]]


async def test_thread_state_locks_after_the_turn_and_locked_threads_refuse_turns(
    client: httpx.AsyncClient, caller: Caller
) -> None:
    response = await turn(client, caller, "final words", thread="t_lock", threadState="locked")
    assert response.status_code == 200, response.text
    thread = (await client.get("/v1/threads/t_lock", headers=caller.headers)).json()
    assert thread["state"] == "locked" and thread["message_count"] == 2
    refusal = await turn(client, caller, "more", thread="t_lock")
    refused(refusal, 409, "thread_locked")
    await client.patch("/v1/threads/t_lock", json={"state": "archived"}, headers=caller.headers)
    refusal = await turn(client, caller, "more", thread="t_lock")
    refused(refusal, 409, "thread_archived")


async def test_previous_response_id_chains_without_copying_history(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider, app: FastAPI
) -> None:
    first = (await turn(client, caller, "Hello")).json()
    second = await turn(client, caller, "Tell me more", previousResponseId=first["id"])
    assert second.status_code == 200, second.text
    body = second.json()
    assert body["previous_response_id"] == first["id"]
    # The chain continues in a hidden chain thread forked from the first response's thread, which gains nothing.
    assert body["thread_id"] != first["thread_id"]
    assert [m.content for m in fake.calls[1]] == ["Hello", "echo: Hello", "Tell me more"]
    assert body["context"]["seq_ranges"] == [[1, 2]]
    assert body["context"]["context_segments"] == [{"thread_id": first["thread_id"], "first_seq": 1, "last_seq": 2}]
    third = await turn(client, caller, "And then?", previous_response_id=body["id"])
    assert third.status_code == 200
    assert third.json()["thread_id"] == body["thread_id"]
    # Each response points into its thread by seq range instead of holding a copy of the history; the chain
    # numbers its messages on from where it forked.
    async with app.state.sessionmaker() as session:
        rows = (await session.execute(sa.select(Response).order_by(Response.created_at))).scalars().all()
    assert [(r.input_first_seq, r.input_last_seq, r.output_seq) for r in rows] == [(1, 1, 2), (3, 3, 4), (5, 5, 6)]
    assert [r.thread_id for r in rows] == [first["thread_id"], body["thread_id"], body["thread_id"]]

    both = await turn(client, caller, "x", previousResponseId=first["id"], thread="t1")
    refused(both, 400, "thread_with_previous_response")
    missing = await turn(client, caller, "x", previousResponseId="resp_nope")
    refused(missing, 404, "previous_response_not_found")


async def test_previous_response_older_than_the_chain_window_is_refused(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI
) -> None:
    first = (await turn(client, caller, "Hello")).json()
    async with app.state.sessionmaker() as session:
        await session.execute(
            sa.update(Response).where(Response.id == first["id"]).values(created_at=utcnow() - timedelta(hours=25))
        )
        await session.commit()
    response = await turn(client, caller, "more", previousResponseId=first["id"])
    refused(response, 400, "previous_response_expired")


async def test_unknown_model_names_the_available_ones(client: httpx.AsyncClient, caller: Caller) -> None:
    response = await turn(client, caller, "hi", model="gpt-17")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found"
    assert "fake-model" in error["message"]


async def test_invalid_requests_are_400(client: httpx.AsyncClient, caller: Caller, fake: FakeProvider) -> None:
    """Each refusal names its field, and none of them calls the model or creates a thread."""

    def refused(response: httpx.Response, code: str, param: str) -> None:
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["code"], error["param"]) == (code, param), error

    response = await client.post("/v1/model/response", json={"inputs": []}, headers=caller.headers)
    refused(response, "invalid_value", "inputs")
    response = await client.post(
        "/v1/model/response", json={"inputs": [{"role": "robot", "texts": [{"text": "x"}]}]}, headers=caller.headers
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "inputs.0.role", response.text
    refused(await turn(client, caller, "x", thread="bad id with spaces"), "invalid_thread_id", "thread")
    response = await turn(client, caller, "x", thread_context_mode="everything")
    assert response.status_code == 400 and response.json()["error"]["param"] == "thread_context_mode", response.text
    assert fake.calls == []
    listed = await client.get("/v1/threads", params={"include_deleted": "true"}, headers=caller.headers)
    assert listed.json()["data"] == []


async def test_assistant_defaults_apply_and_request_fields_override_them(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider, app: FastAPI
) -> None:
    now = utcnow()
    async with app.state.sessionmaker() as session:
        session.add(
            Assistant(
                organization_id=caller.organization_id,
                id="asst_helper",
                model="fake-model",
                instructions="You are terse.",
                thread_context_mode="smart",
                temperature=0.3,
                max_output_tokens=40,
                metadata_={},
                created_at=now,
                updated_at=now,
            )
        )
        await session.commit()
    created = await client.post(
        "/v1/threads", json={"id": "t_asst", "assistantId": "asst_helper"}, headers=caller.headers
    )
    assert created.status_code == 200, created.text
    body = (await turn(client, caller, "hi", thread="t_asst")).json()
    assert fake.calls[0][0].role == "system" and fake.calls[0][0].content == "You are terse."
    assert fake.params[0].temperature == 0.3 and fake.params[0].max_output_tokens == 40
    assert body["context"]["mode"] == "smart"
    await turn(client, caller, "again", thread="t_asst", temperature=1.0, threadContextMode="recent")
    assert fake.calls[1][0].content == "You are terse."  # instructions always stay
    assert fake.params[1].temperature == 1.0
    # The instructions are not saved as a thread message: they come from the assistant every turn.
    assert [m["role"] for m in await thread_messages(client, caller, "t_asst")] == ["user", "assistant"] * 2


@pytest.mark.fake_model(context_window=60)
async def test_context_window_keeps_recent_messages_and_full_mode_refuses(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    for text in ("one two three four five six", "seven eight nine ten", "eleven twelve"):
        assert (await turn(client, caller, text, thread="t_ctx", maxOutputTokens=10)).status_code == 200
    # History costs (words + 4 framing + 1 role): 11, 12, 9, 10, 7, 8. Budget = 60 - 10 reserve - 3 priming
    # - 6 input = 41: the newest four fit (34), the fifth would not (46).
    response = await turn(client, caller, "last", thread="t_ctx", maxOutputTokens=10)
    report = response.json()["context"]
    assert report["history_budget"] == 41
    assert report["messages_included"] == 4 and report["messages_omitted"] == 2
    assert report["seq_ranges"] == [[3, 6]]
    assert fake.calls[-1][0].content == "seven eight nine ten"

    refusal = await turn(client, caller, "all", thread="t_ctx", maxOutputTokens=10, threadContextMode="full")
    refused(refusal, 400, "context_length_exceeded")
    too_big = await turn(client, caller, " ".join(["w"] * 60), thread="t_ctx")
    refused(too_big, 400, "context_length_exceeded")
    thread = (await client.get("/v1/threads/t_ctx", headers=caller.headers)).json()
    assert thread["message_count"] == 8 and thread["status"] == "inactive"


async def test_counts_are_computed_once_and_stored(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider, app: FastAPI
) -> None:
    await client.post("/v1/threads", json={"id": "t_counts"}, headers=caller.headers)
    for text in ("a b c", "d e"):
        added = await client.post(
            "/v1/threads/t_counts/messages", json={"role": "user", "content": text}, headers=caller.headers
        )
        assert added.status_code == 200
    async with app.state.sessionmaker() as session:
        # One message carries a count from another tokenizer: it must be recounted, not trusted.
        await session.execute(sa.update(Message).where(Message.seq == 1).values(token_count=99, tokenizer="o200k"))
        await session.commit()
    response = await turn(client, caller, "hi", thread="t_counts")
    assert response.status_code == 200
    async with app.state.sessionmaker() as session:
        rows = (await session.execute(sa.select(Message).order_by(Message.seq))).scalars().all()
    assert [(r.token_count, r.tokenizer) for r in rows] == [(8, "words"), (7, "words"), (6, "words"), (7, "words")]


async def test_usage_and_input_tokens_are_reported(client: httpx.AsyncClient, caller: Caller) -> None:
    body = (
        await client.post(
            "/v1/model/response",
            json={"inputs": [{"role": "system", "texts": [{"text": "Be nice"}]}, user("hi")]},
            headers=caller.headers,
        )
    ).json()
    # (2 words + 4 framing + 1 role) + (1 + 4 + 1) + 3 priming
    assert body["context"]["input_tokens"] == 16
    assert body["usage"]["input_tokens"] == 16


async def test_a_turn_reads_only_the_tail_it_can_use(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider, app: FastAPI
) -> None:
    await client.post("/v1/threads", json={"id": "t_long"}, headers=caller.headers)
    await prefill(app, caller, "t_long", 500)
    # Every message costs 1 word + 4 framing + 1 role = 6 tokens; budget = 1000 - 10 - 3 - 6 = 981 → the newest
    # 163 fit.
    body = (await turn(client, caller, "next", thread="t_long", maxOutputTokens=10)).json()
    assert body["context"]["messages_included"] == 163
    assert body["context"]["messages_omitted"] == 337
    assert body["context"]["seq_ranges"] == [[338, 500]]
    async with app.state.sessionmaker() as session:
        counted = (await session.execute(sa.select(Message.seq).where(Message.token_count.is_not(None)))).scalars()
        counted_seqs = set(counted)
    # The oldest messages were never read, so never counted.
    assert 1 not in counted_seqs and 500 in counted_seqs and 338 in counted_seqs

    smart = (await turn(client, caller, "again", thread="t_long", maxOutputTokens=10, threadContextMode="smart")).json()
    prompt = [m.content for m in fake.calls[-1]]
    assert prompt[:2] == ["m1", "m2"]  # the conversation's start
    assert prompt[2].startswith("[… ") and "earlier messages omitted" in prompt[2]
    assert prompt[-1] == "again"
    assert smart["context"]["gap_marked"] is True


async def test_a_threads_next_turn_reads_first_the_rows_its_window_holds(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Long messages: a thread's first turn reads a first page of 64 rows where its window holds 9; the next turn's
    first read asks for about what the window holds at the tokens per row seen (turns/context.py · RowSizes), and
    sends the same history."""
    await client.post("/v1/threads", json={"id": "t_wide"}, headers=caller.headers)
    await prefill(app, caller, "t_wide", 500, words=" ".join(["word"] * 100))
    limits: list[int] = []
    original = MessageRepository.context_rows

    async def recording(self: MessageRepository, org: str, thread_id: str, limit: int, **kwargs: Any) -> Any:
        limits.append(limit)
        return await original(self, org, thread_id, limit, **kwargs)

    monkeypatch.setattr(MessageRepository, "context_rows", recording)
    first = (await turn(client, caller, "next", thread="t_wide", maxOutputTokens=10)).json()["context"]
    first_prompt = [m.content for m in fake.calls[-1]][:-1]
    assert limits == [64] and first["messages_included"] == 9
    limits.clear()
    second = (await turn(client, caller, "next", thread="t_wide", maxOutputTokens=10)).json()["context"]
    # ~107 tokens a row seen, a 981-token budget: 9 rows fit, a quarter more and one.
    assert limits == [13], limits
    # The same 9 long messages, then the first turn's question and answer (short: they fit too).
    assert second["messages_included"] == 11 and second["seq_ranges"] == [[492, 502]]
    assert [m.content for m in fake.calls[-1]][:9] == first_prompt
