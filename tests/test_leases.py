"""Expired turn leases, in process: the rule every surface derives from, the reads that settle what they find, the
start-up and periodic settling — and a live lease that none of them may touch. (tests/test_crash_recovery.py
kills real server processes.)"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from tests.conftest import Caller, registry_with
from tests.responses_helpers import turn
from tests.test_query_plans import generic_plan
from threadline.api.app import create_app
from threadline.config import Settings
from threadline.domain import leases
from threadline.domain.clock import utcnow
from threadline.providers.fake import FakeProvider
from threadline.services.recovery import settle_expired
from threadline.storage.tables import Response, Thread

pytestmark = pytest.mark.fake_model()

BETA = {"OpenAI-Beta": "assistants=v2"}
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


@pytest.mark.parametrize(
    ("status", "expires_at", "seen"),
    [
        ("streaming", NOW + SECOND, "streaming"),
        ("streaming", NOW, "streaming"),  # live up to its expiry, inclusive
        ("streaming", NOW - SECOND, "inactive"),
        ("streaming", None, "inactive"),  # a lease nobody can renew
        ("inactive", None, "inactive"),
        ("inactive", NOW - SECOND, "inactive"),
    ],
)
def test_a_thread_streams_only_while_its_lease_is_live(status: str, expires_at: datetime | None, seen: str) -> None:
    assert leases.thread_status(status, expires_at, NOW) == seen


@pytest.mark.parametrize(
    ("status", "owner", "expires_at", "seen"),
    [
        ("in_progress", "resp_a", NOW + SECOND, "in_progress"),
        ("in_progress", "resp_a", NOW - SECOND, "failed"),  # its server died
        ("in_progress", "resp_b", NOW + SECOND, "failed"),  # another turn holds the thread now
        ("in_progress", None, None, "failed"),  # the thread is free (or gone): nothing can finish it
        ("completed", None, None, "completed"),
        ("cancelled", "resp_a", NOW - SECOND, "cancelled"),
        ("failed", "resp_a", NOW + SECOND, "failed"),
    ],
)
def test_a_response_is_in_progress_only_while_its_turn_holds_a_live_lease(
    status: str, owner: str | None, expires_at: datetime | None, seen: str
) -> None:
    assert leases.response_status(status, "resp_a", owner, expires_at, NOW) == seen


async def leave_turn_running(
    app: FastAPI, caller: Caller, thread_id: str, response_id: str, expires_at: datetime
) -> None:
    """The rows a turn leaves while it runs (or after its server was killed): the thread streaming under the
    turn's lease, the response in progress."""
    async with app.state.sessionmaker() as session:
        session.add(
            Response(
                organization_id=caller.organization_id,
                id=response_id,
                thread_id=thread_id,
                model="fake-model",
                status="in_progress",
                request={"run": {"assistant_id": "", "instructions": ""}},
                context={},
                created_at=utcnow(),
            )
        )
        await session.execute(
            sa.update(Thread)
            .where(Thread.organization_id == caller.organization_id, Thread.id == thread_id)
            .values(status="streaming", lease_owner=response_id, lease_expires_at=expires_at)
        )
        await session.commit()


async def rows(app: FastAPI, thread_id: str, response_id: str) -> tuple[Thread, Response]:
    async with app.state.sessionmaker() as session:
        thread = (await session.execute(sa.select(Thread).where(Thread.id == thread_id))).scalar_one()
        response = (await session.execute(sa.select(Response).where(Response.id == response_id))).scalar_one()
        await session.commit()
    return thread, response


async def get(client: httpx.AsyncClient, caller: Caller, path: str, **kwargs: Any) -> Any:
    headers = {**caller.headers, **kwargs.pop("headers", {})}
    answer = await client.get(path, headers=headers, **kwargs)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def statuses_of_the_thread(client: httpx.AsyncClient, caller: Caller, thread_id: str) -> set[str]:
    """The thread's `status` on every surface that shows a Freddy thread object."""
    one = await get(client, caller, f"/v1/threads/{thread_id}")
    listed = await get(client, caller, "/v1/threads")
    mine = await get(client, caller, "/v1/user/threads")
    found = await get(client, caller, "/v1/threads/search", params={"q": "lease"})
    patched = await client.patch(
        f"/v1/threads/{thread_id}/metadata", json={"metadata": {"seen": "yes"}}, headers=caller.headers
    )
    assert patched.status_code == 200, patched.text
    seen = [one, *listed["data"], *mine["data"], *found["data"], patched.json()]
    assert [t["id"] for t in seen] == [thread_id] * 5
    return {t["status"] for t in seen}


