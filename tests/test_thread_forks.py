"""Forks (docs/threads-as-data.md) on SQLite and PostgreSQL: nothing copied, the whole history on every surface,
a fork of a fork, the source read as it is now, and the fork's own copy once the source is deleted or purged."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import Caller
from tests.helpers import refused
from tests.responses_helpers import prefill, turn
from tests.test_response_chains import count_rows, thread_row
from threadline.config import Settings
from threadline.domain.clock import utcnow
from threadline.providers.fake import FakeProvider
from threadline.services import retention
from threadline.storage.tables import Message, Thread

pytestmark = pytest.mark.fake_model(context_window=100_000)

ASSISTANTS = {"OpenAI-Beta": "assistants=v2"}


@pytest.fixture
def maker(app: FastAPI) -> async_sessionmaker[AsyncSession]:
    result: async_sessionmaker[AsyncSession] = app.state.sessionmaker
    return result


async def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def thread_with(client: httpx.AsyncClient, caller: Caller, *texts: str, **body: Any) -> str:
    thread = await ok(await client.post("/v1/threads", json=body, headers=caller.headers))
    for text in texts:
        await ok(
            await client.post(f"/v1/threads/{thread['id']}/messages", json={"content": text}, headers=caller.headers)
        )
    return str(thread["id"])


async def fork(client: httpx.AsyncClient, caller: Caller, thread_id: str, **body: Any) -> dict[str, Any]:
    return await ok(await client.post(f"/v1/threads/{thread_id}/fork", json=body, headers=caller.headers))


async def history(
    client: httpx.AsyncClient, caller: Caller, thread_id: str, *, order: str = "asc", limit: int = 100
) -> list[dict[str, Any]]:
    """Every message, read in pages of `limit` with `after` cursors."""
    out: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"order": order, "limit": limit, **({"after": after} if after else {})}
        page = await ok(await client.get(f"/v1/threads/{thread_id}/messages", params=params, headers=caller.headers))
        out += page["data"]
        if not page["has_more"]:
            return out
        after = page["last_id"]


def texts(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages]


async def test_a_fork_copies_nothing_and_every_surface_reads_its_whole_history(
    client: httpx.AsyncClient, caller: Caller, maker: async_sessionmaker[AsyncSession]
) -> None:
    source = await thread_with(client, caller, "a", "b", "c", "d", title="Trip")
    source_messages = await history(client, caller, source)
    forked = await fork(client, caller, source, message_id=source_messages[2]["id"], metadata={"why": "try"})
    assert forked["id"] != source and forked["title"] == "Trip" and forked["metadata"] == {"why": "try"}
    assert forked["message_count"] == 3 and forked["state"] == "open"
    assert await count_rows(maker, Message) == 4  # one thread row, no message copied

    await ok(await client.post(f"/v1/threads/{forked['id']}/messages", json={"content": "x"}, headers=caller.headers))
    await ok(await client.post(f"/v1/threads/{forked['id']}/messages", json={"content": "y"}, headers=caller.headers))
    assert texts(await history(client, caller, forked["id"])) == ["a", "b", "c", "x", "y"]
    # Keyset pages in both orders, two at a time, across the fork point.
    assert texts(await history(client, caller, forked["id"], limit=2)) == ["a", "b", "c", "x", "y"]
    assert texts(await history(client, caller, forked["id"], order="desc", limit=2)) == ["y", "x", "c", "b", "a"]
    before = await ok(
        await client.get(
            f"/v1/threads/{forked['id']}/messages",
            params={"order": "asc", "before": (await history(client, caller, forked["id"]))[3]["id"], "limit": 2},
            headers=caller.headers,
        )
    )
    assert texts(before["data"]) == ["b", "c"] and before["has_more"] is True
    assert (await ok(await client.get(f"/v1/threads/{forked['id']}", headers=caller.headers)))["message_count"] == 5
    # The source is unchanged.
    assert texts(await history(client, caller, source)) == ["a", "b", "c", "d"]
    inherited = source_messages[0]["id"]
    one = await ok(await client.get(f"/v1/threads/{forked['id']}/messages/{inherited}", headers=caller.headers))
    assert one["content"] == "a"
    # The source's item after the fork point is not the fork's.
    after_point = await client.get(
        f"/v1/threads/{forked['id']}/messages/{source_messages[3]['id']}", headers=caller.headers
    )
    refused(after_point, 404, "message_not_found")

    # Assistants v2 and Conversations see the same history.
    v2 = await ok(
        await client.get(
            f"/v1/threads/{forked['id']}/messages", params={"order": "asc"}, headers={**caller.headers, **ASSISTANTS}
        )
    )
    assert [m["content"][0]["text"]["value"] for m in v2["data"]] == ["a", "b", "c", "x", "y"]
    items = await ok(
        await client.get(f"/v1/conversations/{forked['id']}/items", params={"order": "asc"}, headers=caller.headers)
    )
    assert [i["content"][0]["text"] for i in items["data"]] == ["a", "b", "c", "x", "y"]


async def test_a_turn_on_a_fork_of_a_fork_sees_the_whole_path(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider, maker: async_sessionmaker[AsyncSession]
) -> None:
    await ok(await turn(client, caller, "one", thread="t_root"))
    await ok(await turn(client, caller, "two", thread="t_root"))
    first = await fork(client, caller, "t_root")
    await ok(await turn(client, caller, "three", thread=first["id"]))
    second = await fork(client, caller, first["id"])
    assert second["message_count"] == 6
    answer = await ok(await turn(client, caller, "four", thread=second["id"]))
    assert [m.content for m in fake.calls[-1]] == [
        "one",
        "echo: one",
        "two",
        "echo: two",
        "three",
        "echo: three",
        "four",
    ]
    assert answer["context"]["messages_included"] == 6
    for mode in ("full", "smart"):
        again = await ok(await turn(client, caller, mode, thread=second["id"], threadContextMode=mode))
        assert [m.content for m in fake.calls[-1]][:2] == ["one", "echo: one"], again
    row = await thread_row(maker, second["id"])
    assert (row.parent_thread_id, row.parent_seq, row.message_count, row.inherited_message_count) == (
        first["id"],
        6,
        6,
        6,
    )
    assert texts(await history(client, caller, second["id"]))[:7] == [
        "one",
        "echo: one",
        "two",
        "echo: two",
        "three",
        "echo: three",
        "four",
    ]


async def test_the_fork_reads_the_source_as_it_is_now(client: httpx.AsyncClient, caller: Caller) -> None:
    source = await thread_with(client, caller, "a", "b", "c")
    messages = await history(client, caller, source)
    forked = await fork(client, caller, source)
    grandchild = await fork(client, caller, forked["id"])
    edited = await client.patch(
        f"/v1/threads/{source}/messages/{messages[0]['id']}", json={"content": "A"}, headers=caller.headers
    )
    await ok(edited)
    await ok(await client.delete(f"/v1/threads/{source}/messages/{messages[1]['id']}", headers=caller.headers))
    await ok(await client.post(f"/v1/threads/{source}/messages", json={"content": "later"}, headers=caller.headers))
    for thread_id in (forked["id"], grandchild["id"]):
        assert texts(await history(client, caller, thread_id)) == ["A", "c"]
        thread = await ok(await client.get(f"/v1/threads/{thread_id}", headers=caller.headers))
        assert thread["message_count"] == 2
    # Changing an item through the fork would change the source: refused, with the source named.
    for attempt in (
        client.patch(
            f"/v1/threads/{forked['id']}/messages/{messages[0]['id']}", json={"content": "no"}, headers=caller.headers
        ),
        client.delete(f"/v1/threads/{forked['id']}/messages/{messages[0]['id']}", headers=caller.headers),
    ):
        error = refused(await attempt, 409, "message_inherited", "message_id")
        assert source in error["message"]
    # Deleting all of a fork's messages empties its history (and its forks'); the source keeps its items.
    other = await fork(client, caller, source)
    await ok(await client.post(f"/v1/threads/{other['id']}/messages", json={"content": "mine"}, headers=caller.headers))
    other_child = await fork(client, caller, other["id"])
    assert other_child["message_count"] == 4
    await ok(await client.delete(f"/v1/threads/{other['id']}/messages", headers=caller.headers))
    for thread_id in (other["id"], other_child["id"]):
        assert await history(client, caller, thread_id) == []
        assert (await ok(await client.get(f"/v1/threads/{thread_id}", headers=caller.headers)))["message_count"] == 0
    assert texts(await history(client, caller, source)) == ["A", "c", "later"]
    # Deleting all of the source's messages empties what the forks read from it.
    await ok(await client.delete(f"/v1/threads/{source}/messages", headers=caller.headers))
    assert (await ok(await client.get(f"/v1/threads/{grandchild['id']}", headers=caller.headers)))["message_count"] == 0
    assert await history(client, caller, grandchild["id"]) == []


async def test_locked_and_archived_threads_fork_and_bad_forks_are_refused(
    client: httpx.AsyncClient, caller: Caller, other_caller: Caller
) -> None:
    locked = await thread_with(client, caller, "l1")
    archived = await thread_with(client, caller, "a1")
    await ok(await client.patch(f"/v1/threads/{locked}", json={"state": "locked"}, headers=caller.headers))
    await ok(await client.patch(f"/v1/threads/{archived}", json={"state": "archived"}, headers=caller.headers))
    for source, text in ((locked, "l1"), (archived, "a1")):
        forked = await fork(client, caller, source, title="Again")
        assert forked["state"] == "open" and forked["title"] == "Again"
        await ok(
            await client.post(f"/v1/threads/{forked['id']}/messages", json={"content": "more"}, headers=caller.headers)
        )
        assert texts(await history(client, caller, forked["id"])) == [text, "more"]
    empty = await fork(client, caller, await thread_with(client, caller))
    assert empty["message_count"] == 0

    other_message = (await history(client, caller, archived))[0]["id"]
    refused(
        await client.post(f"/v1/threads/{locked}/fork", json={"message_id": other_message}, headers=caller.headers),
        404,
        "message_not_found",
    )
    refused(await client.post(f"/v1/threads/{locked}/fork", headers=other_caller.headers), 404, "thread_not_found")
    refused(await client.post("/v1/threads/nope/fork", headers=caller.headers), 404, "thread_not_found")
    hidden = await client.post(f"/v1/threads/{locked}/fork", json={"visible_in_ui": False}, headers=caller.headers)
    refused(hidden, 403, "user_token_required")


async def test_deleting_the_source_leaves_the_fork_its_own_copy(
    client: httpx.AsyncClient, caller: Caller, maker: async_sessionmaker[AsyncSession]
) -> None:
    root = await thread_with(client, caller, "r1", "r2")
    middle = await fork(client, caller, root)
    for text in ("m1", "m2"):
        await ok(
            await client.post(f"/v1/threads/{middle['id']}/messages", json={"content": text}, headers=caller.headers)
        )
    edit_target = (await history(client, caller, middle["id"]))[2]["id"]
    await ok(
        await client.patch(
            f"/v1/threads/{middle['id']}/messages/{edit_target}", json={"content": "M1"}, headers=caller.headers
        )
    )
    leaf = await fork(client, caller, middle["id"])
    await ok(await client.post(f"/v1/threads/{leaf['id']}/messages", json={"content": "l1"}, headers=caller.headers))
    expected = ["r1", "r2", "M1", "m2", "l1"]

    await ok(await client.delete(f"/v1/threads/{middle['id']}", headers=caller.headers))
    assert texts(await history(client, caller, leaf["id"])) == expected
    row = await thread_row(maker, leaf["id"])
    # Its own copy of the middle's items, and the root still read in place.
    assert (row.parent_thread_id, row.parent_seq, row.message_count, row.inherited_message_count) == (root, 2, 3, 2)
    copied = (await history(client, caller, leaf["id"]))[2]
    assert copied["id"] != edit_target
    edits = await ok(
        await client.get(f"/v1/threads/{leaf['id']}/messages/{copied['id']}/edits", headers=caller.headers)
    )
    assert [e["previous_content"] for e in edits["data"]] == ["m1"]

    await ok(await client.delete(f"/v1/threads/{root}", headers=caller.headers))
    assert texts(await history(client, caller, leaf["id"])) == expected
    row = await thread_row(maker, leaf["id"])
    assert (row.parent_thread_id, row.parent_seq, row.message_count, row.inherited_message_count) == (None, None, 5, 0)
    assert (await ok(await client.get(f"/v1/threads/{leaf['id']}", headers=caller.headers)))["message_count"] == 5


async def test_the_sweeper_copies_a_purged_source_into_its_forks_first(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI, settings: Settings, maker: async_sessionmaker[AsyncSession]
) -> None:
    old = await thread_with(client, caller)
    await prefill(app, caller, old, 50)
    forked = await fork(client, caller, old)
    await ok(await client.post(f"/v1/threads/{forked['id']}/messages", json={"content": "new"}, headers=caller.headers))
    # The source outlived the maximum age; the fork is young.
    async with maker() as session:
        await session.execute(
            sa.update(Thread).where(Thread.id == old).values(created_at=utcnow() - timedelta(days=10_000))
        )
        await session.commit()
    report = await retention.sweep(maker, settings)
    assert report.counts["expired_threads"] == 1
    assert await count_rows(maker, Thread, id=old) == 0
    messages = await history(client, caller, forked["id"], limit=20)
    assert texts(messages) == [f"m{seq}" for seq in range(1, 51)] + ["new"]
    row = await thread_row(maker, forked["id"])
    assert (row.parent_thread_id, row.message_count, row.inherited_message_count) == (None, 51, 0)


async def test_search_finds_a_fork_by_what_it_reads_from_its_source(client: httpx.AsyncClient, caller: Caller) -> None:
    source = await thread_with(client, caller, "the kiwi harvest", "more about apples", title="Fruit")
    messages = await history(client, caller, source)
    forked = await fork(client, caller, source, message_id=messages[0]["id"], title="Branch")
    grandchild = await fork(client, caller, forked["id"], title="Twig")
    await ok(
        await client.post(f"/v1/threads/{forked['id']}/messages", json={"content": "own mango"}, headers=caller.headers)
    )

    async def found(word: str) -> dict[str, str | None]:
        page = await ok(await client.get("/v1/threads/search", params={"q": word}, headers=caller.headers))
        return {t["id"]: t["matched_message_id"] for t in page["data"]}

    # Inherited by the fork and, through it, by the fork of the fork; the hit names the source's message.
    assert await found("kiwi") == {
        source: messages[0]["id"],
        forked["id"]: messages[0]["id"],
        grandchild["id"]: messages[0]["id"],
    }
    # After the fork point: the source's alone.
    assert await found("apples") == {source: messages[1]["id"]}
    # The fork's own item is not the source's (the grandchild forked before it).
    assert list(await found("mango")) == [forked["id"]]
    # A deleted source item leaves every reader's results.
    await ok(await client.delete(f"/v1/threads/{source}/messages/{messages[0]['id']}", headers=caller.headers))
    assert await found("kiwi") == {}
