"""Assistants v2 runs with function tools through the official `openai` SDK (strict validation), on SQLite and
PostgreSQL, against the real tool-calling upstream process (tests/upstream.py): a run whose model calls
functions waits in `requires_action` holding no lease, `submit_tool_outputs` continues the same run."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from openai import AsyncAssistantEventHandler, AsyncOpenAI
from openai.types.beta import AssistantStreamEvent
from openai.types.beta.threads import Text, TextDelta

from tests.conftest import Caller, make_caller, started_app
from tests.openai_sdk import sdk_client
from tests.tool_helpers import TIME_TOOL, WEATHER_TOOL, last_request_with, tool_settings

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore:The Assistants API is deprecated in favor of the Responses API:DeprecationWarning"
    ),
]


def assistants_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A Responses-spelled function tool in the Assistants v2 spelling."""
    return {"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}}


def said(error: openai.APIStatusError) -> str:
    """The error envelope's message (the exception's text prefixes the status)."""
    body: dict[str, Any] = error.body  # type: ignore[assignment]
    message: str = body["message"]
    return message


WEATHER = assistants_tool(WEATHER_TOOL)
TIME = assistants_tool(TIME_TOOL)


@pytest.fixture
async def caller(tool_app: FastAPI) -> Caller:
    return await make_caller(tool_app)


@pytest.fixture
async def oa(tool_app: FastAPI, caller: Caller) -> AsyncIterator[AsyncOpenAI]:
    client, _ = sdk_client(tool_app, caller.api_key)
    async with client:
        yield client


@pytest.fixture
async def raw(tool_app: FastAPI, caller: Caller) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=tool_app)
    headers = {"Authorization": f"Bearer {caller.api_key}", "OpenAI-Beta": "assistants=v2"}
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers) as client:
        yield client


async def make_assistant(raw: httpx.AsyncClient, tools: list[dict[str, Any]]) -> str:
    body = {"name": "Weather", "model": "tool-model", "instructions": "Use the tools.", "tools": tools}
    response = await raw.post("/v1/assistants", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["tools"] == tools
    assistant_id: str = response.json()["id"]
    return assistant_id


async def test_a_run_waits_for_tool_outputs_then_completes(
    oa: AsyncOpenAI, raw: httpx.AsyncClient, tool_upstream_url: str
) -> None:
    assistant = await make_assistant(raw, [WEATHER])
    thread = await oa.beta.threads.create(messages=[{"role": "user", "content": "Paris"}])

    run = await oa.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant)

    assert run.status == "requires_action"
    assert run.required_action is not None and run.required_action.type == "submit_tool_outputs"
    (call,) = run.required_action.submit_tool_outputs.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert [t.model_dump(exclude_none=True) for t in run.tools] == [WEATHER]
    assert run.expires_at is not None and run.expires_at - run.created_at == 600
    # Waiting holds no lease: the thread is idle, and the call is not in it yet (it is saved with its output).
    freddy = (await raw.get(f"/v1/threads/{thread.id}", headers={"OpenAI-Beta": ""})).json()
    assert freddy["status"] == "inactive"
    messages = await oa.beta.threads.messages.list(thread.id)
    assert [m.role for m in messages.data] == ["user"]
    # The waiting tool_calls step, outputs not yet known.
    steps = await oa.beta.threads.runs.steps.list(run.id, thread_id=thread.id)
    (waiting,) = steps.data
    assert (waiting.type, waiting.status) == ("tool_calls", "in_progress")
    assert waiting.step_details.type == "tool_calls"
    assert waiting.step_details.tool_calls[0].function.output is None  # type: ignore[union-attr]

    # OpenAI's rule while a run is active: no new message, no new run.
    with pytest.raises(openai.BadRequestError) as refused:
        await oa.beta.threads.messages.create(thread.id, role="user", content="and Rome?")
    assert said(refused.value) == f"Can't add messages to {thread.id} while a run {run.id} is active."
    assert refused.value.code == "run_active"
    with pytest.raises(openai.BadRequestError) as refused:
        await oa.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant)
    assert said(refused.value) == f"Thread {thread.id} already has an active run {run.id}."

    done = await oa.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call.id, "output": "sunny, 21 C"}]
    )

    assert (done.id, done.status, done.required_action, done.expires_at) == (run.id, "completed", None, None)
    assert done.usage is not None and run.usage is not None
    assert done.usage.prompt_tokens > run.usage.prompt_tokens  # both model calls of the run count
    messages = await oa.beta.threads.messages.list(thread.id, order="asc")
    assert [(m.role, m.content[0].text.value) for m in messages.data] == [  # type: ignore[union-attr]
        ("user", "Paris"),
        ("assistant", "Tool said: sunny, 21 C"),
    ]
    assert messages.data[1].run_id == run.id
    # The upstream got the call as an assistant message with tool_calls, then its output as a tool message.
    sent = last_request_with(tool_upstream_url, "sunny, 21 C")
    assert sent["messages"][0] == {"role": "system", "content": "Use the tools."}
    assert sent["messages"][-2:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ]
    # Steps, newest first: the answer's creation, then the tool call with its output.
    steps = await oa.beta.threads.runs.steps.list(run.id, thread_id=thread.id)
    assert [(s.type, s.status) for s in steps.data] == [("message_creation", "completed"), ("tool_calls", "completed")]
    created, tools = steps.data
    assert created.step_details.message_creation.message_id == messages.data[1].id  # type: ignore[union-attr]
    assert tools.step_details.tool_calls[0].function.output == "sunny, 21 C"  # type: ignore[union-attr]
    assert tools.id == waiting.id
    again = await oa.beta.threads.runs.steps.retrieve(tools.id, thread_id=thread.id, run_id=run.id)
    assert again == tools
    # The thread takes messages again; the Freddy view shows the call and its output as items.
    await oa.beta.threads.messages.create(thread.id, role="user", content="thanks")
    items = (await raw.get(f"/v1/threads/{thread.id}/messages?order=asc", headers={"OpenAI-Beta": ""})).json()
    assert [i["type"] for i in items["data"]] == [
        "message",
        "function_call",
        "function_call_output",
        "message",
        "message",
    ]


