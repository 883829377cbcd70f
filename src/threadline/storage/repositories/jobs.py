"""SQL for the job queue (services/jobs.py, docs/jobs.md): claim, renew, settle.

Every write after the claim is conditional on the claim's lease token (`lease_owner`), so a process that lost its
lease (it stalled past expiry and another process took the job over) can change nothing any more.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from threadline.storage.statements import constant
from threadline.storage.tables import Job

UNFINISHED = ("queued", "running")
# As the partial indexes of unfinished jobs name them: written into the SQL, so the indexes apply (statements.py).
_UNFINISHED = [constant(status) for status in UNFINISHED]


class JobRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, job: Job) -> Job:
        self.session.add(job)
        await self.session.flush()
        return job

    async def get(self, organization_id: str, job_id: str) -> Job | None:
        return await self.session.get(Job, (organization_id, job_id), populate_existing=True)

    @staticmethod
    def _claimable(kinds: Collection[str], now: datetime) -> Any:
        """Due queued jobs and running jobs whose lease expired (`domain/leases.py`: live up to its expiry), of the
        given kinds, that no earlier unfinished job of the same queue key is ahead of."""
        earlier = aliased(Job)
        ahead = (
            sa.select(earlier.id)
            .where(
                earlier.organization_id == Job.organization_id,
                earlier.queue_key == Job.queue_key,
                earlier.status.in_(_UNFINISHED),
                sa.tuple_(earlier.created_at, earlier.id) < sa.tuple_(Job.created_at, Job.id),
            )
            .exists()
        )
        due = sa.or_(
            sa.and_(Job.status == constant("queued"), Job.run_after <= now),
            sa.and_(Job.status == constant("running"), Job.lease_expires_at < now),
        )
        # Implied by `due`; spelled as the index's predicate, SQLite sees that the index applies.
        unfinished = Job.status.in_(_UNFINISHED)
        return sa.and_(Job.kind.in_(list(kinds)), unfinished, due, sa.or_(Job.queue_key.is_(None), ~ahead))

    async def claim(
        self, kinds: Collection[str], owner: str, now: datetime, expires_at: datetime, limit: int
    ) -> list[Job]:
        """Take up to `limit` claimable jobs under the lease `owner` until `expires_at`, oldest due first.

        PostgreSQL: `FOR UPDATE SKIP LOCKED`, so concurrent claimers never wait on, or take, each other's rows.
        SQLite renders no FOR UPDATE: its transactions take the write lock at BEGIN (storage/engine.py), so claims
        are serialized anyway."""
        if not kinds or limit <= 0:
            return []
        query = (
            sa.select(Job)
            .where(self._claimable(kinds, now))
            .order_by(Job.run_after, Job.created_at, Job.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=Job)
            .execution_options(populate_existing=True)
        )
        jobs = list((await self.session.scalars(query)).all())
        for job in jobs:
            job.status = "running"
            job.attempts += 1
            job.lease_owner = owner
            job.lease_expires_at = expires_at
            job.updated_at = now
        await self.session.flush()
        return jobs

    async def next_due(self, kinds: Collection[str], now: datetime) -> datetime | None:
        """The earliest moment after `now` at which a job of these kinds may become claimable by time alone (a
        retry's `run_after`, a running job's lease expiry)."""
        if not kinds:
            return None
        kind = Job.kind.in_(list(kinds))
        queued = sa.select(sa.func.min(Job.run_after)).where(kind, Job.status == "queued", Job.run_after > now)
        running = sa.select(sa.func.min(Job.lease_expires_at)).where(
            kind, Job.status == "running", Job.lease_expires_at >= now
        )
        times = [await self.session.scalar(queued), await self.session.scalar(running)]
        found = [t for t in times if t is not None]
        return min(found) if found else None

    def _held(self, organization_id: str, job_id: str, owner: str) -> Any:
        return sa.update(Job).where(
            Job.organization_id == organization_id,
            Job.id == job_id,
            Job.lease_owner == owner,
            Job.status == "running",
        )

    async def _apply(self, statement: Any) -> bool:
        result = await self.session.execute(statement.execution_options(synchronize_session=False))
        return int(result.rowcount) == 1  # type: ignore[attr-defined]

    async def renew(self, organization_id: str, job_id: str, owner: str, expires_at: datetime) -> bool:
        """Extend the lease; False when it is no longer ours."""
        return await self._apply(self._held(organization_id, job_id, owner).values(lease_expires_at=expires_at))

    async def finish(
        self, organization_id: str, job_id: str, owner: str, status: str, error: str | None, now: datetime
    ) -> bool:
        """`done` or `failed`, lease released; False when the lease was no longer ours (nothing changed)."""
        values = {
            "status": status,
            "last_error": error,
            "lease_owner": None,
            "lease_expires_at": None,
            "finished_at": now,
            "updated_at": now,
        }
        return await self._apply(self._held(organization_id, job_id, owner).values(**values))

    async def retry(
        self, organization_id: str, job_id: str, owner: str, run_after: datetime, error: str, now: datetime
    ) -> bool:
        """Back to `queued` until `run_after`, lease released."""
        values = {
            "status": "queued",
            "run_after": run_after,
            "last_error": error,
            "lease_owner": None,
            "lease_expires_at": None,
            "updated_at": now,
        }
        return await self._apply(self._held(organization_id, job_id, owner).values(**values))

    async def release(self, organization_id: str, job_id: str, owner: str, now: datetime) -> bool:
        """Give a job back untouched (its process is stopping): queued, due now, and the attempt not counted."""
        values = {
            "status": "queued",
            "run_after": now,
            "attempts": Job.attempts - 1,
            "lease_owner": None,
            "lease_expires_at": None,
            "updated_at": now,
        }
        return await self._apply(self._held(organization_id, job_id, owner).values(**values))

    async def count_finished_before(self, before: datetime) -> int:
        query = sa.select(sa.func.count()).select_from(Job).where(Job.finished_at < before)
        return int(await self.session.scalar(query) or 0)

    async def purge_finished(self, before: datetime, limit: int) -> int:
        """Delete up to `limit` jobs that finished (done or failed) before `before`; returns how many."""
        oldest = sa.select(Job.organization_id, Job.id).where(Job.finished_at < before).limit(limit)
        result = await self.session.execute(
            sa.delete(Job)
            .where(sa.tuple_(Job.organization_id, Job.id).in_(oldest))
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]
