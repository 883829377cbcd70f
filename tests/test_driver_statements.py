"""Hot statements on the driver connection (storage/driver.py): the same rows and errors as through SQLAlchemy's
execution, inside the session's transaction, on both backends; SQLAlchemy's own path while anyone listens."""

from __future__ import annotations

import asyncio
import gc
import json
import random
import weakref
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.dialects.sqlite
from fastapi import FastAPI
from sqlalchemy import exc as sa_exc

from tests.conftest import Caller
from tests.responses_helpers import turn
from threadline.storage import driver
from threadline.storage.engine import json_column_text
from threadline.storage.repositories.threads import _acquire
from threadline.storage.statements import constant, param
from threadline.storage.tables import Message, Thread, UTCDateTime, core_table

pytestmark = pytest.mark.fake_model()

_threads, _messages = core_table(Thread), core_table(Message)

# JSON (an object, an array, SQL NULL), timestamps, booleans from EXISTS, an integer expression, a NULL column.
_PROBE = sa.select(
    _threads.c.id,
    _threads.c["metadata"],
    _threads.c.space_ids,
    _threads.c.created_at,
    _threads.c.pinned_at,
    _threads.c.visible_in_ui,
    _threads.c.next_seq - param("less", sa.Integer()),
    sa.exists().where(_messages.c.thread_id == _threads.c.id, _messages.c.role == constant("user")),
    sa.select(_messages.c.payload).where(_messages.c.thread_id == _threads.c.id).limit(1).scalar_subquery(),
).where(_threads.c.organization_id == param("organization_id"), _threads.c.created_at >= param("since", UTCDateTime()))

_SET_TITLE = (
    sa.update(_threads)
    .where(_threads.c.organization_id == param("organization_id"), _threads.c.id == param("thread_id"))
    .values(title=param("title"))
    .returning(_threads.c.title, _threads.c.updated_at)
)

# Moving a thread to an organization that does not exist breaks its foreign key.
_MOVE = (
    sa.update(_threads)
    .where(_threads.c.organization_id == param("organization_id"), _threads.c.id == param("thread_id"))
    .values(organization_id=param("to"))
)


async def _thread_with_a_turn(client: Any, caller: Caller, metadata: dict[str, Any]) -> str:
    created = await client.post("/v1/threads", json={"metadata": metadata}, headers=caller.headers)
    assert created.status_code == 200, created.text
    thread_id: str = created.json()["id"]
    answered = await turn(client, caller, "hello", thread=thread_id)
    assert answered.status_code == 200, answered.text
    return thread_id


async def test_rows_read_the_same_as_through_sqlalchemy(app: FastAPI, client: Any, caller: Caller) -> None:
    thread_id = await _thread_with_a_turn(client, caller, {"k": "v", "n": "1"})
    values = {"p_organization_id": caller.organization_id, "p_since": datetime(2000, 1, 1, tzinfo=UTC), "p_less": 1}
    # Nobody listens to the cursor events, so `driver.rows` runs on the driver (listeners get SQLAlchemy's path).
    assert not app.state.engine.sync_engine.dispatch.before_cursor_execute
    async with app.state.sessionmaker() as session:
        direct = await driver.rows(session, _PROBE, values)
        through = [tuple(row) for row in (await session.execute(_PROBE, values)).all()]
    assert direct == through
    (row,) = direct
    assert row[0] == thread_id and row[1] == {"k": "v", "n": "1"} and row[2] == []
    assert isinstance(row[3], datetime) and row[3].tzinfo is not None and row[4] is None
    assert row[5] is True and row[6] == 2 and row[7] is True


_SET_METADATA = (
    sa.update(_threads)
    .where(_threads.c.organization_id == param("organization_id"), _threads.c.id == param("thread_id"))
    .values(metadata=param("metadata", _threads.c["metadata"].type))
    .returning(_threads.c["metadata"])
)


async def test_json_columns_keep_what_orjson_cannot_write(app: FastAPI, client: Any, caller: Caller) -> None:
    """JSON columns are written by orjson (storage/engine.py); what it refuses, an integer past 64 bits, goes through
    json, and they are read back by json (orjson would read such an integer as a float): the value reads back the
    same, on the driver and through SQLAlchemy."""
    thread_id = await _thread_with_a_turn(client, caller, {})
    key = {"p_organization_id": caller.organization_id, "p_thread_id": thread_id}
    value = {"big": 2**70, "small": -(10**30), "text": 'é ü 漢字 "\\', "list": [1.5, None, True]}
    async with app.state.sessionmaker() as session:
        assert await driver.first(session, _SET_METADATA, {**key, "p_metadata": value}) == (value,)
        await session.commit()
    async with app.state.sessionmaker() as session:
        read = (await session.execute(sa.select(_threads.c["metadata"]).where(_threads.c.id == thread_id))).scalar()
    assert read == value
    assert json.loads(json_column_text(value)) == value
    assert json.loads(json_column_text({"é": [1, 2]})) == {"é": [1, 2]}


