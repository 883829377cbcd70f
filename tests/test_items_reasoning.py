"""Reasoning items (docs/items.md): parsed from an upstream's `reasoning_content` (streamed and plain), output
and streamed with the Responses `response.reasoning_text.*` events, accepted as input and kept as sent, replayed
only to a model with the `reasoning` capability. Real upstream process (tests/upstream.py: `[think]` makes
it reason), the official `openai` SDK with strict validation, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from openai import AsyncOpenAI

from tests.conftest import Caller, started_app
from tests.helpers import refused
from tests.tool_helpers import last_request_with, tool_settings

pytestmark = pytest.mark.slow


@pytest.fixture
async def app(database_url: str, tool_upstream_url: str) -> AsyncIterator[FastAPI]:
    async for application in started_app(tool_settings(database_url, tool_upstream_url, capable="reasoning")):
        yield application


@pytest.fixture
async def raw(app: FastAPI, caller: Caller) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=caller.headers) as client:
        yield client


def reasoning_of(body: dict[str, Any]) -> list[Any]:
    """The `reasoning_content` of every message an upstream request carried."""
    return [m["reasoning_content"] for m in body["messages"] if "reasoning_content" in m]


@pytest.mark.parametrize("plain", [False, True])
async def test_upstream_reasoning_is_output_stored_and_replayed_where_accepted(
    oa: AsyncOpenAI, raw: httpx.AsyncClient, tool_upstream_url: str, plain: bool
) -> None:
    marker = f"rs-1-{plain}"
    first = await oa.responses.create(model="tool-model", input=f"[think]{'[plain]' if plain else ''} Why? {marker}")

    thought, answer = first.output
    assert thought.type == "reasoning" and thought.id.startswith("rs_")
    assert answer.type == "message"
    assert [c.text for c in thought.content or []] == [f"Thinking about Why? {marker}."]
    assert (thought.summary, thought.status) == ([], "completed")
    assert first.output_text == f"echo: Why? {marker}"
    # In the thread before the answer, its text searchable; the Conversations view shows it as sent.
    thread_id = (await raw.get(f"/v1/model/response/{first.id}")).json()["thread_id"]
    items = (await raw.get(f"/v1/threads/{thread_id}/messages?order=asc")).json()["data"]
    assert [(i["type"], i["role"]) for i in items] == [
        ("message", "user"),
        ("reasoning", "assistant"),
        ("message", "assistant"),
    ]
    assert items[1]["id"] == thought.id and items[1]["content"] == f"Thinking about Why? {marker}."
    listed = await oa.conversations.items.list(thread_id, order="asc")
    assert listed.data[1] == thought

    # A model without the capability is not sent it; one with it gets it back on the assistant message.
    await oa.responses.create(model="tool-model", previous_response_id=first.id, input=f"next {marker}-a")
    assert reasoning_of(last_request_with(tool_upstream_url, f"{marker}-a")) == []
    await oa.responses.create(model="reasoning-model", previous_response_id=first.id, input=f"next {marker}-b")
    sent = last_request_with(tool_upstream_url, f"{marker}-b")
    assert sent["messages"][1] == {
        "role": "assistant",
        "content": f"echo: Why? {marker}",
        "reasoning_content": f"Thinking about Why? {marker}.",
    }


async def test_streamed_reasoning_events(oa: AsyncOpenAI) -> None:
    names: list[str] = []
    deltas: list[str] = []
    async with oa.responses.stream(model="tool-model", input="[think] Streamed rs-2") as stream:
        async for event in stream:
            names.append(event.type)
            if event.type == "response.reasoning_text.delta":
                deltas.append(event.delta)
        final = await stream.get_final_response()

    assert names[:9] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert names[9] == "response.output_item.added" and names[-1] == "response.completed"
    assert "".join(deltas) == "Thinking about Streamed rs-2."
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output_text == "echo: Streamed rs-2"


async def test_reasoning_input_items_are_kept_as_sent(
    oa: AsyncOpenAI, raw: httpx.AsyncClient, tool_upstream_url: str
) -> None:
    sent_item = {
        "type": "reasoning",
        "id": "rs_from_the_client",
        "summary": [{"type": "summary_text", "text": "Check the map first."}],
        "encrypted_content": "opaque-blob",
    }
    conversation = await oa.conversations.create(
        items=[
            {"role": "user", "content": "Where is it?"},
            sent_item,  # type: ignore[list-item]
            {"role": "assistant", "content": "North."},
        ]
    )
    listed = (await oa.conversations.items.list(conversation.id, order="asc")).data
    stored = listed[1]
    assert stored.type == "reasoning" and stored.id.startswith("rs_")
    assert stored.model_dump(exclude={"id"}, exclude_none=True) == {
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": "Check the map first."}],
        "encrypted_content": "opaque-blob",
    }
    # Replayed to the capable model on the assistant message it preceded; never to the others.
    await oa.responses.create(model="reasoning-model", conversation=conversation.id, input="And then? rs-3")
    assert reasoning_of(last_request_with(tool_upstream_url, "rs-3")) == ["Check the map first."]
    await oa.responses.create(model="tool-model", conversation=conversation.id, input="And then? rs-4")
    assert reasoning_of(last_request_with(tool_upstream_url, "rs-4")) == []

    bad = {"type": "reasoning", "summary": "not a list"}
    refused(
        await raw.post(f"/v1/conversations/{conversation.id}/items", json={"items": [bad]}),
        400,
        "invalid_type",
        "items.0.summary",
    )
    part = {"type": "reasoning", "summary": [{"type": "reasoning_text", "text": "x"}]}
    refused(await raw.post("/v1/responses", json={"input": [part]}), 400, "invalid_type", "input.0.summary.0")
