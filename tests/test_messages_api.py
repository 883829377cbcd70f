"""Messages of a thread: append, page, edit (audited), delete, counts, the per-thread limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from tests.conftest import Caller
from tests.helpers import refused
from threadline.api.app import create_app
from threadline.config import Settings
from threadline.storage.tables import JSONType


async def _thread(client: httpx.AsyncClient, caller: Caller) -> str:
    response = await client.post("/v1/threads", json={}, headers=caller.headers)
    assert response.status_code == 200, response.text
    thread_id: str = response.json()["id"]
    return thread_id


async def _append(client: httpx.AsyncClient, caller: Caller, tid: str, **body: Any) -> dict[str, Any]:
    response = await client.post(f"/v1/threads/{tid}/messages", json=body, headers=caller.headers)
    assert response.status_code == 200, response.text
    message: dict[str, Any] = response.json()
    return message


async def _thread_row(client: httpx.AsyncClient, caller: Caller, tid: str) -> dict[str, Any]:
    thread: dict[str, Any] = (await client.get(f"/v1/threads/{tid}", headers=caller.headers)).json()
    return thread


async def test_append_and_page_messages(client: httpx.AsyncClient, caller: Caller) -> None:
    tid = await _thread(client, caller)
    first = await _append(client, caller, tid, content="Hello", metadata={"source": "web"})
    assert first["object"] == "thread.message" and first["thread_id"] == tid
    assert first["role"] == "user" and first["content"] == "Hello" and first["texts"] == [{"text": "Hello"}]
    assert first["edited_at"] is None and first["edit_count"] == 0 and first["metadata"] == {"source": "web"}
    second = await _append(client, caller, tid, role="assistant", texts=[{"text": "Hi! "}, {"text": "How can I help?"}])
    assert second["content"] == "Hi! How can I help?"
    ids = [first["id"], second["id"]] + [(await _append(client, caller, tid, content=f"m{i}"))["id"] for i in range(5)]

    thread = await _thread_row(client, caller, tid)
    assert thread["message_count"] == 7
    assert thread["last_message_at"] >= thread["created_at"]

    url = f"/v1/threads/{tid}/messages"
    newest_first = (await client.get(url, params={"limit": 100}, headers=caller.headers)).json()
    assert [m["id"] for m in newest_first["data"]] == list(reversed(ids))
    for order, expected in (("asc", ids), ("desc", list(reversed(ids)))):
        seen: list[str] = []
        params: dict[str, Any] = {"limit": 3, "order": order, "includeTotal": "true"}
        while True:
            page = (await client.get(url, params=params, headers=caller.headers)).json()
            assert page["total"] == 7
            seen += [m["id"] for m in page["data"]]
            if not page["has_more"]:
                break
            params["after"] = page["last_id"]
        assert seen == expected
    before = (
        await client.get(url, params={"order": "asc", "before": ids[4], "limit": 2}, headers=caller.headers)
    ).json()
    assert [m["id"] for m in before["data"]] == ids[2:4]
    bad = await client.get(url, params={"after": "msg_unknown"}, headers=caller.headers)
    refused(bad, 400, "invalid_cursor")

    single = await client.get(f"{url}/{ids[0]}", headers=caller.headers)
    assert single.json()["content"] == "Hello"


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({}, "invalid_value", None),
        ({"content": "a", "texts": [{"text": "b"}]}, "invalid_value", None),
        ({"content": "a", "role": "robot"}, "invalid_value", "role"),
        ({"content": "a", "metadata": {f"k{i}": 1 for i in range(17)}}, "metadata_too_many_keys", "metadata"),
        ({"texts": []}, "invalid_value", "texts"),
        ({"content": 5}, "invalid_type", "content"),
    ],
)
async def test_append_validation(
    client: httpx.AsyncClient, caller: Caller, body: dict[str, Any], code: str, param: str | None
) -> None:
    tid = await _thread(client, caller)
    response = await client.post(f"/v1/threads/{tid}/messages", json=body, headers=caller.headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    if param is not None:
        assert error["param"] == param
    assert (await _thread_row(client, caller, tid))["message_count"] == 0


async def test_edit_is_audited(client: httpx.AsyncClient, caller: Caller, other_caller: Caller) -> None:
    tid = await _thread(client, caller)
    message = await _append(client, caller, tid, content="something rude", metadata={"lang": "en"})
    url = f"/v1/threads/{tid}/messages/{message['id']}"
    # The Freddy specification's moderation example.
    edited = await client.patch(
        url,
        json={
            "content": "[Message removed by moderator]",
            "metadata": {"moderated": True, "reason": "policy_violation"},
        },
        headers=caller.headers,
    )
    assert edited.status_code == 200, edited.text
    body = edited.json()
    assert body["content"] == "[Message removed by moderator]"
    assert body["metadata"] == {"moderated": True, "reason": "policy_violation"}
    assert body["edit_count"] == 1 and body["edited_at"] is not None
    again = (await client.patch(url, json={"content": "second edit"}, headers=caller.headers)).json()
    assert again["edit_count"] == 2 and again["metadata"] == {"moderated": True, "reason": "policy_violation"}

    history = (await client.get(f"{url}/edits", headers=caller.headers)).json()
    assert history["object"] == "list" and history["message"]["content"] == "second edit"
    assert [e["previous_content"] for e in history["data"]] == ["something rude", "[Message removed by moderator]"]
    assert history["data"][0]["previous_metadata"] == {"lang": "en"}
    assert all(e["edited_by"] == caller.user_id and e["edited_at"].endswith("Z") for e in history["data"])
    assert history["data"][0]["object"] == "thread.message.edit"

    listed = (await client.get(f"/v1/threads/{tid}/messages", headers=caller.headers)).json()["data"][0]
    assert listed["edit_count"] == 2 and listed["content"] == "second edit"

    bad = await client.patch(url, json={"metadata": {"k" * 65: "v"}}, headers=caller.headers)
    refused(bad, 400, "metadata_key_too_long")
    missing = await client.patch(
        f"/v1/threads/{tid}/messages/msg_missing", json={"content": "x"}, headers=caller.headers
    )
    refused(missing, 404, "message_not_found")
    # Neither the message nor its history is visible to another organization.
    assert (await client.get(f"{url}/edits", headers=other_caller.headers)).status_code == 404


async def test_deleted_messages_leave_history_and_counts(client: httpx.AsyncClient, caller: Caller) -> None:
    tid = await _thread(client, caller)
    ids = [(await _append(client, caller, tid, content=f"m{i}"))["id"] for i in range(4)]
    url = f"/v1/threads/{tid}/messages"
    deleted = await client.delete(f"{url}/{ids[1]}", headers=caller.headers)
    assert deleted.json() == {"id": ids[1], "object": "thread.message.deleted", "deleted": True}
    assert (await client.delete(f"{url}/{ids[1]}", headers=caller.headers)).status_code == 404
    assert (await client.get(f"{url}/{ids[1]}", headers=caller.headers)).status_code == 404
    page = (await client.get(url, params={"order": "asc", "include_total": True}, headers=caller.headers)).json()
    assert [m["id"] for m in page["data"]] == [ids[0], ids[2], ids[3]] and page["total"] == 3
    assert (await _thread_row(client, caller, tid))["message_count"] == 3

    cleared = (await client.delete(url, headers=caller.headers)).json()
    assert cleared == {"thread_id": tid, "object": "thread.messages.deleted", "deleted_count": 3}
    assert (await client.get(url, headers=caller.headers)).json()["data"] == []
    assert (await _thread_row(client, caller, tid))["message_count"] == 0
    # The history continues after a clear, and counts stay exact.
    new = await _append(client, caller, tid, content="fresh start")
    assert (await _thread_row(client, caller, tid))["message_count"] == 1
    assert [m["id"] for m in (await client.get(url, headers=caller.headers)).json()["data"]] == [new["id"]]


@pytest.fixture
async def small_client(app: FastAPI, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A second app on the same database with a 3-message limit per thread (`app` empties the tables)."""
    small = create_app(settings.model_copy(update={"max_messages_per_thread": 3}))
    async with small.router.lifespan_context(small):
        transport = httpx.ASGITransport(app=small)
        async with httpx.AsyncClient(transport=transport, base_url="http://threadline.test") as c:
            yield c


