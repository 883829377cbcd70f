"""Compaction on the Freddy surface: `POST /v1/threads/{id}/compact` writes a summary with a real upstream process
(tests/upstream.py answers summary requests), later turns start from it, and the replaced messages stay
listed and searchable. A failed summary changes nothing. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import Caller, make_caller
from tests.helpers import refused
from tests.responses_helpers import thread_messages
from tests.servers import Upstream
from tests.tool_helpers import last_request_with

pytestmark = pytest.mark.slow


@pytest.fixture
async def client(tool_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=tool_app), base_url="http://t") as c:
        yield c


@pytest.fixture
async def caller(tool_app: FastAPI) -> Caller:
    return await make_caller(tool_app)


async def turn(client: httpx.AsyncClient, caller: Caller, thread: str, text: str, **extra: Any) -> dict[str, Any]:
    body = {"thread": thread, "inputs": [{"role": "user", "texts": [{"text": text}]}], "model": "plain-model", **extra}
    response = await client.post("/v1/model/response", json=body, headers=caller.headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_a_compacted_thread_continues_from_its_summary(
    client: httpx.AsyncClient, caller: Caller, tool_upstream_url: str
) -> None:
    await turn(client, caller, "facts", "The launch code is 4417.")
    await turn(client, caller, "facts", "Marta owns the budget.")

    compacted = await client.post("/v1/threads/facts/compact", json={}, headers=caller.headers)
    assert compacted.status_code == 200, compacted.text
    item = compacted.json()
    assert item["type"] == "compaction" and item["role"] == "system" and item["id"].startswith("cmp_")
    assert item["covers"] == [1, 4] and item["model"] == "plain-model"
    # The summary the model wrote (the test upstream keeps every line of the transcript).
    assert "4417" in item["content"] and "Marta owns the budget" in item["content"]
    assert item["token_count"] > 0

    answered = await turn(client, caller, "facts", "Who owns the budget?")
    sent = last_request_with(tool_upstream_url, "Who owns the budget?")
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert sent["messages"][0]["content"].startswith("Summary of the earlier conversation")
    assert "Marta" in sent["messages"][0]["content"]
    report = answered["context"]
    assert report["compaction"]["id"] == item["id"] and report["compaction"]["covers"] == [1, 4]
    assert report["messages_included"] == 0 and report["items_by_type"] == {"compaction": 1, "message": 1}

    # The replaced messages stay in the history: listed and searchable.
    listed = await thread_messages(client, caller, "facts")
    assert [m["type"] for m in listed] == ["message"] * 4 + ["compaction"] + ["message"] * 2
    found = await client.get("/v1/threads/search", params={"q": "launch code"}, headers=caller.headers)
    assert found.status_code == 200 and [t["id"] for t in found.json()["data"]] == ["facts"]

    # A second compaction summarises the first summary and what came after it, never the replaced messages again.
    before = len(Upstream(tool_upstream_url.removesuffix("/v1")).requests())
    again = await client.post("/v1/threads/facts/compact", headers=caller.headers)
    assert again.status_code == 200, again.text
    assert again.json()["covers"] == [1, 7]
    summary_request = Upstream(tool_upstream_url.removesuffix("/v1")).requests()[before:]
    (asked,) = [r for r in summary_request if r["messages"][-1]["content"].startswith("Summarise this conversation")]
    transcript = asked["messages"][-1]["content"]
    paragraphs = transcript.split("\n\n")
    assert paragraphs[1].startswith("Summary of what came before: Summary:")
    assert paragraphs[2:] == ["User: Who owns the budget?", "Assistant: echo: Who owns the budget?"]
    assert asked["max_tokens"] == 512  # the summary's token budget (THREADLINE_SUMMARY_MAX_TOKENS)


async def test_keep_tokens_leaves_the_newest_messages_after_the_summary(
    client: httpx.AsyncClient, caller: Caller, tool_upstream_url: str
) -> None:
    for text in ("alpha one", "beta two", "gamma three"):
        await turn(client, caller, "kept", text)
    compacted = await client.post("/v1/threads/kept/compact", json={"keepTokens": 20}, headers=caller.headers)
    assert compacted.status_code == 200, compacted.text
    covers = compacted.json()["covers"]
    assert covers[0] == 1 and 1 <= covers[1] < 6

    await turn(client, caller, "kept", "delta four")
    sent = last_request_with(tool_upstream_url, "delta four")
    roles = [m["role"] for m in sent["messages"]]
    assert roles[0] == "system" and roles[-1] == "user" and len(roles) > 2
    assert "gamma three" in sent["messages"][-3]["content"]  # the newest exchange, as it was said


async def test_a_failed_summary_leaves_the_thread_as_it_was(client: httpx.AsyncClient, caller: Caller) -> None:
    await turn(client, caller, "fragile", "[fail-summary] remember 12")
    before = await thread_messages(client, caller, "fragile")
    response = await client.post("/v1/threads/fragile/compact", headers=caller.headers)
    refused(response, 502, "upstream_error")
    assert await thread_messages(client, caller, "fragile") == before

    answered = await turn(client, caller, "fragile", "and now?")
    assert answered["context"]["compaction"] is None and answered["context"]["messages_included"] == 2


async def test_compaction_refusals(client: httpx.AsyncClient, caller: Caller) -> None:
    created = await client.post("/v1/threads", json={"id": "empty"}, headers=caller.headers)
    assert created.status_code == 200
    refused(await client.post("/v1/threads/empty/compact", headers=caller.headers), 400, "nothing_to_compact")
    refused(await client.post("/v1/threads/missing/compact", headers=caller.headers), 404, "thread_not_found")
    await turn(client, caller, "empty", "hello")
    response = await client.post("/v1/threads/empty/compact", json={"model": "nope"}, headers=caller.headers)
    refused(response, 404, "model_not_found", "model")
    response = await client.post("/v1/threads/empty/compact", json={"keepTokens": -1}, headers=caller.headers)
    assert response.status_code == 400
