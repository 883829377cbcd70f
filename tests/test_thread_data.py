"""Export and import (docs/export-format.md, docs/threads-as-data.md) on SQLite and PostgreSQL: a round trip into
another organization, idempotent re-imports, ChatGPT's conversations.json, bad lines, limits."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import Caller, make_caller, started_app
from tests.helpers import refused
from threadline.config import Settings

# A small global body limit: imports have their own, larger one.
pytestmark = pytest.mark.app_settings(max_body_bytes=1024)

NDJSON = {"Content-Type": "application/x-ndjson"}
JSON = {"Content-Type": "application/json"}


async def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def lines(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.decode().splitlines()]


async def post(client: httpx.AsyncClient, caller: Caller, path: str, body: Any = None) -> Any:
    return await ok(await client.post(path, json=body, headers=caller.headers))


async def build_threads(client: httpx.AsyncClient, caller: Caller) -> list[str]:
    """Three threads: one with an edit and metadata, one with a function call and its output, and a fork."""
    first = await post(client, caller, "/v1/threads", {"title": "Edited", "metadata": {"k": "v"}})
    await post(client, caller, f"/v1/threads/{first['id']}/messages", {"content": "hello", "role": "system"})
    said = await post(client, caller, f"/v1/threads/{first['id']}/messages", {"content": "draft"})
    await ok(
        await client.patch(
            f"/v1/threads/{first['id']}/messages/{said['id']}",
            json={"content": "final", "metadata": {"n": "1"}},
            headers=caller.headers,
        )
    )
    tools = await post(client, caller, "/v1/conversations", {"items": [{"role": "user", "content": "weather?"}]})
    await post(
        client,
        caller,
        f"/v1/conversations/{tools['id']}/items",
        {
            "items": [
                {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city":"Bern"}'},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            ]
        },
    )
    forked = await post(client, caller, f"/v1/threads/{first['id']}/fork", {"title": "Forked"})
    await post(client, caller, f"/v1/threads/{forked['id']}/messages", {"content": "own"})
    return [first["id"], tools["id"], forked["id"]]


def comparable(exported: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What must survive a round trip: every item whole but its id, the headers without what names the
    organization (`same_ids` checks the ids)."""
    out = []
    for line in exported:
        drop = ("organization_id", "source_id", "forked_from") if line["object"] == "thread" else ("id", "source_id")
        out.append({k: v for k, v in line.items() if k not in drop})
    return out


