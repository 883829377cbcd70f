"""`storage.engine.Listener` on PostgreSQL: a connection of its own, never more than one, and none after `close()`.

A connection lost by the listener stays open until the garbage collector finds it, then warns (ResourceWarning)
in whichever test is running: these tests count the listening backends instead."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import sqlalchemy as sa

from tests.conftest import POSTGRES_ADMIN_URL
from threadline.storage.engine import Listener, create_engine


async def _listening(database: str, channel: str) -> int:
    """Backends of `database` whose last statement was the LISTEN of `channel`."""
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE $2",
            database,
            f'LISTEN "{channel}"%',
        )
    finally:
        await conn.close()
    return count


@pytest.fixture
async def listener(postgresql_url: str) -> AsyncIterator[Listener]:
    engine = create_engine(postgresql_url)
    # A channel of the test's own: no other test's listening backend is counted.
    listener = Listener(engine, f"listener_test_{uuid.uuid4().hex[:8]}", lambda _payload: None)
    try:
        yield listener
    finally:
        await listener.close()
        await engine.dispose()


async def test_callers_ensuring_at_once_share_one_connection(listener: Listener, postgresql_url: str) -> None:
    database = sa.make_url(postgresql_url).database or ""
    assert await asyncio.gather(*(listener.ensure() for _ in range(5))) == [True] * 5
    assert await _listening(database, listener.channel) == 1


async def test_a_close_while_connecting_leaves_no_connection(listener: Listener, postgresql_url: str) -> None:
    database = sa.make_url(postgresql_url).database or ""
    connecting = asyncio.create_task(listener.ensure())
    await asyncio.sleep(0)  # the task is in asyncpg.connect
    await listener.close()
    assert await connecting is False
    assert not listener.active
    assert await listener.ensure() is False  # closed for good
    assert await _listening(database, listener.channel) == 0  # it never listened: closed before it could
