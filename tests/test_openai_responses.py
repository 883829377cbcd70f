"""The OpenAI Responses API through the official `openai` SDK (strict validation), on SQLite and PostgreSQL,
with a scripted FakeProvider for deterministic words."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from openai import AsyncOpenAI

from tests.conftest import Caller
from tests.openai_sdk import sdk_client
from tests.responses_helpers import sse_events, thread_messages, user
from threadline.domain.messages import ChatMessage
from threadline.providers.fake import FakeProvider, Script

pytestmark = pytest.mark.fake_model()

CANONICAL = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
CLOSING = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def said(call: list[ChatMessage]) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in call]


async def test_create_returns_a_strict_response_with_output_text(
    oa: AsyncOpenAI, client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    response = await oa.responses.create(input="Hello there", metadata={"ticket": "42"})
    assert response.id.startswith("resp_")
    assert response.object == "response"
    # The SDK types these as floats; the wire carries integer seconds (checked on the raw stream below).
    assert response.created_at.is_integer() and response.completed_at is not None
    assert response.status == "completed"
    assert response.model == "fake-model"  # no model given: the server's default
    assert response.output_text == "echo: Hello there"
    (item,) = response.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    assert item.id.startswith("msg_")
    assert [(p.type, p.text, p.annotations, p.logprobs) for p in item.content] == [
        ("output_text", "echo: Hello there", [], [])
    ]
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (10, 3, 13)
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert response.error is None and response.incomplete_details is None
    assert response.metadata == {"ticket": "42"}
    assert (response.conversation, response.previous_response_id, response.instructions) == (None, None, None)
    assert (response.store, response.truncation, response.parallel_tool_calls) == (True, "disabled", True)
    assert (response.tool_choice, response.tools, response.max_output_tokens) == ("auto", [], 512)
    assert response.text is not None and response.text.format is not None and response.text.format.type == "text"
    assert said(fake.calls[-1]) == [("user", "Hello there")]

    fetched = await oa.responses.retrieve(response.id)
    assert fetched.to_dict() == response.to_dict()
    with pytest.raises(openai.BadRequestError) as resume:
        await oa.responses.retrieve(response.id, stream=True)
    assert (resume.value.code, resume.value.param) == ("response_not_streamed", "stream")  # it was not streamed

    # One store: the same response through the Freddy API, its answer a message of its thread under the item id.
    freddy = (await client.get(f"/v1/model/response/{response.id}", headers=caller.headers)).json()
    assert freddy["output_text"] == "echo: Hello there"
    saved = await thread_messages(client, caller, freddy["thread_id"])
    assert [(m["role"], m["content"]) for m in saved] == [("user", "Hello there"), ("assistant", "echo: Hello there")]
    assert saved[1]["id"] == item.id


async def test_freddy_response_is_retrievable_through_the_sdk(
    oa: AsyncOpenAI, client: httpx.AsyncClient, caller: Caller
) -> None:
    body = (
        await client.post(
            "/v1/model/response", json={"inputs": [user("From Freddy")], "thread": "t_freddy"}, headers=caller.headers
        )
    ).json()
    response = await oa.responses.retrieve(body["id"])
    assert response.output_text == "echo: From Freddy"
    assert response.truncation == "auto"  # Freddy's default context mode, recent
    items = await oa.responses.input_items.list(body["id"])
    assert [(i.role, i.content[0].text) for i in items.data] == [("user", "From Freddy")]


async def test_input_items_instructions_and_previous_response_chain(
    oa: AsyncOpenAI, client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    first = await oa.responses.create(
        model="fake-model",
        instructions="Answer briefly.",
        input=[
            {"role": "developer", "content": [{"type": "input_text", "text": "You are a pirate."}]},
            {"type": "message", "role": "user", "content": "What is Python?"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "A snake.", "annotations": []}],
            },
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "No, "}, {"type": "text", "text": "the language"}],
            },
        ],
    )
    assert first.instructions == "Answer briefly."
    assert said(fake.calls[-1]) == [
        ("system", "Answer briefly."),
        ("system", "You are a pirate."),
        ("user", "What is Python?"),
        ("assistant", "A snake."),
        ("user", "No, the language"),
    ]
    assert first.output_text == "echo: No, the language"

    newest_first = await oa.responses.input_items.list(first.id)
    assert [(i.role, i.content[0].text) for i in newest_first.data] == [
        ("user", "No, the language"),
        ("assistant", "A snake."),
        ("user", "What is Python?"),
        ("system", "You are a pirate."),
    ]
    assert newest_first.data[1].type == "message" and newest_first.data[1].content[0].type == "output_text"
    assert newest_first.data[0].content[0].type == "input_text"
    page = await oa.responses.input_items.list(first.id, limit=3, order="asc")
    assert page.has_more is True
    assert [len(p.data) async for p in page.iter_pages()] == [3, 1]
    assert [i.id async for i in page] == [i.id for i in reversed(newest_first.data)]

    second = await oa.responses.create(previous_response_id=first.id, input="And Java?")
    assert second.previous_response_id == first.id and second.instructions is None
    # The chain carries the first turn (its inputs and answer) but not its instructions.
    assert said(fake.calls[-1]) == [
        ("system", "You are a pirate."),
        ("user", "What is Python?"),
        ("assistant", "A snake."),
        ("user", "No, the language"),
        ("assistant", "echo: No, the language"),
        ("user", "And Java?"),
    ]
    thread_id = (await client.get(f"/v1/model/response/{first.id}", headers=caller.headers)).json()["thread_id"]
    saved = await thread_messages(client, caller, thread_id)
    assert "Answer briefly." not in [m["content"] for m in saved]
    assert len(saved) == 5
    # The continuation lives in a hidden chain thread forked from the first turn: its own two messages only.
    chain_id = (await client.get(f"/v1/model/response/{second.id}", headers=caller.headers)).json()["thread_id"]
    assert chain_id != thread_id
    assert [m["content"] for m in await thread_messages(client, caller, chain_id)] == [
        "And Java?",
        "echo: And Java?",
    ]


async def test_conversation_is_context_and_receives_the_turn(
    oa: AsyncOpenAI, client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    conversation = await oa.conversations.create(items=[{"role": "user", "content": "My name is Ada."}])
    first = await oa.responses.create(conversation=conversation.id, input="Hi")
    assert first.conversation is not None and first.conversation.id == conversation.id
    assert said(fake.calls[-1]) == [("user", "My name is Ada."), ("user", "Hi")]
    second = await oa.responses.create(conversation={"id": conversation.id}, input="What is my name?")
    assert said(fake.calls[-1]) == [
        ("user", "My name is Ada."),
        ("user", "Hi"),
        ("assistant", "echo: Hi"),
        ("user", "What is my name?"),
    ]
    items = await oa.conversations.items.list(conversation.id, order="asc")
    expected = [
        ("user", "My name is Ada."),
        ("user", "Hi"),
        ("assistant", "echo: Hi"),
        ("user", "What is my name?"),
        ("assistant", "echo: What is my name?"),
    ]
    assert [(i.role, i.content[0].text) for i in items.data] == expected
    assert items.data[-1].id == second.output[0].id
    freddy = await thread_messages(client, caller, conversation.id)
    assert [(m["role"], m["content"]) for m in freddy] == expected

    with pytest.raises(openai.BadRequestError) as both:
        await oa.responses.create(conversation=conversation.id, previous_response_id=first.id, input="x")
    assert both.value.code == "conversation_with_previous_response"
    with pytest.raises(openai.NotFoundError) as missing:
        await oa.responses.create(conversation="conv_missing", input="x")
    assert (missing.value.code, missing.value.param) == ("thread_not_found", "conversation")
    assert len(fake.calls) == 2


@pytest.mark.fake_model(context_window=60)
async def test_truncation_disabled_refuses_and_auto_drops_the_oldest(oa: AsyncOpenAI, fake: FakeProvider) -> None:
    # Five 10-word items of 15 tokens each; with a 60-token window, 10 reserved for the answer, the input (6) and
    # the priming (3), 41 tokens are left for history: two items.
    words = " ".join(["word"] * 9)
    conversation = await oa.conversations.create(items=[{"role": "user", "content": f"m{n} {words}"} for n in range(5)])
    with pytest.raises(openai.BadRequestError) as refused:
        await oa.responses.create(conversation=conversation.id, input="hi", max_output_tokens=10)
    assert (refused.value.code, refused.value.param) == ("context_length_exceeded", "truncation")
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert fake.calls == []

    response = await oa.responses.create(
        conversation=conversation.id, input="hi", max_output_tokens=10, truncation="auto"
    )
    assert response.truncation == "auto" and response.status == "completed"
    assert said(fake.calls[-1]) == [("user", f"m3 {words}"), ("user", f"m4 {words}"), ("user", "hi")]


async def test_stream_helper_gives_deltas_and_the_final_response(
    oa: AsyncOpenAI, client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    fake.script(Script(reply="one two three"))
    async with oa.responses.stream(input="count", model="fake-model") as stream:
        deltas = [(e.delta, e.snapshot) async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert deltas == [("one", "one"), (" two", "one two"), (" three", "one two three")]
    assert final.output_text == "one two three" and final.status == "completed"
    stored = await oa.responses.retrieve(final.id)
    assert stored.output_text == "one two three"
    assert stored.output[0].id == final.output[0].id

    fake.script(Script(reply="alpha beta"))
    async with oa.responses.stream(input="again", model="fake-model") as stream:
        await stream.until_done()
        again = await stream.get_final_response()
    assert again.output_text == "alpha beta"

    # On the wire: `event:` lines match `type`, sequence numbers count from 0, the canonical order.
    fake.script(Script(reply="x y"))
    raw = await client.post("/v1/responses", json={"input": "wire", "stream": True}, headers=caller.headers)
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = sse_events(raw.text)
    assert all(name == data["type"] for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert [name for name, _ in events] == [*CANONICAL, *["response.output_text.delta"] * 2, *CLOSING]
    final = events[-1][1]["response"]
    assert isinstance(final["created_at"], int) and isinstance(final["completed_at"], int)


async def test_raw_stream_events(oa: AsyncOpenAI, fake: FakeProvider) -> None:
    fake.script(Script(reply="red green blue"))
    stream = await oa.responses.create(input="colours", stream=True)
    events = [event async for event in stream]
    assert [e.type for e in events] == [*CANONICAL, *["response.output_text.delta"] * 3, *CLOSING]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    created, completed = events[0], events[-1]
    assert created.type == "response.created" and completed.type == "response.completed"
    assert created.response.status == "in_progress" and created.response.output == []
    assert completed.response.id == created.response.id
    item_ids = {getattr(e, "item_id", None) for e in events} - {None}
    assert item_ids == {completed.response.output[0].id}
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "red green blue"
    assert completed.response.output_text == "red green blue"
    assert completed.response.usage is not None and completed.response.usage.output_tokens == 3
    assert (await oa.responses.retrieve(created.response.id)).to_dict() == completed.response.to_dict()


async def test_upstream_failure_is_a_502_and_leaves_the_conversation_unchanged(
    oa: AsyncOpenAI, fake: FakeProvider
) -> None:
    conversation = await oa.conversations.create(items=[{"role": "user", "content": "before"}])
    fake.script(Script(fail="before"))
    with pytest.raises(openai.InternalServerError) as failed:
        await oa.with_options(max_retries=0).responses.create(conversation=conversation.id, input="doomed")
    assert failed.value.status_code == 502 and failed.value.code == "upstream_error"
    items = await oa.conversations.items.list(conversation.id)
    assert [i.content[0].text for i in items.data] == ["before"]

    fake.script(Script(reply="a b c d", fail="mid", fail_after_tokens=2))
    stream = await oa.responses.create(conversation=conversation.id, input="cut", stream=True)
    events = [event async for event in stream]
    assert [e.type for e in events][-3:] == [
        "response.output_text.delta",
        "response.output_text.delta",
        "response.failed",
    ]
    last = events[-1]
    assert last.type == "response.failed"
    assert last.response.status == "failed" and last.response.output == []
    assert last.response.error is not None
    assert (last.response.error.code, last.response.error.type) == ("server_error", "upstream_error")
    stored = await oa.responses.retrieve(last.response.id)
    assert stored.status == "failed" and stored.output_text == ""
    assert (await oa.responses.input_items.list(stored.id)).data == []
    items = await oa.conversations.items.list(conversation.id)
    assert [i.content[0].text for i in items.data] == ["before"]


async def test_length_stop_is_incomplete(oa: AsyncOpenAI, fake: FakeProvider) -> None:
    fake.script(Script(reply="w " * 40, finish_reason="length"))
    response = await oa.responses.create(input="ramble", max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"
    assert response.output_text == " ".join(["w"] * 16)
    assert fake.params[-1].max_output_tokens == 16

    fake.script(Script(reply="w w w", finish_reason="length"))
    stream = await oa.responses.create(input="ramble", max_output_tokens=3, stream=True)
    assert [e.type async for e in stream][-1] == "response.incomplete"


async def test_delete_cancel_and_errors(
    oa: AsyncOpenAI, app: FastAPI, client: httpx.AsyncClient, caller: Caller, other_caller: Caller
) -> None:
    response = await oa.responses.create(input="keep my messages")
    thread_id = (await client.get(f"/v1/model/response/{response.id}", headers=caller.headers)).json()["thread_id"]

    with pytest.raises(openai.BadRequestError) as cancel:
        await oa.responses.cancel(response.id)
    assert cancel.value.code == "response_not_cancellable"

    other, _ = sdk_client(app, other_caller.api_key)
    async with other:
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(response.id)
        with pytest.raises(openai.NotFoundError):
            await other.responses.delete(response.id)

    raw = await client.delete(f"/v1/responses/{response.id}", headers=caller.headers)
    assert raw.json() == {"id": response.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError) as gone:
        await oa.responses.retrieve(response.id)
    assert gone.value.code == "response_not_found"
    with pytest.raises(openai.NotFoundError) as chain:
        await oa.responses.create(previous_response_id=response.id, input="next")
    assert chain.value.code == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError):
        await oa.responses.delete(response.id)
    # The thread keeps the turn's messages: they belong to it, not to the response record.
    saved = await thread_messages(client, caller, thread_id)
    assert [m["content"] for m in saved] == ["keep my messages", "echo: keep my messages"]

    second = await oa.responses.create(input="delete through the SDK")
    assert await oa.responses.delete(second.id) is None
    with pytest.raises(openai.NotFoundError):
        await oa.responses.input_items.list(second.id)


@pytest.mark.parametrize(
    ("fields", "code", "param"),
    [
        (
            {"input": [{"type": "web_search_call", "id": "ws_1", "status": "completed"}]},
            "unsupported_item_type",
            "input.0.type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
            "invalid_image_url",
            "input.0.content.0.image_url",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}]},
            "unsupported_content_type",
            "input.0.content.0.type",
        ),
        ({"input": [{"role": "tool", "content": "x"}]}, "invalid_role", "input.0.role"),
        ({"input": []}, "empty_input", "input"),
        ({}, "missing_required_parameter", "input"),
        ({"input": "x", "background": True, "store": False}, "background_requires_store", "store"),
        ({"input": "x", "truncation": "weird"}, "invalid_value", "truncation"),
        ({"input": "x", "metadata": {f"k{n}": "v" for n in range(17)}}, "metadata_too_many_keys", "metadata"),
        ({"input": "x", "metadata": {"k": 1}}, "invalid_type", "metadata.k"),
        ({"input": "x", "model": "no-such-model"}, "model_not_found", "model"),
    ],
)
async def test_bad_requests(oa: AsyncOpenAI, fake: FakeProvider, fields: dict[str, Any], code: str, param: str) -> None:
    expected = openai.NotFoundError if code == "model_not_found" else openai.BadRequestError
    with pytest.raises(expected) as failed:
        await oa.responses.create(**fields)
    assert (failed.value.code, failed.value.param) == (code, param)
    assert failed.value.response.headers["x-should-retry"] == "false"
    assert fake.calls == []


async def test_fields_without_effect_are_tolerated_and_echoed(oa: AsyncOpenAI, fake: FakeProvider) -> None:
    # (Function tools are honoured: tests/test_tools_responses.py; the refused fields: tests/test_responses_options.py.)
    response = await oa.responses.create(
        input="hi",
        tool_choice="auto",
        text={"format": {"type": "text"}, "verbosity": "medium"},
        include=["reasoning.encrypted_content", "web_search_call.results"],
        user="u-1",
        safety_identifier="s-1",
        prompt_cache_key="k-1",
        service_tier="auto",
        stream_options={"include_obfuscation": False},
        top_p=0.5,
        temperature=0.3,
    )
    assert response.output_text == "echo: hi" and response.tools == []
    assert (response.temperature, response.top_p) == (0.3, 0.5)  # both applied, so both reported
    assert (fake.params[-1].temperature, fake.params[-1].top_p) == (0.3, 0.5)
    assert (response.user, response.safety_identifier, response.prompt_cache_key) == ("u-1", "s-1", "k-1")
    assert response.service_tier == "default" and response.text is not None
    assert response.text.format is not None and response.text.format.type == "text"


async def test_unknown_parameters_are_refused_as_openai_does(oa: AsyncOpenAI, fake: FakeProvider) -> None:
    with pytest.raises(openai.BadRequestError) as failed:
        await oa.responses.create(input="hi", extra_body={"something_new": {"x": 1}})
    assert (failed.value.code, failed.value.param) == ("unknown_parameter", "something_new")
    assert fake.calls == []


async def test_store_false_lives_in_a_hidden_thread(oa: AsyncOpenAI, client: httpx.AsyncClient, caller: Caller) -> None:
    hidden = await oa.responses.create(input="secret", store=False)
    shown = await oa.responses.create(input="public")
    assert (hidden.store, shown.store) == (False, True)
    assert (await oa.responses.retrieve(hidden.id)).store is False
    ids = {
        (await client.get(f"/v1/model/response/{r.id}", headers=caller.headers)).json()["thread_id"]
        for r in (hidden, shown)
    }
    listed = {t["id"] for t in (await client.get("/v1/threads", headers=caller.headers)).json()["data"]}
    assert listed & ids == {
        (await client.get(f"/v1/model/response/{shown.id}", headers=caller.headers)).json()["thread_id"]
    }


async def test_idempotency_key_replays_the_first_response(oa: AsyncOpenAI, fake: FakeProvider) -> None:
    first = await oa.responses.create(input="once", extra_headers={"Idempotency-Key": "resp-key-1"})
    again = await oa.responses.create(input="once", extra_headers={"Idempotency-Key": "resp-key-1"})
    assert again.id == first.id and again.output_text == first.output_text
    assert len(fake.calls) == 1


async def test_hostile_ids_are_a_400_not_a_database_error(client: httpx.AsyncClient, caller: Caller) -> None:
    for method, path in (
        ("GET", "/v1/responses/a%00b"),
        ("GET", "/v1/responses/resp_1/input_items?after=%00"),
        ("POST", "/v1/responses/%1b/cancel"),
        ("DELETE", "/v1/responses/%00"),
    ):
        response = await client.request(method, path, headers=caller.headers)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["code"] == "invalid_value"
    search = await client.get("/v1/threads/search", params={"q": "x", "after": "\x00"}, headers=caller.headers)
    assert search.status_code == 400
