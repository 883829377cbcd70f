"""Assistants end to end, and binding threads to them, on SQLite and PostgreSQL."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Caller
from tests.helpers import refused

# The models an assistant may name are the registry's: here two fake ones.
pytestmark = pytest.mark.fake_model(model_names=("fake-model", "fake-large"))


FULL = {
    "name": "Support bot",
    "description": "Answers billing questions",
    "model": "fake-model",
    "instructions": "Be brief.",
    "threadContextMode": "smart",
    "temperature": 0.2,
    "maxOutputTokens": 256,
    "metadata": {"team": "billing"},
}


async def _create(client: httpx.AsyncClient, caller: Caller, **fields: object) -> dict[str, object]:
    response = await client.post("/v1/assistants", json=fields or FULL, headers=caller.headers)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def test_create_get_returns_every_field(client: httpx.AsyncClient, caller: Caller) -> None:
    assistant = await _create(client, caller)
    assert str(assistant["id"]).startswith("asst_")
    assert assistant["object"] == "assistant"
    assert assistant["organization_id"] == caller.organization_id
    assert assistant["user_id"] == caller.user_id
    assert assistant["name"] == "Support bot"
    assert assistant["description"] == "Answers billing questions"
    assert assistant["model"] == "fake-model"
    assert assistant["instructions"] == "Be brief."
    assert assistant["thread_context_mode"] == "smart"
    assert assistant["temperature"] == 0.2
    assert assistant["max_output_tokens"] == 256
    assert assistant["metadata"] == {"team": "billing"}
    assert str(assistant["created_at"]).endswith("Z")
    fetched = await client.get(f"/v1/assistants/{assistant['id']}", headers=caller.headers)
    assert fetched.json() == assistant


async def test_invalid_values_are_400(client: httpx.AsyncClient, caller: Caller) -> None:
    for body, param in (
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"maxOutputTokens": 0}, "maxOutputTokens"),
        ({"threadContextMode": "everything"}, "threadContextMode"),
        ({"name": "x" * 257}, "name"),
        ({"tools": "get_weather"}, "tools"),
        ({"tools": [{"type": "function"}]}, "tools.0"),
        ({"fileIds": []}, "fileIds"),
    ):
        response = await client.post("/v1/assistants", json=body, headers=caller.headers)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param
    too_many = {f"k{i}": "v" for i in range(17)}
    response = await client.post("/v1/assistants", json={"metadata": too_many}, headers=caller.headers)
    refused(response, 400, "metadata_too_many_keys")


async def test_modify_with_patch_and_post(client: httpx.AsyncClient, caller: Caller) -> None:
    assistant = await _create(client, caller)
    url = f"/v1/assistants/{assistant['id']}"
    patched = await client.patch(url, json={"temperature": 1.5, "instructions": None}, headers=caller.headers)
    assert patched.status_code == 200, patched.text
    assert patched.json()["temperature"] == 1.5
    assert patched.json()["instructions"] is None
    assert patched.json()["name"] == "Support bot"
    posted = await client.post(url, json={"name": "Renamed", "thread_context_mode": "full"}, headers=caller.headers)
    assert posted.json()["name"] == "Renamed"
    assert posted.json()["thread_context_mode"] == "full"
    assert (await client.get(url, headers=caller.headers)).json()["name"] == "Renamed"
    bad = await client.patch(url, json={"temperature": 3}, headers=caller.headers)
    assert bad.status_code == 400


async def test_the_model_must_be_served(client: httpx.AsyncClient, caller: Caller) -> None:
    response = await client.post("/v1/assistants", json={**FULL, "model": "gpt-9"}, headers=caller.headers)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "gpt-9" in error["message"] and "fake-large, fake-model" in error["message"]
    assert (await client.get("/v1/assistants", headers=caller.headers)).json()["data"] == []

    assistant = await _create(client, caller)
    url = f"/v1/assistants/{assistant['id']}"
    refusal = await client.patch(url, json={"model": "gpt-9"}, headers=caller.headers)
    refused(refusal, 404, "model_not_found")
    assert (await client.get(url, headers=caller.headers)).json()["model"] == "fake-model"
    moved = await client.patch(url, json={"model": "fake-large"}, headers=caller.headers)
    assert moved.status_code == 200 and moved.json()["model"] == "fake-large"
    # No model: the thread's turns use the default model.
    cleared = await client.patch(url, json={"model": None}, headers=caller.headers)
    assert cleared.status_code == 200 and cleared.json()["model"] is None


async def test_other_organization_gets_404(client: httpx.AsyncClient, caller: Caller, other_caller: Caller) -> None:
    assistant = await _create(client, caller)
    url = f"/v1/assistants/{assistant['id']}"
    for response in (
        await client.get(url, headers=other_caller.headers),
        await client.patch(url, json={"name": "mine"}, headers=other_caller.headers),
        await client.delete(url, headers=other_caller.headers),
    ):
        refused(response, 404, "assistant_not_found")
    listed = await client.get("/v1/assistants", headers=other_caller.headers)
    assert listed.json()["data"] == []
    assert (await client.get(url, headers=caller.headers)).json()["name"] == "Support bot"


async def test_soft_delete(client: httpx.AsyncClient, caller: Caller) -> None:
    assistant = await _create(client, caller)
    url = f"/v1/assistants/{assistant['id']}"
    deleted = await client.delete(url, headers=caller.headers)
    assert deleted.json() == {"id": assistant["id"], "object": "assistant.deleted", "deleted": True}
    assert (await client.get(url, headers=caller.headers)).status_code == 404
    assert (await client.delete(url, headers=caller.headers)).status_code == 404
    assert (await client.get("/v1/assistants", headers=caller.headers)).json()["data"] == []
    # A deleted assistant can no longer be bound.
    response = await client.post("/v1/threads", json={"assistantId": assistant["id"]}, headers=caller.headers)
    refused(response, 404, "assistant_not_found")


async def test_list_is_keyset_paginated(client: httpx.AsyncClient, caller: Caller) -> None:
    ids = [str((await _create(client, caller, name=f"a{i}"))["id"]) for i in range(5)]
    first = (await client.get("/v1/assistants?limit=2", headers=caller.headers)).json()
    assert first["object"] == "list"
    assert [a["id"] for a in first["data"]] == ids[::-1][:2]
    assert first["first_id"] == ids[4] and first["last_id"] == ids[3]
    assert first["has_more"] is True and first["limit"] == 2
    second = (await client.get(f"/v1/assistants?limit=2&after={first['last_id']}", headers=caller.headers)).json()
    assert [a["id"] for a in second["data"]] == [ids[2], ids[1]]
    last = (await client.get(f"/v1/assistants?limit=2&after={second['last_id']}", headers=caller.headers)).json()
    assert [a["id"] for a in last["data"]] == [ids[0]] and last["has_more"] is False
    ascending = (await client.get("/v1/assistants?order=asc&limit=3", headers=caller.headers)).json()
    assert [a["id"] for a in ascending["data"]] == ids[:3]
    back = (await client.get(f"/v1/assistants?limit=2&before={ids[2]}", headers=caller.headers)).json()
    assert [a["id"] for a in back["data"]] == [ids[4], ids[3]]
    bad = await client.get("/v1/assistants?after=asst_nope", headers=caller.headers)
    refused(bad, 400, "invalid_cursor")


async def test_threads_bind_at_creation_and_later(
    client: httpx.AsyncClient, caller: Caller, other_caller: Caller
) -> None:
    assistant = await _create(client, caller)
    bound = await client.post("/v1/threads", json={"assistantId": assistant["id"]}, headers=caller.headers)
    assert bound.status_code == 200, bound.text
    assert bound.json()["assistant_id"] == assistant["id"]

    loose = (await client.post("/v1/threads", json={}, headers=caller.headers)).json()
    assert loose["assistant_id"] is None
    later = await client.patch(
        f"/v1/threads/{loose['id']}", json={"assistant_id": assistant["id"]}, headers=caller.headers
    )
    assert later.status_code == 200 and later.json()["assistant_id"] == assistant["id"]

    listed = await client.get(f"/v1/threads?assistant_id={assistant['id']}", headers=caller.headers)
    assert sorted(t["id"] for t in listed.json()["data"]) == sorted([bound.json()["id"], loose["id"]])
    unbound = (await client.post("/v1/threads", json={}, headers=caller.headers)).json()
    listed = await client.get(f"/v1/threads?assistantId={assistant['id']}", headers=caller.headers)
    assert unbound["id"] not in {t["id"] for t in listed.json()["data"]}

    # Another organization's assistant is as missing as one that never existed: at creation and on modify.
    theirs = await client.post("/v1/threads", json={"assistant_id": assistant["id"]}, headers=other_caller.headers)
    refused(theirs, 404, "assistant_not_found")
    own = (await client.post("/v1/threads", json={}, headers=other_caller.headers)).json()
    response = await client.patch(
        f"/v1/threads/{own['id']}", json={"assistant_id": assistant["id"]}, headers=other_caller.headers
    )
    refused(response, 404, "assistant_not_found")
    fetched = await client.get(f"/v1/threads/{own['id']}", headers=other_caller.headers)
    assert fetched.json()["assistant_id"] is None
