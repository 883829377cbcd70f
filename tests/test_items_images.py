"""Images in messages (docs/items.md): Responses `input_image`, Conversations items, Assistants `image_url`
blocks and Freddy `images`, stored as `image` parts next to the text, replayed to the upstream as chat
`image_url` parts, refused for a model without the `vision` capability. Real upstream process
(tests/upstream.py, which records what it was sent), the official `openai` SDK, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from openai import AsyncOpenAI

from tests.conftest import Caller, started_app
from tests.helpers import refused
from tests.tool_helpers import last_request_with, tool_settings
from threadline.domain.messages import MAX_IMAGE_URL_CHARS, image_part
from threadline.errors import ValidationFailed

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore:The Assistants API is deprecated in favor of the Responses API:DeprecationWarning"
    ),
]

# A 1×1 png.
PIXEL = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
CAT = "https://example.com/cat.jpg"


@pytest.fixture
async def app(database_url: str, tool_upstream_url: str) -> AsyncIterator[FastAPI]:
    async for application in started_app(tool_settings(database_url, tool_upstream_url, capable="vision")):
        yield application


@pytest.fixture
async def raw(app: FastAPI, caller: Caller) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=caller.headers) as client:
        yield client


def picture_message(marker: str) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"type": "input_text", "text": f"What is in these? {marker}"},
            {"type": "input_image", "image_url": PIXEL, "detail": "low"},
            {"type": "input_image", "image_url": CAT, "detail": "auto"},
        ],
    }


SENT_PARTS = [
    {"type": "image_url", "image_url": {"url": PIXEL, "detail": "low"}},
    {"type": "image_url", "image_url": {"url": CAT, "detail": "auto"}},
]


async def test_responses_input_images_are_stored_and_replayed(
    oa: AsyncOpenAI, raw: httpx.AsyncClient, tool_upstream_url: str
) -> None:
    first = await oa.responses.create(model="vision-model", input=[picture_message("img-1")])  # type: ignore[list-item]

    assert first.output_text == "echo: What is in these? img-1"
    sent = last_request_with(tool_upstream_url, "img-1")
    assert sent["messages"][-1] == {
        "role": "user",
        "content": [{"type": "text", "text": "What is in these? img-1"}, *SENT_PARTS],
    }
    # Read back in the Responses spelling, in the order sent.
    (item,) = (await oa.responses.input_items.list(first.id)).data
    assert item.type == "message"
    assert [p.model_dump(exclude_none=True) for p in item.content] == [  # type: ignore[union-attr]
        {"type": "input_text", "text": "What is in these? img-1"},
        {"type": "input_image", "image_url": PIXEL, "detail": "low"},
        {"type": "input_image", "image_url": CAT, "detail": "auto"},
    ]
    # Stored as docs/items.md says; the images' estimate is in the message's token count (85 low + 765 auto).
    thread_id = (await raw.get(f"/v1/model/response/{first.id}")).json()["thread_id"]
    messages = (await raw.get(f"/v1/threads/{thread_id}/messages?order=asc")).json()["data"]
    question = messages[0]
    assert question["content"] == "What is in these? img-1"
    assert question["parts"] == [
        {"type": "text", "text": "What is in these? img-1"},
        {"type": "image", "url": PIXEL, "detail": "low"},
        {"type": "image", "url": CAT, "detail": "auto"},
    ]
    text_only = await oa.responses.create(model="vision-model", input="What is in these? img-1")
    plain_thread = (await raw.get(f"/v1/model/response/{text_only.id}")).json()["thread_id"]
    plain = (await raw.get(f"/v1/threads/{plain_thread}/messages?order=asc")).json()["data"][0]
    assert question["token_count"] - plain["token_count"] == 85 + 765

    # The next turn sends the history's images again; a model without vision refuses that history.
    second = await oa.responses.create(model="vision-model", previous_response_id=first.id, input="and now? img-2")
    replayed = last_request_with(tool_upstream_url, "img-2")
    assert replayed["messages"][0]["content"][1:] == SENT_PARTS
    assert second.output_text == "echo: and now? img-2"
    with pytest.raises(openai.BadRequestError) as refusal:
        await oa.responses.create(model="plain-model", previous_response_id=first.id, input="img-3")
    assert refusal.value.code == "vision_not_supported"
    assert "'plain-model'" in refusal.value.message


async def test_images_need_vision_and_bounds(oa: AsyncOpenAI, raw: httpx.AsyncClient) -> None:
    conversation = await oa.conversations.create()
    with pytest.raises(openai.BadRequestError) as refusal:
        await oa.responses.create(
            model="tool-model",
            conversation=conversation.id,
            input=[picture_message("img-4")],  # type: ignore[list-item]
        )
    assert (refusal.value.code, refusal.value.param) == ("vision_not_supported", "input")
    assert "'tool-model'" in refusal.value.message
    assert (await oa.conversations.items.list(conversation.id)).data == []  # nothing saved from a refused turn

    def with_part(part: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [{"type": "input_text", "text": "x"}, part]}]

    for part, code, param in (
        (
            {"type": "input_image", "file_id": "file_1", "detail": "auto"},
            "unsupported_parameter",
            "input.0.content.1.file_id",
        ),
        (
            {"type": "input_image", "image_url": "http://example.com/a.png"},
            "invalid_image_url",
            "input.0.content.1.image_url",
        ),
        (
            {"type": "input_image", "image_url": "data:text/plain;base64,aGk="},
            "invalid_image_url",
            "input.0.content.1.image_url",
        ),
        ({"type": "input_image", "image_url": CAT, "detail": "huge"}, "invalid_value", "input.0.content.1.detail"),
    ):
        response = await raw.post("/v1/responses", json={"model": "vision-model", "input": with_part(part)})
        refused(response, 400, code, param)
    many = [{"type": "input_image", "image_url": CAT}] * 21
    response = await raw.post(
        "/v1/responses", json={"model": "vision-model", "input": [{"role": "user", "content": many}]}
    )
    refused(response, 400, "too_many_images", "input.0.content")


def test_a_data_url_is_bounded() -> None:
    with pytest.raises(ValidationFailed) as too_large:
        image_part("data:image/png;base64," + "A" * MAX_IMAGE_URL_CHARS, "auto", "p")
    assert too_large.value.code == "image_too_large"
    assert image_part(PIXEL, None, "p") == {"type": "image", "url": PIXEL, "detail": "auto"}


async def test_conversation_items_with_images(oa: AsyncOpenAI) -> None:
    conversation = await oa.conversations.create(items=[picture_message("img-5")])  # type: ignore[list-item]
    (item,) = (await oa.conversations.items.list(conversation.id)).data
    again = await oa.conversations.items.retrieve(item.id, conversation_id=conversation.id)
    assert again == item
    assert [p.type for p in item.content] == ["input_text", "input_image", "input_image"]  # type: ignore[union-attr]
    assert item.content[2].image_url == CAT  # type: ignore[union-attr]
    answer = await oa.responses.create(model="vision-model", conversation=conversation.id, input="and? img-6")
    assert answer.output_text == "echo: and? img-6"


async def test_assistants_image_url_blocks(oa: AsyncOpenAI, raw: httpx.AsyncClient, tool_upstream_url: str) -> None:
    assistant = (await raw.post("/v1/assistants", json={"model": "vision-model"})).json()["id"]
    thread = await oa.beta.threads.create()
    message = await oa.beta.threads.messages.create(
        thread.id,
        role="user",
        content=[
            {"type": "text", "text": "Look: img-7"},
            {"type": "image_url", "image_url": {"url": CAT, "detail": "high"}},
        ],
    )
    assert [block.type for block in message.content] == ["text", "image_url"]
    assert message.content[1].image_url.url == CAT  # type: ignore[union-attr]
    run = await oa.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant)
    assert run.status == "completed"
    sent = last_request_with(tool_upstream_url, "img-7")
    assert sent["messages"][-1]["content"][1] == {"type": "image_url", "image_url": {"url": CAT, "detail": "high"}}

    with pytest.raises(openai.BadRequestError) as refusal:
        await oa.beta.threads.messages.create(
            thread.id, role="user", content=[{"type": "image_file", "image_file": {"file_id": "file_1"}}]
        )
    assert (refusal.value.code, refusal.value.param) == ("unsupported_content_type", "content.0.type")


async def test_freddy_inputs_with_images(raw: httpx.AsyncClient, tool_upstream_url: str) -> None:
    body = {
        "model": "vision-model",
        "inputs": [{"role": "user", "texts": [{"text": "See img-8"}], "images": [{"url": PIXEL, "detail": "low"}]}],
    }
    response = await raw.post("/v1/model/response", json=body)
    assert response.status_code == 200, response.text
    sent = last_request_with(tool_upstream_url, "img-8")
    assert sent["messages"][-1]["content"] == [{"type": "text", "text": "See img-8"}, SENT_PARTS[0]]
    thread_id = response.json()["thread_id"]
    (question, _) = (await raw.get(f"/v1/threads/{thread_id}/messages?order=asc")).json()["data"]
    assert question["parts"][1] == {"type": "image", "url": PIXEL, "detail": "low"}
    refused(await raw.post("/v1/model/response", json={**body, "model": "plain-model"}), 400, "vision_not_supported")
