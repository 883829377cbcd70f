"""Background work on the database: queue latency and the cost of recording stream events.

- Queue latency: a job enqueued (and committed) until its handler starts, one at a time, through a real
  `JobRunner` woken by the commit (in process); p50/p99.
- Recording: the events of a streamed turn written by `EventRecorder` (batches of at most 50 ms / 64 events, each
  one multi-row INSERT in its own transaction) as fast as a model could send them, then what a turn of N tokens
  pays: wall time until all are written, transactions used, and the cost per event.

    PYTHONPATH=src .venv/bin/python bench/background.py [--backends sqlite,postgresql] [--jobs 50] [--tokens 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from threadline.services import jobs  # noqa: E402
from threadline.services.response_streams import EventRecorder, StreamHub  # noqa: E402
from threadline.storage.engine import create_engine, create_sessionmaker, upgrade  # noqa: E402

POSTGRES_ADMIN_URL = os.environ.get("THREADLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@asynccontextmanager
async def database(backend: str, workdir: Path) -> AsyncIterator[str]:
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
        await asyncio.to_thread(upgrade, url)
        yield url
        return
    name = f"threadline_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{name}"
    try:
        await asyncio.to_thread(upgrade, url)
        yield url
    finally:
        admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def queue_latency(url: str, count: int) -> list[float]:
    engine = create_engine(url)
    maker = create_sessionmaker(engine)
    started: asyncio.Queue[float] = asyncio.Queue()

    async def handler(job: jobs.QueuedJob) -> None:
        await started.put(time.perf_counter())

    runner = jobs.JobRunner(maker, engine, poll_seconds=3600)
    runner.register("bench.noop", handler)
    await runner.start()
    latencies = []
    try:
        for _ in range(count):
            async with maker() as session:
                await jobs.enqueue(session, organization_id="org_bench", kind="bench.noop")
                await session.commit()
                committed = time.perf_counter()
            latencies.append((await started.get() - committed) * 1000)
    finally:
        await runner.stop()
        await engine.dispose()
    return latencies


async def recording(url: str, tokens: int) -> tuple[float, float, int]:
    """(ms until every event of a `tokens`-token stream is written, ms spent writing, transactions used)."""
    engine = create_engine(url)
    maker = create_sessionmaker(engine)
    hub = StreamHub(engine)
    writes = 0
    writing = 0.0
    try:
        recorder = EventRecorder(maker, hub, "org_bench", f"resp_{uuid.uuid4().hex}")
        flush = recorder.flush

        async def counted() -> None:
            nonlocal writes, writing
            began = time.perf_counter()
            await flush()
            if recorder_flushed(began):
                writes += 1
            writing += time.perf_counter() - began

        recorder.flush = counted  # type: ignore[method-assign]
        start = time.perf_counter()
        payload = '{"type": "response.output_text.delta", "delta": " word", "item_id": "msg_x", "output_index": 0}'
        for number in range(tokens):
            recorder.add(number, "response.output_text.delta", payload)
            await asyncio.sleep(0)  # a model's tokens arrive one by one
        recorder.add(tokens, "response.completed", "{}")
        await recorder.aclose()
        return (time.perf_counter() - start) * 1000, writing * 1000, writes
    finally:
        await engine.dispose()


def recorder_flushed(began: float) -> bool:
    """A flush with nothing pending returns at once; count only those that wrote (took a round trip)."""
    return time.perf_counter() - began > 0.0002


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=500)
    args = parser.parse_args()
    print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}")
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            async with database(backend, Path(tmp)) as url:
                latencies = await queue_latency(url, args.jobs)
                elapsed, writing, writes = await recording(url, args.tokens)
        events = args.tokens + 1
        print(
            f"{backend:10} queue latency (enqueue committed -> handler starts): p50 {statistics.median(latencies):.2f}"
            f" ms, p99 {percentile(latencies, 0.99):.2f} ms over {args.jobs} jobs"
        )
        print(
            f"{backend:10} recording a {args.tokens}-token stream ({events} events): all written {elapsed:.1f} ms after"
            f" the first, {writes} transactions, {writing:.1f} ms writing = {writing / events * 1000:.0f} µs per event"
        )


if __name__ == "__main__":
    asyncio.run(main())
