"""Benchmark: forks cost the same whatever the source's length; export and import stream at a flat memory.

For SQLite and PostgreSQL (a throw-away database on THREADLINE_TEST_POSTGRES_URL):

1. fork cost vs source length: threads of 10 / 1,000 / 10,000 messages (bulk inserts), forked from their newest
   item and from their middle one through the fork service; prints the median time and the SQL statements run;
2. export: `--threads` threads of `--messages` items each, streamed to a file through the export service, in a
   child process; prints items/s and the child's peak RSS;
3. import: that file into another organization through the import service, in a child process; items/s and peak
   RSS. Run with two sizes (`--threads 1000` and `--threads 10000`) to see the peak RSS stay flat.

    PYTHONPATH=src python bench/thread_data.py [--threads 2000] [--messages 20] [--backend sqlite|postgresql|both]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy as sa

from threadline.config import Settings
from threadline.services import auth, forks, thread_export, thread_import
from threadline.services.auth import Principal
from threadline.storage.engine import create_engine, create_sessionmaker, upgrade
from threadline.storage.repositories.threads import ThreadFilter
from threadline.storage.tables import Message, Thread

POSTGRES_ADMIN_URL = os.environ.get("THREADLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BATCH = 5_000
FORK_RUNS = 15


def _thread(org: str, thread_id: str, count: int, created: datetime) -> dict[str, Any]:
    return {
        "organization_id": org,
        "id": thread_id,
        "metadata_": {},
        "space_ids": [],
        "visible_in_ui": True,
        "kind": "thread",
        "state": "open",
        "status": "inactive",
        "is_pinned": False,
        "message_count": count,
        "next_seq": count + 1,
        "created_at": created,
        "updated_at": created,
        "last_message_at": created,
    }


def _message(org: str, thread_id: str, seq: int, created: datetime) -> dict[str, Any]:
    return {
        "organization_id": org,
        "id": f"msg_{thread_id}_{seq:06d}",
        "thread_id": thread_id,
        "seq": seq,
        "role": "user" if seq % 2 else "assistant",
        "content": f"message {seq} of {thread_id}: some ordinary words to carry",
        "metadata_": {},
        "created_at": created,
        "edit_count": 0,
    }


async def _insert(session: Any, table: type, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), BATCH):
        await session.execute(sa.insert(table), rows[start : start + BATCH])


async def fork_costs(url: str) -> None:
    engine = create_engine(url)
    maker = create_sessionmaker(engine)
    statements = 0

    def count(*_: Any) -> None:
        nonlocal statements
        statements += 1

    try:
        async with maker() as session:
            key, _ = await auth.create_api_key(session, "forker", "fork@bench.test")
            await session.commit()
        principal = Principal(key.user_id, "fork@bench.test", (key.organization_id,), "api_key", key.id)
        org = key.organization_id
        now = datetime.now(UTC)
        print(f"  {'source':>8}  {'fork from newest':>18}  {'fork from middle':>18}")
        for length in (10, 1_000, 10_000):
            source = f"thread_src_{length}"
            async with maker() as session:
                await _insert(session, Thread, [_thread(org, source, length, now)])
                await _insert(session, Message, [_message(org, source, s, now) for s in range(1, length + 1)])
                await session.commit()
            middle = f"msg_{source}_{length // 2:06d}"
            figures = []
            for message_id in (None, middle):
                times = []
                sa.event.listen(engine.sync_engine, "before_cursor_execute", count)
                statements = 0
                for _ in range(FORK_RUNS):
                    started = time.perf_counter()
                    async with maker() as session:
                        await forks.fork_thread(session, principal, org, source, message_id=message_id)
                        await session.commit()
                    times.append(time.perf_counter() - started)
                sa.event.remove(engine.sync_engine, "before_cursor_execute", count)
                figures.append(f"{statistics.median(times) * 1000:8.2f} ms {statements / FORK_RUNS:4.0f} stmts")
            print(f"  {length:>8}  {figures[0]:>18}  {figures[1]:>18}")
    finally:
        await engine.dispose()


async def fill_for_export(url: str, threads: int, messages: int) -> str:
    engine = create_engine(url)
    try:
        async with create_sessionmaker(engine)() as session:
            key, _ = await auth.create_api_key(session, "exporter", "export@bench.test")
            await session.commit()
            org = key.organization_id
            base = datetime.now(UTC) - timedelta(days=1)
            thread_rows, message_rows = [], []
            for i in range(threads):
                thread_id = f"thread_x_{i:07d}"
                created = base + timedelta(milliseconds=i)
                thread_rows.append(_thread(org, thread_id, messages, created))
                message_rows += [_message(org, thread_id, s, created) for s in range(1, messages + 1)]
                if len(message_rows) >= BATCH * 4:
                    await _insert(session, Thread, thread_rows)
                    await _insert(session, Message, message_rows)
                    thread_rows, message_rows = [], []
            await _insert(session, Thread, thread_rows)
            await _insert(session, Message, message_rows)
            await session.commit()
        return org
    finally:
        await engine.dispose()


async def export_phase(url: str, org: str, path: Path) -> tuple[int, float]:
    engine = create_engine(url)
    try:
        maker = create_sessionmaker(engine)
        started = time.perf_counter()
        lines = 0
        with path.open("wb") as out:
            async for chunk in thread_export.export_threads(maker, ThreadFilter(organization_id=org)):
                out.write(chunk)
                lines += chunk.count(b"\n")
        return lines, time.perf_counter() - started
    finally:
        await engine.dispose()


async def import_phase(url: str, path: Path) -> tuple[int, float]:
    engine = create_engine(url)
    try:
        maker = create_sessionmaker(engine)
        async with maker() as session:
            organization, user = await auth.ensure_member(session, "importer", "import@bench.test")
            await session.commit()
        principal = Principal(user.id, user.email, (organization.id,), "user_token", "bench")

        async def chunks() -> AsyncIterator[bytes]:
            with path.open("rb") as file:
                while chunk := file.read(256 * 1024):
                    yield chunk

        started = time.perf_counter()
        report = await thread_import.import_threads(
            maker, Settings(database_url=url), principal, organization.id, chunks(), "threadline"
        )
        assert report.failed == 0, report.errors[:3]
        return report.created, time.perf_counter() - started
    finally:
        await engine.dispose()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(phase: str, url: str, org: str, path: str) -> None:
    """One phase in this (child) process, so its peak RSS is the phase's own."""
    if phase == "export":
        lines, seconds = asyncio.run(export_phase(url, org, Path(path)))
        print(f"{lines} {seconds} {_peak_rss_mb()} {_cpu_seconds()}")
    else:
        created, seconds = asyncio.run(import_phase(url, Path(path)))
        print(f"{created} {seconds} {_peak_rss_mb()} {_cpu_seconds()}")


