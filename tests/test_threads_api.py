"""The Threads REST API end to end, on SQLite and PostgreSQL."""

from __future__ import annotations

import httpx

from tests.conftest import Caller


async def test_create_thread_returns_every_field(client: httpx.AsyncClient, caller: Caller) -> None:
    response = await client.post("/v1/threads", json={"metadata": {"category": "support"}}, headers=caller.headers)
    assert response.status_code == 200, response.text
    thread = response.json()
    assert thread["id"].startswith("thread_")
    assert thread["object"] == "thread"
    assert thread["organization_id"] == caller.organization_id
    assert thread["user_id"] == caller.user_id
    assert thread["metadata"] == {"category": "support"}
    assert thread["status"] == "inactive"
    assert thread["state"] == "open"
    assert thread["message_count"] == 0
    assert thread["visible_in_ui"] is True
    assert thread["is_pinned"] is False
    assert thread["pinned_at"] is None
    assert thread["space_ids"] == []
    assert thread["created_at"].endswith("Z")

    fetched = await client.get(f"/v1/threads/{thread['id']}", headers=caller.headers)
    assert fetched.json() == thread


async def test_other_organization_sees_404(client: httpx.AsyncClient, caller: Caller, other_caller: Caller) -> None:
    created = (await client.post("/v1/threads", json={"id": "support_user1_t1"}, headers=caller.headers)).json()
    response = await client.get(f"/v1/threads/{created['id']}", headers=other_caller.headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "thread_not_found"
    # The same caller-chosen id is free in the other organization.
    response = await client.post("/v1/threads", json={"id": "support_user1_t1"}, headers=other_caller.headers)
    assert response.status_code == 200


async def test_missing_credentials_is_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/threads")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_credentials"
    response = await client.get("/v1/threads", headers={"Authorization": "Bearer tl_nope"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_credentials"