def same_ids(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> None:
    """Item ids are kept, except where the organization already holds one (a fork's items read from its source
    are the source's own ids): then the new item names the old id as its source."""
    for old, new in zip(before, after, strict=True):
        if old["object"] == "thread.item":
            assert new["id"] == old["id"] or new["source_id"] == old["id"], (old, new)


async def test_round_trip_into_another_organization_and_re_import_creates_nothing(
    client: httpx.AsyncClient, caller: Caller, other_caller: Caller
) -> None:
    ids = await build_threads(client, caller)
    exported = await client.get("/v1/threads/export", headers=caller.headers)
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("application/x-ndjson")
    first = lines(exported.content)
    headers = [line for line in first if line["object"] == "thread"]
    assert [h["id"] for h in headers] == ids
    assert all(h["format"] == "threadline.export" and h["version"] == 1 for h in headers)
    items = {h["id"]: [line for line in first if line.get("thread_id") == h["id"]] for h in headers}
    edited = items[ids[0]][1]
    assert edited["content"] == "final" and edited["metadata"] == {"n": "1"}
    assert [(e["previous_content"], e["previous_metadata"]) for e in edited["edits"]] == [("draft", {})]
    assert [i["type"] for i in items[ids[1]]] == ["message", "function_call", "function_call_output"]
    assert items[ids[1]][1]["payload"]["name"] == "weather" and items[ids[1]][1]["call_id"] == "call_1"
    # The fork's export is its whole history.
    assert [i["content"] for i in items[ids[2]]] == ["hello", "final", "own"]
    assert headers[2]["forked_from"] == {"thread_id": ids[0], "seq": 2} and headers[2]["message_count"] == 3

    imported = await ok(
        await client.post("/v1/threads/import", content=exported.content, headers={**other_caller.headers, **NDJSON})
    )
    assert imported == {"created": 3, "skipped": 0, "failed": 0, "errors": [], "warnings": [], "thread_ids": ids}
    again = await client.get("/v1/threads/export", headers=other_caller.headers)
    assert comparable(lines(again.content)) == comparable(first)
    same_ids(first, lines(again.content))
    kept = [line["id"] for line in lines(again.content) if line.get("thread_id") in ids[:2]]
    assert kept == [line["id"] for line in first if line.get("thread_id") in ids[:2]]
    assert [line["source_id"] for line in lines(again.content) if line["object"] == "thread"] == [
        f"threadline:{caller.organization_id}/{i}" for i in ids
    ]
    # Same file again, into either organization: nothing new.
    for who in (other_caller, caller):
        repeat = await ok(
            await client.post("/v1/threads/import", content=exported.content, headers={**who.headers, **NDJSON})
        )
        assert (repeat["created"], repeat["skipped"], repeat["thread_ids"]) == (0, 3, ids)
    assert len((await ok(await client.get("/v1/threads", headers=other_caller.headers)))["data"]) == 3
    # The imported threads work like any other: a message appended numbers on.
    added = await post(client, other_caller, f"/v1/threads/{ids[0]}/messages", {"content": "more"})
    assert added["content"] == "more"


async def test_one_thread_export_and_its_404s(client: httpx.AsyncClient, caller: Caller, other_caller: Caller) -> None:
    ids = await build_threads(client, caller)
    one = await client.get(f"/v1/threads/{ids[1]}/export", headers=caller.headers)
    assert [line["object"] for line in lines(one.content)] == ["thread", "thread.item", "thread.item", "thread.item"]
    refused(await client.get(f"/v1/threads/{ids[1]}/export", headers=other_caller.headers), 404, "thread_not_found")
    refused(await client.get("/v1/threads/nope/export", headers=caller.headers), 404, "thread_not_found")
    # The list's filters apply: nothing is pinned.
    pinned = await client.get("/v1/threads/export", params={"is_pinned": True}, headers=caller.headers)
    assert pinned.status_code == 200 and pinned.content == b""


async def test_a_bad_line_fails_its_thread_and_the_rest_goes_on(client: httpx.AsyncClient, caller: Caller) -> None:
    def header(thread_id: str) -> str:
        return json.dumps({"object": "thread", "format": "threadline.export", "version": 1, "id": thread_id})

    def item(text: str, **extra: Any) -> str:
        return json.dumps({"object": "thread.item", "type": "message", "role": "user", "content": text, **extra})

    body = "\n".join(
        [
            item("orphan"),  # 1: before any header
            header("good_one"),  # 2
            item("a", created_at="2024-01-02T03:04:05.123456Z"),
            item("b"),
            header("bad_one"),  # 5
            item("c"),
            "{not json",  # 7
            item("d"),
            header("no_role"),  # 9
            json.dumps({"object": "thread.item", "content": "x"}),  # 10
            json.dumps({"object": "thread", "format": "other", "version": 9, "id": "v9"}),  # 11
            header("good_two"),  # 12
            item("e", type="reasoning_v9"),  # 13: a type this server does not store
            header("good_three"),  # 14
            item("f"),
        ]
    )
    report = await ok(await client.post("/v1/threads/import", content=body, headers={**caller.headers, **NDJSON}))
    assert (report["created"], report["failed"]) == (2, 5)
    assert report["thread_ids"] == ["good_one", "good_three"]
    assert [(e["line"], e["code"]) for e in report["errors"]] == [
        (1, "item_without_thread"),
        (7, "invalid_json"),
        (10, "invalid_value"),
        (11, "unsupported_export_version"),
        (13, "unsupported_item_type"),
    ]
    messages = await ok(
        await client.get("/v1/threads/good_one/messages", params={"order": "asc"}, headers=caller.headers)
    )
    assert [m["content"] for m in messages["data"]] == ["a", "b"]
    assert messages["data"][0]["created_at"] == "2024-01-02T03:04:05.123456Z" or messages["data"][0][
        "created_at"
    ].startswith("2024-01-02T03:04:05")
    refused(await client.get("/v1/threads/bad_one", headers=caller.headers), 404, "thread_not_found")

    # atomic: the same file writes nothing and names the first error.
    fresh = body.replace("good_", "fresh_")
    atomic = await client.post(
        "/v1/threads/import", params={"atomic": "true"}, content=fresh, headers={**caller.headers, **NDJSON}
    )
    error = refused(atomic, 400, "import_failed")
    assert "line 1" in error["message"]
    refused(await client.get("/v1/threads/fresh_one", headers=caller.headers), 404, "thread_not_found")


async def test_unknown_formats_and_malformed_files_are_refused(client: httpx.AsyncClient, caller: Caller) -> None:
    text = {**caller.headers, "Content-Type": "text/plain"}
    refused(await client.post("/v1/threads/import", content=b"x", headers=text), 400, "unsupported_import_format")
    broken = await ok(
        await client.post(
            "/v1/threads/import", content=b'[{"id": "c1", "mapping": ', headers={**caller.headers, **JSON}
        )
    )
    assert broken["failed"] == 1 and broken["errors"][0]["code"] == "invalid_json"
    not_array = await client.post(
        "/v1/threads/import", params={"atomic": "true"}, content=b"[1]", headers={**caller.headers, **JSON}
    )
    refused(not_array, 400, "import_failed")
    assert (await ok(await client.get("/v1/threads", headers=caller.headers)))["data"] == []


def chatgpt_export() -> list[dict[str, Any]]:
    """Two conversations in the shape of ChatGPT's data export: a `mapping` tree whose root has no message, a hidden
    empty system message, a visible system message, a regenerated answer (a second branch), an image part and a
    tool message."""

    def node(node_id: str, parent: str | None, children: list[str], message: dict[str, Any] | None) -> dict[str, Any]:
        return {"id": node_id, "parent": parent, "children": children, "message": message}

    def message(
        node_id: str, role: str, parts: list[Any], t: float | None, content_type: str = "text"
    ) -> dict[str, Any]:
        return {
            "id": node_id,
            "author": {"role": role, "name": None, "metadata": {}},
            "create_time": t,
            "update_time": None,
            "content": {"content_type": content_type, "parts": parts},
            "status": "finished_successfully",
            "end_turn": True,
            "weight": 1.0,
            "metadata": {"model_slug": "gpt-4o"} if role == "assistant" else {},
            "recipient": "all",
        }

    first = {
        "title": "Paris trip",
        "create_time": 1700000000.5,
        "update_time": 1700000900.0,
        "id": "conv-1",
        "conversation_id": "conv-1",
        "current_node": "a2",
        "mapping": {
            "root": node("root", None, ["sys0"], None),
            "sys0": node("sys0", "root", ["sys1"], message("sys0", "system", [""], None)),
            "sys1": node("sys1", "sys0", ["u1"], message("sys1", "system", ["Answer in French."], 1700000001.0)),
            "u1": node("u1", "sys1", ["a1", "a2"], message("u1", "user", ["Plan a day in Paris"], 1700000010.0)),
            "a1": node("a1", "u1", [], message("a1", "assistant", ["First try"], 1700000020.0)),
            "a2": node("a2", "u1", ["u2"], message("a2", "assistant", ["Second try"], 1700000030.0)),
            "u2": node("u2", "a2", ["t1"], None),
        },
    }
    first["current_node"] = "t1"
    first["mapping"]["u2"] = node(
        "u2",
        "a2",
        ["t1"],
        message(
            "u2",
            "user",
            [{"content_type": "image_asset_pointer", "asset_pointer": "file-service://x"}, "What is this?"],
            1700000040.0,
            "multimodal_text",
        ),
    )
    first["mapping"]["t1"] = node("t1", "u2", [], message("t1", "tool", ["browsing result"], 1700000050.0))
    second = {
        "title": "Empty",
        "create_time": 1700001000.0,
        "update_time": 1700001000.0,
        "id": "conv-2",
        "current_node": "r",
        "mapping": {"r": node("r", None, [], None)},
    }
    return [first, second]


async def test_a_chatgpt_export_imports_its_current_branches_once(client: httpx.AsyncClient, caller: Caller) -> None:
    body = json.dumps(chatgpt_export()).encode()
    assert len(body) > 1024  # over the global body limit, under the import one
    report = await ok(await client.post("/v1/threads/import", content=body, headers={**caller.headers, **JSON}))
    assert (report["created"], report["skipped"], report["failed"], report["errors"]) == (2, 0, 0, [])
    paris, empty = report["thread_ids"]
    thread = await ok(await client.get(f"/v1/threads/{paris}", headers=caller.headers))
    assert thread["title"] == "Paris trip" and thread["message_count"] == 4
    assert thread["created_at"].startswith("2023-11-14T22:13:20")
    messages = (
        await ok(await client.get(f"/v1/threads/{paris}/messages", params={"order": "asc"}, headers=caller.headers))
    )["data"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("system", "Answer in French."),
        ("user", "Plan a day in Paris"),
        ("assistant", "Second try"),
        ("user", "What is this?"),
    ]
    assert messages[1]["created_at"].startswith("2023-11-14T22:13:30")
    (warning,) = report["warnings"]
    assert warning["conversation"] == 1 and warning["source_id"] == "chatgpt:conv-1"
    assert sorted(warning["messages"]) == [
        "1 image_asset_pointer parts not imported",
        "1 messages on other branches (regenerated or edited turns) not imported",
        "1 tool messages not imported",
    ]
    assert (await ok(await client.get(f"/v1/threads/{empty}", headers=caller.headers)))["message_count"] == 0

    again = await ok(await client.post("/v1/threads/import", content=body, headers={**caller.headers, **JSON}))
    assert (again["created"], again["skipped"], again["thread_ids"]) == (0, 2, [paris, empty])


@pytest.fixture
async def small_import_app(database_url: str) -> AsyncIterator[FastAPI]:
    settings = Settings(
        database_url=database_url, local_model_enabled=False, retention_enabled=False, max_import_bytes=2048
    )
    async for application in started_app(settings):
        yield application


async def test_the_import_limit_is_its_own(small_import_app: FastAPI) -> None:
    caller = await make_caller(small_import_app)
    transport = httpx.ASGITransport(app=small_import_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://threadline.test") as client:
        big = json.dumps(chatgpt_export()).encode()
        declared = await client.post("/v1/threads/import", content=big, headers={**caller.headers, **JSON})
        refused(declared, 413, "payload_too_large")

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(big), 512):
                yield big[start : start + 512]

        streamed = await client.post("/v1/threads/import", content=chunks(), headers={**caller.headers, **JSON})
        refused(streamed, 413, "payload_too_large")


async def test_long_threads_and_forks_export_page_by_page(
    app: FastAPI, client: httpx.AsyncClient, caller: Caller
) -> None:
    from tests.responses_helpers import prefill

    long = await post(client, caller, "/v1/threads", {"title": "Long"})
    await prefill(app, caller, long["id"], 1_234)
    short = await post(client, caller, "/v1/threads", {"title": "Short"})
    await post(client, caller, f"/v1/threads/{short['id']}/messages", {"content": "only"})
    forked = await post(client, caller, f"/v1/threads/{long['id']}/fork", {})
    await post(client, caller, f"/v1/threads/{forked['id']}/messages", {"content": "after"})
    exported = lines((await client.get("/v1/threads/export", headers=caller.headers)).content)
    per_thread: dict[str, list[str]] = {}
    current = ""
    for line in exported:
        if line["object"] == "thread":
            current = line["id"]
            per_thread[current] = []
        else:
            per_thread[current].append(line["content"])
    assert list(per_thread) == [long["id"], short["id"], forked["id"]]
    expected = [f"m{seq}" for seq in range(1, 1_235)]
    assert per_thread[long["id"]] == expected
    assert per_thread[short["id"]] == ["only"]
    assert per_thread[forked["id"]] == [*expected, "after"]
    one = lines((await client.get(f"/v1/threads/{forked['id']}/export", headers=caller.headers)).content)
    assert [line.get("content") for line in one[1:]] == [*expected, "after"]


async def test_an_import_racing_another_skips_what_the_other_wrote(
    client: httpx.AsyncClient, caller: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's lookups ran before another import committed the same sources: the inserts collide with the
    unique source index, and the batch is redone a thread at a time, skipping what is there now."""
    from threadline.services import thread_import

    body = json.dumps(chatgpt_export()).encode()
    first = await ok(await client.post("/v1/threads/import", content=body, headers={**caller.headers, **JSON}))
    real_lookup = thread_import._lookup
    calls = 0

    async def stale_once(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:  # what the batch saw before the other import committed
            return thread_import._Known(sources={}, thread_ids=set(), item_ids=set())
        return await real_lookup(*args)

    monkeypatch.setattr(thread_import, "_lookup", stale_once)
    again = await ok(await client.post("/v1/threads/import", content=body, headers={**caller.headers, **JSON}))
    assert calls == 3  # the stale batch, then each thread on its own
    assert (again["created"], again["skipped"], again["thread_ids"]) == (0, 2, first["thread_ids"])
    assert len((await ok(await client.get("/v1/threads", headers=caller.headers)))["data"]) == 2
