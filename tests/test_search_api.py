"""GET /v1/threads/search through the full-text indexes, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import sqlalchemy as sa
from fastapi import FastAPI

from tests.conftest import Caller
from threadline.domain.search import parse_query, snippet
from threadline.storage.engine import create_sessionmaker
from threadline.storage.repositories.search import SearchRepository
from threadline.storage.repositories.threads import ThreadFilter
from threadline.storage.tables import Message, Thread


async def _thread(client: httpx.AsyncClient, caller: Caller, *texts: str, title: str | None = None) -> str:
    created = await client.post("/v1/threads", json={"title": title} if title else {}, headers=caller.headers)
    thread_id: str = created.json()["id"]
    for text in texts:
        response = await client.post(
            f"/v1/threads/{thread_id}/messages", json={"content": text}, headers=caller.headers
        )
        assert response.status_code == 200, response.text
    return thread_id


async def _search(client: httpx.AsyncClient, caller: Caller, query: str) -> dict[str, object]:
    response = await client.get(f"/v1/threads/search?{query}", headers=caller.headers)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def _ids(body: dict[str, object]) -> list[str]:
    data = body["data"]
    assert isinstance(data, list)
    return [t["id"] for t in data]


async def test_finds_threads_by_message_words_and_title(client: httpx.AsyncClient, caller: Caller) -> None:
    refund = await _thread(client, caller, "Hello there", "I want a refund for my invoice please")
    titled = await _thread(client, caller, "nothing relevant", title="Invoice dispute")
    await _thread(client, caller, "How do I reset my password?")

    body = await _search(client, caller, "q=invoice")
    assert body["object"] == "list"
    assert _ids(body) == [titled, refund]  # newest first, like the list
    data = body["data"]
    assert isinstance(data, list)
    by_id = {t["id"]: t for t in data}
    assert by_id[refund]["object"] == "thread"
    assert by_id[refund]["message_count"] == 2
    assert "invoice" in by_id[refund]["snippet"]
    matched = await client.get(
        f"/v1/threads/{refund}/messages/{by_id[refund]['matched_message_id']}", headers=caller.headers
    )
    assert matched.json()["content"] == "I want a refund for my invoice please"
    assert by_id[titled]["matched_message_id"] is None
    assert by_id[titled]["snippet"] == "Invoice dispute"

    # Every word must occur; words are prefixes; case does not matter.
    assert _ids(await _search(client, caller, "q=REFUND+invoice")) == [refund]
    assert _ids(await _search(client, caller, "q=refund+dispute")) == []
    assert _ids(await _search(client, caller, "q=passw")) != []
    assert _ids(await _search(client, caller, "q=invo")) == [titled, refund]


async def test_edits_and_deletes_follow(client: httpx.AsyncClient, caller: Caller) -> None:
    thread_id = await _thread(client, caller, "the quarterly report is late")
    messages = (await client.get(f"/v1/threads/{thread_id}/messages", headers=caller.headers)).json()["data"]
    message_id = messages[0]["id"]
    assert _ids(await _search(client, caller, "q=quarterly")) == [thread_id]

    await client.patch(
        f"/v1/threads/{thread_id}/messages/{message_id}", json={"content": "the annual report"}, headers=caller.headers
    )
    assert _ids(await _search(client, caller, "q=quarterly")) == []
    assert _ids(await _search(client, caller, "q=annual")) == [thread_id]

    # Renaming indexes the new title.
    await client.put(f"/v1/threads/{thread_id}/rename", json={"title": "Budget talk"}, headers=caller.headers)
    assert _ids(await _search(client, caller, "q=budget")) == [thread_id]

    # Deleted messages never match.
    await client.delete(f"/v1/threads/{thread_id}/messages/{message_id}", headers=caller.headers)
    assert _ids(await _search(client, caller, "q=annual")) == []

    # Deleted threads match only with include_deleted.
    await client.delete(f"/v1/threads/{thread_id}", headers=caller.headers)
    assert _ids(await _search(client, caller, "q=budget")) == []
    assert _ids(await _search(client, caller, "q=budget&include_deleted=true")) == [thread_id]


async def test_scoped_to_organization_and_visibility(
    client: httpx.AsyncClient, caller: Caller, other_caller: Caller
) -> None:
    mine = await _thread(client, caller, "secret launch plans")
    assert _ids(await _search(client, other_caller, "q=launch")) == []
    assert _ids(await _search(client, caller, "q=launch")) == [mine]
    # Hidden threads need visible_in_ui=false, like the list.
    login = await _login(client, caller)
    hidden = await client.post("/v1/threads", json={"visibleInUi": False, "title": "launch"}, headers=login)
    assert hidden.status_code == 200, hidden.text
    assert _ids(await _search(client, caller, "q=launch")) == [mine]
    assert _ids(await _search(client, caller, "q=launch&visibleInUi=false")) == [hidden.json()["id"]]


async def _login(client: httpx.AsyncClient, caller: Caller) -> dict[str, str]:
    """A user token for the caller (visible_in_ui needs one)."""
    from threadline.services import auth

    app: FastAPI = client._transport.app  # type: ignore[attr-defined]
    async with create_sessionmaker(app.state.engine)() as session:
        await auth.set_password(session, caller.organization_id, caller.email, "correct horse battery")
        await session.commit()
    token = await client.post("/v1/auth/token", json={"email": caller.email, "password": "correct horse battery"})
    assert token.status_code == 200, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


async def test_pagination_with_cursor(client: httpx.AsyncClient, caller: Caller) -> None:
    ids = [await _thread(client, caller, f"weekly sync number {i}") for i in range(5)]
    await _thread(client, caller, "unrelated")
    first = await _search(client, caller, "q=weekly+sync&limit=2")
    assert _ids(first) == [ids[4], ids[3]] and first["has_more"] is True
    second = await _search(client, caller, f"q=weekly+sync&limit=2&after={first['last_id']}")
    assert _ids(second) == [ids[2], ids[1]]
    third = await _search(client, caller, f"q=weekly+sync&limit=2&after={second['last_id']}")
    assert _ids(third) == [ids[0]] and third["has_more"] is False
    ascending = await _search(client, caller, "q=weekly&order=asc&limit=2")
    assert _ids(ascending) == [ids[0], ids[1]]


async def test_bad_queries_are_400(client: httpx.AsyncClient, caller: Caller) -> None:
    for query, code in (
        ("q=", "invalid_value"),
        ("q=%22%2A%28%29", "invalid_query"),
        ("", "missing_required_parameter"),
    ):
        response = await client.get(f"/v1/threads/search?{query}", headers=caller.headers)
        assert response.status_code == 400, (query, response.text)
        assert response.json()["error"]["code"] == code
    # FTS syntax in the query is taken literally, never as operators.
    await _thread(client, caller, "NEAR the OR gate")
    assert len(_ids(await _search(client, caller, "q=near+OR+%22gate%22*"))) == 1


async def test_search_route_is_not_a_thread_id(client: httpx.AsyncClient, caller: Caller) -> None:
    response = await client.get("/v1/threads/search?q=x", headers=caller.headers)
    assert response.status_code == 200
    assert response.json()["data"] == []


async def test_plan_uses_the_full_text_index(app: FastAPI, caller: Caller) -> None:
    """EXPLAIN the search over a realistic organization: the full-text index answers, no table is scanned."""
    org = caller.organization_id
    now = datetime.now(UTC)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    threads = [
        {
            "organization_id": org,
            "id": f"t{i}",
            "title": f"{words[i % 8]} chat {i}",
            "metadata_": {},
            "space_ids": [],
            "visible_in_ui": True,
            "kind": "thread",
            "state": "open",
            "status": "inactive",
            "is_pinned": False,
            "message_count": 10,
            "next_seq": 11,
            "created_at": now,
            "updated_at": now,
            "last_message_at": now,
        }
        for i in range(300)
    ]
    messages = [
        {
            "organization_id": org,
            "id": f"m{i}",
            "thread_id": f"t{i // 10}",
            "seq": i % 10 + 1,
            "role": "user",
            "content": f"{words[i % 8]} {words[(i // 8) % 8]} message number {i}",
            "metadata_": {},
            "created_at": now,
            "edit_count": 0,
        }
        for i in range(3000)
    ]
    async with create_sessionmaker(app.state.engine)() as session:
        await session.execute(sa.insert(Thread), threads)
        await session.execute(sa.insert(Message), messages)
        if session.get_bind().dialect.name == "postgresql":
            await session.execute(sa.text("ANALYZE threads"))
            await session.execute(sa.text("ANALYZE messages"))
        await session.commit()
        if session.get_bind().dialect.name == "postgresql":
            # At this size reading the table whole is cheapest; forbid it to see what serves the match.
            await session.execute(sa.text("SET LOCAL enable_seqscan = off"))
        plan = await SearchRepository(session).explain(ThreadFilter(organization_id=org), parse_query("invoice"))
        await session.rollback()
    if app.state.engine.dialect.name == "sqlite":
        assert "messages_fts VIRTUAL TABLE" in plan, plan
        assert "threads_fts VIRTUAL TABLE" in plan, plan
        assert "SCAN messages " not in plan and "SCAN threads " not in plan, plan
        # Messages and titled threads are reached from the hits by rowid, never by walking the organization.
        assert "SEARCH messages USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
        assert "SEARCH titled USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
        assert "ix_threads_organization_id_created_at_id" not in plan, plan
    else:
        assert "ix_messages_content_fts" in plan, plan
        assert "ix_threads_title_fts" in plan, plan
        assert "Seq Scan" not in plan, plan


def test_snippet_cuts_around_the_first_match() -> None:
    text = "word " * 100 + "the invoice is here " + "tail " * 100
    cut = snippet(text, ["invoice"], width=60)
    assert "invoice" in cut and cut.startswith("…") and cut.endswith("…")
    assert len(cut) <= 62
    assert snippet("short text", ["zzz"]) == "short text"
    assert parse_query("Hello, wörld_2 hello") == ["hello", "wörld", "2"]


async def test_index_follows_edits_and_purges(app: FastAPI, client: httpx.AsyncClient, caller: Caller) -> None:
    """Rows the sweeper purges leave the index too, and the SQLite index stays consistent with its table."""
    from threadline.services import retention

    keep = await _thread(client, caller, "keep this kiwi", title="fruit basket")
    purge = await _thread(client, caller, "purge this kiwi", title="fruit salad")
    await client.patch(f"/v1/threads/{purge}", json={"title": "fruit punch"}, headers=caller.headers)
    await client.delete(f"/v1/threads/{purge}", headers=caller.headers)
    maker = app.state.sessionmaker
    async with maker() as session:
        await session.execute(
            sa.update(Thread).where(Thread.id == purge).values(deleted_at=datetime.now(UTC) - timedelta(days=60))
        )
        await session.commit()
    assert set(_ids(await _search(client, caller, "q=kiwi&include_deleted=true"))) == {keep, purge}
    report = await retention.sweep(maker, app.state.settings)
    assert report.counts["deleted_threads"] == 1
    assert _ids(await _search(client, caller, "q=kiwi&include_deleted=true")) == [keep]
    assert _ids(await _search(client, caller, "q=fruit&include_deleted=true")) == [keep]
    if app.state.engine.dialect.name == "sqlite":
        async with maker() as session:
            for table in ("messages_fts", "threads_fts"):
                # Raises "database disk image is malformed" if the index and its table disagree.
                await session.execute(sa.text(f"INSERT INTO {table}({table}, rank) VALUES ('integrity-check', 1)"))
            await session.commit()
