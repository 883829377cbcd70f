"""The job queue in one process, on SQLite and PostgreSQL: enqueue in the caller's transaction, claim, complete,
retry with backoff, bounded attempts, per-key order. (tests/test_jobs_processes.py kills real worker processes.)

Every runner here polls only once an hour: a job that runs at all was woken by its enqueue's commit (in process)
or by NOTIFY, never by the safety poll."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tests.conftest import _empty_all_tables
from tests.test_query_plans import _Recorder, generic_plan
from threadline import observability
from threadline.domain.backoff import backoff_seconds
from threadline.domain.clock import utcnow
from threadline.observability import Lifecycle, Observer
from threadline.services import jobs
from threadline.storage.engine import create_engine, create_sessionmaker
from threadline.storage.repositories.jobs import JobRepository
from threadline.storage.tables import Job

ORG = "org_jobs"
HOUR = 3600.0


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()
    await _empty_all_tables(database_url)


@pytest.fixture
def maker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


@pytest.fixture
async def runner(maker: async_sessionmaker[AsyncSession], engine: AsyncEngine) -> AsyncIterator[jobs.JobRunner]:
    runner = jobs.JobRunner(maker, engine, concurrency=4, lease_seconds=30, poll_seconds=HOUR)
    await runner.start()
    yield runner
    await runner.stop()


async def enqueue(maker: async_sessionmaker[AsyncSession], kind: str, **options: object) -> str:
    async with maker() as session:
        job_id = await jobs.enqueue(session, organization_id=ORG, kind=kind, **options)  # type: ignore[arg-type]
        await session.commit()
    return job_id


async def job_row(maker: async_sessionmaker[AsyncSession], job_id: str) -> Job:
    async with maker() as session:
        found = await JobRepository(session).get(ORG, job_id)
    assert found is not None
    return found


async def until(check: Callable[[], Awaitable[bool]], what: str, within: float = 30.0) -> None:
    """Wait for a condition the code under test brings about (bounded; the bound is no timing assertion)."""
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.02)


async def finished(maker: async_sessionmaker[AsyncSession], job_id: str) -> Job:
    async def settled() -> bool:
        return (await job_row(maker, job_id)).status in ("done", "failed")

    await until(settled, f"job {job_id} finished")
    return await job_row(maker, job_id)


def test_backoff_doubles_up_to_its_cap_less_its_jitter() -> None:
    assert [backoff_seconds(n, rand=lambda: 0.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff_seconds(30, rand=lambda: 0.0) == 300.0
    assert backoff_seconds(10_000, rand=lambda: 0.0) == 300.0  # no overflow, however many attempts
    assert backoff_seconds(3, rand=lambda: 1.0) == pytest.approx(4.0 * 0.8)
    assert backoff_seconds(2, base=5, cap=7, jitter=0, rand=lambda: 0.5) == 7.0


async def test_a_job_runs_once_its_transaction_commits_and_never_if_it_rolls_back(
    maker: async_sessionmaker[AsyncSession], runner: jobs.JobRunner
) -> None:
    seen: list[jobs.QueuedJob] = []

    async def handler(job: jobs.QueuedJob) -> None:
        seen.append(job)

    runner.register("test.record", handler)
    async with maker() as session:
        await jobs.enqueue(session, organization_id=ORG, kind="test.record", payload={"n": 0})
        await session.rollback()
    job_id = await enqueue(maker, "test.record", payload={"n": 1}, queue_key="thread_1")

    row = await finished(maker, job_id)
    assert (row.status, row.attempts, row.lease_owner, row.last_error) == ("done", 1, None, None)
    assert row.finished_at is not None
    assert [(j.id, j.payload, j.queue_key, j.attempt, j.max_attempts) for j in seen] == [
        (job_id, {"n": 1}, "thread_1", 1, 5)
    ]
    async with maker() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(Job)) == 1  # the rolled-back one: none


async def test_a_retry_runs_again_and_attempts_are_bounded(
    maker: async_sessionmaker[AsyncSession], runner: jobs.JobRunner
) -> None:
    attempts: dict[str, list[int]] = {}

    async def flaky(job: jobs.QueuedJob) -> None:
        attempts.setdefault(job.id, []).append(job.attempt)
        if job.attempt < 3:
            raise jobs.RetryJob(f"not yet ({job.attempt})", delay_seconds=0)

    async def broken(job: jobs.QueuedJob) -> None:
        attempts.setdefault(job.id, []).append(job.attempt)
        raise ValueError("the receiver is down")

    async def hopeless(job: jobs.QueuedJob) -> None:
        attempts.setdefault(job.id, []).append(job.attempt)
        raise jobs.JobFailed("the endpoint was deleted")

    runner.register("test.flaky", flaky)
    runner.register("test.broken", broken)
    runner.register("test.hopeless", hopeless)
    flaky_id = await enqueue(maker, "test.flaky")
    broken_id = await enqueue(maker, "test.broken", max_attempts=2)
    hopeless_id = await enqueue(maker, "test.hopeless")

    row = await finished(maker, flaky_id)
    assert (row.status, row.attempts) == ("done", 3)
    assert attempts[flaky_id] == [1, 2, 3]

    # Retried after the backoff of a first failure (about a second), then failed for good: 2 attempts of 2.
    row = await finished(maker, broken_id)
    assert (row.status, row.attempts) == ("failed", 2)
    assert row.last_error is not None and "ValueError: the receiver is down" in row.last_error
    assert attempts[broken_id] == [1, 2]

    row = await finished(maker, hopeless_id)
    assert (row.status, row.attempts, row.last_error) == ("failed", 1, "the endpoint was deleted")
    assert attempts[hopeless_id] == [1]


async def test_a_retry_waits_for_its_delay(maker: async_sessionmaker[AsyncSession], runner: jobs.JobRunner) -> None:
    async def later(job: jobs.QueuedJob) -> None:
        raise jobs.RetryJob("in an hour", delay_seconds=HOUR)

    runner.register("test.later", later)
    job_id = await enqueue(maker, "test.later")

    async def requeued() -> bool:
        row = await job_row(maker, job_id)
        return row.status == "queued" and row.attempts == 1

    await until(requeued, "the job waits for its retry")
    row = await job_row(maker, job_id)
    assert row.last_error == "in an hour"
    assert row.run_after > utcnow() + timedelta(minutes=59)
    # Not claimable before its time, claimable after it.
    async with maker() as session:
        repo = JobRepository(session)
        now = utcnow()
        assert await repo.claim(["test.later"], "lease_a", now, now + timedelta(seconds=30), 10) == []
        assert await repo.next_due(["test.later"], now) == row.run_after
        later_on = row.run_after + timedelta(seconds=1)
        claimed = await repo.claim(["test.later"], "lease_b", later_on, later_on + timedelta(seconds=30), 10)
        assert [(j.id, j.attempts, j.lease_owner) for j in claimed] == [(job_id, 2, "lease_b")]
        await session.rollback()


async def test_jobs_of_one_key_run_one_at_a_time_in_order_and_other_keys_do_not_wait(
    maker: async_sessionmaker[AsyncSession], runner: jobs.JobRunner
) -> None:
    events: list[str] = []
    other_started = asyncio.Event()

    async def handler(job: jobs.QueuedJob) -> None:
        name = job.payload["name"]
        events.append(f"{name} start")
        if name == "a":
            # Holds key thread_1 until the job of another key runs: that one is not queued behind it.
            await other_started.wait()
        if name == "other":
            other_started.set()
        await asyncio.sleep(0)
        events.append(f"{name} end")

    runner.register("test.turn", handler)
    async with maker() as session:
        ids = [
            await jobs.enqueue(
                session, organization_id=ORG, kind="test.turn", payload={"name": name}, queue_key=f"thread_{key}"
            )
            for name, key in (("a", 1), ("b", 1), ("c", 1), ("other", 2))
        ]
        await session.commit()
    for job_id in ids:
        assert (await finished(maker, job_id)).status == "done"

    keyed = [event for event in events if not event.startswith("other")]
    assert keyed == ["a start", "a end", "b start", "b end", "c start", "c end"]
    assert events.index("other start") < events.index("a end")


async def test_a_runner_claims_only_the_kinds_it_handles(
    maker: async_sessionmaker[AsyncSession], runner: jobs.JobRunner
) -> None:
    ran: list[str] = []

    async def handler(job: jobs.QueuedJob) -> None:
        ran.append(job.kind)

    runner.register("test.known", handler)
    unknown_id = await enqueue(maker, "test.unknown")
    known_id = await enqueue(maker, "test.known")
    assert (await finished(maker, known_id)).status == "done"
    row = await job_row(maker, unknown_id)
    assert (row.status, row.attempts) == ("queued", 0)  # left for a process that knows it
    assert ran == ["test.known"]


async def test_stopping_gives_a_running_job_back_uncounted(
    maker: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    runner = jobs.JobRunner(maker, engine, lease_seconds=30, poll_seconds=HOUR)
    started = asyncio.Event()

    async def forever(job: jobs.QueuedJob) -> None:
        started.set()
        await asyncio.Event().wait()

    runner.register("test.forever", forever)
    await runner.start()
    try:
        job_id = await enqueue(maker, "test.forever")
        async with asyncio.timeout(30):
            await started.wait()
    finally:
        await runner.stop()
    row = await job_row(maker, job_id)
    assert (row.status, row.attempts, row.lease_owner, row.lease_expires_at) == ("queued", 0, None, None)
    assert runner.running == 0


async def test_a_drain_gives_the_running_job_back_once_its_grace_is_over(
    maker: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    lifecycle = Lifecycle()
    token = observability.bind(Observer(lifecycle=lifecycle))  # as the app's lifespan binds it
    try:
        runner = jobs.JobRunner(maker, engine, lease_seconds=30, poll_seconds=HOUR)
        started = asyncio.Event()

        async def forever(job: jobs.QueuedJob) -> None:
            started.set()
            await asyncio.Event().wait()

        runner.register("test.forever", forever)
        await runner.start()
        try:
            job_id = await enqueue(maker, "test.forever")
            async with asyncio.timeout(30):
                await started.wait()
            assert lifecycle.running == 1  # a running job counts like a running request
            assert await lifecycle.drain(0) == 1
            row = await job_row(maker, job_id)
            assert (row.status, row.attempts, row.lease_owner) == ("queued", 0, None)
        finally:
            await runner.stop()
    finally:
        observability.unbind(token)


# A statement that keeps the database busy for a moment (no table needed): a cancellation lands while it runs.
_BUSY_SQL = {
    "sqlite": "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 300000) SELECT count(*) FROM n",
    "postgresql": "SELECT pg_sleep(0.3)",
}


async def writable_at_once(engine: AsyncEngine) -> bool:
    """Whether another connection takes the write lock without waiting (SQLite; PostgreSQL has no such lock)."""
    if engine.dialect.name != "sqlite":
        return True
    database = engine.url.database
    assert database is not None
    connection = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
    except sqlite3.OperationalError:
        return False
    finally:
        connection.close()
    return True


@contextlib.contextmanager
def running_busy_statement(engine: AsyncEngine) -> Iterator[asyncio.Event]:
    """An event set as the busy statement is handed to the driver: a task cancelled once it is set is cancelled
    while the database runs it."""
    started = asyncio.Event()

    def before(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement == _BUSY_SQL[engine.dialect.name]:
            started.set()

    sa.event.listen(engine.sync_engine, "before_cursor_execute", before)
    try:
        yield started
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", before)


async def test_a_task_cancelled_inside_its_transaction_leaves_the_database_writable(
    maker: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    """Cancelled mid-statement (PostgreSQL) or between statements (SQLite, docs/storage.md): its transaction is
    rolled back before its own cleanup runs. (A SQLite write cancelled on a driver thread once kept the lock.)"""
    cleanup: list[str] = []

    async def write() -> None:
        try:
            async with maker() as session:
                await session.execute(sa.update(Job).values(last_error="mid-transaction"))
                await session.execute(sa.text(_BUSY_SQL[engine.dialect.name]))
        except asyncio.CancelledError:
            cleanup.append("writable" if await writable_at_once(engine) else "locked")
            raise

    with running_busy_statement(engine) as inside:
        task = asyncio.create_task(write())
        async with asyncio.timeout(30):
            await inside.wait()
        task.cancel()
        await asyncio.wait([task])
    assert task.cancelled() and cleanup == ["writable"]
    assert await writable_at_once(engine)


async def test_stopping_a_handler_inside_its_transaction_rolls_it_back_and_gives_its_job_back(
    maker: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    runner = jobs.JobRunner(maker, engine, lease_seconds=30, poll_seconds=HOUR)

    async def writer(job: jobs.QueuedJob) -> None:
        async with maker() as session:
            await session.execute(sa.update(Job).where(Job.id == job.id).values(last_error="mid-transaction"))
            await session.execute(sa.text(_BUSY_SQL[engine.dialect.name]))  # PostgreSQL: stopped in here
            await asyncio.Event().wait()  # SQLite, whose statements never suspend: here, still in the transaction

    runner.register("test.writer", writer)
    await runner.start()
    with running_busy_statement(engine) as inside:
        try:
            job_id = await enqueue(maker, "test.writer")
            async with asyncio.timeout(30):
                await inside.wait()
        finally:
            await runner.stop()
    assert await writable_at_once(engine)
    row = await job_row(maker, job_id)
    assert (row.status, row.attempts, row.lease_owner, row.last_error) == ("queued", 0, None, None)


async def test_a_job_that_ended_as_the_runner_stopped_is_settled(
    maker: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    """Stopping never cuts off the runner's own transactions: a handler that has returned gets its job `done`,
    not left `running` under a lease another process would wait out and run again."""
    runner = jobs.JobRunner(maker, engine, lease_seconds=30, poll_seconds=HOUR)
    returned = asyncio.Event()

    async def quick(job: jobs.QueuedJob) -> None:
        returned.set()

    runner.register("test.quick", quick)
    await runner.start()
    try:
        job_id = await enqueue(maker, "test.quick")
        async with asyncio.timeout(30):
            await returned.wait()
    finally:
        await runner.stop()
    row = await job_row(maker, job_id)
    assert (row.status, row.attempts, row.lease_owner) == ("done", 1, None)


async def test_the_claim_reads_only_the_index_of_unfinished_jobs(
    maker: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    """Every process claims every poll: on the partial indexes of unfinished jobs (the claimable ones, and those of
    a queue key ahead), also under PostgreSQL's generic plan, whatever the number of finished jobs kept."""
    await enqueue(maker, "test.plan", queue_key="thread_1")
    recorder = _Recorder()
    sa.event.listen(engine.sync_engine, "before_cursor_execute", recorder)
    try:
        async with maker() as session:
            now = utcnow()
            claimed = await JobRepository(session).claim(["test.plan"], "lease_a", now, now + timedelta(seconds=30), 1)
            assert len(claimed) == 1
            await session.rollback()
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", recorder)
    statement, parameters = next((s, p) for s, p in recorder.statements if s.lstrip().startswith("SELECT"))
    plan = await generic_plan(engine, statement, parameters)
    assert "ix_jobs_claimable" in plan and "ix_jobs_queue_key" in plan, plan
