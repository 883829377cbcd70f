"""Idempotency-Key: a retried POST runs once and gets the first result, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from tests.conftest import Caller, make_caller, started_app
from tests.helpers import refused
from threadline.api.idempotency import Idempotent
from threadline.config import Settings
from threadline.errors import UpstreamError


def _with_key(caller: Caller, key: str) -> dict[str, str]:
    return {**caller.headers, "Idempotency-Key": key}


async def _thread_count(client: httpx.AsyncClient, caller: Caller) -> int:
    listed = await client.get("/v1/threads?include_total=true", headers=caller.headers)
    total: int = listed.json()["total"]
    return total


async def test_retry_of_thread_create_returns_the_first_result(client: httpx.AsyncClient, caller: Caller) -> None:
    body = {"metadata": {"purpose": "support"}, "title": "Hello"}
    first = await client.post("/v1/threads", json=body, headers=_with_key(caller, "create-1"))
    assert first.status_code == 200, first.text
    assert "idempotent-replayed" not in first.headers
    retry = await client.post("/v1/threads", json=body, headers=_with_key(caller, "create-1"))
    assert retry.status_code == 200
    assert retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.headers["content-type"] == "application/json"
    assert await _thread_count(client, caller) == 1
    # JSON compared by value: the same body with its keys in another order is the same request.
    reordered = await client.post(
        "/v1/threads",
        content=b'{"title": "Hello", "metadata": {"purpose": "support"}}',
        headers={**_with_key(caller, "create-1"), "Content-Type": "application/json"},
    )
    assert reordered.json()["id"] == first.json()["id"]
    # Without a key every POST creates.
    await client.post("/v1/threads", json=body, headers=caller.headers)
    await client.post("/v1/threads", json=body, headers=caller.headers)
    assert await _thread_count(client, caller) == 3


async def test_same_key_with_another_request_is_409(client: httpx.AsyncClient, caller: Caller) -> None:
    first = await client.post("/v1/threads", json={"title": "A"}, headers=_with_key(caller, "k"))
    assert first.status_code == 200
    other_body = await client.post("/v1/threads", json={"title": "B"}, headers=_with_key(caller, "k"))
    refused(other_body, 409, "idempotency_key_reused")
    assert other_body.json()["error"]["param"] == "Idempotency-Key"
    assert other_body.headers["x-should-retry"] == "false"
    # The path is part of the request too.
    thread_id = first.json()["id"]
    other_path = await client.post(
        f"/v1/threads/{thread_id}/messages", json={"title": "A"}, headers=_with_key(caller, "k")
    )
    assert other_path.status_code == 409
    assert await _thread_count(client, caller) == 1


async def test_keys_are_scoped_to_the_organization(
    client: httpx.AsyncClient, caller: Caller, other_caller: Caller
) -> None:
    mine = await client.post("/v1/threads", json={}, headers=_with_key(caller, "shared"))
    theirs = await client.post("/v1/threads", json={}, headers=_with_key(other_caller, "shared"))
    assert theirs.status_code == 200 and "idempotent-replayed" not in theirs.headers
    assert theirs.json()["id"] != mine.json()["id"]
    assert theirs.json()["organization_id"] == other_caller.organization_id


async def test_retry_of_message_append(client: httpx.AsyncClient, caller: Caller) -> None:
    thread_id = (await client.post("/v1/threads", json={}, headers=caller.headers)).json()["id"]
    url = f"/v1/threads/{thread_id}/messages"
    first = await client.post(url, json={"content": "hi"}, headers=_with_key(caller, "msg-1"))
    retry = await client.post(url, json={"content": "hi"}, headers=_with_key(caller, "msg-1"))
    assert retry.json()["id"] == first.json()["id"]
    thread = (await client.get(f"/v1/threads/{thread_id}", headers=caller.headers)).json()
    assert thread["message_count"] == 1
    listed = (await client.get(url, headers=caller.headers)).json()["data"]
    assert [m["id"] for m in listed] == [first.json()["id"]]
    reused = await client.post(url, json={"content": "bye"}, headers=_with_key(caller, "msg-1"))
    refused(reused, 409, "idempotency_key_reused")


@pytest.mark.parametrize("path", ["threads", "messages"])
async def test_concurrent_duplicates_create_once(client: httpx.AsyncClient, caller: Caller, path: str) -> None:
    thread_id = (await client.post("/v1/threads", json={}, headers=caller.headers)).json()["id"]
    url = "/v1/threads" if path == "threads" else f"/v1/threads/{thread_id}/messages"
    body = {"title": "once"} if path == "threads" else {"content": "once"}
    responses = await asyncio.gather(
        *(client.post(url, json=body, headers=_with_key(caller, "burst")) for _ in range(6))
    )
    assert [r.status_code for r in responses] == [200] * 6, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum("idempotent-replayed" in r.headers for r in responses) == 5
    if path == "threads":
        assert await _thread_count(client, caller) == 2
    else:
        thread = (await client.get(f"/v1/threads/{thread_id}", headers=caller.headers)).json()
        assert thread["message_count"] == 1


async def test_client_errors_are_remembered(client: httpx.AsyncClient, caller: Caller) -> None:
    thread_id = (await client.post("/v1/threads", json={}, headers=caller.headers)).json()["id"]
    await client.patch(f"/v1/threads/{thread_id}", json={"state": "locked"}, headers=caller.headers)
    url = f"/v1/threads/{thread_id}/messages"
    refusal = await client.post(url, json={"content": "x"}, headers=_with_key(caller, "locked"))
    refused(refusal, 409, "thread_locked")
    await client.patch(f"/v1/threads/{thread_id}", json={"state": "open"}, headers=caller.headers)
    replay = await client.post(url, json={"content": "x"}, headers=_with_key(caller, "locked"))
    assert replay.status_code == 409 and replay.json() == refusal.json()
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.headers["x-should-retry"] == "false"
    assert (await client.get(f"/v1/threads/{thread_id}", headers=caller.headers)).json()["message_count"] == 0


async def test_invalid_keys_are_400(client: httpx.AsyncClient, caller: Caller) -> None:
    for key in (b"", b"k" * 256, b"caf\xe9", b"tab\tinside"):
        response = await client.post("/v1/threads", json={}, headers={**caller.headers, "Idempotency-Key": key})
        assert response.status_code == 400, key
        assert response.json()["error"]["code"] == "invalid_idempotency_key"
    assert await _thread_count(client, caller) == 0
    ok = await client.post("/v1/threads", json={}, headers=_with_key(caller, "k" * 255))
    assert ok.status_code == 200


async def test_unauthenticated_requests_are_not_remembered(client: httpx.AsyncClient, caller: Caller) -> None:
    denied = await client.post("/v1/threads", json={}, headers={"Idempotency-Key": "anon", "X-API-Key": "tl_bad"})
    assert denied.status_code == 401
    created = await client.post("/v1/threads", json={}, headers=_with_key(caller, "anon"))
    assert created.status_code == 200 and "idempotent-replayed" not in created.headers


async def test_server_errors_run_again_and_streams_replay(
    app: FastAPI, client: httpx.AsyncClient, caller: Caller
) -> None:
    """Any route opts in with one line; a 5xx is not final; a streamed (SSE) body is stored whole and replayed."""
    calls = {"flaky": 0, "stream": 0}

    async def flaky() -> dict[str, int]:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise UpstreamError("The model provider failed.")
        return {"attempt": calls["flaky"]}

    async def stream() -> StreamingResponse:
        calls["stream"] += 1

        async def events() -> AsyncIterator[str]:
            for i in range(3):
                yield f'event: delta\ndata: {{"n": {i}}}\n\n'
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"x-request-id": "req_1"})

    app.router.add_api_route("/v1/test/flaky", flaky, methods=["POST"], dependencies=[Idempotent])
    app.router.add_api_route("/v1/test/stream", stream, methods=["POST"], dependencies=[Idempotent])

    failed = await client.post("/v1/test/flaky", json={}, headers=_with_key(caller, "f"))
    assert failed.status_code == 502
    succeeded = await client.post("/v1/test/flaky", json={}, headers=_with_key(caller, "f"))
    assert succeeded.status_code == 200 and succeeded.json() == {"attempt": 2}
    replayed = await client.post("/v1/test/flaky", json={}, headers=_with_key(caller, "f"))
    assert replayed.json() == {"attempt": 2} and calls["flaky"] == 2

    first = await client.post("/v1/test/stream", json={"stream": True}, headers=_with_key(caller, "s"))
    assert first.headers["content-type"].startswith("text/event-stream")
    assert first.text.endswith("data: [DONE]\n\n") and first.text.count("event: delta") == 3
    again = await client.post("/v1/test/stream", json={"stream": True}, headers=_with_key(caller, "s"))
    assert again.text == first.text
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers["x-request-id"] == "req_1"
    assert again.headers["idempotent-replayed"] == "true"
    assert calls["stream"] == 1


@pytest.fixture
async def impatient_app(database_url: str) -> AsyncIterator[FastAPI]:
    settings = Settings(
        database_url=database_url, local_model_enabled=False, retention_enabled=False, idempotency_wait_seconds=0.3
    )
    async for application in started_app(settings):
        yield application


async def test_waiting_for_a_running_first_request_is_bounded(impatient_app: FastAPI) -> None:
    caller = await make_caller(impatient_app)
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow() -> dict[str, bool]:
        started.set()
        await release.wait()
        return {"done": True}

    impatient_app.router.add_api_route("/v1/test/slow", slow, methods=["POST"], dependencies=[Idempotent])
    transport = httpx.ASGITransport(app=impatient_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://threadline.test") as client:
        first = asyncio.create_task(client.post("/v1/test/slow", json={}, headers=_with_key(caller, "slow")))
        await started.wait()
        busy = await client.post("/v1/test/slow", json={}, headers=_with_key(caller, "slow"))
        refused(busy, 409, "idempotency_key_in_progress")
        assert busy.headers["x-should-retry"] == "true"
        release.set()
        assert (await first).json() == {"done": True}
        replay = await client.post("/v1/test/slow", json={}, headers=_with_key(caller, "slow"))
        assert replay.json() == {"done": True} and replay.headers["idempotent-replayed"] == "true"
