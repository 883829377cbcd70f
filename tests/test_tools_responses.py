"""Function tools on the Responses and Conversations APIs through the official `openai` SDK (strict validation),
on SQLite and PostgreSQL, against a real tool-calling upstream process (tests/upstream.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from openai import AsyncOpenAI

from tests.conftest import Caller, make_caller
from tests.openai_sdk import sdk_client
from tests.tool_helpers import TIME_TOOL, WEATHER_TOOL, last_request_with

pytestmark = pytest.mark.slow


@pytest.fixture
async def tool_caller(tool_app: FastAPI) -> Caller:
    return await make_caller(tool_app)


@pytest.fixture
async def oa(tool_app: FastAPI, tool_caller: Caller) -> AsyncIterator[AsyncOpenAI]:
    client, _ = sdk_client(tool_app, tool_caller.api_key)
    async with client:
        yield client


async def test_a_non_streamed_tool_loop_with_previous_response_id(oa: AsyncOpenAI, tool_upstream_url: str) -> None:
    first = await oa.responses.create(model="tool-model", input="Paris", tools=[WEATHER_TOOL])  # type: ignore[list-item]

    assert first.status == "completed"
    (call,) = first.output
    assert call.type == "function_call"
    assert call.id.startswith("fc_") and call.call_id.startswith("call_")
    assert (call.name, json.loads(call.arguments), call.status) == ("get_weather", {"city": "Paris"}, "completed")
    assert first.output_text == ""
    # What was used is echoed: the tool as given, the default choice, parallel calls on.
    assert [t.model_dump(exclude_none=True) for t in first.tools] == [WEATHER_TOOL]
    assert (first.tool_choice, first.parallel_tool_calls) == ("auto", True)

    second = await oa.responses.create(
        model="tool-model",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    assert second.output_text == "Tool said: sunny, 21 C"
    assert [item.type for item in second.output] == ["message"]

    # The upstream saw the call as an assistant message with tool_calls, then the output as a tool message.
    sent = last_request_with(tool_upstream_url, "sunny, 21 C")
    assert sent["messages"][-2:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 21 C"},
    ]
    assert sent["tools"][0]["function"]["strict"] is True

    inputs = await oa.responses.input_items.list(second.id)
    assert [(i.type, getattr(i, "call_id", None)) for i in inputs.data] == [("function_call_output", call.call_id)]


async def test_a_streamed_tool_loop_emits_openais_events_in_order(oa: AsyncOpenAI) -> None:
    events = []
    async with oa.responses.stream(model="tool-model", input="Oslo", tools=[WEATHER_TOOL]) as stream:  # type: ignore[list-item]
        async for event in stream:
            events.append(event)
        final = await stream.get_final_response()

    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    numbers = [e.sequence_number for e in events]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    added, done = events[2], events[6]
    assert added.item.type == "function_call" and added.item.arguments == "" and added.item.status == "in_progress"
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(deltas) == {"city": "Oslo"} and events[5].arguments == deltas
    assert done.item.id == added.item.id and done.item.arguments == deltas
    (call,) = final.output
    assert call.id == added.item.id and call.call_id == added.item.call_id

    # The answer to the call streams as text, continuing the chain.
    async with oa.responses.stream(
        model="tool-model",
        previous_response_id=final.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "snow"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    ) as stream:
        text = "".join([e.delta async for e in stream if e.type == "response.output_text.delta"])
        answer = await stream.get_final_response()
    assert text == "Tool said: snow" == answer.output_text


async def test_parallel_calls_in_a_conversation_replay_as_one_assistant_message(
    oa: AsyncOpenAI, tool_upstream_url: str
) -> None:
    conversation = await oa.conversations.create()
    first = await oa.responses.create(
        model="tool-model",
        conversation=conversation.id,
        input="[parallel] Rome",
        tools=[WEATHER_TOOL, TIME_TOOL],  # type: ignore[list-item]
    )
    calls = first.output
    assert [(c.type, c.name) for c in calls] == [("function_call", "get_weather"), ("function_call", "get_time")]  # type: ignore[union-attr]

    # A new user turn while the calls wait for their outputs is refused, with OpenAI's words; nothing is saved.
    with pytest.raises(openai.BadRequestError) as refused:
        await oa.responses.create(model="tool-model", conversation=conversation.id, input="never mind")
    assert refused.value.body["message"] == f"No tool output found for function call {calls[0].call_id}."  # type: ignore[index, union-attr]
    before = [i.id async for i in oa.conversations.items.list(conversation.id, order="asc")]

    outputs = [
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "warm"},  # type: ignore[union-attr]
        {"type": "function_call_output", "call_id": calls[1].call_id, "output": "dusk"},  # type: ignore[union-attr]
    ]
    second = await oa.responses.create(
        model="tool-model",
        conversation=conversation.id,
        input=outputs,
        tools=[WEATHER_TOOL, TIME_TOOL],  # type: ignore[arg-type, list-item]
    )
    assert second.output_text == "Tool said: warm | dusk"
    # The context report counts the items the model saw by type.
    report = (await oa.get(f"/model/response/{second.id}", cast_to=dict))["context"]  # type: ignore[arg-type]
    assert report["items_by_type"] == {"function_call": 2, "function_call_output": 2, "message": 1}
    sent = last_request_with(tool_upstream_url, "dusk")
    assistant = [m for m in sent["messages"] if m["role"] == "assistant"]
    assert len(assistant) == 1 and [c["id"] for c in assistant[0]["tool_calls"]] == [c.call_id for c in calls]  # type: ignore[union-attr]

    items = [i async for i in oa.conversations.items.list(conversation.id, order="asc")]
    assert [i.id for i in items[: len(before)]] == before
    assert [i.type for i in items] == [
        "message",
        "function_call",
        "function_call",
        "function_call_output",
        "function_call_output",
        "message",
    ]
    assert items[1].id == calls[0].id and items[3].output == "warm"  # type: ignore[union-attr]
    assert items[3].id.startswith("fco_") and items[0].id.startswith("msg_")


async def test_outputs_without_their_call_are_refused_in_openais_words(oa: AsyncOpenAI) -> None:
    conversation = await oa.conversations.create(items=[{"type": "message", "role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as refused:
        await oa.responses.create(
            model="tool-model",
            conversation=conversation.id,
            input=[{"type": "function_call_output", "call_id": "call_nope", "output": "x"}],
        )
    assert refused.value.body["message"] == "No tool call found for function call output with call_id call_nope."  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as refused_item:
        await oa.conversations.items.create(
            conversation.id, items=[{"type": "function_call_output", "call_id": "call_nope", "output": "x"}]
        )
    assert "call_nope" in refused_item.value.body["message"]  # type: ignore[index]
    items = [i async for i in oa.conversations.items.list(conversation.id)]
    assert [i.type for i in items] == ["message"]


async def test_a_model_without_the_tools_capability_refuses_tools(oa: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await oa.responses.create(model="plain-model", input="Paris", tools=[WEATHER_TOOL])  # type: ignore[list-item]
    body: dict[str, Any] = refused.value.body  # type: ignore[assignment]
    assert body["code"] == "tools_not_supported" and "'plain-model'" in body["message"]
    assert body["param"] == "tools"
    # Without tools the same model answers.
    plain = await oa.responses.create(model="plain-model", input="Paris")
    assert plain.output_text == "echo: Paris"


async def test_tool_choice_none_named_and_the_call_cap(oa: AsyncOpenAI) -> None:
    none = await oa.responses.create(model="tool-model", input="Lima", tools=[WEATHER_TOOL], tool_choice="none")  # type: ignore[list-item]
    assert none.output_text == "echo: Lima" and none.tool_choice == "none"

    named = await oa.responses.create(
        model="tool-model",
        input="Lima",
        tools=[WEATHER_TOOL, TIME_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_time"},
    )
    assert [c.name for c in named.output] == ["get_time"]  # type: ignore[union-attr]
    assert named.tool_choice.name == "get_time"  # type: ignore[union-attr]

    capped = await oa.responses.create(
        model="tool-model",
        input="[parallel] Lima",
        tools=[WEATHER_TOOL, TIME_TOOL],
        max_tool_calls=1,  # type: ignore[list-item]
    )
    assert [c.name for c in capped.output] == ["get_weather"] and capped.max_tool_calls == 1  # type: ignore[union-attr]

    with pytest.raises(openai.BadRequestError) as unknown:
        await oa.responses.create(
            model="tool-model",
            input="x",
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "name": "nope"},  # type: ignore[list-item]
        )
    assert unknown.value.body["param"] == "tool_choice.name"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as hosted:
        await oa.responses.create(model="tool-model", input="x", tools=[{"type": "web_search"}])
    assert hosted.value.body["code"] == "unsupported_tool_type"  # type: ignore[index]


async def test_plain_upstream_answers_and_client_replayed_history(oa: AsyncOpenAI) -> None:
    # `[plain]`: the upstream answers one JSON body instead of a stream; the calls are parsed the same way.
    first = await oa.responses.create(model="tool-model", input="[plain] Kyiv", tools=[WEATHER_TOOL], store=False)  # type: ignore[list-item]
    (call,) = first.output
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Kyiv"}

    # A client that keeps the history itself replays the call and sends the output.
    replayed = await oa.responses.create(
        model="tool-model",
        input=[
            {"type": "message", "role": "user", "content": "Kyiv"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "rain"},
        ],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    assert replayed.output_text == "Tool said: rain"


async def test_other_item_types_are_refused_by_name(oa: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await oa.responses.create(
            model="tool-model",
            input=[{"type": "web_search_call", "id": "ws_1", "status": "completed"}],  # type: ignore[list-item]
        )
    body: dict[str, Any] = refused.value.body  # type: ignore[assignment]
    assert body["code"] == "unsupported_item_type" and "'web_search_call'" in body["message"]
    assert body["param"] == "input.0.type"


async def test_conversation_items_of_every_type_round_trip(oa: AsyncOpenAI, tool_upstream_url: str) -> None:
    conversation = await oa.conversations.create(
        items=[
            {"type": "message", "role": "user", "content": "Weather in Bern?"},
            {"type": "function_call", "call_id": "call_b1", "name": "get_weather", "arguments": '{"city": "Bern"}'},
        ]
    )
    created = await oa.conversations.items.create(
        conversation.id,
        items=[
            {
                "type": "function_call_output",
                "call_id": "call_b1",
                "output": [{"type": "input_text", "text": "fog"}],
            }
        ],
    )
    (output,) = created.data
    assert output.type == "function_call_output" and output.call_id == "call_b1"
    assert [p.model_dump(exclude_none=True) for p in output.output] == [{"type": "input_text", "text": "fog"}]  # type: ignore[union-attr]

    listed = [i async for i in oa.conversations.items.list(conversation.id, order="asc")]
    assert [i.type for i in listed] == ["message", "function_call", "function_call_output"]
    call = await oa.conversations.items.retrieve(listed[1].id, conversation_id=conversation.id)
    assert call.type == "function_call" and call.name == "get_weather" and call.arguments == '{"city": "Bern"}'
    desc = [i.id async for i in oa.conversations.items.list(conversation.id, order="desc")]
    assert desc == [i.id for i in reversed(listed)]

    # The conversation continues after the call: the model sees the call and its output.
    answer = await oa.responses.create(model="tool-model", conversation=conversation.id, input="Thanks, and Zug?")
    assert answer.output_text == "echo: Thanks, and Zug?"
    sent = last_request_with(tool_upstream_url, "Thanks, and Zug?")
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool", "user"]
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": "call_b1", "content": "fog"}

    await oa.conversations.items.delete(answer.output[0].id, conversation_id=conversation.id)
    remaining = [i.type async for i in oa.conversations.items.list(conversation.id, order="asc")]
    assert remaining == ["message", "function_call", "function_call_output", "message"]


async def test_item_references_name_stored_items_and_tool_outputs_are_searchable(
    oa: AsyncOpenAI, tool_app: FastAPI, tool_caller: Caller
) -> None:
    first = await oa.responses.create(model="tool-model", input="Quito", tools=[WEATHER_TOOL])  # type: ignore[list-item]
    (call,) = first.output
    # A new conversation that refers to the stored call by id instead of repeating it.
    answer = await oa.responses.create(
        model="tool-model",
        input=[
            {"type": "message", "role": "user", "content": "Quito"},
            {"type": "item_reference", "id": call.id},
            {"type": "function_call_output", "call_id": call.call_id, "output": "drizzle-ish"},  # type: ignore[union-attr]
        ],
    )
    assert answer.output_text == "Tool said: drizzle-ish"
    with pytest.raises(openai.NotFoundError) as missing:
        await oa.responses.create(model="tool-model", input=[{"type": "item_reference", "id": "fc_nothing"}])
    assert missing.value.body["code"] == "item_not_found"  # type: ignore[index]

    # The output's text sits in the searchable column: search finds the thread by it.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=tool_app), base_url="http://t") as client:
        found = await client.get("/v1/threads/search", params={"q": "drizzle"}, headers=tool_caller.headers)
        turn = await client.get(f"/v1/model/response/{answer.id}", headers=tool_caller.headers)
    assert found.status_code == 200, found.text
    assert [t["id"] for t in found.json()["data"]] == [turn.json()["thread_id"]]


async def test_the_freddy_view_shows_every_item_with_its_type(
    oa: AsyncOpenAI, tool_app: FastAPI, tool_caller: Caller
) -> None:
    conversation = await oa.conversations.create(
        items=[
            {"type": "message", "role": "user", "content": "Weather in Graz?"},
            {"type": "function_call", "call_id": "call_g", "name": "get_weather", "arguments": '{"city": "Graz"}'},
            {"type": "function_call_output", "call_id": "call_g", "output": "hail"},
        ]
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=tool_app), base_url="http://t") as client:
        listed = await client.get(
            f"/v1/threads/{conversation.id}/messages", params={"order": "asc"}, headers=tool_caller.headers
        )
        thread = await client.get(f"/v1/threads/{conversation.id}", headers=tool_caller.headers)
    assert listed.status_code == 200, listed.text
    shown = [
        {k: m[k] for k in ("type", "role", "content", "call_id", "name", "arguments", "output")}
        for m in listed.json()["data"]
    ]
    assert shown == [
        {"type": "message", "role": "user", "content": "Weather in Graz?", "call_id": None, "name": None,
         "arguments": None, "output": None},
        {"type": "function_call", "role": "assistant", "content": '{"city": "Graz"}', "call_id": "call_g",
         "name": "get_weather", "arguments": '{"city": "Graz"}', "output": None},
        {"type": "function_call_output", "role": "tool", "content": "hail", "call_id": "call_g", "name": None,
         "arguments": None, "output": "hail"},
    ]  # fmt: skip
    assert thread.json()["message_count"] == 3