async def test_thread_full(small_client: httpx.AsyncClient, caller: Caller) -> None:
    tid = await _thread(small_client, caller)
    for i in range(3):
        await _append(small_client, caller, tid, content=f"m{i}")
    response = await small_client.post(
        f"/v1/threads/{tid}/messages", json={"content": "one too many"}, headers=caller.headers
    )
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "thread_full" and "3" in error["message"]
    assert response.headers["x-should-retry"] == "false"
    # Deleting one frees a slot: the limit counts live messages.
    first = (
        await small_client.get(f"/v1/threads/{tid}/messages", params={"order": "asc"}, headers=caller.headers)
    ).json()
    await small_client.delete(f"/v1/threads/{tid}/messages/{first['data'][0]['id']}", headers=caller.headers)
    await _append(small_client, caller, tid, content="fits again")
    assert (await _thread_row(small_client, caller, tid))["message_count"] == 3


async def test_concurrent_writes_keep_counts_exact(client: httpx.AsyncClient, caller: Caller) -> None:
    tid = await _thread(client, caller)
    url = f"/v1/threads/{tid}/messages"
    responses = await asyncio.gather(
        *(client.post(url, json={"content": f"m{i}"}, headers=caller.headers) for i in range(12))
    )
    assert [r.status_code for r in responses] == [200] * 12
    page = (await client.get(url, params={"limit": 100, "order": "asc"}, headers=caller.headers)).json()
    assert sorted(m["content"] for m in page["data"]) == sorted(f"m{i}" for i in range(12))
    assert (await _thread_row(client, caller, tid))["message_count"] == 12

    # The same caller-chosen id created concurrently: exactly one wins, the others get 409, never a 500.
    creates = await asyncio.gather(
        *(client.post("/v1/threads", json={"id": "race_1"}, headers=caller.headers) for _ in range(6))
    )
    statuses = sorted(r.status_code for r in creates)
    assert statuses == [200] + [409] * 5, [r.text for r in creates]
    assert all(r.json()["error"]["code"] == "thread_exists" for r in creates if r.status_code == 409)


