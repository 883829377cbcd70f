"""Building blocks of the statements a turn runs on every request (docs/storage.md, "Hot statements").

A statement that SQLAlchemy builds for each call costs about ten times its execution: constructing the
expression, then walking it for the cache key. The hot ones are therefore built once, with `param()` where a
value changes and `constant()` where it never does, and executed with a dict of values.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

_PLAIN = re.compile(r"[a-z_]+\Z")


def param(name: str, type_: sa.types.TypeEngine[Any] | None = None) -> sa.BindParameter[Any]:
    """A value given at execution. (Named `p_…`: an UPDATE reserves its columns' names for their SET values.)"""
    return sa.bindparam(f"p_{name}", type_=type_)


def constant(value: str) -> sa.ColumnElement[str]:
    """A fixed value written into the SQL, not bound. SQLite re-prepares a statement on every execution when a
    bound value decides whether a partial index applies (`type = 'compaction'`, `status = 'requires_action'`):
    ~120 µs instead of ~8 µs for the lease's UPDATE."""
    assert _PLAIN.match(value), value  # our own names only: nothing here is a client's text
    return sa.literal_column(f"'{value}'", sa.String())


class json_rows(sa.sql.functions.GenericFunction[Any]):
    """An aggregate: the rows it runs over as one JSON array of arrays, one array of these values per row, so a
    statement can hand back several rows in one column (the order is not kept: give it a column to sort by)."""

    type = sa.JSON()
    inherit_cache = True


@compiles(json_rows, "postgresql")
def _json_rows_postgresql(element: json_rows, compiler: SQLCompiler, **kw: Any) -> str:
    return f"json_agg(json_build_array({compiler.process(element.clauses, **kw)}))"


@compiles(json_rows, "sqlite")
def _json_rows_sqlite(element: json_rows, compiler: SQLCompiler, **kw: Any) -> str:
    return f"json_group_array(json_array({compiler.process(element.clauses, **kw)}))"


class qualified(sa.sql.expression.ColumnElement[Any]):
    """An expression written with its columns' table names where the statement would leave them out: SQLite's
    RETURNING drops them, also inside a subquery, where a join of two tables then names its columns
    ambiguously."""

    inherit_cache = True
    _traverse_internals = [("element", InternalTraversal.dp_clauseelement)]

    def __init__(self, element: sa.ColumnElement[Any]) -> None:
        self.element = element
        self.type = element.type


@compiles(qualified)
def _qualified(element: qualified, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.element, **{**kw, "include_table": True})
