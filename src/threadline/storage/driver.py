"""Hot statements executed on the driver's own connection, inside the session's transaction (docs/storage.md,
"Hot statements").

SQLAlchemy spends ~50–100 µs of Python on each execution of a cached statement (its execution context, cursor
result and row processing) against ~2 µs for `sqlite3` and ~20 µs for asyncpg themselves. The statements every
turn runs (storage/statements.py) therefore run here: SQLAlchemy compiles each once per dialect and set of
values, and the driver executes it on the connection the session holds, in the session's transaction, which the
session still begins, commits and rolls back. What SQLAlchemy would do around the driver is kept:

- values in and out pass through the columns' own type processors (JSON, `UTCDateTime`, booleans), as
  SQLAlchemy's execution applies them, so a row reads the same either way;
- while anyone listens to SQLAlchemy's cursor events (tracing's SQL spans, a test counting statements), the
  statements go through SQLAlchemy's execution instead, so the listeners see what they always did;
- a driver error goes through SQLAlchemy's own handling: wrapped in its exception classes (`IntegrityError`…),
  and a lost connection invalidated.

A column left out of an INSERT gets its Python-side default as SQLAlchemy would compute it (a value, or a
function of no arguments). Statements with expanding (`IN`) or literal-execute parameters, or a default that
needs SQLAlchemy's execution context, are refused.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeEngine
from sqlalchemy.util import greenlet_spawn

# What comes here: statements of the tables, built once.
Statement = sa.Select[Any] | sa.Update | sa.Insert | sa.Delete
# Where a positional parameter's value comes from.
_GIVEN, _FIXED, _DEFAULT = 0, 1, 2


@dataclass(frozen=True)
class _Compiled:
    sql: str
    # Per positional parameter: where its value comes from (`_GIVEN`: the caller's values, by key; `_FIXED`: a value
    # in the statement; `_DEFAULT`: the column's Python default, called), and the type's bind processor.
    sources: tuple[tuple[int, Any], ...]
    binds: tuple[Callable[[Any], Any] | None, ...]
    # The columns' result processors, by the types the driver reports (asyncpg's OIDs choose some of them, the
    # numeric ones; SQLite reports none): only the columns that have one, with their positions.
    results: dict[tuple[int | None, ...], tuple[tuple[int, Callable[[Any], Any]], ...]]
    result_types: tuple[TypeEngine[Any], ...]

    def processors(
        self, dialect: Dialect, driver_types: tuple[int | None, ...]
    ) -> tuple[tuple[int, Callable[[Any], Any]], ...]:
        found = self.results.get(driver_types)
        if found is None:
            every = (
                type_._cached_result_processor(dialect, driver_type)
                for type_, driver_type in zip(self.result_types, driver_types, strict=True)
            )
            found = tuple((position, process) for position, process in enumerate(every) if process is not None)
            self.results[driver_types] = found
        return found

    def parameters(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        bound = []
        for (source, what), process in zip(self.sources, self.binds, strict=True):
            value = values[what] if source == _GIVEN else what if source == _FIXED else what(None)
            bound.append(value if process is None else process(value))
        return tuple(bound)


# Keyed by the statement's id, with the statement kept beside its compiled form: alive, its id stays its own.
# Only statements built once (at import or by a `functools.cache`d builder) come here, so this stays small.
_compiled: dict[tuple[int, str, frozenset[str]], tuple[Statement, _Compiled]] = {}
_MOST_STATEMENTS = 1000
# Where a session keeps its transaction's connection (`_connection`), beside a weak reference to that transaction: a
# strong one would make the session a reference cycle (session → info → transaction → session), left for the
# garbage collector with its transaction, connection and their event dispatch (~40 objects a session).
_HELD = "threadline.driver_connection"


def _compile(statement: Statement, dialect: Dialect, keys: frozenset[str]) -> _Compiled:
    cache_key = (id(statement), dialect.name, keys)
    found = _compiled.get(cache_key)
    if found is not None:
        return found[1]
    # The values that are not bound parameters of the statement name the columns an UPDATE sets.
    compiled = statement.compile(dialect=dialect, column_keys=sorted(keys))
    assert isinstance(compiled, SQLCompiler)
    assert compiled.positiontup is not None, "a positional paramstyle (qmark, numeric_dollar)"
    if compiled.literal_execute_params or compiled.post_compile_params:
        raise ValueError(f"needs SQLAlchemy's execution (expanding or literal parameters): {compiled}")
    if len(_compiled) >= _MOST_STATEMENTS:
        raise ValueError("statements for the driver are built once, not per call (storage/statements.py)")
    # Columns left out whose Python-side default (INSERT) or onupdate (UPDATE) SQLAlchemy would compute.
    defaults = {column.key: column.default for column in compiled.insert_prefetch}
    defaults |= {column.key: column.onupdate for column in compiled.update_prefetch}
    sources: list[tuple[int, Any]] = []
    binds: list[Callable[[Any], Any] | None] = []
    processors = compiled._bind_processors
    for position_name in compiled.positiontup:
        bind = compiled.binds[position_name]
        if bind.key in keys:
            sources.append((_GIVEN, bind.key))
        elif bind.key in defaults:
            sources.append(_default_source(defaults[bind.key], bind.key))
        elif bind.callable is None and not bind.required:
            sources.append((_FIXED, bind.value))
        else:
            raise ValueError(f"no value for {bind.key}")
        binds.append(processors.get(position_name))  # type: ignore[arg-type]  # one callable a scalar bind
    result_types = tuple(column.type for column in compiled._result_columns)
    entry = _Compiled(compiled.string, tuple(sources), tuple(binds), {}, result_types)
    _compiled[cache_key] = (statement, entry)
    return entry


def _default_source(default: Any, key: str) -> tuple[int, Any]:
    if default is not None and default.is_scalar:
        return _FIXED, default.arg
    if default is not None and default.is_callable:
        # SQLAlchemy wraps a function of no arguments to take the execution context: ours take none.
        return _DEFAULT, default.arg
    raise ValueError(f"needs SQLAlchemy's execution (the default of {key})")


async def rows(session: AsyncSession, statement: Statement, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """Execute `statement` (built once) with `values` in `session`'s transaction; its rows as tuples (none for a
    statement without RETURNING)."""
    return await _execute(session, statement, [values], many=False)


async def first(session: AsyncSession, statement: Statement, values: Mapping[str, Any]) -> tuple[Any, ...] | None:
    found = await rows(session, statement, values)
    return found[0] if found else None


async def execute_many(session: AsyncSession, statement: Statement, rows: Sequence[Mapping[str, Any]]) -> None:
    """Execute `statement` (an INSERT without RETURNING, built once) once for each of `rows`, all giving the same
    keys, in `session`'s transaction: the driver's executemany (one round trip on asyncpg)."""
    if rows:
        await _execute(session, statement, rows, many=True)


async def _execute(
    session: AsyncSession, statement: Statement, rows: Sequence[Mapping[str, Any]], *, many: bool
) -> list[tuple[Any, ...]]:
    connection = await _connection(session)
    dialect = connection.dialect
    keys = frozenset(rows[0])
    compiled = _compile(statement, dialect, keys)
    if many and (compiled.result_types or any(frozenset(row) != keys for row in rows)):
        raise ValueError("execute_many takes rows of the same keys, for a statement without RETURNING")
    if connection.dispatch.before_cursor_execute or connection.dispatch.after_cursor_execute:
        # Someone observes statements (tracing's SQL spans, a test counting them): SQLAlchemy's own execution, whose
        # events carry everything they may use (the execution context, errors, a rewritten statement).
        result = await session.execute(statement, list(rows) if many else rows[0])
        return [tuple(row) for row in result] if result.returns_rows else []  # type: ignore[attr-defined]
    parameters: Any = [compiled.parameters(row) for row in rows] if many else compiled.parameters(rows[0])
    driver = connection.connection.dbapi_connection
    try:
        if dialect.name == "postgresql":
            fetched, driver_types = await _asyncpg_fetch(driver, dialect, compiled.sql, parameters, many=many)
        else:
            assert driver is not None
            if many:
                driver.executemany(compiled.sql, parameters)
                return []
            fetched = driver.execute(compiled.sql, parameters).fetchall()
            driver_types = (None,) * len(compiled.result_types)
    except Exception as error:
        await greenlet_spawn(_raise_as_sqlalchemy, connection, error, compiled.sql, parameters)
        raise AssertionError("unreachable") from error
    if not fetched:
        return []
    results = compiled.processors(dialect, driver_types)
    if not results:
        return [tuple(row) for row in fetched]
    # Only the values whose column has a processor are touched: a context read is hundreds of rows of mostly
    # plain text and integers (5x faster than a pass over every value).
    processed = []
    for row in fetched:
        values = list(row)
        for position, process in results:
            values[position] = process(values[position])
        processed.append(tuple(values))
    return processed


async def _connection(session: AsyncSession) -> Connection:
    """The connection of the session's transaction. The session is asked for it once a transaction (that checks
    one out of the pool, and suspends through a greenlet); the transaction's other statements find it kept on the
    session, while the transaction is active and the connection open and valid."""
    transaction = session.sync_session.get_transaction()
    held = session.info.get(_HELD)
    if held is not None and transaction is not None and held[0]() is transaction and transaction.is_active:
        connection: Connection = held[1]
        if not connection.closed and not connection.invalidated:
            return connection
    # What `AsyncSession.connection()` does, without wrapping the connection in an AsyncConnection to unwrap it.
    connection = await greenlet_spawn(session.sync_session.connection)
    session.info[_HELD] = (weakref.ref(session.sync_session.get_transaction()), connection)
    return connection


async def _asyncpg_fetch(
    adapted: Any, dialect: Any, sql: str, parameters: Any, *, many: bool = False
) -> tuple[list[Any], tuple[int | None, ...]]:
    """What SQLAlchemy's asyncpg cursor does for a statement: the BEGIN its adapter defers to the connection's
    first statement (none in autocommit), the statement prepared through the adapter's per-connection cache, the
    rows fetched (`many`: executed once per tuple of `parameters`, nothing fetched); with the column types (OIDs)
    the result processors depend on."""
    try:
        async with adapted._execute_mutex:
            if adapted._transaction is None:
                await adapted._start_transaction()
            prepared, attributes = await adapted._prepare(sql, dialect._invalidate_schema_cache_asof)
            if many:
                await prepared.executemany(parameters)
                return [], ()
            fetched: list[Any] = await prepared.fetch(*parameters)
            return fetched, tuple(attribute.type.oid for attribute in attributes)
    except Exception as error:
        if isinstance(error, adapted.dbapi.Error):
            raise
        adapted._handle_exception(error)  # raises the adapter's DBAPI error for asyncpg's, as its cursor does
        raise


def _raise_as_sqlalchemy(connection: Connection, error: Exception, sql: str, parameters: Any) -> None:
    """SQLAlchemy's handling of a DBAPI error (run in its greenlet: invalidating a lost connection may await)."""
    if isinstance(error, connection.dialect.loaded_dbapi.Error):
        connection._handle_dbapi_exception(error, sql, parameters, None, None)
    raise error
