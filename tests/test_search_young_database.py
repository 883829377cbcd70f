"""Search on a young database (never analyzed) costs what its matches cost, on SQLite and PostgreSQL (issue 14).

A database migrated a minute ago has no planner statistics: autovacuum has not analyzed it yet (or is off), and
nothing here runs ANALYZE. On PostgreSQL every statement the search request runs is executed again under
EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) and the rows its plan nodes examine are counted (rows returned plus
rows removed by filters, times loops): counts, not times. A plan that loops over all matches for every match,
or checks every message of the organization, or skips the full-text index, examines far more than the matches.
On SQLite, whose plans never had statistics, the plan goes through the FTS5 tables and scans no table.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from tests.conftest import make_caller, started_app
from threadline.config import Settings
from threadline.storage.engine import upgrade
from threadline.storage.tables import Message, Thread

WORD = "soakword"
MATCHING_THREADS = 12
PAGE = 20


@pytest.fixture
def young_url(empty_database_url: str) -> str:
    """A freshly migrated database nobody has analyzed (migrations run before the test's event loop)."""
    upgrade(empty_database_url)
    return empty_database_url


@pytest.fixture
async def young_app(young_url: str) -> AsyncIterator[FastAPI]:
    settings = Settings(database_url=young_url, local_model_enabled=False, retention_enabled=False)
    async for application in started_app(settings):
        yield application


def _thread_rows(org: str, ids: list[str], now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "organization_id": org, "id": thread_id, "metadata_": {}, "space_ids": [], "visible_in_ui": True,
            "kind": "thread", "state": "open", "status": "inactive", "is_pinned": False, "message_count": 0,
            "next_seq": 1, "created_at": now + timedelta(seconds=i), "updated_at": now, "last_message_at": now,
        }
        for i, thread_id in enumerate(ids)
    ]  # fmt: skip