async def test_an_update_runs_inside_the_sessions_transaction(app: FastAPI, client: Any, caller: Caller) -> None:
    thread_id = await _thread_with_a_turn(client, caller, {})
    key = {"p_organization_id": caller.organization_id, "p_thread_id": thread_id}
    async with app.state.sessionmaker() as session:
        assert await driver.first(session, _SET_TITLE, {**key, "p_title": "rolled back"}) is not None
        await session.rollback()
    assert (await client.get(f"/v1/threads/{thread_id}", headers=caller.headers)).json()["title"] is None
    async with app.state.sessionmaker() as session:
        found = await driver.first(session, _SET_TITLE, {**key, "p_title": "committed"})
        await session.commit()
    assert found is not None and found[0] == "committed" and isinstance(found[1], datetime)
    read = await client.get(f"/v1/threads/{thread_id}", headers=caller.headers)
    assert read.json()["title"] == "committed"


async def test_a_driver_error_is_sqlalchemys_and_the_session_recovers(
    app: FastAPI, client: Any, caller: Caller
) -> None:
    thread_id = await _thread_with_a_turn(client, caller, {})
    key = {"p_organization_id": caller.organization_id, "p_thread_id": thread_id}
    async with app.state.sessionmaker() as session:
        with pytest.raises(sa_exc.IntegrityError):
            await driver.rows(session, _MOVE, {**key, "p_to": "org_that_does_not_exist"})
        await session.rollback()
        leased = await driver.first(
            session,
            _acquire(False),
            {**key, "p_owner": "resp_test", "p_expires_at": datetime(2100, 1, 1, tzinfo=UTC)},
        )
        await session.rollback()
    assert leased is not None and leased[1] == thread_id


