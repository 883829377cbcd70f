"""Building blocks of the statements a turn runs on every request (docs/storage.md, "Hot statements").

A statement that SQLAlchemy builds for each call costs about ten times its execution: constructing the
expression, then walking it for the cache key. The hot ones are therefore built once, with `param()` where a
value changes and `constant()` where it never does, and executed with a dict of values.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

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