class _Messages:
    """Writes messages the way a soak does: many small inserts, into threads that keep growing."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.next_seq: dict[tuple[str, str], int] = {}

    async def add(self, org: str, thread_ids: list[str], count: int, content: str) -> None:
        rows = []
        for i in range(count):
            thread_id = thread_ids[i % len(thread_ids)]
            seq = self.next_seq.get((org, thread_id), 1)
            self.next_seq[(org, thread_id)] = seq + 1
            rows.append(
                {
                    "organization_id": org, "id": f"msg_{org}_{thread_id}_{seq}", "thread_id": thread_id,
                    "seq": seq, "role": "user", "content": f"{content} {i}", "metadata_": {},
                    "created_at": datetime.now(UTC), "edit_count": 0,
                }
            )  # fmt: skip
        for start in range(0, len(rows), 50):
            async with self.app.state.engine.begin() as conn:
                await conn.execute(sa.insert(Message), rows[start : start + 50])


class _Recorder:
    def __init__(self) -> None:
        self.statements: list[tuple[str, Any]] = []

    def __call__(self, _conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        # WITH: a search through forks starts with its recursive CTE (storage/repositories/search.py).
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            self.statements.append((statement, parameters))


async def _search_statements(app: FastAPI, client: httpx.AsyncClient, headers: dict[str, str]) -> list[Any]:
    """Runs the search through the API; returns the SELECT statements it ran, after checking its answer."""
    recorder = _Recorder()
    sa.event.listen(app.state.engine.sync_engine, "before_cursor_execute", recorder)
    try:
        response = await client.get("/v1/threads/search", params={"q": WORD, "limit": PAGE}, headers=headers)
    finally:
        sa.event.remove(app.state.engine.sync_engine, "before_cursor_execute", recorder)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert len(data) == MATCHING_THREADS
    assert all(WORD in t["snippet"] and t["matched_message_id"] for t in data)
    return recorder.statements


def _examined(node: dict[str, Any]) -> int:
    """Rows a plan node and its children produced or threw away, over all their loops."""
    loops = node.get("Actual Loops", 1)
    own = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
    own += node.get("Rows Removed by Index Recheck", 0) + node.get("Rows Removed by Join Filter", 0)
    return int(own * loops) + sum(_examined(child) for child in node.get("Plans", []))


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node] + [n for child in node.get("Plans", []) for n in _nodes(child)]


async def _postgres_plans(app: FastAPI, statements: list[Any]) -> list[dict[str, Any]]:
    plans = []
    async with app.state.engine.connect() as conn:
        for statement, parameters in statements:
            result = await conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, parameters)
            plans.append({"statement": statement, "plan": result.scalar_one()[0]["Plan"]})
        await conn.rollback()
    return plans


async def _sqlite_plans(app: FastAPI, statements: list[Any]) -> list[str]:
    async with app.state.engine.connect() as conn:
        return [
            "\n".join(str(r[-1]) for r in (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + s, p)).all())
            for s, p in statements
        ]


async def test_search_on_a_young_database_costs_its_matches(young_app: FastAPI) -> None:
    app = young_app
    caller = await make_caller(app)
    other = await make_caller(app, org="globex", email="hank@globex.test")
    now = datetime.now(UTC) - timedelta(days=1)
    matching = [f"soak_{i}" for i in range(MATCHING_THREADS)]
    quiet = [f"quiet_{i}" for i in range(40)]
    async with app.state.engine.begin() as conn:
        await conn.execute(sa.insert(Thread), _thread_rows(caller.organization_id, quiet + matching, now))
        await conn.execute(sa.insert(Thread), _thread_rows(other.organization_id, matching, now))
    messages = _Messages(app)
    # Chatter the word is not in, in the same organization, and another organization's matches: neither may
    # be examined by the search.
    await messages.add(caller.organization_id, quiet + matching, 2000, "unrelated chatter about the weather")
    await messages.add(other.organization_id, matching, 1500, f"their own {WORD} talk")
    postgres = app.state.engine.dialect.name == "postgresql"
    if postgres:
        async with app.state.engine.connect() as conn:
            analyzed = (
                await conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_user_tables WHERE relname IN ('messages', 'threads') "
                    "AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)"
                )
            ).scalar_one()
        assert analyzed == 0, "the database must be young (never analyzed) for this test to mean anything"

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://threadline.test") as client:
        examined: dict[int, list[int]] = {}
        total = 0
        for matches in (100, 1000):
            await messages.add(caller.organization_id, matching, matches - total, f"a turn about {WORD} again")
            total = matches
            statements = await _search_statements(app, client, caller.headers)
            if not postgres:
                for plan in await _sqlite_plans(app, statements):
                    if "messages" in plan or "threads_fts" in plan:
                        assert "SCAN messages " not in plan and "SCAN threads " not in plan, plan
                assert any("messages_fts VIRTUAL TABLE" in p for p in await _sqlite_plans(app, statements))
                continue
            plans = await _postgres_plans(app, statements)
            examined[matches] = [_examined(p["plan"]) for p in plans]
            matching_statements = ["tsquery" in p["statement"] for p in plans]
            nodes = [n for p in plans for n in _nodes(p["plan"])]
            # The matching messages come from the full-text index. (A table as small as this test's `threads` may
            # be read whole for the title match: that is the cheap plan, and its rows are counted below.)
            assert "messages" not in [n.get("Relation Name") for n in nodes if n["Node Type"] == "Seq Scan"], plans
            assert "ix_messages_content_fts" in {n.get("Index Name") for n in nodes}, plans
            for p, count in zip(plans, examined[matches], strict=True):
                # The matching messages pass a few plan nodes each (index, heap, the recursive union that adds the
                # forks reading them, its scan, union, newest per thread); everything else is per thread on the
                # page. Checking every message of the organization (3,000+), or looping over the matches per match
                # (millions), is far above this.
                assert count <= 6 * matches + 20 * PAGE, (matches, count, p)
    if postgres:
        # Ten times the matches: the statement that matches examines at most ten times as much (no quadratic
        # growth); the others (credentials, the snippets' messages by key) examine exactly as much as before.
        for small, large, matching in zip(examined[100], examined[1000], matching_statements, strict=True):
            assert large <= 10 * small if matching else large == small, examined
