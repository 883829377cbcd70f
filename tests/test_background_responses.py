"""Background responses and resumable streams in one process, on SQLite and PostgreSQL, through the official
`openai` SDK (strict validation) and the Freddy API: queued at once, run by the job queue, polled, streamed,
resumed from any sequence number, cancelled (nothing saved), and queued turns of a thread run in order.
(The ASGI transport hands a stream over only once it has ended: following a stream live, while it runs, is
tested across real server processes in tests/test_background_processes.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from tests.conftest import Caller
from tests.helpers import refused
from tests.responses_helpers import sse_events, user
from threadline.domain.messages import ChatMessage
from threadline.providers.base import Finished, GenerationParams, StreamEvent, TextDelta
from threadline.providers.fake import FakeProvider

pytestmark = pytest.mark.fake_model()

MODEL = "fake-model"


@dataclass
class GatedProvider(FakeProvider):
    """Answers "w0 w1 … w5": the first two words at once, the rest once `gate` is set (while `hold` is on), so a
    test acts mid-answer without timing. Counts the streams that were stopped before their end."""

    hold: bool = False
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: int = 0

    async def stream(
        self, model: str, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[StreamEvent]:
        self.calls.append(list(messages))
        finished = False
        try:
            for index in range(6):
                if index == 2 and self.hold:
                    self.reached.set()
                    await self.gate.wait()
                yield TextDelta(f"w{index}" if index == 0 else f" w{index}")
            finished = True
            yield Finished(finish_reason="stop")
        finally:
            if not finished:
                self.stopped += 1


@pytest.fixture
def fake() -> GatedProvider:
    return GatedProvider(context_window=1000)


async def settled(oa: AsyncOpenAI, response_id: str) -> Any:
    """Poll as a client would, until the response is no longer queued or in progress."""
    while True:
        response = await oa.responses.retrieve(response_id)
        if response.status not in ("queued", "in_progress"):
            return response
        await asyncio.sleep(0.02)


async def events_of(stream: Any) -> list[Any]:
    return [event async for event in stream]


async def test_a_background_response_is_queued_at_once_then_completed_by_the_job_queue(
    oa: AsyncOpenAI, fake: GatedProvider
) -> None:
    conversation = await oa.conversations.create()
    created = await oa.responses.create(model=MODEL, input="hello", background=True, conversation=conversation.id)
    assert (created.status, created.background, created.output) == ("queued", True, [])

    done = await settled(oa, created.id)
    assert (done.status, done.background, done.output_text) == ("completed", True, "w0 w1 w2 w3 w4 w5")
    items = await oa.conversations.items.list(conversation.id, order="asc")
    assert [item.type for item in items.data] == ["message", "message"]
    assert len(fake.calls) == 1


async def test_a_background_stream_starts_queued_and_resumes_from_any_sequence_number(oa: AsyncOpenAI) -> None:
    stream = await oa.responses.create(model=MODEL, input="hello", background=True, stream=True)
    events = await events_of(stream)
    names = [event.type for event in events]
    assert names[:3] == ["response.created", "response.queued", "response.in_progress"]
    assert names[-1] == "response.completed"
    assert events[0].response.status == "queued"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    response_id = events[0].response.id

    for after in (0, 3, len(events) - 2):
        resumed = await events_of(await oa.responses.retrieve(response_id, stream=True, starting_after=after))
        assert [e.to_dict() for e in resumed] == [e.to_dict() for e in events[after + 1 :]]
    assert (await settled(oa, response_id)).output_text == "w0 w1 w2 w3 w4 w5"


async def test_a_plain_stream_is_recorded_and_can_be_resumed(oa: AsyncOpenAI) -> None:
    events = await events_of(await oa.responses.create(model=MODEL, input="hello", stream=True))
    response_id = events[0].response.id
    assert events[0].response.background is False
    resumed = await events_of(await oa.responses.retrieve(response_id, stream=True, starting_after=4))
    assert [e.to_dict() for e in resumed] == [e.to_dict() for e in events[5:]]
    assert resumed[-1].type == "response.completed"


async def test_cancelling_a_running_response_stops_it_and_saves_nothing(oa: AsyncOpenAI, fake: GatedProvider) -> None:
    fake.hold = True
    conversation = await oa.conversations.create()
    created = await oa.responses.create(model=MODEL, input="hello", background=True, conversation=conversation.id)
    await fake.reached.wait()
    cancelled = await oa.responses.cancel(created.id)
    assert cancelled.status == "cancelled"

    events = await events_of(await oa.responses.retrieve(created.id, stream=True))
    assert events[-1].type == "response.failed" and events[-1].response.status == "cancelled"
    assert fake.stopped == 1  # stopped mid-answer, not run to its end (the gate was never opened)
    assert (await oa.responses.retrieve(created.id)).status == "cancelled"
    assert (await oa.conversations.items.list(conversation.id)).data == []
    again = await oa.responses.cancel(created.id)  # idempotent
    assert again.status == "cancelled"


async def test_queued_turns_of_a_conversation_run_in_order_and_a_cancelled_one_never_runs(
    oa: AsyncOpenAI, fake: GatedProvider
) -> None:
    fake.hold = True
    conversation = await oa.conversations.create()
    first = await oa.responses.create(model=MODEL, input="first", background=True, conversation=conversation.id)
    second = await oa.responses.create(model=MODEL, input="second", background=True, conversation=conversation.id)
    third = await oa.responses.create(model=MODEL, input="third", background=True, conversation=conversation.id)
    await fake.reached.wait()
    assert (await oa.responses.retrieve(second.id)).status == "queued"  # waits for the first, not beside it
    assert (await oa.responses.cancel(second.id)).status == "cancelled"
    fake.gate.set()

    assert (await settled(oa, first.id)).status == "completed"
    assert (await settled(oa, third.id)).status == "completed"
    assert (await settled(oa, second.id)).status == "cancelled"
    items = await oa.conversations.items.list(conversation.id, order="asc")
    texts = [part.text for item in items.data for part in item.content]  # type: ignore[union-attr]
    assert texts == ["first", "w0 w1 w2 w3 w4 w5", "third", "w0 w1 w2 w3 w4 w5"]
    assert len(fake.calls) == 2
    second_events = await events_of(await oa.responses.retrieve(second.id, stream=True))
    assert [e.type for e in second_events] == ["response.created", "response.queued", "response.failed"]


async def test_what_cannot_be_done_in_the_background_or_resumed_is_refused(
    oa: AsyncOpenAI, client: httpx.AsyncClient, caller: Caller
) -> None:
    response = await client.post(
        "/v1/responses",
        json={"model": MODEL, "input": "hi", "background": True, "store": False},
        headers=caller.headers,
    )
    refused(response, 400, "background_requires_store", "store")
    response = await client.post(
        "/v1/responses",
        json={"model": MODEL, "input": "hi", "background": True, "conversation": "conv_missing"},
        headers=caller.headers,
    )
    refused(response, 404, "thread_not_found", "conversation")

    plain = await oa.responses.create(model=MODEL, input="hello")
    with pytest.raises(openai.BadRequestError) as caught:
        await oa.responses.cancel(plain.id)
    assert caught.value.code == "response_not_cancellable"
    with pytest.raises(openai.BadRequestError) as caught:
        await events_of(await oa.responses.retrieve(plain.id, stream=True))
    assert caught.value.code == "response_not_streamed"
    with pytest.raises(openai.NotFoundError):
        await oa.responses.cancel("resp_missing")

    streamed = await events_of(await oa.responses.create(model=MODEL, input="hello", stream=True))
    last = streamed[-1].sequence_number
    with pytest.raises(openai.BadRequestError) as caught:
        await events_of(await oa.responses.retrieve(streamed[0].response.id, stream=True, starting_after=last + 1))
    assert caught.value.code == "invalid_starting_after"


async def test_freddy_background_responses_poll_stream_resume_and_cancel(
    client: httpx.AsyncClient, caller: Caller, fake: GatedProvider
) -> None:
    created = await client.post(
        "/v1/model/response",
        json={"thread": "bg_thread", "inputs": [user("hello")], "background": True},
        headers=caller.headers,
    )
    assert created.status_code == 200, created.text
    assert created.json()["status"] == "queued"
    response_id = created.json()["id"]
    while True:
        found = await client.get(f"/v1/model/response/{response_id}", headers=caller.headers)
        if found.json()["status"] not in ("queued", "in_progress"):
            break
        await asyncio.sleep(0.02)
    assert (found.json()["status"], found.json()["output_text"]) == ("completed", "w0 w1 w2 w3 w4 w5")

    replay = await client.get(
        f"/v1/model/response/{response_id}", params={"stream": "true", "starting_after": 1}, headers=caller.headers
    )
    events = sse_events(replay.text)
    assert [name for name, _ in events][:1] == ["response.in_progress"]
    assert events[-1][0] == "response.completed"
    assert [data["sequence_number"] for _, data in events] == list(range(2, 2 + len(events)))

    fake.hold = True
    held = await client.post(
        "/v1/model/response",
        json={"thread": "bg_thread", "inputs": [user("again")], "background": True},
        headers=caller.headers,
    )
    await fake.reached.wait()
    cancelled = await client.post(f"/v1/model/response/{held.json()['id']}/cancel", headers=caller.headers)
    assert cancelled.json()["status"] == "cancelled"
    messages = await client.get("/v1/threads/bg_thread/messages", headers=caller.headers)
    assert [m["content"] for m in messages.json()["data"]] == ["w0 w1 w2 w3 w4 w5", "hello"]  # newest first
