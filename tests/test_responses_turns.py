"""Turns under stress: upstream failures, streaming, client disconnects, concurrent turns and leases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI

from tests.conftest import Caller, registry_with
from tests.helpers import refused
from tests.responses_helpers import sse_events, thread_messages, turn
from tests.servers import free_port
from threadline.api.app import create_app
from threadline.config import Settings
from threadline.domain.clock import utcnow
from threadline.domain.messages import ChatMessage
from threadline.errors import UpstreamTimeout
from threadline.providers.base import GenerationParams, StreamEvent
from threadline.providers.fake import FakeProvider, Script
from threadline.services import auth
from threadline.storage.tables import Response, Thread
from threadline.turns.request import TurnRequest
from threadline.turns.turn import OutputDelta

# A lease that no stall of a loaded machine outlives: these turns free their threads themselves (or the test
# expires a lease by hand). With a 1 s lease, a heartbeat delayed by more than ~0.7 s let the recovery pass settle
# a live turn as `turn_interrupted` before it could record its own outcome.
pytestmark = [
    pytest.mark.fake_model(),
    pytest.mark.app_settings(thread_busy_timeout_seconds=10, thread_lease_seconds=30.0),
]


async def thread_row(app: FastAPI, thread_id: str) -> Thread:
    async with app.state.sessionmaker() as session:
        found = (await session.execute(sa.select(Thread).where(Thread.id == thread_id))).scalar_one()
        await session.commit()
    return found


async def test_upstream_failures_leave_the_thread_as_it_was(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    assert (await turn(client, caller, "first", thread="t_fail")).status_code == 200
    fake.script(Script(fail="before"), Script(fail="mid", fail_after_tokens=1, error=UpstreamTimeout))

    failed = await turn(client, caller, "second", thread="t_fail")
    refused(failed, 502, "upstream_error")
    assert failed.headers["x-should-retry"] == "true"
    cut = await turn(client, caller, "third", thread="t_fail")
    refused(cut, 504, "upstream_timeout")

    assert [m["content"] for m in await thread_messages(client, caller, "t_fail")] == ["first", "echo: first"]
    thread = (await client.get("/v1/threads/t_fail", headers=caller.headers)).json()
    assert thread["status"] == "inactive" and thread["message_count"] == 2

    ok = await turn(client, caller, "fourth", thread="t_fail")
    assert ok.status_code == 200
    assert [m.content for m in fake.calls[-1]] == ["first", "echo: first", "fourth"]


async def test_a_failed_response_can_be_read_back(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider, app: FastAPI
) -> None:
    fake.script(Script(fail="before"))
    assert (await turn(client, caller, "hello", thread="t_read")).status_code == 502
    async with app.state.sessionmaker() as session:
        response_id = (await session.execute(sa.select(Response.id))).scalar_one()
    body = (await client.get(f"/v1/model/response/{response_id}", headers=caller.headers)).json()
    assert body["status"] == "failed"
    assert body["error"]["code"] == "upstream_error"
    assert body["output"] == []
    # The inputs are kept on the response even though the thread did not take them.
    async with app.state.sessionmaker() as session:
        stored = (await session.execute(sa.select(Response))).scalar_one()
    assert stored.request["inputs"] == [{"role": "user", "content": "hello"}]


async def test_streaming_emits_openai_named_events(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    fake.script(Script(reply="Hi! How can I help?"))
    response = await turn(client, caller, "Hello", thread="t_stream", stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names[0] == "response.created" and names[-1] == "response.completed"
    assert set(names[1:-1]) == {"response.output_text.delta"}
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert all(data["type"] == name for name, data in events)
    assert events[0][1]["response"]["status"] == "in_progress"
    assert "".join(data["delta"] for name, data in events if name.endswith(".delta")) == "Hi! How can I help?"
    final = events[-1][1]["response"]
    assert final["status"] == "completed"
    assert final["output"][0]["texts"][0]["text"] == "Hi! How can I help?"
    fetched = (await client.get(f"/v1/model/response/{final['id']}", headers=caller.headers)).json()
    assert fetched == final
    assert len(await thread_messages(client, caller, "t_stream")) == 2


async def test_stream_failure_midway_emits_failed_and_saves_nothing(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    fake.script(Script(reply="one two three", fail="mid", fail_after_tokens=2))
    response = await turn(client, caller, "Hello", thread="t_sfail", stream=True)
    events = sse_events(response.text)
    assert [name for name, _ in events] == [
        "response.created",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.failed",
    ]
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "upstream_error"
    thread = (await client.get("/v1/threads/t_sfail", headers=caller.headers)).json()
    assert thread["message_count"] == 0 and thread["status"] == "inactive"


async def test_client_disconnect_mid_turn_frees_the_thread(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider, app: FastAPI, settings: Settings
) -> None:
    fake.script(Script(reply="a b c d e f", delay_per_token=0.01))
    async with app.state.sessionmaker() as session:
        principal = await auth.authenticate(session, caller.api_key)
        await session.commit()
    request = TurnRequest(
        organization_id=caller.organization_id, inputs=[ChatMessage("user", "hi")], thread_id="t_gone"
    )
    turn_ = await app.state.turns.start(principal, request)
    assert (await thread_row(app, "t_gone")).status == "streaming"
    events = app.state.turns.run(turn_)
    assert isinstance(await anext(events), OutputDelta)
    await events.aclose()  # what Starlette does when the client goes away

    thread = await thread_row(app, "t_gone")
    assert thread.status == "inactive" and thread.lease_owner is None and thread.message_count == 0
    body = (await client.get(f"/v1/model/response/{turn_.id}", headers=caller.headers)).json()
    assert body["status"] == "failed" and body["error"]["code"] == "turn_aborted"


async def test_concurrent_turns_on_one_thread_never_interleave(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    fake.default = Script(delay_per_token=0.02)
    await client.post("/v1/threads", json={"id": "t_race"}, headers=caller.headers)
    first, second = await asyncio.gather(
        turn(client, caller, "alpha beta gamma", thread="t_race"),
        turn(client, caller, "delta epsilon zeta", thread="t_race"),
    )
    assert first.status_code == 200 and second.status_code == 200
    saved = await thread_messages(client, caller, "t_race")
    assert [m["role"] for m in saved] == ["user", "assistant", "user", "assistant"]
    assert saved[1]["content"] == "echo: " + saved[0]["content"]
    assert saved[3]["content"] == "echo: " + saved[2]["content"]
    # The later turn saw the earlier one's messages.
    assert [m.content for m in fake.calls[1][:2]] == [saved[0]["content"], saved[1]["content"]]


async def test_two_app_instances_share_the_lease_through_the_database(
    settings: Settings, caller: Caller, app: FastAPI
) -> None:
    """Two engines on one database behave like two server processes: the lease still serializes turns."""
    # Turns (~3.6 s) longer than the lease (3 s): only the heartbeat (every second) keeps the other instance out.
    # The margin is a missed beat and then some, so a loaded machine delaying one renewal cannot lose the lease.
    settings = settings.model_copy(update={"thread_lease_seconds": 3.0})
    fakes = [FakeProvider(default=Script(delay_per_token=0.15)), FakeProvider(default=Script(delay_per_token=0.15))]
    apps = [create_app(settings, models=registry_with(f)) for f in fakes]
    async with apps[0].router.lifespan_context(apps[0]), apps[1].router.lifespan_context(apps[1]):
        clients = [
            httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://threadline.test") for a in apps
        ]
        async with clients[0], clients[1]:
            results = await asyncio.gather(
                turn(clients[0], caller, " ".join(["x"] * 24), thread="t_two"),
                turn(clients[1], caller, " ".join(["y"] * 24), thread="t_two"),
            )
            assert [r.status_code for r in results] == [200, 200], [r.text for r in results]
            saved = await thread_messages(clients[0], caller, "t_two")
    assert [m["role"] for m in saved] == ["user", "assistant", "user", "assistant"]
    later = fakes[0] if fakes[0].calls[0][-1].content == saved[2]["content"] else fakes[1]
    assert [m.content for m in later.calls[0]] == [m["content"] for m in saved[:3]]


class HeldProvider(FakeProvider):
    """A fake model that answers only once `release` is set: its turn holds the thread until the test says."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def stream(
        self, model: str, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[StreamEvent]:
        self.started.set()
        await self.release.wait()
        async for event in super().stream(model, messages, params):
            yield event