async def test_parallel_calls_need_every_output(oa: AsyncOpenAI, raw: httpx.AsyncClient) -> None:
    assistant = await make_assistant(raw, [WEATHER, TIME])
    thread = await oa.beta.threads.create(messages=[{"role": "user", "content": "[parallel] Oslo"}])
    run = await oa.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant)
    assert run.required_action is not None
    calls = run.required_action.submit_tool_outputs.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]

    with pytest.raises(openai.BadRequestError) as refused:
        await oa.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": calls[0].id, "output": "rain"}]
        )
    assert said(refused.value) == f"Expected tool outputs for call_ids {[c.id for c in calls]}, got {[calls[0].id]}."
    assert (await oa.beta.threads.runs.retrieve(run.id, thread_id=thread.id)).status == "requires_action"

    # Outputs in any order; the upstream gets them in the calls' order.
    outputs = [{"tool_call_id": calls[1].id, "output": "09:00"}, {"tool_call_id": calls[0].id, "output": "rain"}]
    done = await oa.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread.id,
        tool_outputs=outputs,  # type: ignore[arg-type]
    )
    assert done.status == "completed"
    messages = await oa.beta.threads.messages.list(thread.id, run_id=run.id)
    assert messages.data[0].content[0].text.value == "Tool said: rain | 09:00"  # type: ignore[union-attr]
    # A second submission finds the run finished.
    with pytest.raises(openai.BadRequestError) as refused:
        await oa.beta.threads.runs.submit_tool_outputs(run.id, thread_id=thread.id, tool_outputs=outputs)  # type: ignore[arg-type]
    assert said(refused.value) == 'Runs in status "completed" do not accept tool outputs.'


class Collector(AsyncAssistantEventHandler):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.deltas: list[str] = []

    async def on_event(self, event: AssistantStreamEvent) -> None:
        self.names.append(event.event)

    async def on_text_delta(self, delta: TextDelta, snapshot: Text) -> None:
        self.deltas.append(delta.value or "")


async def test_streamed_run_and_streamed_submission(oa: AsyncOpenAI, raw: httpx.AsyncClient) -> None:
    assistant = await make_assistant(raw, [WEATHER])
    thread = await oa.beta.threads.create(messages=[{"role": "user", "content": "Lima"}])

    first = Collector()
    async with oa.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant, event_handler=first) as s:
        await s.until_done()
    assert first.names == [
        "thread.run.created",
        "thread.run.queued",
        "thread.run.in_progress",
        "thread.run.step.created",
        "thread.run.step.in_progress",
        "thread.run.step.delta",
        "thread.run.step.delta",
        "thread.run.step.delta",
        "thread.run.requires_action",
    ]
    run = first.current_run
    assert run is not None and run.status == "requires_action" and run.required_action is not None
    (call,) = run.required_action.submit_tool_outputs.tool_calls
    # The helper put the step's deltas together: the call as the model streamed it.
    step = first.current_run_step_snapshot
    assert step is not None and step.step_details.type == "tool_calls"
    (streamed,) = step.step_details.tool_calls
    assert (streamed.id, streamed.function.name, streamed.function.arguments) == (  # type: ignore[union-attr]
        call.id,
        "get_weather",
        call.function.arguments,
    )

    second = Collector()
    async with oa.beta.threads.runs.submit_tool_outputs_stream(
        run_id=run.id,
        thread_id=thread.id,
        tool_outputs=[{"tool_call_id": call.id, "output": "foggy"}],
        event_handler=second,
    ) as s:
        await s.until_done()
    assert second.names[:3] == ["thread.run.step.completed", "thread.run.queued", "thread.run.in_progress"]
    assert second.names[-3:] == ["thread.message.completed", "thread.run.step.completed", "thread.run.completed"]
    assert "".join(second.deltas) == "Tool said: foggy"
    final = await second.get_final_run()
    assert (final.id, final.status) == (run.id, "completed")
    (message,) = await second.get_final_messages()
    assert message.content[0].text.value == "Tool said: foggy"  # type: ignore[union-attr]


