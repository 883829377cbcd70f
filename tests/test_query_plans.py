"""List pages and message pages are index range scans with no sort, on SQLite and PostgreSQL.

The statements are the ones the real API runs (captured from the engine), explained on the same database.
PostgreSQL's planner would pick a sequential scan on tables this small, so its plan is taken (after ANALYZE)
with sequential scans, bitmap scans and sorts disabled: what remains shows which index delivers the page in
order. `bench/threads_list.py` prints the same plans on 100,000 threads with the planner left alone.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Caller, make_caller
from threadline.domain.clock import utcnow
from threadline.ids import new_id
from threadline.storage.tables import Thread


class _Recorder:
    def __init__(self) -> None:
        self.statements: list[tuple[str, Any]] = []

    def __call__(self, _conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        self.statements.append((statement, parameters))

    def page_query(self, table: str) -> tuple[str, Any]:
        """The last keyset page query on `table` (SELECT … FROM table … ORDER BY … LIMIT)."""
        for statement, parameters in reversed(self.statements):
            flat = " ".join(statement.split())
            if flat.startswith("SELECT") and f"FROM {table}" in flat and "ORDER BY" in flat and "LIMIT" in flat:
                return statement, parameters
        raise AssertionError(f"no page query on {table} among {len(self.statements)} statements")


async def _plan(app: FastAPI, statement: str, parameters: Any) -> str:
    engine = app.state.engine
    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)).all()
            return "\n".join(str(r[-1]) for r in rows)
        await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        await conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
        await conn.exec_driver_sql("SET LOCAL enable_sort = off")
        rows = (await conn.exec_driver_sql("EXPLAIN " + statement, parameters)).all()
        await conn.rollback()
        return "\n".join(str(r[0]) for r in rows)


async def generic_plan(engine: AsyncEngine, statement: str, parameters: Any) -> str:
    """The plan of a captured statement as a long-lived server runs it: on PostgreSQL, the generic plan of a
    prepared statement (asyncpg prepares every statement, and PostgreSQL plans it for any value after five
    executions, so a bound value cannot choose a partial index), with sequential scans disabled (tiny test
    tables); on SQLite, EXPLAIN QUERY PLAN."""
    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)).all()
            await conn.rollback()
            return "\n".join(str(r[-1]) for r in rows)
        await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        await conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.exec_driver_sql("PREPARE explained AS " + statement)
        values = ", ".join(_sql_literal(v) for v in parameters)
        rows = (await conn.exec_driver_sql(f"EXPLAIN EXECUTE explained({values})")).all()
        await conn.exec_driver_sql("DEALLOCATE explained")
        await conn.rollback()
        return "\n".join(str(r[0]) for r in rows)


def _sql_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return "'" + text.replace("'", "''") + "'"


def _assert_range_scan(plan: str, dialect: str, index: str) -> None:
    if dialect == "sqlite":
        table, name = index.split(":")
        # SQLite names the index of a UNIQUE constraint declared inside CREATE TABLE itself.
        names = (name, f"sqlite_autoindex_{table}_2") if name.startswith("uq_") else (name,)
        assert any(f"SEARCH {table} USING INDEX {n} (" in plan for n in names), plan
        assert "<" in plan or ">" in plan, plan  # the cursor bounds the range
        assert "TEMP B-TREE" not in plan, plan
    else:
        assert (
            f"Index Scan using {index.split(':')[1]}" in plan
            or f"Index Scan Backward using {index.split(':')[1]}" in plan
        ), plan
        assert "Sort" not in plan and "Seq Scan" not in plan, plan
        # The cursor is part of the index condition (a range), not a filter applied row by row.
        assert "Index Cond" in plan and ("ROW(" in plan or "seq >" in plan or "seq <" in plan), plan


async def test_pages_are_index_range_scans(client: httpx.AsyncClient, app: FastAPI, caller: Caller) -> None:
    ids = [(await client.post("/v1/threads", json={}, headers=caller.headers)).json()["id"] for _ in range(5)]
    for i in range(5):
        await client.post(f"/v1/threads/{ids[0]}/messages", json={"content": f"m{i}"}, headers=caller.headers)
    messages = (await client.get(f"/v1/threads/{ids[0]}/messages", headers=caller.headers)).json()["data"]
    # Colleagues' threads (some hidden, some deleted) make the filters selective, as they are in real data.
    colleague = await make_caller(app, org=caller.organization_id, email="bob@acme.test")
    now = utcnow()
    rows = [
        {
            "organization_id": caller.organization_id,
            "id": new_id("thread"),
            "user_id": colleague.user_id,
            "metadata": {},
            "space_ids": [],
            "visible_in_ui": i % 3 != 0,
            "kind": "thread",
            "state": "open",
            "status": "inactive",
            "is_pinned": False,
            "message_count": 0,
            "next_seq": 1,
            "created_at": now - timedelta(seconds=i),
            "updated_at": now,
            "last_message_at": now,
            "deleted_at": now if i % 50 == 0 else None,
        }
        for i in range(2000)
    ]
    async with app.state.engine.begin() as conn:
        await conn.execute(sa.insert(Thread), rows)
    async with app.state.engine.begin() as conn:
        await conn.exec_driver_sql("ANALYZE")

    recorder = _Recorder()
    sa.event.listen(app.state.engine.sync_engine, "before_cursor_execute", recorder)
    dialect = app.state.engine.dialect.name
    cases = [
        ("/v1/threads", {"after": ids[3]}, "threads", "threads:ix_threads_organization_id_visible_in_ui_created_at_id"),
        (
            "/v1/threads",
            {"order": "asc", "before": ids[3]},
            "threads",
            "threads:ix_threads_organization_id_visible_in_ui_created_at_id",
        ),
        (
            "/v1/user/threads",
            {"after": ids[2]},
            "threads",
            "threads:ix_threads_organization_id_user_id_visible_in_ui_created_at_id",
        ),
        (
            f"/v1/threads/{ids[0]}/messages",
            {"after": messages[1]["id"]},
            "messages",
            "messages:uq_messages_organization_id_thread_id_seq",
        ),
        (
            f"/v1/threads/{ids[0]}/messages",
            {"order": "asc", "after": messages[1]["id"]},
            "messages",
            "messages:uq_messages_organization_id_thread_id_seq",
        ),
    ]
    try:
        for url, params, table, index in cases:
            recorder.statements.clear()
            response = await client.get(url, params=params, headers=caller.headers)
            assert response.status_code == 200, response.text
            assert response.json()["data"], (url, params)
            statement, parameters = recorder.page_query(table)
            _assert_range_scan(await _plan(app, statement, parameters), dialect, index)
    finally:
        sa.event.remove(app.state.engine.sync_engine, "before_cursor_execute", recorder)