async def test_busy_thread_answers_409_after_the_wait(settings: Settings, caller: Caller) -> None:
    # The turn holds the thread until the refusal is in (a gate, not a clock), under a lease no stall of a loaded
    # machine outlives: the refused turn can neither find the thread free nor take an expired lease over.
    patient = settings.model_copy(update={"thread_lease_seconds": 30.0})
    impatient = patient.model_copy(update={"thread_busy_timeout_seconds": 0.2})
    held = HeldProvider()
    slow_app = create_app(patient, models=registry_with(held))
    other = create_app(impatient, models=registry_with(FakeProvider()))
    async with slow_app.router.lifespan_context(slow_app), other.router.lifespan_context(other):
        slow_client = httpx.AsyncClient(transport=httpx.ASGITransport(app=slow_app), base_url="http://t")
        fast_client = httpx.AsyncClient(transport=httpx.ASGITransport(app=other), base_url="http://t")
        async with slow_client, fast_client:
            await slow_client.post("/v1/threads", json={"id": "t_busy"}, headers=caller.headers)
            slow = asyncio.create_task(turn(slow_client, caller, "long one", thread="t_busy"))
            await asyncio.wait_for(held.started.wait(), timeout=10)
            assert (await thread_row(slow_app, "t_busy")).status == "streaming"
            refusal = await turn(fast_client, caller, "me too", thread="t_busy")
            refused(refusal, 409, "thread_busy")
            assert refusal.headers["x-should-retry"] == "true"
            held.release.set()
            assert (await slow).status_code == 200


