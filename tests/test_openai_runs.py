"""Assistants v2 runs through the official `openai` SDK (strict validation), on SQLite and PostgreSQL.

The model is a scripted FakeProvider (what it was sent is asserted); one slow test runs the embedded model.
The SDK warns that the Assistants API is deprecated on every call; exactly that warning is filtered here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from openai import AsyncAssistantEventHandler, AsyncOpenAI
from openai.types.beta import AssistantStreamEvent
from openai.types.beta.threads import Text, TextDelta

from tests.conftest import Caller, _empty_all_tables, make_caller
from tests.openai_sdk import CountingTransport, sdk_client
from threadline.api.app import create_app
from threadline.config import Settings
from threadline.domain.messages import ChatMessage
from threadline.providers.base import GenerationParams
from threadline.providers.fake import FakeProvider, Script

pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:The Assistants API is deprecated in favor of the Responses API:DeprecationWarning"
    ),
    pytest.mark.fake_model(),
]

BETA = {"OpenAI-Beta": "assistants=v2"}
STREAM_ORDER = [
    "thread.run.created",
    "thread.run.queued",
    "thread.run.in_progress",
    "thread.run.step.created",
    "thread.run.step.in_progress",
    "thread.message.created",
    "thread.message.in_progress",
]


@pytest.fixture
async def sdk(app: FastAPI, caller: Caller) -> AsyncIterator[tuple[AsyncOpenAI, CountingTransport]]:
    client, transport = sdk_client(app, caller.api_key)
    async with client:
        yield client, transport


@pytest.fixture
def oa(sdk: tuple[AsyncOpenAI, CountingTransport]) -> AsyncOpenAI:
    return sdk[0]


async def make_assistant(client: httpx.AsyncClient, caller: Caller, **fields: Any) -> str:
    body = {"name": "Helper", "model": "fake-model", "instructions": "Be brief.", **fields}
    response = await client.post("/v1/assistants", json=body, headers=caller.headers)
    assert response.status_code == 200, response.text
    assistant_id: str = response.json()["id"]
    return assistant_id


@pytest.fixture
async def assistant(client: httpx.AsyncClient, caller: Caller) -> str:
    return await make_assistant(client, caller)


def text_of(message: Any) -> str:
    assert message.content and message.content[0].type == "text"
    value: str = message.content[0].text.value
    return value


class Collector(AsyncAssistantEventHandler):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.deltas: list[str] = []

    async def on_event(self, event: AssistantStreamEvent) -> None:
        self.names.append(event.event)

    async def on_text_delta(self, delta: TextDelta, snapshot: Text) -> None:
        self.deltas.append(delta.value or "")


async def test_create_and_poll_answers_from_the_thread_history(
    sdk: tuple[AsyncOpenAI, CountingTransport], fake: FakeProvider, assistant: str
) -> None:
    oa, transport = sdk
    thread = await oa.beta.threads.create(
        messages=[{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "Hello Ada."}]
    )
    await oa.beta.threads.messages.create(thread.id, role="user", content="What is my name?")
    fake.script(Script(reply="Your name is Ada."))

    run = await oa.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant)

    assert run.status == "completed"
    assert run.id.startswith("resp_") and run.object == "thread.run"
    assert (run.thread_id, run.assistant_id, run.model) == (thread.id, assistant, "fake-model")
    assert run.instructions == "Be brief."
    assert run.tools == [] and run.parallel_tool_calls is True
    assert run.last_error is None and run.incomplete_details is None
    assert run.usage is not None and run.usage.completion_tokens == 4
    assert run.usage.total_tokens == run.usage.prompt_tokens + 4
    assert isinstance(run.completed_at, int) and run.started_at == run.created_at
    # The assistant's instructions, then the whole history, were sent to the model.
    assert fake.calls == [
        [
            ChatMessage("system", "Be brief."),
            ChatMessage("user", "My name is Ada."),
            ChatMessage("assistant", "Hello Ada."),
            ChatMessage("user", "What is my name?"),
        ]
    ]
    # create_and_poll: the POST (stream false) answered with a finished run; one GET confirmed it.
    posts = [r for r in transport.requests if r.method == "POST" and r.url.path.endswith("/runs")]
    assert len(posts) == 1 and b'"stream":false' in posts[0].content.replace(b" ", b"")

    answer = await oa.beta.threads.messages.list(thread.id, run_id=run.id)
    assert len(answer.data) == 1
    message = answer.data[0]
    assert (message.role, text_of(message), message.run_id, message.assistant_id) == (
        "assistant",
        "Your name is Ada.",
        run.id,
        assistant,
    )
    everything = await oa.beta.threads.messages.list(thread.id, order="asc")
    assert [text_of(m) for m in everything.data][-1] == "Your name is Ada."
    assert [m.run_id for m in everything.data] == [None, None, None, run.id]


async def test_run_options_shape_the_prompt_and_are_echoed(oa: AsyncOpenAI, fake: FakeProvider, assistant: str) -> None:
    thread = await oa.beta.threads.create(
        messages=[{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(6)]
    )
    run = await oa.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant,
        instructions="Answer in French.",
        additional_instructions="Be polite.",
        additional_messages=[{"role": "user", "content": "Bonjour ?", "metadata": {"k": "v"}}],
        truncation_strategy={"type": "last_messages", "last_messages": 3},
        temperature=0.3,
        max_completion_tokens=50,
        metadata={"ticket": "42"},
        tool_choice="none",
        response_format={"type": "text"},
        parallel_tool_calls=False,
    )
    assert run.status == "completed"
    # At most 3 messages: the run's own input and the 2 newest of the thread.
    assert fake.calls[-1] == [
        ChatMessage("system", "Answer in French.\n\nBe polite."),
        ChatMessage("user", "m4"),
        ChatMessage("assistant", "m5"),
        ChatMessage("user", "Bonjour ?"),
    ]
    assert fake.params[-1] == GenerationParams(max_output_tokens=50, temperature=0.3)
    assert run.instructions == "Answer in French.\n\nBe polite."
    assert run.truncation_strategy is not None
    assert (run.truncation_strategy.type, run.truncation_strategy.last_messages) == ("last_messages", 3)
    assert (run.temperature, run.max_completion_tokens, run.metadata) == (0.3, 50, {"ticket": "42"})
    assert (run.tool_choice, run.parallel_tool_calls) == ("none", False)

    # The run's messages: its additional message (with its metadata) and its answer, appended to the thread.
    own = await oa.beta.threads.messages.list(thread.id, run_id=run.id, order="asc")
    assert [(m.role, text_of(m)) for m in own.data] == [("user", "Bonjour ?"), ("assistant", "echo: Bonjour ?")]
    assert own.data[0].metadata == {"k": "v"} and own.data[0].assistant_id is None
    assert len((await oa.beta.threads.messages.list(thread.id, limit=100)).data) == 8

    # {type: auto}: the newest messages that fit, whatever the assistant's context mode.
    auto = await oa.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant, truncation_strategy={"type": "auto"}
    )
    assert auto.truncation_strategy is not None and auto.truncation_strategy.type == "auto"
    assert len(fake.calls[-1]) == 9  # instructions + all 8 messages


async def test_stopping_for_max_tokens_is_an_incomplete_run(
    oa: AsyncOpenAI, fake: FakeProvider, assistant: str
) -> None:
    thread = await oa.beta.threads.create(messages=[{"role": "user", "content": "Count to ten."}])
    fake.script(Script(reply="one two three four", finish_reason="length"))
    run = await oa.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant, max_completion_tokens=2
    )
    assert run.status == "incomplete"
    assert run.incomplete_details is not None and run.incomplete_details.reason == "max_completion_tokens"
    saved = await oa.beta.threads.messages.list(thread.id, run_id=run.id)
    assert [text_of(m) for m in saved.data] == ["one two"]


async def test_stream_helper_delivers_text_deltas_and_final_objects(
    oa: AsyncOpenAI, fake: FakeProvider, assistant: str
) -> None:
    thread = await oa.beta.threads.create(messages=[{"role": "user", "content": "Say three words."}])
    fake.script(Script(reply="one two three"))
    handler = Collector()
    async with oa.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant, event_handler=handler) as s:
        await s.until_done()
        run = await s.get_final_run()
        final_messages = await s.get_final_messages()

    assert handler.deltas == ["one", " two", " three"]
    assert handler.names == [
        *STREAM_ORDER,
        "thread.message.delta",
        "thread.message.delta",
        "thread.message.delta",
        "thread.message.completed",
        "thread.run.step.completed",
        "thread.run.completed",
    ]
    assert run.status == "completed" and run.assistant_id == assistant
    saved = (await oa.beta.threads.messages.list(thread.id, run_id=run.id)).data
    assert len(saved) == 1 and text_of(saved[0]) == "one two three"
    # The streamed message is the saved one: same id, same object.
    assert [m.id for m in final_messages] == [saved[0].id]
    assert final_messages[0].to_dict() == saved[0].to_dict()
    steps = await oa.beta.threads.runs.steps.list(run.id, thread_id=thread.id)
    assert steps.data[0].step_details.type == "message_creation"
    assert steps.data[0].step_details.message_creation.message_id == saved[0].id


async def test_raw_stream_events_carry_the_saved_message_id(
    oa: AsyncOpenAI, fake: FakeProvider, assistant: str
) -> None:
    thread = await oa.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
    events = [e async for e in await oa.beta.threads.runs.create(thread.id, assistant_id=assistant, stream=True)]
    names = [e.event for e in events]
    assert names[: len(STREAM_ORDER)] == STREAM_ORDER
    assert names[len(STREAM_ORDER) :] == ["thread.message.delta"] * 2 + [
        "thread.message.completed",
        "thread.run.step.completed",
        "thread.run.completed",
    ]
    created, queued, in_progress = (e.data for e in events[:3])
    assert created.status == queued.status == "queued" and in_progress.status == "in_progress"
    message_ids = {e.data.id for e in events if e.event.startswith("thread.message")}
    completed = events[-3].data
    assert message_ids == {completed.id}
    assert text_of(completed) == "echo: hi" and completed.run_id == created.id
    final = events[-1].data
    assert final.status == "completed" and final.usage is not None
    assert (await oa.beta.threads.runs.retrieve(final.id, thread_id=thread.id)).to_dict() == final.to_dict()


async def test_retrieve_list_update_and_steps(
    oa: AsyncOpenAI, client: httpx.AsyncClient, caller: Caller, assistant: str
) -> None:
    thread = await oa.beta.threads.create(messages=[{"role": "user", "content": "first"}])
    first = await oa.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant)
    await oa.beta.threads.messages.create(thread.id, role="user", content="second")
    second = await oa.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant)

    assert (await oa.beta.threads.runs.retrieve(first.id, thread_id=thread.id)).to_dict() == first.to_dict()
    listed = await oa.beta.threads.runs.list(thread.id)
    assert [r.id for r in listed.data] == [second.id, first.id] and listed.has_more is False
    paged = await oa.beta.threads.runs.list(thread.id, limit=1, order="asc")
    assert paged.has_more is True
    assert [r.id async for r in paged] == [first.id, second.id]

    updated = await oa.beta.threads.runs.update(first.id, thread_id=thread.id, metadata={"label": "kept"})
    assert updated.metadata == {"label": "kept"}
    assert (await oa.beta.threads.runs.retrieve(first.id, thread_id=thread.id)).metadata == {"label": "kept"}

    steps = await oa.beta.threads.runs.steps.list(first.id, thread_id=thread.id)
    assert len(steps.data) == 1
    step = steps.data[0]
    assert (step.object, step.type, step.status, step.run_id, step.assistant_id) == (
        "thread.run.step",
        "message_creation",
        "completed",
        first.id,
        assistant,
    )
    answer = (await oa.beta.threads.messages.list(thread.id, run_id=first.id)).data[0]
    assert step.step_details.type == "message_creation"
    assert step.step_details.message_creation.message_id == answer.id
    fetched = await oa.beta.threads.runs.steps.retrieve(step.id, thread_id=thread.id, run_id=first.id)
    assert fetched.to_dict() == step.to_dict()
    with pytest.raises(openai.NotFoundError) as no_step:
        await oa.beta.threads.runs.steps.retrieve("step_nope", thread_id=thread.id, run_id=first.id)
    assert no_step.value.code == "run_step_not_found"

    with pytest.raises(openai.BadRequestError) as finished:
        await oa.beta.threads.runs.cancel(first.id, thread_id=thread.id)
    assert finished.value.code == "run_not_cancellable"

    # The poll helper's pacing header, on run GETs.
    raw = await client.get(f"/v1/threads/{thread.id}/runs/{first.id}", headers={**caller.headers, **BETA})
    assert raw.headers["openai-poll-after-ms"] == "500"
    # Without the beta header this is no route (the Freddy API has no runs).
    assert (await client.get(f"/v1/threads/{thread.id}/runs", headers=caller.headers)).status_code == 404

    other = await oa.beta.threads.create()
    with pytest.raises(openai.NotFoundError) as elsewhere:
        await oa.beta.threads.runs.retrieve(first.id, thread_id=other.id)
    assert elsewhere.value.code == "run_not_found"


async def test_refusals_map_to_sdk_exceptions(
    sdk: tuple[AsyncOpenAI, CountingTransport],
    app: FastAPI,
    client: httpx.AsyncClient,
    caller: Caller,
    other_caller: Caller,
    fake: FakeProvider,
    assistant: str,
) -> None:
    oa, transport = sdk
    thread = await oa.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError) as unknown:
        await oa.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id="asst_missing")
    assert (unknown.value.code, unknown.value.param) == ("assistant_not_found", "assistant_id")
    foreign = await make_assistant(client, other_caller)
    with pytest.raises(openai.NotFoundError):
        await oa.beta.threads.runs.create(thread.id, assistant_id=foreign)

    with pytest.raises(openai.BadRequestError) as tools:
        await oa.beta.threads.runs.create(thread.id, assistant_id=assistant, tools=[{"type": "code_interpreter"}])
    # Function tools run (tests/test_tools_runs.py); the others need files Threadline does not have.
    assert (tools.value.code, tools.value.param) == ("unsupported_tool_type", "tools.0.type")
    with pytest.raises(openai.BadRequestError) as json_mode:
        await oa.beta.threads.runs.create(thread.id, assistant_id=assistant, response_format={"type": "json_object"})
    assert json_mode.value.param == "response_format"
    with pytest.raises(openai.BadRequestError) as last:
        await oa.beta.threads.runs.create(
            thread.id, assistant_id=assistant, truncation_strategy={"type": "last_messages"}
        )
    assert last.value.param == "truncation_strategy.last_messages"
    with pytest.raises(openai.BadRequestError) as metadata:
        await oa.beta.threads.runs.create(thread.id, assistant_id=assistant, metadata={f"k{i}": "v" for i in range(17)})
    assert metadata.value.param == "metadata"
    with pytest.raises(openai.NotFoundError):
        await oa.beta.threads.runs.create("thread_missing", assistant_id=assistant)
    assert fake.calls == []

    # A locked thread: 409, not retried by the SDK.
    assert (
        await client.patch(f"/v1/threads/{thread.id}", json={"state": "locked"}, headers=caller.headers)
    ).status_code == 200
    transport.requests.clear()
    with pytest.raises(openai.ConflictError) as locked:
        await oa.beta.threads.runs.create(thread.id, assistant_id=assistant)
    assert locked.value.code == "thread_locked"
    assert len(transport.requests) == 1
    assert fake.calls == []

    other, _ = sdk_client(app, other_caller.api_key)
    async with other:
        with pytest.raises(openai.NotFoundError):
            await other.beta.threads.runs.list(thread.id)


async def test_upstream_failure_is_a_failed_run_and_leaves_the_thread_unchanged(
    oa: AsyncOpenAI, fake: FakeProvider, assistant: str
) -> None:
    thread = await oa.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
    fake.script(Script(fail="before"))
    run = await oa.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant,
        additional_messages=[{"role": "user", "content": "not kept"}],
    )
    assert run.status == "failed"
    assert run.last_error is not None and run.last_error.code == "server_error"
    assert "fake upstream failed" in run.last_error.message
    assert isinstance(run.failed_at, int) and run.completed_at is None
    step = (await oa.beta.threads.runs.steps.list(run.id, thread_id=thread.id)).data[0]
    assert step.status == "failed" and step.last_error is not None
    assert [text_of(m) for m in (await oa.beta.threads.messages.list(thread.id)).data] == ["hi"]

    # Streamed: the partial answer ends incomplete, the step and the run fail; nothing is saved.
    fake.script(Script(reply="a b c", fail="mid", fail_after_tokens=1))
    handler = Collector()
    async with oa.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant, event_handler=handler) as s:
        await s.until_done()
        final = await s.get_final_run()
        (partial,) = await s.get_final_messages()
    assert handler.names[-4:] == [
        "thread.message.delta",
        "thread.message.incomplete",
        "thread.run.step.failed",
        "thread.run.failed",
    ]
    assert final.status == "failed" and final.last_error is not None
    assert partial.status == "incomplete" and text_of(partial) == "a"
    assert partial.incomplete_details is not None and partial.incomplete_details.reason == "run_failed"
    assert [text_of(m) for m in (await oa.beta.threads.messages.list(thread.id)).data] == ["hi"]

    # The thread is free again: the next run works.
    assert (await oa.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant)).status == (
        "completed"
    )


async def test_cancel_a_run_in_progress(oa: AsyncOpenAI, fake: FakeProvider, assistant: str) -> None:
    thread = await oa.beta.threads.create(messages=[{"role": "user", "content": "Tell a long story."}])
    fake.script(Script(reply=" ".join(["word"] * 30), delay_per_token=0.02))
    creating = asyncio.create_task(oa.beta.threads.runs.create(thread.id, assistant_id=assistant))
    await fake.started.wait()
    (running,) = (await oa.beta.threads.runs.list(thread.id)).data
    assert running.status == "in_progress" and running.completed_at is None and running.usage is None

    cancelled = await oa.beta.threads.runs.cancel(running.id, thread_id=thread.id)
    assert cancelled.status == "cancelled" and isinstance(cancelled.cancelled_at, int)
    # The thread is freed at once: another run can start while the cancelled one still generates.
    fake.script(Script(reply="next"))
    assert (await oa.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant)).status == (
        "completed"
    )
    finished = await creating
    assert finished.id == running.id and finished.status == "cancelled"
    assert [text_of(m) for m in (await oa.beta.threads.messages.list(thread.id, order="asc")).data] == [
        "Tell a long story.",
        "next",
    ]


async def test_create_and_run(oa: AsyncOpenAI, fake: FakeProvider, assistant: str) -> None:
    run = await oa.beta.threads.create_and_run_poll(
        assistant_id=assistant,
        thread={"messages": [{"role": "user", "content": "Start here."}], "metadata": {"src": "sdk"}},
    )
    assert run.status == "completed"
    assert (await oa.beta.threads.retrieve(run.thread_id)).metadata == {"src": "sdk"}
    saved = (await oa.beta.threads.messages.list(run.thread_id, order="asc")).data
    assert [(m.role, text_of(m)) for m in saved] == [("user", "Start here."), ("assistant", "echo: Start here.")]

    stream = await oa.beta.threads.create_and_run(
        assistant_id=assistant, thread={"messages": [{"role": "user", "content": "Streamed."}]}, stream=True
    )
    events = [e async for e in stream]
    assert [e.event for e in events][:2] == ["thread.created", "thread.run.created"]
    assert events[-1].event == "thread.run.completed"
    assert events[0].data.id == events[-1].data.thread_id

    handler = Collector()
    async with oa.beta.threads.create_and_run_stream(
        assistant_id=assistant, thread={"messages": [{"role": "user", "content": "Helper."}]}, event_handler=handler
    ) as helper:
        await helper.until_done()
        helped = await helper.get_final_run()
    assert handler.names[0] == "thread.created" and helped.status == "completed"
    assert "".join(handler.deltas) == "echo: Helper."

    with pytest.raises(openai.NotFoundError):
        await oa.beta.threads.create_and_run(assistant_id="asst_missing", thread={"messages": []})


async def test_idempotency_key_replays_a_run(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider, assistant: str
) -> None:
    headers = {**caller.headers, **BETA}
    thread = (await client.post("/v1/threads", json={}, headers={**headers, "Idempotency-Key": "t-1"})).json()
    again = (await client.post("/v1/threads", json={}, headers={**headers, "Idempotency-Key": "t-1"})).json()
    assert again["id"] == thread["id"]
    body = {"assistant_id": assistant, "additional_messages": [{"role": "user", "content": "once"}]}
    first = await client.post(
        f"/v1/threads/{thread['id']}/runs", json=body, headers={**headers, "Idempotency-Key": "r"}
    )
    second = await client.post(
        f"/v1/threads/{thread['id']}/runs", json=body, headers={**headers, "Idempotency-Key": "r"}
    )
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json() and second.headers["idempotent-replayed"] == "true"
    assert len(fake.calls) == 1


@pytest.mark.slow
async def test_create_and_poll_with_the_embedded_model(database_url: str) -> None:
    settings = Settings(database_url=database_url, local_model_enabled=True, retention_enabled=False)
    application = create_app(settings)
    try:
        async with application.router.lifespan_context(application):
            caller = await make_caller(application)
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://threadline.test") as client:
                assistant = await make_assistant(
                    client, caller, model="smollm2-135m-instruct", instructions="You are terse.", temperature=0
                )
            oa, _ = sdk_client(application, caller.api_key)
            async with oa:
                thread = await oa.beta.threads.create(messages=[{"role": "user", "content": "Name a color."}])
                run = await oa.beta.threads.runs.create_and_poll(
                    thread_id=thread.id, assistant_id=assistant, max_completion_tokens=8
                )
                assert run.status in ("completed", "incomplete")
                assert run.model == "smollm2-135m-instruct"
                assert run.usage is not None and 0 < run.usage.completion_tokens <= 8
                (answer,) = (await oa.beta.threads.messages.list(thread.id, run_id=run.id)).data
                assert answer.role == "assistant" and text_of(answer).strip()
    finally:
        await _empty_all_tables(database_url)