async def statuses_of_the_turn(client: httpx.AsyncClient, caller: Caller, thread_id: str, response_id: str) -> set[Any]:
    """(surface, status, error code) of the turn on every surface that shows it."""
    freddy = await get(client, caller, f"/v1/model/response/{response_id}")
    openai = await get(client, caller, f"/v1/responses/{response_id}")
    runs = await get(client, caller, f"/v1/threads/{thread_id}/runs", headers=BETA)
    run = await get(client, caller, f"/v1/threads/{thread_id}/runs/{response_id}", headers=BETA)
    steps = await get(client, caller, f"/v1/threads/{thread_id}/runs/{response_id}/steps", headers=BETA)
    listed = [r for r in runs["data"] if r["id"] == response_id]
    assert len(listed) == 1
    return {
        ("freddy", freddy["status"], (freddy["error"] or {}).get("code")),
        ("openai", openai["status"], (openai["error"] or {}).get("type")),
        ("runs", listed[0]["status"], (listed[0]["last_error"] or {}).get("message")),
        ("run", run["status"], (run["last_error"] or {}).get("message")),
        ("step", steps["data"][0]["status"], None),
    }


async def test_every_read_path_tells_the_truth_about_an_expired_turn(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI
) -> None:
    created = await client.post("/v1/threads", json={"id": "t_dead", "title": "lease test"}, headers=caller.headers)
    assert created.status_code == 200
    assert (await turn(client, caller, "hello", thread="t_dead")).status_code == 200
    await leave_turn_running(app, caller, "t_dead", "resp_dead", utcnow() - SECOND)

    # The rows still say streaming / in progress; every thread object says inactive already (derived).
    assert await statuses_of_the_thread(client, caller, "t_dead") == {"inactive"}
    thread, response = await rows(app, "t_dead", "resp_dead")
    assert (thread.status, response.status) == ("streaming", "in_progress")

    # Reading the turn settles it, on whichever surface it is read first (here: the runs list).
    runs = await get(client, caller, "/v1/threads/t_dead/runs", headers=BETA)
    assert {r["id"]: r["status"] for r in runs["data"]}["resp_dead"] == "failed"
    thread, response = await rows(app, "t_dead", "resp_dead")
    assert (thread.status, thread.lease_owner, thread.lease_expires_at) == ("inactive", None, None)
    assert response.status == "failed" and response.error == leases.interrupted_error()
    assert response.completed_at is not None

    message = leases.interrupted_error()["message"]
    assert await statuses_of_the_turn(client, caller, "t_dead", "resp_dead") == {
        ("freddy", "failed", "turn_interrupted"),
        ("openai", "failed", "turn_interrupted"),
        ("runs", "failed", message),
        ("run", "failed", message),
        ("step", "failed", None),
    }
    # Nothing of the interrupted turn reached the thread; the next turn sees the history as it was.
    thread_body = await get(client, caller, "/v1/threads/t_dead")
    assert thread_body["status"] == "inactive" and thread_body["message_count"] == 2
    assert (await turn(client, caller, "again", thread="t_dead")).json()["context"]["messages_included"] == 2


async def test_reads_leave_a_live_turn_alone(client: httpx.AsyncClient, caller: Caller, app: FastAPI) -> None:
    """A turn another process is running (its heartbeat keeps the lease live) is shown and kept in progress."""
    await client.post("/v1/threads", json={"id": "t_live", "title": "lease test"}, headers=caller.headers)
    expires_at = utcnow() + timedelta(minutes=5)
    await leave_turn_running(app, caller, "t_live", "resp_live", expires_at)

    assert await statuses_of_the_thread(client, caller, "t_live") == {"streaming"}
    assert await statuses_of_the_turn(client, caller, "t_live", "resp_live") == {
        ("freddy", "in_progress", None),
        ("openai", "in_progress", None),
        ("runs", "in_progress", None),
        ("run", "in_progress", None),
        ("step", "in_progress", None),
    }
    assert await settle_expired(app.state.sessionmaker) == 0
    thread, response = await rows(app, "t_live", "resp_live")
    assert (thread.status, thread.lease_owner, thread.lease_expires_at) == ("streaming", "resp_live", expires_at)
    assert response.status == "in_progress" and response.error is None