def _in_progress_response(caller: Caller, response_id: str, thread_id: str) -> Response:
    """The row a server killed mid-turn leaves behind: a response still in progress."""
    return Response(
        organization_id=caller.organization_id,
        id=response_id,
        thread_id=thread_id,
        model="fake-model",
        status="in_progress",
        request={},
        context={},
        created_at=utcnow(),
    )


async def test_an_expired_lease_is_taken_over(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI, settings: Settings
) -> None:
    first = (await turn(client, caller, "hello", thread="t_crash")).json()
    # Simulate a server killed mid-turn: its response stays in progress, its lease has run out.
    async with app.state.sessionmaker() as session:
        session.add(_in_progress_response(caller, "resp_dead", "t_crash"))
        await session.execute(
            sa.update(Thread)
            .where(Thread.id == "t_crash")
            .values(status="streaming", lease_owner="resp_dead", lease_expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()
    # Reads tell the truth at once (the thread is free); the rows say so once a turn, a read or a pass settles them.
    assert (await client.get("/v1/threads/t_crash", headers=caller.headers)).json()["status"] == "inactive"
    taken = await turn(client, caller, "anyone there?", thread="t_crash")
    assert taken.status_code == 200, taken.text
    assert taken.json()["context"]["messages_included"] == 2
    dead = (await client.get("/v1/model/response/resp_dead", headers=caller.headers)).json()
    assert dead["status"] == "failed" and dead["error"]["code"] == "turn_interrupted"
    thread = (await client.get("/v1/threads/t_crash", headers=caller.headers)).json()
    assert thread["status"] == "inactive" and thread["message_count"] == 4
    assert first["status"] == "completed"


async def test_a_real_client_disconnect_mid_stream_frees_the_thread(
    caller: Caller, fake: FakeProvider, app: FastAPI
) -> None:
    """Over real HTTP (uvicorn on a socket): the client hangs up after the first delta."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="error"))
    serving = asyncio.create_task(server.serve())
    fake.script(Script(reply=" ".join(["word"] * 200), delay_per_token=0.02))
    try:
        for _ in range(200):
            if server.started:
                break
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as real:
            body = {"thread": "t_hangup", "inputs": [{"role": "user", "texts": [{"text": "go"}]}], "stream": True}
            async with real.stream("POST", "/v1/model/response", json=body, headers=caller.headers) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("event: response.output_text.delta"):
                        break  # hang up mid-answer
        for _ in range(250):
            thread = await thread_row(app, "t_hangup")
            if thread.status == "inactive":
                break
            await asyncio.sleep(0.02)
        assert thread.status == "inactive" and thread.lease_owner is None
        assert thread.message_count == 0
        async with app.state.sessionmaker() as session:
            stored = (await session.execute(sa.select(Response))).scalar_one()
        assert stored.status == "failed" and stored.error is not None
        assert stored.error["code"] == "turn_aborted"
    finally:
        server.should_exit = True
        await serving


async def test_reading_an_abandoned_in_progress_response_reports_it_failed(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI
) -> None:
    await turn(client, caller, "hello", thread="t_orphan")
    async with app.state.sessionmaker() as session:
        session.add(_in_progress_response(caller, "resp_orphan", "t_orphan"))
        await session.commit()
    body = (await client.get("/v1/model/response/resp_orphan", headers=caller.headers)).json()
    assert body["status"] == "failed" and body["error"]["code"] == "turn_interrupted"


async def test_a_silent_model_times_out_and_frees_the_thread(
    settings: Settings, caller: Caller, fake: FakeProvider, app: FastAPI
) -> None:
    hurried = create_app(settings.model_copy(update={"model_idle_timeout_seconds": 0.3}), models=registry_with(fake))
    fake.script(Script(fail="hang"))
    transport = httpx.ASGITransport(app=hurried)
    async with (
        hurried.router.lifespan_context(hurried),
        httpx.AsyncClient(transport=transport, base_url="http://t") as hurried_client,
    ):
        response = await turn(hurried_client, caller, "anyone?", thread="t_silent")
        refused(response, 504, "upstream_timeout")
        thread = (await hurried_client.get("/v1/threads/t_silent", headers=caller.headers)).json()
    assert thread["status"] == "inactive" and thread["message_count"] == 0
