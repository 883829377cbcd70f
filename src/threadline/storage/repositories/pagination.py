"""Keyset pagination shared by every list: cursors are ids, pages never use OFFSET.

The sort key is a tuple of columns (e.g. `(created_at, id)` for threads, `(seq,)` for messages). `after` and
`before` follow the list's own order (docs/surfaces.md): `after=<last_id>` is always the next page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from threadline.errors import ValidationFailed

T = TypeVar("T")
Order = Literal["asc", "desc"]


@dataclass(frozen=True)
class PageRequest:
    limit: int = 20
    order: Order = "desc"
    after: str | None = None
    before: str | None = None
    include_total: bool = False


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool
    total: int | None = None


def check_cursors(page: PageRequest, keys: dict[str, tuple[Any, ...] | None], what: str) -> None:
    """A cursor that names no row is a client error (resolving it is the one extra query a later page costs)."""
    for name in ("after", "before"):
        cursor = getattr(page, name)
        if cursor is not None and keys.get(name) is None:
            raise ValidationFailed(f"Cursor '{cursor}' names no {what}.", code="invalid_cursor", param=name)


def _compare(columns: Sequence[Any], values: Sequence[Any], greater: bool) -> sa.ColumnElement[bool]:
    """(c1, c2, …) > (v1, v2, …) spelled out, which both SQLite and PostgreSQL turn into an index range."""
    key: sa.ColumnElement[Any] = columns[0] if len(columns) == 1 else sa.tuple_(*columns)
    bound: Any = values[0] if len(values) == 1 else sa.tuple_(*values)
    result: sa.ColumnElement[bool] = key > bound if greater else key < bound
    return result


async def fetch_page(
    session: AsyncSession,
    query: sa.Select[Any],
    sort_columns: Sequence[Any],
    page: PageRequest,
    cursor_values: dict[str, tuple[Any, ...] | None],
    *,
    scalars: bool = True,
) -> Page[Any]:
    """Run `query` (already filtered) as one keyset page.

    `cursor_values` maps "after"/"before" to the sort-key values of the cursor row (resolved by the caller,
    which knows how to find a row by id); `None` means no such cursor. The items are the first column of each
    row, or whole rows with `scalars=False`.
    """
    descending = page.order == "desc"
    paged = query
    after, before = cursor_values.get("after"), cursor_values.get("before")
    if after is not None:
        paged = paged.where(_compare(sort_columns, after, greater=not descending))
    reverse = False
    if before is not None:
        paged = paged.where(_compare(sort_columns, before, greater=descending))
        # Walk backwards from the cursor, then flip, so the page ends right before the cursor.
        reverse = after is None
    walk_desc = descending != reverse
    ordering = [c.desc() if walk_desc else c.asc() for c in sort_columns]
    result = await session.execute(paged.order_by(*ordering).limit(page.limit + 1))
    rows: list[Any] = list(result.scalars() if scalars else result.all())
    has_more = len(rows) > page.limit
    rows = rows[: page.limit]
    if reverse:
        rows.reverse()
    total = None
    if page.include_total:
        total = (
            await session.execute(sa.select(sa.func.count()).select_from(query.order_by(None).subquery()))
        ).scalar_one()
    return Page(items=rows, has_more=has_more, total=total)
