"""SQL for the per-credential request counter (one upsert per request) and concurrent-turn slots."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from threadline.storage.engine import dialect_insert
from threadline.storage.tables import RateLimitCounter


class RateLimitRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def count_request(self, credential_id: str, window_minute: int) -> tuple[int, int]:
        """Count one request of the credential in `window_minute`; returns (count, window) after it.

        One INSERT … ON CONFLICT DO UPDATE … RETURNING (SQLite >= 3.35, PostgreSQL): the row lock it takes is held
        only by this statement's transaction, and no process can lose another's increment. A request from a later
        window starts the count afresh; one from an earlier window (a process whose clock lags) counts in the
        current one instead of resetting it.
        """
        table = RateLimitCounter
        insert = dialect_insert(self.session, table).values(
            credential_id=credential_id, window_minute=window_minute, count=1
        )
        newer = insert.excluded.window_minute > table.window_minute
        statement = insert.on_conflict_do_update(
            index_elements=[table.credential_id],
            set_={
                # SET expressions read the row as it was: both see the old window.
                "count": sa.case((newer, 1), else_=table.count + 1),
                "window_minute": sa.case((newer, insert.excluded.window_minute), else_=table.window_minute),
            },
        ).returning(table.count, table.window_minute)
        row = (await self.session.execute(statement)).one()
        return int(row[0]), int(row[1])
