"""The job queue across real processes (tests/job_worker.py): a worker killed mid-job has its job taken over once
the lease expires, on SQLite and PostgreSQL; two workers on one PostgreSQL share the work, leave each other's live
leases alone and run no job twice. The workers poll once an hour: work reaches them by LISTEN/NOTIFY (PostgreSQL)
or by their own lease arithmetic (a job whose lease will expire), never by the safety poll."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import _empty_all_tables
from tests.helpers import with_session
from tests.servers import threadline_env, until
from threadline.domain.clock import utcnow
from threadline.services import jobs
from threadline.storage.repositories.jobs import JobRepository
from threadline.storage.tables import Job

pytestmark = pytest.mark.slow

ORG = "org_jobs"
LEASE_SECONDS = 2.0
T = TypeVar("T")


def enqueue(database_url: str, kind: str, count: int = 1, payload: dict[str, Any] | None = None) -> list[str]:
    async def work(session: Any) -> list[str]:
        return [await jobs.enqueue(session, organization_id=ORG, kind=kind, payload=payload) for _ in range(count)]

    result: list[str] = with_session(database_url, work)
    return result


def rows(database_url: str, ids: list[str]) -> dict[str, Job]:
    async def work(session: Any) -> dict[str, Job]:
        repo = JobRepository(session)
        return {job_id: await repo.get(ORG, job_id) for job_id in ids}

    found: dict[str, Job] = with_session(database_url, work)
    return found


def log_lines(log: Path) -> list[tuple[str, str, int, int]]:
    """(event, job id, attempt, pid) per line the worker wrote."""
    if not log.exists():
        return []
    lines = []
    for line in log.read_text().splitlines():
        event, job_id, attempt, pid = line.split()
        lines.append((event, job_id, int(attempt), int(pid)))
    return lines


@contextmanager
def worker(database_url: str, log: Path, *, concurrency: int = 1) -> Iterator[subprocess.Popen[bytes]]:
    """A worker process, once it has started its runner; killed afterwards whatever happens."""
    command = [
        sys.executable,
        str(Path(__file__).with_name("job_worker.py")),
        database_url,
        str(log),
        "--lease",
        str(LEASE_SECONDS),
        "--concurrency",
        str(concurrency),
    ]
    output = log.with_suffix(".out")
    with output.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=threadline_env(database_url))
    try:

        def ready() -> bool:
            if process.poll() is not None:
                pytest.fail(f"the worker exited with {process.returncode}:\n{output.read_text()[-3000:]}")
            return any(event == "ready" for event, *_ in log_lines(log))

        until(ready, "the worker is ready")
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_a_killed_workers_job_is_taken_over_once_its_lease_expires(db: str, tmp_path: Path) -> None:
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    # Enqueued before the worker starts: SQLite has no cross-process wake-up (its jobs run in one process), and a
    # starting runner claims what is due.
    [job_id] = enqueue(db, "test.hold")
    with worker(db, first_log) as first:
        until(lambda: ("start", job_id, 1, first.pid) in log_lines(first_log), "the first worker runs the job")
        held = rows(db, [job_id])[job_id]
        assert (held.status, held.attempts) == ("running", 1)
        first.send_signal(signal.SIGKILL)
        first.wait()

    # The job still says running, under the dead process's lease; a new worker takes it over once that expires.
    with worker(db, second_log) as second:

        def done() -> bool:
            return rows(db, [job_id])[job_id].status == "done"

        until(done, "the second worker finishes the job")
        row = rows(db, [job_id])[job_id]
        assert (row.attempts, row.lease_owner, row.last_error) == (2, None, None)
        assert [line for line in log_lines(second_log) if line[1] == job_id] == [
            ("start", job_id, 2, second.pid),
            ("end", job_id, 2, second.pid),
        ]
    assert [event for event, found, *_ in log_lines(first_log) if found == job_id] == ["start"]


def test_two_workers_on_one_postgresql_share_the_work_and_run_no_job_twice(postgresql_url: str, tmp_path: Path) -> None:
    db = postgresql_url
    try:
        logs = [tmp_path / "a.log", tmp_path / "b.log"]
        release = tmp_path / "release"
        with ExitStack() as stack:
            processes = [stack.enter_context(worker(db, log)) for log in logs]
            # One job at a time per worker: two held gate jobs can only be running in two different workers.
            gates = enqueue(db, "test.gate", 2, payload={"release": str(release)})

            def gates_started() -> list[tuple[str, str, int, int]]:
                return [line for log in logs for line in log_lines(log) if line[0] == "start"]

            until(lambda: len(gates_started()) == 2, "both workers run a gate job")
            assert {pid for *_, pid in gates_started()} == {p.pid for p in processes}

            # Their leases outlive their first term through the heartbeats, and neither worker touches the
            # other's live lease meanwhile.
            first_terms = {job_id: row.lease_expires_at for job_id, row in rows(db, gates).items()}
            owners = {job_id: row.lease_owner for job_id, row in rows(db, gates).items()}

            def renewed_past_first_term() -> bool:
                current = rows(db, gates)
                return utcnow() > max(first_terms.values()) and all(
                    row.lease_owner == owners[job_id] and row.lease_expires_at > first_terms[job_id]
                    for job_id, row in current.items()
                )

            until(renewed_past_first_term, "the gate leases are renewed past their first term")
            assert len(gates_started()) == 2

            records = enqueue(db, "test.record", 40)
            release.touch()

            def all_done() -> bool:
                return all(row.status == "done" for row in rows(db, gates + records).values())

            until(all_done, "every job is done")

        started = [job_id for log in logs for event, job_id, *_ in log_lines(log) if event == "start"]
        assert sorted(started) == sorted(gates + records)  # each job ran exactly once
        assert {row.attempts for row in rows(db, gates + records).values()} == {1}
    finally:
        asyncio.run(_empty_all_tables(db))
