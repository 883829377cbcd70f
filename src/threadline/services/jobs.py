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
attempt not counted) for the next process. A handler is cancelled at most once, and the runner then waits for it:
whatever transaction the cancellation interrupted is rolled back and its connection closed before anything else
happens (docs/ARCHITECTURE.md, "the rules").

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
_FIRST_PASS_TIMEOUT_SECONDS = 30.0
# At shutdown: how long the claim loop, then the stopped handlers, get to end before the process goes on exiting.
_STOP_SECONDS = 10.0
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
    status: str  # done | failed | retry | released (given back: stopped by the shutdown)
    error: str | None = None
    delay_seconds: float | None = None


_RELEASED = _Outcome("released")


class _Attempt:
    """A claimed job being run: its handler's task, and who stopped it, if anyone did."""

    def __init__(self, job: QueuedJob, owner: str, handler: asyncio.Task[None]) -> None:
        self.job = job
        self.owner = owner
        self.handler = handler
        self.stopped = False  # by the shutdown (or a drain): the job is given back
        self.lease_lost = False  # by the heartbeat: the job is someone else's now

    task: asyncio.Task[None]  # `JobRunner._run`, set as soon as it is created

    def stop(self, *, lease_lost: bool = False) -> None:
        """Cancel the handler, once: a second cancellation would cut short SQLAlchemy's close of a connection the
        first one interrupted (docs/ARCHITECTURE.md, "the rules"). A handler that has already ended is left be."""
        if self.stopped or self.lease_lost or not self.handler.cancel():
            return
        if lease_lost:
            self.lease_lost = True
        else:
            self.stopped = True


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
        self._running: dict[tuple[str, str], _Attempt] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._listener = Listener(engine, CHANNEL, lambda _payload: self.wake())

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
        """Register for wake-ups and make a first pass (what is due already is claimed before the app serves), then
        keep claiming in a task of its own."""
        _local_runners.setdefault(_database_key(self._engine.url), set()).add(self)
        try:
            # Bounded: a database that does not answer yet must not hold the start up (the loop retries).
            async with asyncio.timeout(_FIRST_PASS_TIMEOUT_SECONDS):
                wait = await self._pass()
        except TimeoutError:
            wait = 0.0
        self._loop_task = asyncio.create_task(self._loop(wait), name="jobs")

    async def stop(self) -> None:
        """Stop claiming (between passes: a claim is never cut off), stop the handlers still running (each cancelled
        once) and wait for their jobs to be given back (queued, the attempt not counted), or settled if they ended
        first. Bounded: what has not ended after `_STOP_SECONDS` is left to its lease."""
        self._stopping = True
        runners = _local_runners.get(_database_key(self._engine.url))
        if runners is not None:
            runners.discard(self)
        if self._loop_task is not None:
            self.wake()
            if not await _ended({self._loop_task}):
                self._loop_task.cancel()  # a database that does not answer: no transaction of ours to spare
                await asyncio.wait([self._loop_task])
        attempts = list(self._running.values())
        for attempt in attempts:
            attempt.stop()
        if not await _ended({attempt.task for attempt in attempts}):
            logger.warning(
                "jobs still running %gs after the shutdown stopped them: left to their leases", _STOP_SECONDS
            )
        await self._listener.close()

    async def _loop(self, wait: float) -> None:
        while True:
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()  # `stop()` wakes it
            if self._stopping:
                return
            wait = await self._pass()

    async def _pass(self) -> float:
        """Listen (again) if need be, claim what is due; returns how long to sleep unless woken. Never raises."""
        self._wake.clear()
        try:
            await self._listener.ensure()
        except Exception:
            logger.warning("cannot LISTEN for job notifications; polling every %gs", self._poll_seconds)
        try:
            return await self._claim_and_start()
        except Exception as exc:
            if is_unavailable(exc):
                logger.warning("cannot claim jobs: the database is unavailable; retrying in %gs", self._poll_seconds)
            else:
                logger.exception("claiming jobs failed")
            return self._poll_seconds

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
            handler = asyncio.create_task(self._handlers[job.kind](job), name=f"handler {job.kind} {job.id}")
            attempt = _Attempt(job, owner, handler)
            attempt.task = asyncio.create_task(self._run(attempt), name=f"job {job.kind} {job.id}")
            self._running[(job.organization_id, job.id)] = attempt
        if len(claimed) == free:
            return 0  # there may be more: look again at once (or wait for a slot)
        if next_due is None:
            return self._poll_seconds
        return min(max((next_due - utcnow()).total_seconds(), 0.0), self._poll_seconds)

    async def _run(self, attempt: _Attempt) -> None:
        job = attempt.job
        beating = asyncio.Event()
        heartbeat = asyncio.create_task(self._heartbeat(attempt, beating), name=f"job lease {job.id}")
        try:
            # Tracked like a request: a drain lets it finish within the grace, then stops it (the scope's own
            # cancellation ends here).
            with observability.current().lifecycle.track():
                try:
                    await asyncio.wait([attempt.handler])
                except asyncio.CancelledError:
                    attempt.stop()  # drained: the job goes back to the queue for a successor
                    raise
                finally:
                    with anyio.CancelScope(shield=True):
                        # A stopped handler ends first (the transaction it was in rolled back), then the heartbeat
                        # (between beats), and only then is its job written down.
                        await asyncio.wait([attempt.handler])
                        await _stop(heartbeat, beating)
                        outcome = self._outcome(attempt)
                        if outcome is _RELEASED:
                            await self._release(attempt)
                        elif outcome is not None:
                            await self._settle(job, attempt.owner, outcome)
        finally:
            beating.set()
            self._running.pop((job.organization_id, job.id), None)
            self.wake()

    def _outcome(self, attempt: _Attempt) -> _Outcome | None:
        """What the (ended) handler's ending means for its job; None when its lease was lost (nothing to write)."""
        job, handler = attempt.job, attempt.handler
        error = None if handler.cancelled() else handler.exception()
        if attempt.lease_lost:
            return None
        if attempt.stopped and (handler.cancelled() or error is not None):
            return _RELEASED  # stopped by the shutdown: an attempt cut short is not counted
        if handler.cancelled():
            return _Outcome("retry", "the handler was cancelled")
        if error is None:
            return _Outcome("done")
        if isinstance(error, RetryJob):
            return _Outcome("retry", error.reason, error.delay_seconds)
        if isinstance(error, JobFailed):
            return _Outcome("failed", error.reason)
        logger.error("job %s (%s) failed on attempt %d", job.id, job.kind, job.attempt, exc_info=error)
        return _Outcome("retry", f"{type(error).__name__}: {error}")

    async def _heartbeat(self, attempt: _Attempt, stopped: asyncio.Event) -> None:
        """Renew the lease every third of it until `stopped` is set: it ends between beats, never inside a beat's
        transaction. A lease found lost stops the handler."""
        job = attempt.job
        interval = self._lease.total_seconds() / 3
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), interval)
            if stopped.is_set():
                return
            try:
                async with self._maker() as session:
                    held = await JobRepository(session).renew(
                        job.organization_id, job.id, attempt.owner, utcnow() + self._lease
                    )
                    await session.commit()
            except Exception:
                # A database hiccup: the next beat may still come before the lease runs out.
                logger.warning("job lease heartbeat failed for %s", job.id, exc_info=True)
                continue
            if not held:
                logger.warning("job %s lost its lease (taken over elsewhere): stopping it here", job.id)
                attempt.stop(lease_lost=True)
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

    async def _release(self, attempt: _Attempt) -> None:
        job = attempt.job
        try:
            async with self._maker() as session:
                if await JobRepository(session).release(job.organization_id, job.id, attempt.owner, utcnow()):
                    await _announce(session)
                await session.commit()
        except Exception:
            # Not given back, it is still taken over once its lease expires.
            logger.warning("could not give job %s back to the queue", job.id, exc_info=True)


async def _stop(heartbeat: asyncio.Task[None], stopped: asyncio.Event) -> None:
    """End the heartbeat and wait for it: a beat under way finishes its transaction first."""
    stopped.set()
    await asyncio.wait([heartbeat])  # (its own outcome is not raised here: it logs its failures itself)


async def _ended(tasks: set[asyncio.Task[None]]) -> bool:
    """Wait up to `_STOP_SECONDS` for `tasks` to end; whether they all did."""
    if not tasks:
        return True
    _, pending = await asyncio.wait(tasks, timeout=_STOP_SECONDS)
    return not pending
