"""Every response object Threadline sends — created, streamed (each lifecycle event's embedded response), retrieved,
failed — carries every field of the OpenResponses `ResponseResource` schema with its JSON type, and validates
strictly as the installed SDK's `Response`. The schema's required fields and types are transcribed below from the
OpenResponses specification (schema/components/schemas/ResponseResource.json); SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.conftest import Caller
from tests.responses_helpers import sse_events
from threadline.domain.messages import ToolCall
from threadline.providers.fake import FakeProvider, Script

pytestmark = pytest.mark.fake_model(tools=True)

NUMBER, INTEGER, STRING, BOOLEAN, OBJECT, ARRAY, NULL = (
    "number",
    "integer",
    "string",
    "boolean",
    "object",
    "array",
    "null",
)
# ResponseResource: each required property and the JSON types it may take.
REQUIRED: dict[str, tuple[str, ...]] = {
    "id": (STRING,),
    "object": (STRING,),
    "created_at": (INTEGER,),
    "completed_at": (INTEGER, NULL),
    "status": (STRING,),
    "incomplete_details": (OBJECT, NULL),
    "model": (STRING,),
    "previous_response_id": (STRING, NULL),
    "instructions": (STRING, ARRAY, NULL),
    "output": (ARRAY,),
    "error": (OBJECT, NULL),
    "tools": (ARRAY,),
    "tool_choice": (STRING, OBJECT),
    "truncation": (STRING,),
    "parallel_tool_calls": (BOOLEAN,),
    "text": (OBJECT,),
    "top_p": (NUMBER,),
    "presence_penalty": (NUMBER,),
    "frequency_penalty": (NUMBER,),
    "top_logprobs": (INTEGER,),
    "temperature": (NUMBER,),
    "reasoning": (OBJECT, NULL),
    "user": (STRING, NULL),
    "usage": (OBJECT, NULL),
    "max_output_tokens": (INTEGER, NULL),
    "max_tool_calls": (INTEGER, NULL),
    "store": (BOOLEAN,),
    "background": (BOOLEAN,),
    "service_tier": (STRING,),
    "metadata": (OBJECT,),
    "safety_identifier": (STRING, NULL),
    "prompt_cache_key": (STRING, NULL),
}
USAGE = {"input_tokens": INTEGER, "output_tokens": INTEGER, "total_tokens": INTEGER}
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
TOOL = {"type": "function", "name": "lookup", "description": "Look up.", "parameters": {"type": "object"}}


def json_type(value: Any) -> str:
    if value is None:
        return NULL
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return INTEGER  # (an integer is a JSON Schema number too)
    return {float: NUMBER, str: STRING, dict: OBJECT, list: ARRAY}[type(value)]


def check_resource(body: dict[str, Any]) -> None:
    for name, types in REQUIRED.items():
        assert name in body, f"missing {name}"
        kind = json_type(body[name])
        assert kind in types or (kind == INTEGER and NUMBER in types), (name, body[name])
    assert body["object"] == "response"
    text_format = body["text"]["format"]
    assert isinstance(text_format, dict) and isinstance(text_format["type"], str)
    if body["usage"] is not None:
        usage = body["usage"]
        assert {k: json_type(usage[k]) for k in USAGE} == USAGE
        assert json_type(usage["input_tokens_details"]["cached_tokens"]) == INTEGER
        assert json_type(usage["output_tokens_details"]["reasoning_tokens"]) == INTEGER
    for item in body["output"]:
        assert isinstance(item["id"], str) and item["type"] in ("message", "function_call")
    Response.model_validate(body, strict=True)


async def create(client: httpx.AsyncClient, caller: Caller, **fields: Any) -> httpx.Response:
    return await client.post("/v1/responses", json=fields, headers=caller.headers)


async def test_created_and_retrieved_responses_carry_the_whole_resource(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    fake.script(Script(reply="calling", tool_calls=(ToolCall("call_1", "lookup", '{"q": 1}'),)))
    created = await create(
        client,
        caller,
        input="hello",
        tools=[TOOL],
        tool_choice={"type": "function", "name": "lookup"},
        max_tool_calls=3,
        parallel_tool_calls=False,
        metadata={"k": "v"},
        user="end-user",
    )
    assert created.status_code == 200, created.text
    body = created.json()
    check_resource(body)
    assert body["tools"] == [{**TOOL, "strict": None}]  # as used
    assert body["tool_choice"] == {"type": "function", "name": "lookup"}
    assert (body["max_tool_calls"], body["parallel_tool_calls"], body["user"]) == (3, False, "end-user")
    assert (body["temperature"], body["top_p"], body["top_logprobs"]) == (1.0, 1.0, 0)  # the fake's defaults
    assert [item["type"] for item in body["output"]] == ["message", "function_call"]
    retrieved = await client.get(f"/v1/responses/{body['id']}", headers=caller.headers)
    assert retrieved.json() == body


async def test_every_streamed_response_carries_the_whole_resource(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    fake.script(Script(reply="one two"))
    streamed = await create(client, caller, input="hello", stream=True, temperature=0.5, top_p=0.75)
    events = sse_events(streamed.text)
    embedded = [data["response"] for _, data in events if "response" in data]
    assert len(embedded) == 3  # created, in_progress, completed
    for name, data in events:
        EVENTS.validate_python(data, strict=True)
        assert data["type"] == name
    for response in embedded:
        check_resource(response)
        assert (response["temperature"], response["top_p"]) == (0.5, 0.75)
    assert [r["status"] for r in embedded] == ["in_progress", "in_progress", "completed"]


async def test_a_failed_response_carries_the_whole_resource(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    fake.script(Script(reply="a b c", fail="mid", fail_after_tokens=1))
    streamed = await create(client, caller, input="doomed", stream=True)
    name, data = sse_events(streamed.text)[-1]
    assert name == "response.failed"
    check_resource(data["response"])
    assert data["response"]["error"]["code"] == "server_error"
    retrieved = await client.get(f"/v1/responses/{data['response']['id']}", headers=caller.headers)
    check_resource(retrieved.json())
