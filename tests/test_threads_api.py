"""The Threads REST API end to end (seeds 000–004), on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import Caller
from tests.helpers import login_headers, refused


async def _create(client: httpx.AsyncClient, caller: Caller, **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/threads", json=body, headers=caller.headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


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
    for field in ("updated_at", "last_message_at", "assistant_id", "title", "last_model_used", "workflow_id"):
        assert field in thread

    fetched = await client.get(f"/v1/threads/{thread['id']}", headers=caller.headers)
    assert fetched.json() == thread


async def test_create_without_body_and_with_every_field_in_camel_case(
    client: httpx.AsyncClient, caller: Caller
) -> None:
    empty = await client.post("/v1/threads", headers=caller.headers)
    assert empty.status_code == 200, empty.text
    assert empty.json()["metadata"] == {}

    body = {
        "id": "support_user123_ticket789",
        "title": "  Billing question ",
        "organizationId": caller.organization_id,
        "workflowId": "wf_1",
        "spaceIds": ["space_a", "space_b"],
        "visibleInUi": True,
        "metadata": {"priority": "high", "tags": ["billing", "urgent"]},
    }
    thread = await _create(client, caller, **body)
    assert thread["id"] == "support_user123_ticket789"
    assert thread["title"] == "Billing question"
    assert thread["workflow_id"] == "wf_1"
    assert thread["space_ids"] == ["space_a", "space_b"]
    assert thread["metadata"]["tags"] == ["billing", "urgent"]

    again = await client.post("/v1/threads", json={"id": "support_user123_ticket789"}, headers=caller.headers)
    refused(again, 409, "thread_exists", "id")


async def test_other_organization_sees_404(client: httpx.AsyncClient, caller: Caller, other_caller: Caller) -> None:
    created = await _create(client, caller, id="support_user1_t1")
    await client.post(f"/v1/threads/{created['id']}/messages", json={"content": "hi"}, headers=caller.headers)
    message_id = (await client.get(f"/v1/threads/{created['id']}/messages", headers=caller.headers)).json()["data"][0][
        "id"
    ]
    tid = created["id"]
    attempts = [
        ("GET", f"/v1/threads/{tid}", None),
        ("POST", f"/v1/threads/{tid}", {"title": "x"}),
        ("PATCH", f"/v1/threads/{tid}", {"title": "x"}),
        ("DELETE", f"/v1/threads/{tid}", None),
        ("PATCH", f"/v1/threads/{tid}/metadata", {"metadata": {"a": "b"}}),
        ("PUT", f"/v1/threads/{tid}/rename", {"title": "x"}),
        ("GET", f"/v1/threads/{tid}/messages", None),
        ("POST", f"/v1/threads/{tid}/messages", {"content": "x"}),
        ("DELETE", f"/v1/threads/{tid}/messages", None),
        ("PATCH", f"/v1/threads/{tid}/messages/{message_id}", {"content": "x"}),
        ("GET", f"/v1/threads/{tid}/messages/{message_id}/edits", None),
        ("DELETE", f"/v1/threads/{tid}/messages/{message_id}", None),
    ]
    for method, url, body in attempts:
        response = await client.request(method, url, json=body, headers=other_caller.headers)
        refused(response, 404, "thread_not_found")
    # Nothing leaked into the other organization's lists, and nothing changed for the owner.
    listed = (await client.get("/v1/threads", headers=other_caller.headers)).json()
    assert listed["data"] == []
    mine = (await client.get(f"/v1/threads/{tid}", headers=caller.headers)).json()
    assert mine["title"] is None and mine["message_count"] == 1
    # The same caller-chosen id is free in the other organization.
    response = await client.post("/v1/threads", json={"id": "support_user1_t1"}, headers=other_caller.headers)
    assert response.status_code == 200
    # Naming the other organization explicitly is refused.
    response = await client.get(
        "/v1/threads", params={"organization_id": caller.organization_id}, headers=other_caller.headers
    )
    refused(response, 403, "organization_forbidden", "organization_id")


async def test_missing_credentials_is_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/threads")
    refused(response, 401, "missing_credentials")
    response = await client.get("/v1/threads", headers={"Authorization": "Bearer tl_nope"})
    refused(response, 401, "invalid_credentials")
    response = await client.post("/v1/threads", json={}, headers={"X-API-Key": "wrong"})
    refused(response, 401, "invalid_credentials")


async def _ids(client: httpx.AsyncClient, caller: Caller, url: str = "/v1/threads", **params: Any) -> list[str]:
    response = await client.get(url, params=params, headers=caller.headers)
    assert response.status_code == 200, response.text
    return [t["id"] for t in response.json()["data"]]


async def test_keyset_pagination_walks_both_orders(client: httpx.AsyncClient, caller: Caller) -> None:
    created = [(await _create(client, caller, title=f"t{i}"))["id"] for i in range(7)]
    newest_first = await _ids(client, caller, limit=100)
    assert sorted(newest_first) == sorted(created)
    assert newest_first == list(reversed(await _ids(client, caller, limit=100, order="asc")))
    assert newest_first == list(reversed(created))  # ids are time-sortable: creation order

    for order, expected in (("desc", newest_first), ("asc", list(reversed(newest_first)))):
        seen: list[str] = []
        after: str | None = None
        pages = []
        while True:
            params: dict[str, Any] = {"limit": 3, "order": order}
            if after:
                params["after"] = after
            page = (await client.get("/v1/threads", params=params, headers=caller.headers)).json()
            assert page["object"] == "list" and page["limit"] == 3 and page["total"] is None
            ids = [t["id"] for t in page["data"]]
            assert page["first_id"] == ids[0] and page["last_id"] == ids[-1]
            pages.append(ids)
            seen += ids
            if not page["has_more"]:
                break
            after = page["last_id"]
        assert seen == expected
        assert [len(p) for p in pages] == [3, 3, 1]
        # before= the first id of the last page gives back the previous page, in the list's order.
        back = (
            await client.get(
                "/v1/threads", params={"limit": 3, "order": order, "before": pages[2][0]}, headers=caller.headers
            )
        ).json()
        assert [t["id"] for t in back["data"]] == pages[1]
        assert back["has_more"] is True
        between = await _ids(client, caller, order=order, after=pages[0][0], before=pages[1][2])
        assert between == [*pages[0][1:], *pages[1][:2]]

    total = (
        await client.get("/v1/threads", params={"limit": 2, "includeTotal": "true"}, headers=caller.headers)
    ).json()
    assert total["total"] == 7 and len(total["data"]) == 2 and total["has_more"] is True

    empty = (await client.get("/v1/threads", params={"after": newest_first[-1]}, headers=caller.headers)).json()
    assert empty == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
        "limit": 20,
        "total": None,
    }
    refused(
        await client.get("/v1/threads", params={"after": "thread_unknown"}, headers=caller.headers),
        400,
        "invalid_cursor",
        "after",
    )


async def test_list_filters(client: httpx.AsyncClient, app: FastAPI, caller: Caller) -> None:
    from tests.conftest import make_caller

    colleague = await make_caller(app, org=caller.organization_id, email="bob@acme.test")
    a = (await _create(client, caller, workflow_id="wf_a"))["id"]
    b = (await _create(client, colleague))["id"]
    pinned = (await _create(client, caller))["id"]
    assert (
        await client.patch(f"/v1/threads/{pinned}", json={"isPinned": True}, headers=caller.headers)
    ).status_code == 200
    deleted = (await _create(client, caller))["id"]
    assert (await client.delete(f"/v1/threads/{deleted}", headers=caller.headers)).status_code == 200
    hidden_headers = await login_headers(client, app, caller)
    hidden = (await client.post("/v1/threads", json={"visible_in_ui": False}, headers=hidden_headers)).json()["id"]

    assert set(await _ids(client, caller)) == {a, b, pinned}
    assert set(await _ids(client, caller, include_deleted="true")) == {a, b, pinned, deleted}
    assert await _ids(client, caller, visible_in_ui="false") == [hidden]
    assert await _ids(client, caller, workflow_id="wf_a") == [a]
    assert await _ids(client, caller, is_pinned="true") == [pinned]
    assert set(await _ids(client, caller, isPinned="false")) == {a, b}
    assert set(await _ids(client, caller, "/v1/user/threads")) == {a, pinned}
    assert await _ids(client, colleague, "/v1/user/threads") == [b]
    assert set(await _ids(client, caller, "/v1/user/threads", includeDeleted="true", limit=1, order="asc")) == {a}
    assert await _ids(client, caller, assistant_id="asst_none") == []

    for params, param in (
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"order": "sideways"}, "order"),
        ({"visible_in_ui": "maybe"}, "visible_in_ui"),
        ({"after": "bad id!"}, "after"),
    ):
        response = await client.get("/v1/threads", params=params, headers=caller.headers)
        error = refused(response, 400, response.json()["error"]["code"], param)
        assert error["type"] == "invalid_request_error"


async def test_modify_thread_and_pinning(client: httpx.AsyncClient, caller: Caller) -> None:
    tid = (await _create(client, caller, metadata={"a": "1"}))["id"]
    response = await client.post(
        f"/v1/threads/{tid}",
        json={"metadata": {"status": "resolved", "rating": 5}, "title": "Done", "isPinned": True, "spaceIds": ["s1"]},
        headers=caller.headers,
    )
    thread = response.json()
    assert response.status_code == 200, response.text
    assert thread["metadata"] == {"status": "resolved", "rating": 5}  # replaced, not merged
    assert thread["title"] == "Done"
    assert thread["is_pinned"] is True and thread["pinned_at"] is not None
    assert thread["space_ids"] == ["s1"]
    assert thread["updated_at"] >= thread["created_at"]
    unpinned = (await client.patch(f"/v1/threads/{tid}", json={"is_pinned": False}, headers=caller.headers)).json()
    assert unpinned["is_pinned"] is False and unpinned["pinned_at"] is None
    # An explicit null for a non-nullable field changes nothing.
    same = (
        await client.patch(f"/v1/threads/{tid}", json={"state": None, "isPinned": None}, headers=caller.headers)
    ).json()
    assert same["state"] == "open" and same["is_pinned"] is False

    renamed = await client.put(f"/v1/threads/{tid}/rename", json={"title": "New name"}, headers=caller.headers)
    assert renamed.json()["title"] == "New name"
    refused(
        await client.put(f"/v1/threads/{tid}/rename", json={"title": "x" * 201}, headers=caller.headers),
        400,
        "title_too_long",
        "title",
    )
    refused(
        await client.patch(f"/v1/threads/{tid}", json={"bogus": 1}, headers=caller.headers),
        400,
        "unknown_parameter",
        "bogus",
    )
    refused(
        await client.patch(f"/v1/threads/{tid}", json={"assistantId": "asst_missing"}, headers=caller.headers),
        404,
        "assistant_not_found",
        "assistant_id",
    )


async def test_metadata_merge_removes_null_keys(client: httpx.AsyncClient, caller: Caller) -> None:
    tid = (await _create(client, caller, metadata={"keep": "1", "drop": "2"}))["id"]
    response = await client.patch(
        f"/v1/threads/{tid}/metadata",
        json={"metadata": {"drop": None, "new": {"nested": True}}},
        headers=caller.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["metadata"] == {"keep": "1", "new": {"nested": True}}
    too_many = {f"k{i}": "v" for i in range(16)}
    refused(
        await client.patch(f"/v1/threads/{tid}/metadata", json={"metadata": too_many}, headers=caller.headers),
        400,
        "metadata_too_many_keys",
        "metadata",
    )
    # The failed merge changed nothing.
    fetched = (await client.get(f"/v1/threads/{tid}", headers=caller.headers)).json()
    assert fetched["metadata"] == {"keep": "1", "new": {"nested": True}}


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata_too_many_keys", "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata_key_too_long", None),
        ({"metadata": {"k": "v" * 513}}, "metadata_value_too_long", "metadata.k"),
        ({"metadata": {f"k{i}": "€" * 512 for i in range(16)}}, "metadata_too_large", "metadata"),
        ({"title": "t" * 201}, "title_too_long", "title"),
        ({"id": "bad id with spaces"}, "invalid_thread_id", "id"),
        ({"id": "x" * 129}, "string_too_long", "id"),
        ({"metadata": "not an object"}, "invalid_type", "metadata"),
        ({"unknownField": 1}, "unknown_parameter", "unknownField"),
        ({"title": "nul\u0000byte"}, "invalid_value", "title"),
        ({"spaceIds": ["s"] * 101}, "too_many_items", "spaceIds"),
    ],
)
async def test_create_validation(
    client: httpx.AsyncClient, caller: Caller, body: dict[str, Any], code: str, param: str | None
) -> None:
    error = refused(await client.post("/v1/threads", json=body, headers=caller.headers), 400, code, param)
    assert error["type"] == "invalid_request_error"
    assert (await client.get("/v1/threads", headers=caller.headers)).json()["data"] == []


async def test_invalid_json_nan_and_oversized_bodies(client: httpx.AsyncClient, caller: Caller) -> None:
    headers = {**caller.headers, "Content-Type": "application/json"}
    refused(await client.post("/v1/threads", content=b"{not json", headers=headers), 400, "invalid_json")
    refused(
        await client.post("/v1/threads", content=b'{"metadata": {"x": NaN}}', headers=headers),
        400,
        "invalid_value",
        "metadata",
    )
    big = b'{"title": "' + b"x" * 1_100_000 + b'"}'
    refused(await client.post("/v1/threads", content=big, headers=headers), 413, "payload_too_large")
    refused(await client.get("/v1/threads/bad%20id", headers=caller.headers), 400, "invalid_value", "thread_id")


async def test_lifecycle(client: httpx.AsyncClient, caller: Caller) -> None:
    tid = (await _create(client, caller))["id"]
    url = f"/v1/threads/{tid}"
    msg = (await client.post(f"{url}/messages", json={"content": "hello"}, headers=caller.headers)).json()

    locked = await client.patch(url, json={"state": "locked"}, headers=caller.headers)
    assert locked.json()["state"] == "locked"
    refused(
        await client.post(f"{url}/messages", json={"content": "more"}, headers=caller.headers), 409, "thread_locked"
    )
    refused(
        await client.patch(f"{url}/messages/{msg['id']}", json={"content": "x"}, headers=caller.headers),
        409,
        "thread_locked",
    )
    refused(await client.delete(f"{url}/messages/{msg['id']}", headers=caller.headers), 409, "thread_locked")
    refused(await client.delete(f"{url}/messages", headers=caller.headers), 409, "thread_locked")
    # Metadata stays editable on a locked thread.
    patched = await client.patch(f"{url}/metadata", json={"metadata": {"review": "pending"}}, headers=caller.headers)
    assert patched.status_code == 200 and patched.json()["metadata"] == {"review": "pending"}
    assert (await client.patch(url, json={"metadata": {"review": "done"}}, headers=caller.headers)).status_code == 200

    reopened = await client.patch(url, json={"state": "open"}, headers=caller.headers)
    assert reopened.json()["state"] == "open"
    assert (await client.post(f"{url}/messages", json={"content": "again"}, headers=caller.headers)).status_code == 200

    archived = await client.patch(url, json={"state": "archived"}, headers=caller.headers)
    assert archived.json()["state"] == "archived"
    for target in ("open", "locked"):
        refused(
            await client.patch(url, json={"state": target}, headers=caller.headers),
            409,
            "invalid_state_transition",
            "state",
        )
    refused(await client.patch(url, json={"state": "frozen"}, headers=caller.headers), 400, "invalid_value", "state")
    for method, path, body in (
        ("POST", "/messages", {"content": "x"}),
        ("PATCH", "/metadata", {"metadata": {"a": "b"}}),
        ("PUT", "/rename", {"title": "x"}),
        ("PATCH", "", {"title": "x"}),
        ("POST", "", {"isPinned": True}),
        ("PATCH", f"/messages/{msg['id']}", {"content": "x"}),
        ("DELETE", f"/messages/{msg['id']}", None),
        ("DELETE", "/messages", None),
    ):
        refused(await client.request(method, url + path, json=body, headers=caller.headers), 409, "thread_archived")
    # Reads still work, archiving again is a no-op, and delete is allowed.
    thread = (await client.get(url, headers=caller.headers)).json()
    assert thread["state"] == "archived" and thread["message_count"] == 2
    assert (await client.patch(url, json={"state": "archived"}, headers=caller.headers)).status_code == 200
    assert (await client.get(f"{url}/messages", headers=caller.headers)).status_code == 200
    deleted = await client.delete(url, headers=caller.headers)
    assert deleted.json() == {"id": tid, "object": "thread.deleted", "deleted": True}


async def test_soft_delete(client: httpx.AsyncClient, caller: Caller) -> None:
    tid = (await _create(client, caller, id="to_delete"))["id"]
    assert (await client.delete(f"/v1/threads/{tid}", headers=caller.headers)).status_code == 200
    refused(await client.get(f"/v1/threads/{tid}", headers=caller.headers), 404, "thread_not_found")
    refused(await client.delete(f"/v1/threads/{tid}", headers=caller.headers), 404, "thread_not_found")
    refused(await client.get(f"/v1/threads/{tid}/messages", headers=caller.headers), 404, "thread_not_found")
    assert await _ids(client, caller) == []
    listed = (await client.get("/v1/threads", params={"include_deleted": True}, headers=caller.headers)).json()
    assert [t["id"] for t in listed["data"]] == [tid]
    assert listed["data"][0]["deleted_at"] is not None
    # The id stays taken: a deleted thread is kept until the retention sweeper purges it.
    refused(await client.post("/v1/threads", json={"id": tid}, headers=caller.headers), 409, "thread_exists")


async def test_visible_in_ui_needs_a_user_token(client: httpx.AsyncClient, app: FastAPI, caller: Caller) -> None:
    refused(
        await client.post("/v1/threads", json={"visibleInUi": False}, headers=caller.headers),
        403,
        "user_token_required",
        "visible_in_ui",
    )
    tid = (await _create(client, caller))["id"]
    refused(
        await client.patch(f"/v1/threads/{tid}", json={"visible_in_ui": False}, headers=caller.headers),
        403,
        "user_token_required",
    )
    # Restating the current value is not a change.
    assert (
        await client.patch(f"/v1/threads/{tid}", json={"visible_in_ui": True}, headers=caller.headers)
    ).status_code == 200
    token_headers = await login_headers(client, app, caller)
    hidden = await client.patch(f"/v1/threads/{tid}", json={"visible_in_ui": False}, headers=token_headers)
    assert hidden.status_code == 200 and hidden.json()["visible_in_ui"] is False
    assert await _ids(client, caller) == []
    # Hidden threads still answer to a direct lookup.
    assert (await client.get(f"/v1/threads/{tid}", headers=caller.headers)).json()["visible_in_ui"] is False