async def test_an_absent_payload_is_sql_null_and_a_stored_json_null_still_reads(
    app: FastAPI, client: httpx.AsyncClient, caller: Caller
) -> None:
    """A plain message has no payload: it is stored as SQL NULL, so reading the row parses no JSON. Rows written
    before (the JSON text `null`) read the same."""
    tid = await _thread(client, caller)
    old = await _append(client, caller, tid, content="old")
    new = await _append(client, caller, tid, content="new")
    messages = sa.table("messages", sa.column("id"), sa.column("payload", JSONType))
    async with app.state.engine.begin() as connection:
        # JSONType writes None as JSON null, as every row was written before OptionalJSON.
        await connection.execute(sa.update(messages).where(messages.c.id == old["id"]).values(payload=None))
        stored = dict(
            (
                await connection.execute(
                    sa.text("SELECT id, payload IS NULL FROM messages WHERE thread_id = :t"), {"t": tid}
                )
            ).all()
        )
    assert stored == {old["id"]: False, new["id"]: True}
    page = (await client.get(f"/v1/threads/{tid}/messages", params={"order": "asc"}, headers=caller.headers)).json()
    assert [(m["id"], m["content"], m["texts"]) for m in page["data"]] == [
        (old["id"], "old", [{"text": "old"}]),
        (new["id"], "new", [{"text": "new"}]),
    ]