async def test_listeners_hear_each_statement(app: FastAPI, client: Any, caller: Caller) -> None:
    thread_id = await _thread_with_a_turn(client, caller, {})
    heard: list[tuple[str, Any]] = []

    def hear(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        heard.append((statement, parameters))

    values = {"p_organization_id": caller.organization_id, "p_thread_id": thread_id, "p_title": "t"}
    sa.event.listen(app.state.engine.sync_engine, "before_cursor_execute", hear)
    try:
        async with app.state.sessionmaker() as session:
            await driver.rows(session, _SET_TITLE, values)
            await session.rollback()
    finally:
        sa.event.remove(app.state.engine.sync_engine, "before_cursor_execute", hear)
    (statement, parameters) = next((s, p) for s, p in heard if s.lstrip().upper().startswith("UPDATE"))
    assert "title" in statement and list(parameters) == ["t", caller.organization_id, thread_id]


_INSERT_THREAD = sa.insert(_threads)
_COMPACT_AT = sa.select(_threads.c.compact_at, _threads.c.inherited_message_count).where(
    _threads.c.organization_id == param("organization_id"), _threads.c.id == param("id")
)


async def test_an_insert_fills_the_python_defaults_as_sqlalchemy_does(app: FastAPI, caller: Caller) -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    row = {"organization_id": caller.organization_id, "created_at": now, "updated_at": now, "last_message_at": now}
    row |= {"title": None, "compact_at": 0.75}
    async with app.state.sessionmaker() as session:
        await driver.execute_many(session, _INSERT_THREAD, [{**row, "id": "th_driver_1"}, {**row, "id": "th_driver_2"}])
        await session.execute(_INSERT_THREAD, [{**row, "id": "th_sqlalchemy"}])
        await session.commit()
    async with app.state.sessionmaker() as session:
        stored = {
            found.id: {k: v for k, v in found._mapping.items() if k != "id"}
            for found in (await session.execute(sa.select(_threads).where(_threads.c.id.like("th_%")))).all()
        }
        read = await driver.first(
            session, _COMPACT_AT, {"p_organization_id": caller.organization_id, "p_id": "th_driver_2"}
        )
    async with app.state.sessionmaker() as session:
        with pytest.raises(sa_exc.IntegrityError):  # the same key twice
            await driver.execute_many(session, _INSERT_THREAD, [{**row, "id": "th_twice"}, {**row, "id": "th_twice"}])
        await session.rollback()
    assert stored["th_driver_1"] == stored["th_driver_2"] == stored["th_sqlalchemy"]
    assert stored["th_driver_1"]["metadata"] == {} and stored["th_driver_1"]["space_ids"] == []
    assert stored["th_driver_1"]["kind"] == "thread" and stored["th_driver_1"]["visible_in_ui"] is True
    assert read == (0.75, 0)


async def test_a_statement_needing_sqlalchemys_execution_is_refused(app: FastAPI) -> None:
    """An IN list expands at execution."""
    expanding = sa.select(_threads.c.id).where(_threads.c.id.in_(param("ids")))
    async with app.state.sessionmaker() as session:
        with pytest.raises(ValueError, match="SQLAlchemy's execution"):
            await driver.rows(session, expanding, {"p_ids": ["a", "b"]})


async def test_each_transaction_of_a_session_runs_on_its_own_connection(
    app: FastAPI, client: Any, caller: Caller
) -> None:
    """The driver keeps a transaction's connection for its next statements, and only for them: after a commit the
    session's next statement runs in a new transaction, which its rollback undoes."""
    thread_id = await _thread_with_a_turn(client, caller, {})
    key = {"p_organization_id": caller.organization_id, "p_thread_id": thread_id}
    async with app.state.sessionmaker() as session:
        await driver.first(session, _SET_TITLE, {**key, "p_title": "first"})
        assert (await driver.first(session, _SET_TITLE, {**key, "p_title": "kept"})) is not None
        await session.commit()
        await driver.first(session, _SET_TITLE, {**key, "p_title": "undone"})
        await session.rollback()
        await driver.first(session, _SET_TITLE, {**key, "p_title": "undone too"})
    assert (await client.get(f"/v1/threads/{thread_id}", headers=caller.headers)).json()["title"] == "kept"


async def test_a_session_gives_its_connection_back_however_it_ends(app: FastAPI, client: Any, caller: Caller) -> None:
    """Committed, left in a transaction, left by an error, cancelled in a transaction (storage/engine.py,
    `Session`): only the commit is kept, and nothing still holds a connection or SQLite's write lock."""
    thread_id = await _thread_with_a_turn(client, caller, {})
    key = {"p_organization_id": caller.organization_id, "p_thread_id": thread_id}
    maker = app.state.sessionmaker
    async with maker() as session:
        await driver.first(session, _SET_TITLE, {**key, "p_title": "committed"})
        await session.commit()
    async with maker() as session:
        await driver.first(session, _SET_TITLE, {**key, "p_title": "left open"})
    with pytest.raises(LookupError):
        async with maker() as session:
            await driver.first(session, _SET_TITLE, {**key, "p_title": "failed"})
            raise LookupError
    inside = asyncio.Event()

    async def cancelled() -> None:
        async with maker() as session:
            await driver.first(session, _SET_TITLE, {**key, "p_title": "cancelled"})
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(cancelled())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pool = app.state.engine.sync_engine.pool
    if isinstance(pool, sa.pool.QueuePool):
        assert pool.checkedout() == 0
    assert (await client.get(f"/v1/threads/{thread_id}", headers=caller.headers)).json()["title"] == "committed"
    renamed = await client.patch(f"/v1/threads/{thread_id}", json={"title": "after"}, headers=caller.headers)
    assert renamed.status_code == 200, renamed.text


async def test_a_session_that_ran_driver_statements_is_freed_without_the_garbage_collector(
    app: FastAPI, client: Any, caller: Caller
) -> None:
    """The connection the driver keeps on a session (`driver._connection`) makes no reference cycle: the session, its
    transaction and their connection go when the last reference does, not at the collector's next pass (a turn's
    three sessions, ~40 objects each, would otherwise wait for it)."""
    thread_id = await _thread_with_a_turn(client, caller, {})
    key = {"p_organization_id": caller.organization_id, "p_thread_id": thread_id}
    gc.collect()
    gc.disable()
    try:
        async with app.state.sessionmaker() as session:
            await driver.first(session, _SET_TITLE, {**key, "p_title": "once"})
            await driver.first(session, _SET_TITLE, {**key, "p_title": "twice"})  # the kept connection
            await session.commit()
        freed = weakref.ref(session.sync_session)
        del session
        assert freed() is None
    finally:
        gc.enable()


def test_sqlite_timestamps_are_the_text_sqlalchemys_datetime_writes() -> None:
    """UTCDateTime writes SQLite's text itself (storage/tables.py); the text must stay SQLAlchemy's, which the rows
    already stored hold and which SQL compares as text."""
    dialect = sa.dialects.sqlite.dialect()
    ours = UTCDateTime()._cached_bind_processor(dialect)
    sqlalchemys = sa.DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert ours is not None and sqlalchemys is not None
    rng = random.Random(7)
    zones = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-11))]
    for _ in range(5_000):
        naive = datetime(1, 1, 2) + timedelta(microseconds=rng.randrange(0, 9_990 * 365 * 86_400 * 10**6))
        if rng.random() < 0.2:
            naive = naive.replace(microsecond=0)
        value = naive.replace(tzinfo=UTC).astimezone(rng.choice(zones))
        assert ours(value) == sqlalchemys(naive), value
    assert ours(None) is None
    with pytest.raises(ValueError, match="naive"):
        ours(datetime(2026, 1, 1))
