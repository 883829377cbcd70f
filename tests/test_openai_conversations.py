"""The OpenAI Conversations API through the official `openai` SDK, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from openai import AsyncOpenAI

from tests.conftest import Caller
from tests.openai_sdk import sdk_client


def texts(item: Any) -> tuple[str, str]:
    """(role, text) of a message item, whichever text part it carries."""
    assert item.type == "message"
    assert len(item.content) == 1
    return item.role, item.content[0].text


async def test_conversation_create_retrieve_update_delete(oa: AsyncOpenAI) -> None:
    conversation = await oa.conversations.create(
        items=[
            {"role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
            {"type": "message", "role": "user", "content": "Hi"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello!", "annotations": []}],
            },
        ],
        metadata={"topic": "greeting"},
    )
    assert conversation.id.startswith("conv_")
    assert conversation.object == "conversation"
    assert isinstance(conversation.created_at, int)
    assert conversation.metadata == {"topic": "greeting"}

    fetched = await oa.conversations.retrieve(conversation.id)
    assert fetched.to_dict() == conversation.to_dict()

    updated = await oa.conversations.update(conversation.id, metadata={"topic": "support"})
    assert updated.metadata == {"topic": "support"}
    cleared = await oa.conversations.update(conversation.id, metadata=None)
    assert cleared.metadata == {}

    items = await oa.conversations.items.list(conversation.id, order="asc")
    # developer is stored as system (the roles a thread holds) and reads back as system.
    assert [texts(i) for i in items.data] == [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!")]
    assert [i.content[0].type for i in items.data] == ["input_text", "input_text", "output_text"]
    assert items.has_more is False and items.last_id == items.data[-1].id

    deleted = await oa.conversations.delete(conversation.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (conversation.id, "conversation.deleted", True)
    with pytest.raises(openai.NotFoundError):
        await oa.conversations.retrieve(conversation.id)


async def test_items_create_list_retrieve_delete(oa: AsyncOpenAI) -> None:
    conversation = await oa.conversations.create()
    created = await oa.conversations.items.create(
        conversation.id,
        items=[
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "Part one, "}, {"type": "text", "text": "two"}],
            },
            {"role": "assistant", "content": "Noted."},
        ],
    )
    assert created.object == "list"
    assert [texts(i) for i in created.data] == [("user", "Part one, two"), ("assistant", "Noted.")]
    assert created.first_id == created.data[0].id and created.last_id == created.data[1].id

    newest_first = await oa.conversations.items.list(conversation.id)
    assert [i.id for i in newest_first.data] == [created.data[1].id, created.data[0].id]

    item = await oa.conversations.items.retrieve(created.data[0].id, conversation_id=conversation.id)
    assert item.to_dict() == created.data[0].to_dict()
    assert item.type == "message" and item.status == "completed"

    parent = await oa.conversations.items.delete(created.data[0].id, conversation_id=conversation.id)
    assert (parent.id, parent.object) == (conversation.id, "conversation")
    remaining = await oa.conversations.items.list(conversation.id)
    assert [i.id for i in remaining.data] == [created.data[1].id]
    with pytest.raises(openai.NotFoundError):
        await oa.conversations.items.retrieve(created.data[0].id, conversation_id=conversation.id)


async def test_items_paginate(oa: AsyncOpenAI) -> None:
    conversation = await oa.conversations.create(items=[{"role": "user", "content": f"i{n}"} for n in range(20)])
    await oa.conversations.items.create(
        conversation.id, items=[{"role": "user", "content": f"i{n}"} for n in range(20, 30)]
    )
    page = await oa.conversations.items.list(conversation.id, limit=8)
    assert page.has_more is True and page.last_id == page.data[-1].id
    assert [texts(i)[1] async for i in page] == [f"i{n}" for n in reversed(range(30))]
    ascending = await oa.conversations.items.list(conversation.id, limit=8, order="asc")
    assert [texts(i)[1] async for i in ascending] == [f"i{n}" for n in range(30)]
    assert [len(p.data) async for p in ascending.iter_pages()] == [8, 8, 8, 6]


async def test_conversation_is_a_thread(oa: AsyncOpenAI, client: httpx.AsyncClient, caller: Caller) -> None:
    conversation = await oa.conversations.create(items=[{"role": "user", "content": "From a conversation"}])
    freddy = (await client.get(f"/v1/threads/{conversation.id}/messages", headers=caller.headers)).json()
    assert [(m["role"], m["content"]) for m in freddy["data"]] == [("user", "From a conversation")]
    thread = (await client.get(f"/v1/threads/{conversation.id}", headers=caller.headers)).json()
    assert thread["message_count"] == 1

    # And a Freddy thread is a conversation too.
    created = await client.post("/v1/threads", json={"id": "ticket-42"}, headers=caller.headers)
    assert created.status_code == 200
    await client.post(
        "/v1/threads/ticket-42/messages", json={"role": "user", "content": "From Freddy"}, headers=caller.headers
    )
    items = await oa.conversations.items.list("ticket-42")
    assert [texts(i) for i in items.data] == [("user", "From Freddy")]
    await oa.conversations.items.create("ticket-42", items=[{"role": "assistant", "content": "Seen."}])
    freddy = (await client.get("/v1/threads/ticket-42/messages?order=asc", headers=caller.headers)).json()
    assert [(m["role"], m["content"]) for m in freddy["data"]] == [("user", "From Freddy"), ("assistant", "Seen.")]


async def test_conversation_errors(
    oa: AsyncOpenAI, app: FastAPI, client: httpx.AsyncClient, caller: Caller, other_caller: Caller
) -> None:
    conversation = await oa.conversations.create(items=[{"role": "user", "content": "mine"}])
    other, _ = sdk_client(app, other_caller.api_key)
    async with other:
        with pytest.raises(openai.NotFoundError):
            await other.conversations.items.list(conversation.id)
        with pytest.raises(openai.NotFoundError):
            await other.conversations.delete(conversation.id)

    cases: list[tuple[list[Any], str, str]] = [
        (
            [{"type": "web_search_call", "id": "ws_1", "status": "completed"}],
            "unsupported_item_type",
            "items.0.type",
        ),
        (
            [
                {
                    "role": "user",
                    # Images are stored (tests/test_items_images.py); files are not.
                    "content": [{"type": "input_file", "file_id": "file_1"}],
                }
            ],
            "unsupported_content_type",
            "items.0.content.0.type",
        ),
        ([{"role": "tool", "content": "x"}], "invalid_role", "items.0.role"),
        ([{"role": "user", "content": []}], "empty_content", "items.0.content"),
        ([], "invalid_value", "items"),
    ]
    for items, code, param in cases:
        with pytest.raises(openai.BadRequestError) as raised:
            await oa.conversations.items.create(conversation.id, items=items)
        assert (raised.value.code, raised.value.param) == (code, param), items
    with pytest.raises(openai.BadRequestError) as invalid:
        await oa.conversations.create(items=[{"role": "user", "content": "ok"}, {"role": "bogus", "content": "x"}])
    assert invalid.value.code == "invalid_role"
    with pytest.raises(openai.BadRequestError):
        await oa.conversations.items.list(conversation.id, order="sideways")  # type: ignore[arg-type]

    # Nothing of a refused request was stored.
    items = await oa.conversations.items.list(conversation.id)
    assert [texts(i) for i in items.data] == [("user", "mine")]

    # Archived: read-only, a 409 the SDK does not retry.
    archived = await client.patch(f"/v1/threads/{conversation.id}", json={"state": "archived"}, headers=caller.headers)
    assert archived.status_code == 200
    with pytest.raises(openai.ConflictError) as conflict:
        await oa.conversations.items.create(conversation.id, items=[{"role": "user", "content": "late"}])
    assert conflict.value.code == "thread_archived"
    assert conflict.value.response.headers["x-should-retry"] == "false"
    # extra_body keys are refused by name, as OpenAI refuses them (docs/compatibility.md).
    with pytest.raises(openai.BadRequestError) as unknown:
        await oa.conversations.update(conversation.id, metadata=None, extra_body={"unknown": 1})
    assert (unknown.value.code, unknown.value.param) == ("unknown_parameter", "unknown")
    fetched = await oa.conversations.update(conversation.id, metadata=None)
    assert fetched.id == conversation.id
