"""A job worker process for tests/test_jobs_processes.py: a real `JobRunner` on a database, with test handlers that
write what they do to a log file (one line per event: `<event> <job id> <attempt> <pid>`).

Kinds: `test.record` (logs start and end), `test.hold` (logs start, then holds its first attempt forever: the test
kills the process), `test.gate` (logs start, then waits until the file named in its payload exists).

    python tests/job_worker.py DATABASE_URL LOG --lease 2 --concurrency 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from threadline.services import jobs
from threadline.storage.engine import create_engine, create_sessionmaker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("database_url")
    parser.add_argument("log", type=Path)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(work(args.database_url, args.log, args.lease, args.concurrency))


async def work(database_url: str, log: Path, lease: float, concurrency: int) -> None:
    def write(event: str, job: jobs.QueuedJob) -> None:
        with log.open("a") as out:
            out.write(f"{event} {job.id} {job.attempt} {os.getpid()}\n")

    async def record(job: jobs.QueuedJob) -> None:
        write("start", job)
        await asyncio.sleep(0.01)
        write("end", job)

    async def hold(job: jobs.QueuedJob) -> None:
        write("start", job)
        if job.attempt == 1:
            await asyncio.Event().wait()
        write("end", job)

    async def gate(job: jobs.QueuedJob) -> None:
        write("start", job)
        release = Path(job.payload["release"])
        while True:  # the test creates the file once it has seen both workers hold a gate
            if await asyncio.to_thread(release.exists):
                break
            await asyncio.sleep(0.05)
        write("end", job)

    engine = create_engine(database_url)
    # The safety poll is an hour away: work reaches this process by NOTIFY or by its own lease arithmetic.
    runner = jobs.JobRunner(
        create_sessionmaker(engine), engine, concurrency=concurrency, lease_seconds=lease, poll_seconds=3600
    )
    runner.register("test.record", record)
    runner.register("test.hold", hold)
    runner.register("test.gate", gate)
    await runner.start()
    with log.open("a") as out:
        out.write(f"ready - 0 {os.getpid()}\n")
    try:
        await asyncio.Event().wait()
    finally:
        await runner.stop()
        await engine.dispose()


if __name__ == "__main__":
    main()