def _run_child(phase: str, url: str, org: str, path: Path) -> list[float]:
    result = subprocess.run(
        [sys.executable, __file__, "--child", phase, url, org, str(path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "src")},
    )
    return [float(v) for v in result.stdout.split()]


def run_backend(name: str, url: str, threads: int, messages: int) -> None:
    upgrade(url)
    print(f"{name}: fork cost vs source length (median of {FORK_RUNS}, SQL statements per fork)")
    asyncio.run(fork_costs(url))
    org = asyncio.run(fill_for_export(url, threads, messages))
    items = threads * messages
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "export.jsonl"
        lines, seconds, rss, cpu = _run_child("export", url, org, path)
        size = path.stat().st_size / 1e6
        print(
            f"{name}: export {threads:,} threads / {items:,} items ({size:.1f} MB): {seconds:.1f} s, "
            f"{items / seconds:,.0f} items/s ({items / cpu:,.0f} per CPU second), peak RSS {rss:.0f} MB "
            f"({int(lines):,} lines)"
        )
        created, seconds, rss, cpu = _run_child("import", url, org, path)
        print(
            f"{name}: import {int(created):,} threads / {items:,} items: {seconds:.1f} s, "
            f"{items / seconds:,.0f} items/s ({items / cpu:,.0f} per CPU second), peak RSS {rss:.0f} MB"
        )


async def _pg(action: str, database: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        if action == "create":
            await connection.execute(f'CREATE DATABASE "{database}"')
        else:
            await connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await connection.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2_000)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            run_backend("SQLite", f"sqlite+aiosqlite:///{tmp}/bench.db", args.threads, args.messages)
    if args.backend in ("postgresql", "both"):
        database = f"threadline_bench_{uuid.uuid4().hex[:8]}"
        asyncio.run(_pg("create", database))
        try:
            base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
            run_backend("PostgreSQL", f"{base}/{database}", args.threads, args.messages)
        finally:
            asyncio.run(_pg("drop", database))


if __name__ == "__main__":
    main()
