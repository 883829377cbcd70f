"""Assistants v2 threads and messages through the official `openai` SDK, on SQLite and PostgreSQL.

The SDK warns that the Assistants API is deprecated on every call; exactly that warning is filtered here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from fastapi import FastAPI
from openai import AsyncOpenAI

from tests.conftest import Caller
from tests.openai_sdk import CountingTransport, sdk_client

pytestmark = pytest.mark.filterwarnings(
    "ignore:The Assistants API is deprecated in favor of the Responses API:DeprecationWarning"
)


@pytest.fixture
async def sdk(app: FastAPI, caller: Caller) -> AsyncIterator[tuple[AsyncOpenAI, CountingTransport]]:
    client, transport = sdk_client(app, caller.api_key)
    async with client:
        yield client, transport


@pytest.fixture
def oa(sdk: tuple[AsyncOpenAI, CountingTransport]) -> AsyncOpenAI:
    return sdk[0]


async def test_thread_create_retrieve_update_delete(oa: AsyncOpenAI) -> None:
    thread = await oa.beta.threads.create(
        messages=[
            {"role": "user", "content": "Where is my order?", "metadata": {"channel": "web"}},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me "}, {"type": "text", "text": "look."}]},
        ],
        metadata={"ticket": "789"},
    )
    assert thread.id.startswith("thread_")
    assert thread.object == "thread"
    assert isinstance(thread.created_at, int)
    assert thread.metadata == {"ticket": "789"}

    fetched = await oa.beta.threads.retrieve(thread.id)
    assert fetched.to_dict() == thread.to_dict()

    updated = await oa.beta.threads.update(thread.id, metadata={"ticket": "790", "team": "billing"})
    assert updated.metadata == {"ticket": "790", "team": "billing"}
    assert (await oa.beta.threads.retrieve(thread.id)).metadata == {"ticket": "790", "team": "billing"}

    listed = await oa.beta.threads.messages.list(thread.id)
    assert [m.content[0].text.value for m in listed.data if m.content[0].type == "text"] == [
        "Let me look.",
        "Where is my order?",
    ]
    first = listed.data[1]
    assert first.role == "user"
    assert first.thread_id == thread.id
    assert first.status == "completed"
    assert first.metadata == {"channel": "web"}
    assert first.assistant_id is None and first.run_id is None
    assert first.attachments == []
    assert first.content[0].type == "text" and first.content[0].text.annotations == []

    deleted = await oa.beta.threads.delete(thread.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (thread.id, "thread.deleted", True)
    with pytest.raises(openai.NotFoundError) as raised:
        await oa.beta.threads.retrieve(thread.id)
    assert raised.value.code == "thread_not_found"


async def test_message_create_retrieve_update_delete(oa: AsyncOpenAI) -> None:
    thread = await oa.beta.threads.create()
    message = await oa.beta.threads.messages.create(thread.id, role="user", content="Hi there", metadata={"x": "y"})
    assert message.object == "thread.message"
    assert message.role == "user"
    assert message.content[0].type == "text" and message.content[0].text.value == "Hi there"
    assert message.metadata == {"x": "y"}

    reply = await oa.beta.threads.messages.create(
        thread.id, role="assistant", content=[{"type": "text", "text": "Hello!"}]
    )
    assert reply.role == "assistant"

    fetched = await oa.beta.threads.messages.retrieve(message.id, thread_id=thread.id)
    assert fetched.to_dict() == message.to_dict()

    updated = await oa.beta.threads.messages.update(message.id, thread_id=thread.id, metadata={"x": "z"})
    assert updated.metadata == {"x": "z"}
    assert updated.content[0].type == "text" and updated.content[0].text.value == "Hi there"

    deleted = await oa.beta.threads.messages.delete(message.id, thread_id=thread.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (message.id, "thread.message.deleted", True)
    remaining = await oa.beta.threads.messages.list(thread.id)
    assert [m.id for m in remaining.data] == [reply.id]
    with pytest.raises(openai.NotFoundError):
        await oa.beta.threads.messages.retrieve(message.id, thread_id=thread.id)


async def test_messages_paginate_in_both_orders(oa: AsyncOpenAI) -> None:
    thread = await oa.beta.threads.create(messages=[{"role": "user", "content": f"m{i}"} for i in range(25)])
    texts = []
    first_page = await oa.beta.threads.messages.list(thread.id, limit=10)
    assert len(first_page.data) == 10 and first_page.has_more is True
    # openai 3.x: iterating a page is the auto-pager (1.x/2.x called it `auto_paging_iter`).
    async for message in first_page:
        assert message.content[0].type == "text"
        texts.append(message.content[0].text.value)
    assert texts == [f"m{i}" for i in reversed(range(25))]

    ascending = await oa.beta.threads.messages.list(thread.id, limit=7, order="asc")
    ids = [m.id async for m in ascending]
    assert len(ids) == 25
    assert [len(page.data) async for page in ascending.iter_pages()] == [7, 7, 7, 4]

    # `before` pages backwards from a cursor, in the list's own order.
    before = await oa.beta.threads.messages.list(thread.id, order="asc", before=ids[10], limit=3)
    assert [m.id for m in before.data] == ids[7:10]


async def test_same_path_two_shapes_and_the_same_rows(
    oa: AsyncOpenAI, client: httpx.AsyncClient, caller: Caller
) -> None:
    # Created through the SDK: the Freddy API shows the thread and its messages.
    thread = await oa.beta.threads.create(messages=[{"role": "user", "content": "From the SDK"}])
    await oa.beta.threads.messages.create(thread.id, role="assistant", content="Answer")
    freddy = (await client.get(f"/v1/threads/{thread.id}", headers=caller.headers)).json()
    assert freddy["created_at"].endswith("Z") and freddy["message_count"] == 2
    freddy_messages = (await client.get(f"/v1/threads/{thread.id}/messages?order=asc", headers=caller.headers)).json()
    assert [(m["role"], m["content"]) for m in freddy_messages["data"]] == [
        ("user", "From the SDK"),
        ("assistant", "Answer"),
    ]
    # The header decides the shape, whatever its spelling.
    shaped = await client.get(f"/v1/threads/{thread.id}", headers={**caller.headers, "OpenAI-Beta": "assistants=v2"})
    assert shaped.json() == {
        "id": thread.id,
        "object": "thread",
        "created_at": thread.created_at,
        "metadata": {},
        "tool_resources": None,
    }
    # The header may list several betas; another Assistants version is not this dialect.
    several = await client.get(
        f"/v1/threads/{thread.id}", headers={**caller.headers, "openai-beta": "realtime=v1, Assistants=v2"}
    )
    assert several.json()["object"] == "thread" and isinstance(several.json()["created_at"], int)
    v1 = await client.get(f"/v1/threads/{thread.id}", headers={**caller.headers, "OpenAI-Beta": "assistants=v1"})
    assert v1.json()["created_at"] == freddy["created_at"]

    # Created through the Freddy API: the SDK sees it; its system message has no place in the Assistants view.
    created = await client.post(
        "/v1/threads", json={"id": "support_user1_t9", "metadata": {"tags": ["a", "b"]}}, headers=caller.headers
    )
    assert created.status_code == 200
    for role, text in (("system", "Be brief."), ("user", "Question"), ("assistant", "Reply")):
        response = await client.post(
            "/v1/threads/support_user1_t9/messages", json={"role": role, "content": text}, headers=caller.headers
        )
        assert response.status_code == 200
    system_id = (await client.get("/v1/threads/support_user1_t9/messages?order=asc", headers=caller.headers)).json()[
        "data"
    ][0]["id"]
    retrieved = await oa.beta.threads.retrieve("support_user1_t9")
    assert retrieved.metadata == {"tags": '["a", "b"]'}
    listed = await oa.beta.threads.messages.list("support_user1_t9", order="asc")
    assert [(m.role, m.content[0].text.value) for m in listed.data if m.content[0].type == "text"] == [
        ("user", "Question"),
        ("assistant", "Reply"),
    ]
    with pytest.raises(openai.NotFoundError):
        await oa.beta.threads.messages.retrieve(system_id, thread_id="support_user1_t9")


async def test_errors_map_to_sdk_exceptions(
    sdk: tuple[AsyncOpenAI, CountingTransport],
    app: FastAPI,
    client: httpx.AsyncClient,
    caller: Caller,
    other_caller: Caller,
) -> None:
    oa, transport = sdk
    thread = await oa.beta.threads.create(messages=[{"role": "user", "content": "mine"}])

    other, _ = sdk_client(app, other_caller.api_key)
    async with other:
        with pytest.raises(openai.NotFoundError):
            await other.beta.threads.retrieve(thread.id)
        with pytest.raises(openai.NotFoundError):
            await other.beta.threads.messages.list(thread.id)

    stranger, _ = sdk_client(app, "tl_not_a_key")
    async with stranger:
        with pytest.raises(openai.AuthenticationError):
            await stranger.beta.threads.create()

    with pytest.raises(openai.BadRequestError) as bad_role:
        await oa.beta.threads.messages.create(thread.id, role="bogus", content="x")  # type: ignore[arg-type]
    assert bad_role.value.param == "role"
    with pytest.raises(openai.BadRequestError) as image:
        await oa.beta.threads.messages.create(
            thread.id, role="user", content=[{"type": "image_file", "image_file": {"file_id": "file_1"}}]
        )
    assert image.value.code == "unsupported_content_type"
    assert image.value.param == "content.0.type"
    with pytest.raises(openai.BadRequestError) as wrong_type:
        await oa.beta.threads.messages.create(thread.id, role="user", content=123)  # type: ignore[arg-type]
    assert wrong_type.value.code == "invalid_type"
    with pytest.raises(openai.BadRequestError) as files:
        await oa.beta.threads.messages.create(
            thread.id, role="user", content="x", attachments=[{"file_id": "file_1", "tools": [{"type": "file_search"}]}]
        )
    assert files.value.code == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError):
        await oa.beta.threads.messages.list(thread.id, limit=0)
    with pytest.raises(openai.BadRequestError) as resources:
        await oa.beta.threads.update(thread.id, tool_resources={"file_search": {"vector_store_ids": ["vs_1"]}})
    assert (resources.value.code, resources.value.param) == ("unsupported_parameter", "tool_resources")
    # Tool resources that name nothing are harmless.
    empty = await oa.beta.threads.create(tool_resources={"code_interpreter": {"file_ids": []}})
    assert empty.tool_resources is None

    # Unknown body keys (extra_body) are refused by name, as OpenAI refuses them (docs/compatibility.md).
    with pytest.raises(openai.BadRequestError) as unknown:
        await oa.beta.threads.messages.create(thread.id, role="user", content="ok", extra_body={"made_up_field": True})
    assert (unknown.value.code, unknown.value.param) == ("unknown_parameter", "made_up_field")

    # A locked thread refuses messages with a 409 the SDK does not retry (x-should-retry: false).
    locked = await client.patch(f"/v1/threads/{thread.id}", json={"state": "locked"}, headers=caller.headers)
    assert locked.status_code == 200
    transport.requests.clear()
    with pytest.raises(openai.ConflictError) as conflict:
        await oa.beta.threads.messages.create(thread.id, role="user", content="too late")
    assert conflict.value.code == "thread_locked"
    assert conflict.value.response.headers["x-should-retry"] == "false"
    assert len(transport.requests) == 1
    assert transport.requests[0].headers["openai-beta"] == "assistants=v2"
