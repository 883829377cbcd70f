"""Which database failures count as "the database is away" (a retryable 503 `database_unavailable`) and which
do not (a bug: 500), from real failures on SQLite and PostgreSQL; and recovery after PostgreSQL drops the pooled
connections (as it does when it restarts)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy import exc as sa_exc

from tests.conftest import POSTGRES_ADMIN_URL, make_caller, started_app
from tests.helpers import refused
from threadline.config import Settings
from threadline.storage.engine import create_engine, is_unavailable


async def _terminate_backends(database: str, *, pid: int | None = None) -> int:
    """End server processes of `database` from outside (pg_terminate_backend), as a restart would."""
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid() AND ($2::int IS NULL OR pid = $2)",
            database,
            pid,
        )
    finally:
        await conn.close()
    return len(rows)


async def test_a_connection_the_server_ended_is_unavailable(postgresql_url: str) -> None:
    engine = create_engine(postgresql_url)
    try:
        async with engine.connect() as conn:
            pid = (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
            assert await _terminate_backends(sa.make_url(postgresql_url).database or "", pid=pid) == 1
            with pytest.raises(sa_exc.DBAPIError) as raised:
                await conn.execute(sa.text("SELECT 1"))
        assert is_unavailable(raised.value)
    finally:
        await engine.dispose()


async def test_a_connection_lost_under_a_driver_statement_is_unavailable_and_invalidated(
    postgresql_url: str,
) -> None:
    """storage/driver.py runs a turn's statements on asyncpg itself: a lost connection still reaches SQLAlchemy's
    handling (the same error, the connection invalidated, not handed out again)."""
    from threadline.storage import driver
    from threadline.storage.engine import create_sessionmaker
    from threadline.storage.repositories.identity import _API_KEY_GRANT

    engine = create_engine(postgresql_url)
    try:
        async with create_sessionmaker(engine)() as session:
            pid = (await session.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
            assert await _terminate_backends(sa.make_url(postgresql_url).database or "", pid=pid) == 1
            with pytest.raises(sa_exc.DBAPIError) as raised:
                await driver.rows(session, _API_KEY_GRANT, {"p_key_hash": "x"})
            assert raised.value.connection_invalidated and is_unavailable(raised.value)
        async with create_sessionmaker(engine)() as session:  # the pool lends a live connection next
            assert await driver.rows(session, _API_KEY_GRANT, {"p_key_hash": "x"}) == []
    finally:
        await engine.dispose()


async def test_a_wrong_statement_is_not_unavailable(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            with pytest.raises(sa_exc.DBAPIError) as raised:
                await conn.execute(sa.text("SELECT * FROM no_such_table"))
        assert not is_unavailable(raised.value)
    finally:
        await engine.dispose()


@pytest.fixture
async def postgresql_app(postgresql_url: str) -> AsyncIterator[FastAPI]:
    settings = Settings(database_url=postgresql_url, local_model_enabled=False, retention_enabled=False)
    async for app in started_app(settings):
        yield app


async def test_requests_recover_after_postgresql_drops_every_connection(
    postgresql_app: FastAPI, postgresql_url: str
) -> None:
    caller = await make_caller(postgresql_app)
    transport = httpx.ASGITransport(app=postgresql_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://threadline.test") as client:
        created = await client.post("/v1/threads", json={"title": "before"}, headers=caller.headers)
        assert created.status_code == 200, created.text
        assert await _terminate_backends(sa.make_url(postgresql_url).database or "") >= 1
        # The pool finds its connections dead when it hands them out (pre-ping) and opens new ones.
        listed = await client.get("/v1/threads", headers=caller.headers)
        assert listed.status_code == 200, listed.text
        assert [t["id"] for t in listed.json()["data"]] == [created.json()["id"]]


async def test_a_sqlite_write_lock_held_past_the_wait_is_a_retryable_503(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every SQLite transaction takes the write lock at BEGIN (storage/sqlite.py): while another process holds it,
    a request waits for it, and past the wait it is told to retry; once the lock is free, requests pass again."""
    from threadline.storage import sqlite

    settings = Settings(database_url=sqlite_url, local_model_enabled=False, retention_enabled=False)
    async for app in started_app(settings):
        caller = await make_caller(app)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://threadline.test") as client:
            monkeypatch.setattr(sqlite, "LOCK_WAIT_SECONDS", 0.05)
            holder = sqlite3.connect(sa.make_url(sqlite_url).database or "", timeout=0, isolation_level=None)
            try:
                holder.execute("BEGIN IMMEDIATE")
                refused(await client.post("/v1/threads", json={}, headers=caller.headers), 503, "database_unavailable")
                holder.execute("ROLLBACK")
            finally:
                holder.close()
            created = await client.post("/v1/threads", json={}, headers=caller.headers)
            assert created.status_code == 200, created.text
