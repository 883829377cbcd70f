"""How a streamed answer with text AND function calls is laid out (a scripted FakeProvider with the `tools`
capability, on SQLite and PostgreSQL): the message item first, done before the first call is added, then each
call in turn; the saved response lists the same items with the same ids."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Caller
from tests.responses_helpers import sse_events
from threadline.domain.messages import ToolCall
from threadline.providers.fake import FakeProvider, Script

pytestmark = pytest.mark.fake_model(tools=True)

TOOLS = [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}]


async def test_text_then_two_calls_stream_as_three_items_in_order(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    fake.script(
        Script(reply="Checking both.", tool_calls=(ToolCall("call_1", "f", '{"a": 1}'), ToolCall("call_2", "f", "{}")))
    )
    streamed = await client.post(
        "/v1/responses", json={"input": "go", "tools": TOOLS, "stream": True}, headers=caller.headers
    )
    assert streamed.status_code == 200, streamed.text
    events = sse_events(streamed.text)
    layout = [(name, data.get("output_index")) for name, data in events]
    assert layout == [
        ("response.created", None),
        ("response.in_progress", None),
        ("response.output_item.added", 0),
        ("response.content_part.added", 0),
        ("response.output_text.delta", 0),
        ("response.output_text.delta", 0),
        ("response.output_text.done", 0),
        ("response.content_part.done", 0),
        ("response.output_item.done", 0),
        ("response.output_item.added", 1),
        ("response.function_call_arguments.delta", 1),
        ("response.function_call_arguments.delta", 1),
        ("response.function_call_arguments.done", 1),
        ("response.output_item.done", 1),
        ("response.output_item.added", 2),
        # The second call's arguments "{}" come in two pieces of 1 character.
        ("response.function_call_arguments.delta", 2),
        ("response.function_call_arguments.delta", 2),
        ("response.function_call_arguments.done", 2),
        ("response.output_item.done", 2),
        ("response.completed", None),
    ]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    final = events[-1][1]["response"]
    assert [(i["type"], i.get("call_id")) for i in final["output"]] == [
        ("message", None),
        ("function_call", "call_1"),
        ("function_call", "call_2"),
    ]
    added = [data["item"]["id"] for name, data in events if name == "response.output_item.added"]
    assert added == [i["id"] for i in final["output"]]
    assert events[12][1]["arguments"] == '{"a": 1}'

    # The thread holds the input, the text answer and both calls, in that order.
    stored = await client.get(f"/v1/responses/{final['id']}", headers=caller.headers)
    assert stored.json()["output"] == final["output"]
    turn = await client.get(f"/v1/model/response/{final['id']}", headers=caller.headers)
    messages = await client.get(
        f"/v1/threads/{turn.json()['thread_id']}/messages", params={"order": "asc"}, headers=caller.headers
    )
    assert [(m["type"], m["content"]) for m in messages.json()["data"]] == [
        ("message", "go"),
        ("message", "Checking both."),
        ("function_call", '{"a": 1}'),
        ("function_call", "{}"),
    ]


async def test_parallel_tool_calls_false_keeps_the_first_call_only(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    fake.script(Script(reply="", tool_calls=(ToolCall("call_1", "f", "{}"), ToolCall("call_2", "f", "{}"))))
    answered = await client.post(
        "/v1/responses", json={"input": "go", "tools": TOOLS, "parallel_tool_calls": False}, headers=caller.headers
    )
    assert answered.status_code == 200, answered.text
    body = answered.json()
    assert [(i["type"], i["call_id"]) for i in body["output"]] == [("function_call", "call_1")]
    assert body["parallel_tool_calls"] is False
    assert fake.params[-1].parallel_tool_calls is False
