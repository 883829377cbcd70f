"""Function tools through the OpenAI-compatible provider, against httpx.MockTransport: what is sent (tools,
tool_choice, parallel_tool_calls, replayed calls and outputs) and how calls are parsed (streamed deltas keyed by
index, a plain JSON answer)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.test_openai_compat import BASE_URL, USAGE, chunk, provider_for, sse, stream_response
from threadline import errors
from threadline.domain.messages import ChatMessage, ToolCall
from threadline.providers.base import (
    Finished,
    FunctionTool,
    GenerationParams,
    StreamEvent,
    TextDelta,
    ToolCallArgumentsDelta,
    ToolCallStarted,
    ToolChoiceFunction,
)
from threadline.providers.openai_compat import OpenAICompatProvider

WEATHER = FunctionTool(
    "get_weather",
    "The weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    strict=True,
)
TIME = FunctionTool("get_time")


def tool_chunk(index: int, *, id: str | None = None, name: str | None = None, arguments: str | None = None) -> dict:
    function: dict[str, Any] = {}
    if name is not None:
        function["name"] = name
    if arguments is not None:
        function["arguments"] = arguments
    call: dict[str, Any] = {"index": index, "function": function}
    if id is not None:
        call.update(id=id, type="function")
    return {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}


async def run(
    provider: OpenAICompatProvider, messages: list[ChatMessage], params: GenerationParams
) -> list[StreamEvent]:
    return [event async for event in provider.stream("gpt-4.1", messages, params)]


async def test_tools_choice_and_parallel_flag_are_sent_and_history_replays_calls_and_outputs() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return stream_response(sse(chunk("ok"), chunk(finish_reason="stop"), "[DONE]"))

    history = [
        ChatMessage("user", "Weather and time in Paris?"),
        ChatMessage("assistant", '{"city": "Paris"}', "function_call", "call_1", "get_weather"),
        ChatMessage("assistant", "{}", "function_call", "call_2", "get_time"),
        ChatMessage("tool", "sunny", "function_call_output", "call_1"),
        ChatMessage("tool", "noon", "function_call_output", "call_2"),
        ChatMessage("assistant", "Sunny at noon."),
        ChatMessage("user", "And tomorrow?"),
    ]
    params = GenerationParams(
        max_output_tokens=16,
        tools=(WEATHER, TIME),
        tool_choice=ToolChoiceFunction("get_weather"),
        parallel_tool_calls=False,
    )
    await run(provider_for(handler), history, params)

    (body,) = seen
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": WEATHER.parameters,
                "strict": True,
            },
        },
        {"type": "function", "function": {"name": "get_time"}},
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    # Both calls of the turn in ONE assistant message, each output a tool message with its call's id.
    assert body["messages"] == [
        {"role": "user", "content": "Weather and time in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
        {"role": "assistant", "content": "Sunny at noon."},
        {"role": "user", "content": "And tomorrow?"},
    ]


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
async def test_string_tool_choices_are_sent_as_given(choice: str) -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return stream_response(sse(chunk("ok"), chunk(finish_reason="stop"), "[DONE]"))

    await run(
        provider_for(handler), [ChatMessage("user", "hi")], GenerationParams(8, tools=(TIME,), tool_choice=choice)
    )
    assert seen[0]["tool_choice"] == choice
    assert "parallel_tool_calls" not in seen[0]


async def test_no_tools_sends_no_tool_fields() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return stream_response(sse(chunk("ok"), chunk(finish_reason="stop"), "[DONE]"))

    await run(provider_for(handler), [ChatMessage("user", "hi")], GenerationParams(8, tool_choice="auto"))
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(seen[0])


async def test_streamed_parallel_calls_accumulate_by_index() -> None:
    body = sse(
        chunk(""),
        tool_chunk(0, id="call_a", name="get_weather", arguments=""),
        tool_chunk(0, arguments='{"city": '),
        tool_chunk(1, id="call_b", name="get_time", arguments="{"),
        tool_chunk(0, arguments='"Paris"}'),
        tool_chunk(1, arguments="}"),
        chunk(finish_reason="tool_calls"),
        USAGE,
        "[DONE]",
    )
    events = await run(
        provider_for(lambda _: stream_response(body)),
        [ChatMessage("user", "x")],
        GenerationParams(8, tools=(WEATHER, TIME)),
    )
    assert events == [
        ToolCallStarted(0, "call_a", "get_weather"),
        ToolCallArgumentsDelta(0, '{"city": '),
        ToolCallStarted(1, "call_b", "get_time"),
        ToolCallArgumentsDelta(1, "{"),
        ToolCallArgumentsDelta(0, '"Paris"}'),
        ToolCallArgumentsDelta(1, "}"),
        Finished(
            "tool_calls",
            12,
            3,
            tool_calls=(ToolCall("call_a", "get_weather", '{"city": "Paris"}'), ToolCall("call_b", "get_time", "{}")),
        ),
    ]


async def test_a_call_named_after_its_first_arguments_is_announced_with_them_and_gets_an_id() -> None:
    body = sse(
        tool_chunk(0, arguments='{"a"'),
        tool_chunk(0, name="f", arguments=": 1}"),
        chunk(finish_reason="tool_calls"),
        "[DONE]",
    )
    events = await run(provider_for(lambda _: stream_response(body)), [ChatMessage("user", "x")], GenerationParams(8))
    started, arguments, finished = events
    assert isinstance(started, ToolCallStarted) and started.name == "f" and started.call_id.startswith("call_")
    assert arguments == ToolCallArgumentsDelta(0, '{"a": 1}')
    assert isinstance(finished, Finished) and finished.tool_calls == (ToolCall(started.call_id, "f", '{"a": 1}'),)


async def test_text_then_a_call_in_one_answer() -> None:
    body = sse(
        chunk("Let me check."),
        tool_chunk(0, id="call_a", name="get_time", arguments="{}"),
        chunk(finish_reason="tool_calls"),
        "[DONE]",
    )
    events = await run(provider_for(lambda _: stream_response(body)), [ChatMessage("user", "x")], GenerationParams(8))
    assert events[0] == TextDelta("Let me check.")
    assert events[-1] == Finished("tool_calls", tool_calls=(ToolCall("call_a", "get_time", "{}"),))


async def test_a_call_that_never_names_its_function_is_a_bad_stream() -> None:
    body = sse(tool_chunk(0, id="call_a", arguments="{}"), chunk(finish_reason="tool_calls"), "[DONE]")
    with pytest.raises(errors.UpstreamError) as caught:
        await run(provider_for(lambda _: stream_response(body)), [ChatMessage("user", "x")], GenerationParams(8))
    assert caught.value.code == "upstream_bad_stream"


async def test_a_plain_json_answer_with_calls_and_one_with_text() -> None:
    calls = {
        "id": "c",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "call_x", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2},
    }
    text = {
        "id": "c",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    }
    answers = iter([calls, text])

    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=next(answers))

    provider = provider_for(handler)
    first = await run(provider, [ChatMessage("user", "x")], GenerationParams(8, tools=(TIME,)))
    second = await run(provider, [ChatMessage("user", "x")], GenerationParams(8))
    assert first == [
        ToolCallStarted(0, "call_x", "get_time"),
        ToolCallArgumentsDelta(0, "{}"),
        Finished("tool_calls", 5, 2, tool_calls=(ToolCall("call_x", "get_time", "{}"),)),
    ]
    assert second == [TextDelta("hi"), Finished("stop")]


def test_capabilities_are_data_per_model() -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(500)))
    provider = OpenAICompatProvider(
        name="u",
        base_url=BASE_URL,
        models=["big", "small"],
        http_client=client,
        capabilities={"vision": True},
        model_capabilities={"small": {"tools": False}},
    )
    infos = {info.name: (info.tools, info.vision) for info in provider.models()}
    assert infos == {"big": (True, True), "small": (False, True)}
    default = OpenAICompatProvider(name="u", base_url=BASE_URL, models=["m"], http_client=client)
    assert [(i.tools, i.vision) for i in default.models()] == [(True, False)]