async def test_cancel_a_waiting_run_leaves_the_thread_as_it_was(oa: AsyncOpenAI, raw: httpx.AsyncClient) -> None:
    assistant = await make_assistant(raw, [WEATHER])
    thread = await oa.beta.threads.create(messages=[{"role": "user", "content": "Bern"}])
    run = await oa.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant)
    assert run.status == "requires_action"

    cancelled = await oa.beta.threads.runs.cancel(run.id, thread_id=thread.id)

    assert (cancelled.status, cancelled.required_action) == ("cancelled", None)
    assert cancelled.cancelled_at is not None
    (step,) = (await oa.beta.threads.runs.steps.list(run.id, thread_id=thread.id)).data
    assert (step.type, step.status) == ("tool_calls", "cancelled")
    with pytest.raises(openai.BadRequestError) as refused:
        await oa.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": "call_x", "output": "x"}]
        )
    assert said(refused.value) == 'Runs in status "cancelled" do not accept tool outputs.'
    # Nothing of the run is in the thread, and it goes on: a run without tools answers in text.
    await oa.beta.threads.messages.create(thread.id, role="user", content="never mind")
    plain = await oa.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant, tools=[])
    assert (plain.status, plain.tools) == ("completed", [])
    messages = await oa.beta.threads.messages.list(thread.id, order="asc")
    assert [m.content[0].text.value for m in messages.data] == ["Bern", "never mind", "echo: never mind"]  # type: ignore[union-attr]


async def test_a_waiting_run_expires(database_url: str, tool_upstream_url: str) -> None:
    settings = tool_settings(database_url, tool_upstream_url).model_copy(update={"run_expiry_seconds": 1e-6})
    async for app in started_app(settings):
        caller = await make_caller(app)
        client, _ = sdk_client(app, caller.api_key)
        async with (
            client,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://test",
                headers={"Authorization": f"Bearer {caller.api_key}"},
            ) as raw,
        ):
            assistant = await make_assistant(raw, [WEATHER])
            thread = await client.beta.threads.create(messages=[{"role": "user", "content": "Kyiv"}])
            run = await client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant)
            assert run.status == "requires_action"  # as it ended its model call

            expired = await client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)

            assert (expired.status, expired.required_action, expired.expires_at) == ("expired", None, None)
            (step,) = (await client.beta.threads.runs.steps.list(run.id, thread_id=thread.id)).data
            assert (step.type, step.status, step.expired_at) == ("tool_calls", "expired", run.expires_at)
            with pytest.raises(openai.BadRequestError) as refused:
                await client.beta.threads.runs.submit_tool_outputs(
                    run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": "call_x", "output": "x"}]
                )
            assert said(refused.value) == 'Runs in status "expired" do not accept tool outputs.'
            await client.beta.threads.messages.create(thread.id, role="user", content="still there?")


async def test_run_tools_are_checked(oa: AsyncOpenAI, raw: httpx.AsyncClient) -> None:
    assistant = await make_assistant(raw, [WEATHER])
    thread = await oa.beta.threads.create(messages=[{"role": "user", "content": "Quito"}])
    with pytest.raises(openai.BadRequestError) as refused:
        await oa.beta.threads.runs.create(
            thread_id=thread.id, assistant_id=assistant, tools=[{"type": "code_interpreter"}]
        )
    assert (refused.value.code, refused.value.param) == ("unsupported_tool_type", "tools.0.type")
    with pytest.raises(openai.BadRequestError) as refused:
        await oa.beta.threads.runs.create(
            thread_id=thread.id,
            assistant_id=assistant,
            tool_choice={"type": "function", "function": {"name": "get_time"}},
        )
    assert refused.value.param == "tool_choice.function.name"
    response = await raw.post("/v1/assistants", json={"model": "tool-model", "tools": [{"type": "file_search"}]})
    assert (response.status_code, response.json()["error"]["code"]) == (400, "unsupported_tool_type")
    # A model without the tools capability refuses a run that offers it tools.
    with pytest.raises(openai.BadRequestError) as refused:
        await oa.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant, model="plain-model")
    assert refused.value.code == "tools_not_supported"
    # Nothing was left behind: the thread still takes a run, whose forced call names the tool.
    run = await oa.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
    )
    assert run.status == "requires_action"
    assert run.tool_choice is not None and run.parallel_tool_calls is False