async def test_settling_frees_every_expired_lease_and_no_live_one(
    client: httpx.AsyncClient, caller: Caller, other_caller: Caller, app: FastAPI
) -> None:
    now = utcnow()
    for who, thread_id in ((caller, "t_a"), (caller, "t_b"), (other_caller, "t_c")):
        await client.post("/v1/threads", json={"id": thread_id}, headers=who.headers)
    await leave_turn_running(app, caller, "t_a", "resp_a", now - SECOND)
    await leave_turn_running(app, caller, "t_b", "resp_b", now + timedelta(minutes=5))
    await leave_turn_running(app, other_caller, "t_c", "resp_c", now - timedelta(hours=1))

    assert await settle_expired(app.state.sessionmaker) == 2
    assert await settle_expired(app.state.sessionmaker) == 0  # idempotent
    for thread_id, response_id, expected in (
        ("t_a", "resp_a", ("inactive", "failed")),
        ("t_b", "resp_b", ("streaming", "in_progress")),
        ("t_c", "resp_c", ("inactive", "failed")),
    ):
        thread, response = await rows(app, thread_id, response_id)
        assert (thread.status, response.status) == expected, thread_id
    # Once the live lease expires too (its server died later), the next pass settles it.
    assert await settle_expired(app.state.sessionmaker, now + timedelta(minutes=6)) == 1
    thread, response = await rows(app, "t_b", "resp_b")
    assert (thread.status, thread.lease_owner, response.status) == ("inactive", None, "failed")


async def test_a_starting_server_settles_what_a_stopped_one_left(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI, settings: Settings
) -> None:
    await client.post("/v1/threads", json={"id": "t_left"}, headers=caller.headers)
    await leave_turn_running(app, caller, "t_left", "resp_left", utcnow() - SECOND)
    await client.post("/v1/threads", json={"id": "t_running"}, headers=caller.headers)
    await leave_turn_running(app, caller, "t_running", "resp_running", utcnow() + timedelta(minutes=5))

    restarted = create_app(settings, models=registry_with(FakeProvider()))
    async with restarted.router.lifespan_context(restarted):
        # Before any request: the start-up pass has written it down (and left the live turn alone).
        thread, response = await rows(app, "t_left", "resp_left")
        assert (thread.status, thread.lease_owner) == ("inactive", None)
        assert response.status == "failed" and response.error == leases.interrupted_error()
        thread, response = await rows(app, "t_running", "resp_running")
        assert (thread.status, thread.lease_owner, response.status) == ("streaming", "resp_running", "in_progress")


async def test_a_running_server_settles_a_lease_that_expires_while_it_runs(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI, settings: Settings
) -> None:
    """The periodic pass (every lease period; 1 s here): nobody reads the turn, and no turn comes."""
    quick = create_app(settings.model_copy(update={"thread_lease_seconds": 1.0}), models=registry_with(FakeProvider()))
    async with quick.router.lifespan_context(quick):
        await client.post("/v1/threads", json={"id": "t_later"}, headers=caller.headers)
        # Expires after the server started: only its periodic pass can settle it.
        await leave_turn_running(app, caller, "t_later", "resp_later", utcnow() + timedelta(seconds=0.5))
        deadline = asyncio.get_running_loop().time() + 15
        while (await rows(app, "t_later", "resp_later"))[0].status == "streaming":
            assert asyncio.get_running_loop().time() < deadline, "the periodic pass did not settle the lease in 15 s"
            await asyncio.sleep(0.05)
        thread, response = await rows(app, "t_later", "resp_later")
        assert (thread.lease_owner, response.status, response.error) == (None, "failed", leases.interrupted_error())


async def test_finding_expired_leases_reads_only_the_index_of_streaming_threads(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI
) -> None:
    """The periodic pass runs in every process every lease period: it must cost nothing on a large database."""
    await client.post("/v1/threads", json={"id": "t_plan"}, headers=caller.headers)
    await leave_turn_running(app, caller, "t_plan", "resp_plan", utcnow() - SECOND)
    statements: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    sa.event.listen(app.state.engine.sync_engine, "before_cursor_execute", record)
    try:
        assert await settle_expired(app.state.sessionmaker) == 1
    finally:
        sa.event.remove(app.state.engine.sync_engine, "before_cursor_execute", record)
    statement, parameters = next((s, p) for s, p in statements if s.lstrip().startswith("SELECT"))
    # Under PostgreSQL's generic plan too: the pass runs every lease period, in every process.
    text = await generic_plan(app.state.engine, statement, parameters)
    if app.state.engine.dialect.name == "sqlite":
        # A scan of the partial index is a scan of the streaming threads only.
        assert "USING INDEX ix_threads_streaming_lease_expires_at" in text, text
    else:
        assert "ix_threads_streaming_lease_expires_at" in text and "Seq Scan" not in text, text
