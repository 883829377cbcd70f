"""SQLite for the async engine, with its statements run on the event loop (docs/storage.md, "SQLite").

SQLite answers a statement in microseconds from the page cache; handing each one to a worker thread (what
aiosqlite does) cost ~10× the statement itself in thread wake-ups. So this dialect is the standard `sqlite3`
one, marked async: SQLAlchemy's asyncio layer drives it as it drives any async driver, and no statement ever
suspends.

What that changes, and how it stays safe:
- A transaction holds the write lock from its `BEGIN IMMEDIATE` (every transaction takes it: two writers queue
  instead of one failing when it upgrades a read). Waiting for that lock must not block the loop — the holder may
  be another coroutine of this very process, suspended on something else. So the connection's own busy timeout
  is zero, and `begin_immediate` waits for the lock with `asyncio.sleep` between tries, up to `LOCK_WAIT_SECONDS`
  (what the busy timeout was), then raises SQLite's "database is locked".
- A statement cannot be cancelled half-way (it never suspends): a cancelled task stops before its next statement
  or at its commit's caller, so a transaction is never left open inside the driver.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

from sqlalchemy import pool
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine.url import URL
from sqlalchemy.util.concurrency import await_, in_greenlet

DRIVER = "threadline_sqlite"
LOCK_WAIT_SECONDS = 30.0
_FIRST_PAUSE = 0.001
_MAX_PAUSE = 0.05


class InLoopSQLiteDialect(SQLiteDialect_pysqlite):
    driver = DRIVER
    is_async = True
    supports_statement_cache = True

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        # Connections wait for each other asynchronously; an in-memory database is one shared connection.
        return pool.AsyncAdaptedQueuePool if cls._is_url_file_db(url) else pool.StaticPool

    def create_connect_args(self, url: URL) -> Any:
        args, kwargs = super().create_connect_args(url)
        # No busy wait inside SQLite (it would block the loop); the lock is waited for in `begin_immediate`. The
        # pool may close a connection from the garbage collector's thread.
        kwargs.update(timeout=0, check_same_thread=False, factory=_Connection)
        return args, kwargs

    def do_begin(self, dbapi_connection: Any) -> None:
        # Every transaction takes the write lock at its BEGIN (above). Here rather than in a `begin` listener: an
        # engine with a connection event listened to gives each of its connections an event dispatch of its own,
        # consulted at every step (2-3% of a turn's instructions).
        begin_immediate(dbapi_connection.driver_connection)

    # SQLAlchemy's AsyncConnection refuses a driver that never awaits: each statement passes one await that
    # completes at once (a greenlet switch, no trip through the event loop).
    def do_execute(self, cursor: Any, statement: Any, parameters: Any, context: Any = None) -> None:
        cursor.execute(statement, parameters)
        _awaited()

    def do_execute_no_params(self, cursor: Any, statement: Any, context: Any = None) -> None:
        cursor.execute(statement)
        _awaited()

    def do_executemany(self, cursor: Any, statement: Any, parameters: Any, context: Any = None) -> None:
        cursor.executemany(statement, parameters)
        _awaited()


class _Cursor(sqlite3.Cursor):
    async def _async_soft_close(self) -> None:
        """What SQLAlchemy's AsyncConnection calls to buffer an async driver's rows: these are at hand already."""


class _Connection(sqlite3.Connection):
    def cursor(self, factory: Any = _Cursor) -> Any:
        return super().cursor(factory)


async def _done() -> None:
    return None


def _awaited() -> None:
    if in_greenlet():
        await_(_done())


registry.register(f"sqlite.{DRIVER}", __name__, "InLoopSQLiteDialect")


def begin_immediate(connection: sqlite3.Connection) -> None:
    """`BEGIN IMMEDIATE`, waiting for the write lock without blocking the event loop (called in SQLAlchemy's
    greenlet, so it may await)."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    pause = _FIRST_PAUSE
    while True:
        try:
            connection.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as error:
            if not _is_busy(error) or time.monotonic() >= deadline:
                raise
        await_(asyncio.sleep(pause))
        pause = min(pause * 2, _MAX_PAUSE)


def _is_busy(error: sqlite3.OperationalError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(error) or "busy" in str(error)
