"""SQL for named, expiring locks shared by every process on one database (e.g. one retention sweep at a time)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from threadline.storage.engine import dialect_insert
from threadline.storage.tables import Lease


class LeaseRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def acquire(self, name: str, owner: str, now: datetime, expires_at: datetime) -> bool:
        """Take the lease if it is free, expired, or already ours — in one conditional statement, so two
        processes racing for it cannot both win."""
        insert = dialect_insert(self.session, Lease).values(name=name, owner=owner, expires_at=expires_at)
        statement = insert.on_conflict_do_update(
            index_elements=[Lease.name],
            set_={"owner": insert.excluded.owner, "expires_at": insert.excluded.expires_at},
            where=sa.or_(Lease.expires_at <= now, Lease.owner == owner),
        ).returning(Lease.owner)
        return (await self.session.execute(statement)).scalar_one_or_none() == owner

    async def renew(self, name: str, owner: str, expires_at: datetime) -> bool:
        """Extend our lease; False when it is no longer ours (it expired and another process took it)."""
        result = await self.session.execute(
            sa.update(Lease)
            .where(Lease.name == name, Lease.owner == owner)
            .values(expires_at=expires_at)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount) == 1  # type: ignore[attr-defined]

    async def release(self, name: str, owner: str) -> None:
        await self.session.execute(sa.delete(Lease).where(Lease.name == name, Lease.owner == owner))

    async def live_names(self, prefix: str, now: datetime) -> set[str]:
        """The names starting with `prefix` whose leases have not expired."""
        query = sa.select(Lease.name).where(Lease.name.startswith(prefix, autoescape=True), Lease.expires_at > now)
        return set((await self.session.execute(query)).scalars())

    async def holder(self, name: str, now: datetime) -> str | None:
        query = sa.select(Lease.owner).where(Lease.name == name, Lease.expires_at > now)
        return (await self.session.execute(query)).scalar_one_or_none()
