"""The job queue: work that outlives its request, as rows of the app's own database (docs/jobs.md).

Public interface (what other services use):

    from threadline.services import jobs

    # Enqueue inside the caller's transaction: the job exists if, and only if, the caller commits.
    job_id = await jobs.enqueue(
        session, organization_id=org, kind="webhook.deliver", payload={"delivery_id": d},
        queue_key=None,        # jobs sharing a key (e.g. a thread id) run one at a time, in enqueue order
        run_after=None,        # not before this (aware UTC datetime); None: now
        max_attempts=5,        # attempts before the job is `failed`
    )

    # A handler, registered by kind on the app's runner (`app.state.jobs`, in the lifespan):
    async def deliver(job: jobs.QueuedJob) -> None:
        ...                                        # return: the job is `done`
        raise jobs.RetryJob("receiver said 503", delay_seconds=30)   # again later (None: exponential backoff)
        raise jobs.JobFailed("endpoint disabled")  # `failed` now, no further attempt
        # any other exception: retried with backoff while attempts remain, then `failed` with its message

    runner.register("webhook.deliver", deliver)

A handler gets `QueuedJob` (id, organization, kind, payload, queue key, `attempt` counted from 1, `max_attempts`).
`attempt > 1` means an earlier attempt failed or its process died mid-run (its lease expired): handlers must be
safe to run again. While a handler runs its job's lease is renewed; a handler whose lease is lost (its process
stalled past the lease and another one took the job over) is cancelled, so a job never runs twice at once. On
shutdown running handlers are cancelled once the drain grace is over and their jobs given back (queued, the
attempt not counted) for the next process.

Wake-ups: an enqueue (and any settled job, which may unblock the next one of its key) wakes this process's runner
once the transaction commits, and on PostgreSQL sends `NOTIFY threadline_jobs`, which every other process's runner
LISTENs to. A slow safety poll (`job_poll_seconds`) covers a lost notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from threadline import observability
from threadline.domain.backoff import backoff_seconds
from threadline.domain.clock import utcnow
from threadline.ids import new_id
from threadline.storage.engine import Listener, is_unavailable, notify
from threadline.storage.repositories.jobs import JobRepository
from threadline.storage.tables import Job

logger = logging.getLogger("threadline.jobs")

CHANNEL = "threadline_jobs"
_WAKE_ON_COMMIT = "threadline.jobs.wake"


@dataclass(frozen=True)
class QueuedJob:
    """What a handler is given: the job as claimed (its row's fields; `attempt` is this attempt, from 1)."""

    organization_id: str
    id: str
    kind: str
    payload: dict[str, Any]
    queue_key: str | None
    attempt: int
    max_attempts: int


class RetryJob(Exception):
    """Raised by a handler: run the job again after `delay_seconds` (None: exponential backoff), if attempts
    remain; otherwise it is `failed` with `reason`."""

    def __init__(self, reason: str, *, delay_seconds: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay_seconds = delay_seconds


class JobFailed(Exception):
    """Raised by a handler: the job is `failed` with `reason` at once; no further attempt."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Handler = Callable[[QueuedJob], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class _Outcome:
    status: str  # done | failed | retry
    error: str | None = None
    delay_seconds: float | None = None


# The runners of this process by database (rendered URL): an enqueue wakes them when its transaction commits.
_local_runners: dict[str, set[JobRunner]] = {}


def _database_key(url: sa.URL) -> str:
    return url.render_as_string(hide_password=True)


def _wake_after_commit(session: AsyncSession) -> None:
    """Wake this process's runners on the session's database once its transaction commits (once per commit)."""
    if session.info.get(_WAKE_ON_COMMIT):
        return
    session.info[_WAKE_ON_COMMIT] = True
    key = _database_key(session.get_bind().engine.url)

    def wake(_session: Any) -> None:
        session.info.pop(_WAKE_ON_COMMIT, None)
        for runner in list(_local_runners.get(key, ())):
            runner.wake()

    sa.event.listen(session.sync_session, "after_commit", wake, once=True)


_last_enqueued: datetime | None = None


def _enqueue_time() -> datetime:
    """Now, but always later than this process's previous enqueue: jobs of one key run in `created_at` order, so
    two enqueues within the clock's resolution must not tie (ids, the tie-break, are random within a millisecond)."""
    global _last_enqueued
    now = utcnow()
    if _last_enqueued is not None and now <= _last_enqueued:
        now = _last_enqueued + timedelta(microseconds=1)
    _last_enqueued = now
    return now


async def enqueue(
    session: AsyncSession,
    *,
    organization_id: str,
    kind: str,
    payload: dict[str, Any] | None = None,
    queue_key: str | None = None,
    run_after: datetime | None = None,
    max_attempts: int = 5,
) -> str:
    """Add a job in the caller's transaction (it runs once that commits); returns its id (`job_…`)."""
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    now = _enqueue_time()
    job = Job(
        organization_id=organization_id,
        id=new_id("job"),
        kind=kind,
        payload=payload or {},
        queue_key=queue_key,
        status="queued",
        attempts=0,
        max_attempts=max_attempts,
        run_after=run_after or now,
        created_at=now,
        updated_at=now,
    )
    await JobRepository(session).add(job)
    await _announce(session)
    return job.id


async def _announce(session: AsyncSession) -> None:
    """Something may have become claimable: tell every runner once the transaction commits."""
    await notify(session, CHANNEL)
    _wake_after_commit(session)


class JobRunner:
    """Claims and runs this process's share of the jobs of the kinds registered on it.

    `concurrency` jobs at most at once; `lease_seconds` per claim, renewed every third of it; `poll_seconds`
    between safety polls when no notification comes."""

    def __init__(
        self,
        maker: async_sessionmaker[AsyncSession],
        engine: AsyncEngine,
        *,
        concurrency: int = 4,
        lease_seconds: float = 30.0,
        poll_seconds: float = 15.0,
    ) -> None:
        self._maker = maker
        self._engine = engine
        self._concurrency = concurrency
        self._lease = timedelta(seconds=lease_seconds)
        self._poll_seconds = poll_seconds
        self._handlers: dict[str, Handler] = {}
        self._running: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._listener = Listener(engine, CHANNEL, self.wake)

    def register(self, kind: str, handler: Handler) -> None:
        """Run jobs of `kind` with `handler`. A process claims only the kinds it has handlers for."""
        if kind in self._handlers:
            raise ValueError(f"a handler for job kind {kind!r} is already registered")
        self._handlers[kind] = handler
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    @property
    def running(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        _local_runners.setdefault(_database_key(self._engine.url), set()).add(self)
        self._loop_task = asyncio.create_task(self._loop(), name="jobs")

    async def stop(self) -> None:
        """Stop claiming; cancel the jobs still running and give them back (queued, the attempt not counted)."""
        self._stopping = True
        runners = _local_runners.get(_database_key(self._engine.url))
        if runners is not None:
            runners.discard(self)
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._listener.close()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._listener.ensure()
            except Exception:
                logger.warning("cannot LISTEN for job notifications; polling every %gs", self._poll_seconds)
            try:
                wait = await self._claim_and_start()
            except Exception as exc:
                if is_unavailable(exc):
                    logger.warning(
                        "cannot claim jobs: the database is unavailable; retrying in %gs", self._poll_seconds
                    )
                else:
                    logger.exception("claiming jobs failed")
                wait = self._poll_seconds
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()

    async def _claim_and_start(self) -> float:
        """Claim what fits and start it; returns how long to sleep unless woken."""
        free = self._concurrency - len(self._running)
        if free <= 0 or not self._handlers or self._stopping or observability.current().draining:
            return self._poll_seconds  # a finishing job wakes the loop
        now = utcnow()
        owner = new_id("lease")
        kinds = list(self._handlers)
        async with self._maker() as session:
            claimed = await JobRepository(session).claim(kinds, owner, now, now + self._lease, free)
            next_due = None if len(claimed) == free else await JobRepository(session).next_due(kinds, now)
            await session.commit()
        for row in claimed:
            job = QueuedJob(
                row.organization_id, row.id, row.kind, dict(row.payload), row.queue_key, row.attempts, row.max_attempts
            )
            key = (job.organization_id, job.id)
            self._running[key] = asyncio.create_task(self._run(job, owner), name=f"job {job.kind} {job.id}")
        if len(claimed) == free:
            return 0  # there may be more: look again at once (or wait for a slot)
        if next_due is None:
            return self._poll_seconds
        return min(max((next_due - utcnow()).total_seconds(), 0.0), self._poll_seconds)

    async def _run(self, job: QueuedJob, owner: str) -> None:
        handler_task = asyncio.create_task(self._handlers[job.kind](job), name=f"handler {job.kind} {job.id}")
        heartbeat = asyncio.create_task(self._heartbeat(job, owner, handler_task))
        try:
            # Tracked like a request: a drain lets it finish within the grace, then cancels it (the scope's own
            # cancellation ends here; a `stop()` cancels the task and goes on up).
            with observability.current().lifecycle.track():
                try:
                    outcome = await self._outcome(job, handler_task)
                except asyncio.CancelledError:
                    # Stopped or drained: the job goes back to the queue for another process (or a successor).
                    with anyio.CancelScope(shield=True):
                        await self._give_back(job, owner, handler_task)
                    raise
                heartbeat.cancel()
                if outcome is not None:
                    with anyio.CancelScope(shield=True):
                        await self._settle(job, owner, outcome)
        finally:
            heartbeat.cancel()
            self._running.pop((job.organization_id, job.id), None)
            self.wake()

    async def _outcome(self, job: QueuedJob, handler_task: asyncio.Task[None]) -> _Outcome | None:
        """What the handler's ending means for the job; None when its lease was lost (nothing to write)."""
        try:
            # Shielded: cancelling this wait (stop, drain) leaves the handler to `_give_back`, which cancels it.
            await asyncio.shield(handler_task)
        except RetryJob as exc:
            return _Outcome("retry", exc.reason, exc.delay_seconds)
        except JobFailed as exc:
            return _Outcome("failed", exc.reason)
        except asyncio.CancelledError:
            if handler_task.cancelled():
                return None  # the heartbeat cancelled it: the lease is someone else's now
            raise
        except Exception as exc:
            logger.exception("job %s (%s) failed on attempt %d", job.id, job.kind, job.attempt)
            return _Outcome("retry", f"{type(exc).__name__}: {exc}")
        return _Outcome("done")

    async def _heartbeat(self, job: QueuedJob, owner: str, handler_task: asyncio.Task[None]) -> None:
        interval = self._lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                async with self._maker() as session:
                    held = await JobRepository(session).renew(
                        job.organization_id, job.id, owner, utcnow() + self._lease
                    )
                    await session.commit()
            except Exception:
                # A database hiccup: the next beat may still come before the lease runs out.
                logger.warning("job lease heartbeat failed for %s", job.id, exc_info=True)
                continue
            if not held:
                logger.warning("job %s lost its lease (taken over elsewhere): stopping it here", job.id)
                handler_task.cancel()
                return

    async def _settle(self, job: QueuedJob, owner: str, outcome: _Outcome) -> None:
        status, error = outcome.status, outcome.error
        if status == "retry" and job.attempt >= job.max_attempts:
            status, error = "failed", f"{error} (attempt {job.attempt} of {job.max_attempts})"
        now = utcnow()
        async with self._maker() as session:
            repo = JobRepository(session)
            if status == "retry":
                delay = outcome.delay_seconds if outcome.delay_seconds is not None else backoff_seconds(job.attempt)
                run_after = now + timedelta(seconds=max(delay, 0.0))
                held = await repo.retry(job.organization_id, job.id, owner, run_after, error or "retry", now)
            else:
                held = await repo.finish(job.organization_id, job.id, owner, status, error, now)
            if held:
                await _announce(session)
            await session.commit()

    async def _give_back(self, job: QueuedJob, owner: str, handler_task: asyncio.Task[None]) -> None:
        handler_task.cancel()
        with contextlib.suppress(BaseException):
            await handler_task
        try:
            async with self._maker() as session:
                if await JobRepository(session).release(job.organization_id, job.id, owner, utcnow()):
                    await _announce(session)
                await session.commit()
        except Exception:
            # Not given back, it is still taken over once its lease expires.
            logger.warning("could not give job %s back to the queue", job.id, exc_info=True)
