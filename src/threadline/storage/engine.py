"""Engines, sessions and migrations. The only place that knows which database dialect is in use."""

from __future__ import annotations

import asyncio
import functools
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy import event, func, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from threadline.domain.json_text import compact_json
from threadline.storage import postgresql, sqlite

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def json_column_text(value: Any) -> str:
    """A JSON column's value as text, by orjson (`domain/json_text.py`; a turn writes ~8: its request, context,
    usage; json took ~5 µs each). Compact and UTF-8 where json wrote `", "` and `\\u` escapes: the same JSON. Columns
    are read back by json: orjson reads an integer past 64 bits as a float, silently."""
    return compact_json(value).decode()


_JSON: dict[str, Any] = {"json_serializer": json_column_text}


def create_engine(database_url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine. SQLite (any `sqlite…://` URL) runs on the event loop (storage/sqlite.py) with WAL and
    foreign keys on every connection; PostgreSQL runs on asyncpg (storage/postgresql.py)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url.set(drivername=f"sqlite+{sqlite.DRIVER}"), **_JSON, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy emit BEGIN itself (pysqlite's own transaction handling would fight it).
            dbapi_connection.isolation_level = None
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")
            dbapi_connection.execute("PRAGMA foreign_keys=ON")

        return engine
    url = url.set(drivername=f"postgresql+{postgresql.DRIVER}")
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True, **_JSON, **kwargs)


def is_full_text_object(name: str | None) -> bool:
    """Whether a schema object belongs to the full-text search of migration 0002 (FTS5 tables, their shadow
    tables and triggers on SQLite; generated tsvector columns and GIN indexes (0005) on PostgreSQL). They are
    dialect-specific, so they live in the migration only, not in `tables.py`."""
    return name is not None and (name.endswith("_tsv") or "_fts" in name)


# PostgreSQL SQLSTATEs that mean "not now": connection exceptions (class 08), the server shutting down or
# starting up (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now), no free connection slot.
_PG_UNAVAILABLE_STATES = ("08", "57P01", "57P02", "57P03", "53300")
# SQLite's equivalents: the file cannot be opened (its volume is away) or stays locked past the lock wait.
_SQLITE_UNAVAILABLE = ("unable to open database file", "database is locked", "disk i/o error")


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` says the database cannot be reached right now (down, restarting, the connection lost,
    the pool exhausted) rather than that the statement was wrong: the same request can succeed later.

    Walks the chain SQLAlchemy and the drivers build (`orig`, `__cause__`, `__context__`): asyncpg's own
    exceptions, socket errors from connecting, sqlite3's OperationalError.
    """
    pending: list[BaseException] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sa_exc.TimeoutError):  # no pooled connection came free in time
            return True
        if isinstance(current, ConnectionError | TimeoutError | socket.gaierror):
            return True
        if isinstance(current, asyncpg.exceptions.ConnectionDoesNotExistError):
            return True
        if isinstance(current, asyncpg.PostgresError):
            state = str(getattr(current, "sqlstate", "") or "")
            if state.startswith(_PG_UNAVAILABLE_STATES):
                return True
        if isinstance(current, sqlite3.OperationalError) and str(current).lower().startswith(_SQLITE_UNAVAILABLE):
            return True
        origin = current.orig if isinstance(current, sa_exc.DBAPIError) else None
        pending.extend(e for e in (origin, current.__cause__, current.__context__) if isinstance(e, BaseException))
    return False


class Session(AsyncSession):
    """SQLAlchemy's AsyncSession, whose `async with` costs no task when the transaction has ended.

    SQLAlchemy closes a session in a task of its own, shielded from cancellation, so that a connection is never left
    half given back to the pool. Once the session has committed or rolled back, its connection is back in the pool
    already and closing it only forgets its ORM objects, with no I/O: that close is done here at once (three
    sessions a turn, and every request's own).
    """

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        if self.sync_session.in_transaction():
            await super().__aexit__(type_, value, traceback)
        else:
            self.sync_session.close()


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=Session, expire_on_commit=False)


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply migrations. Synchronous: call it before an event loop runs (CLI, test setup)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def dialect_insert(session: AsyncSession, table: Any) -> Any:
    """The dialect's INSERT construct, for ON CONFLICT clauses (both SQLite and PostgreSQL spell them alike)."""
    if session.get_bind().dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    return pg_insert(table)


@functools.cache
def head_revision() -> str | None:
    """The newest migration shipped with this code (read once: parsing the scripts costs every app start)."""
    from alembic.script import ScriptDirectory

    head: str | None = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    return head


async def schema_revision(engine: AsyncEngine) -> str | None:
    """The migration the database is at (None: never migrated). A failing database raises."""
    from alembic.runtime.migration import MigrationContext

    def read(connection: Any) -> str | None:
        revision: str | None = MigrationContext.configure(connection).get_current_revision()
        return revision

    async with engine.connect() as connection:
        return await connection.run_sync(read)


def watch_pool(engine: AsyncEngine, change: Callable[[int], None]) -> None:
    """Call `change(+1)` when a connection leaves the pool and `change(-1)` when it comes back."""
    pool = engine.sync_engine.pool
    event.listen(pool, "checkout", lambda *_: change(1))
    event.listen(pool, "checkin", lambda *_: change(-1))


async def notify(session: AsyncSession, channel: str, payload: str = "") -> None:
    """PostgreSQL `NOTIFY channel, payload` inside the session's transaction: delivered to listeners when it
    commits, never if it rolls back. Nothing on SQLite (one process: its waiters are woken in process)."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(select(func.pg_notify(channel, payload)))


class Listener:
    """`LISTEN channel` on a connection of its own (PostgreSQL), calling `callback(payload)` on each notification.

    Best effort by design: a listener that cannot connect, or whose connection drops, is reconnected by `ensure()`,
    and whoever waits on it keeps a slow safety poll for the notifications missed meanwhile. On SQLite it does
    nothing (`active` stays False)."""

    def __init__(self, engine: AsyncEngine, channel: str, callback: Callable[[str], None]) -> None:
        self._url = engine.url
        self.channel = channel
        self._callback = callback
        self._connection: Any = None
        # Callers ensure at once (every stream follower whose poll times out): one connects, the others find its
        # connection. Without the lock each would connect and all but the last connection would be lost, open.
        self._connecting = asyncio.Lock()
        self._closed = asyncio.Event()

    @property
    def active(self) -> bool:
        return self._connection is not None and not self._connection.is_closed()

    async def ensure(self) -> bool:
        """Connect and listen unless already listening; False (logged by the caller's poll) if it cannot, and
        after `close()`."""
        if self._url.get_backend_name() != "postgresql":
            return False
        async with self._connecting:
            if self.active or self._closed.is_set():
                return self.active
            await self._drop()
            url = self._url.set(drivername="postgresql").render_as_string(hide_password=False)
            connection = await asyncpg.connect(url, timeout=10)
            try:
                if not self._closed.is_set():
                    await connection.add_listener(self.channel, lambda *args: self._callback(str(args[-1])))
            except BaseException:
                connection.terminate()  # failed or cancelled (shutdown): never left to the garbage collector
                raise
            if self._closed.is_set():  # closed while this connected or listened: nothing outlives the close
                connection.terminate()
                return False
            self._connection = connection
            return True

    async def close(self) -> None:
        """Stop listening for good (shutdown): a later or concurrent `ensure()` connects no more."""
        self._closed.set()
        await self._drop()

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            await connection.close(timeout=5)
        except Exception:
            connection.terminate()
        except BaseException:
            connection.terminate()  # cancelled mid-close (shutdown): drop it now, not in __del__
            raise
