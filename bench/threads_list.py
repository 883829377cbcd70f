"""Benchmark: keyset pages cost the same at the 100,000th thread as at the first.

For SQLite and PostgreSQL: fill one organization with 100,000 threads (10 % hidden, 1 % deleted, two users)
and one thread with 10,000 messages by bulk inserts, start `threadline serve` on a free port, and time the
first, a middle and the last page of GET /v1/threads, GET /v1/user/threads and GET /v1/threads/{id}/messages
through real HTTP. Prints p50/p99 latencies, the last/first ratio, and the query plans of the page queries.

    PYTHONPATH=src python bench/threads_list.py [--threads N] [--messages N] [--requests N] [--backend B]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import sqlalchemy as sa

from processes import child_env, serve, stop
from threadline.services import auth
from threadline.storage.engine import create_engine, create_sessionmaker, upgrade
from threadline.storage.repositories.messages import MessageRepository
from threadline.storage.repositories.pagination import PageRequest
from threadline.storage.repositories.threads import ThreadFilter, ThreadRepository
from threadline.storage.tables import Message, Thread, User

POSTGRES_ADMIN_URL = os.environ.get("THREADLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BATCH = 5_000
LIMIT = 20


@dataclass
class Fixture:
    api_key: str
    organization_id: str
    user_id: str
    big_thread_id: str


def _thread_row(org: str, user: str, i: int, base: datetime) -> dict[str, Any]:
    created = base + timedelta(milliseconds=i * 10)
    return {
        "organization_id": org,
        "id": f"thread_bench_{i:07d}",
        "user_id": user,
        "metadata": {"n": i},
        "space_ids": [],
        "visible_in_ui": i % 10 != 0,
        "kind": "thread",
        "state": "open",
        "status": "inactive",
        "is_pinned": False,
        "message_count": 0,
        "next_seq": 1,
        "created_at": created,
        "updated_at": created,
        "last_message_at": created,
        "deleted_at": created if i % 100 == 1 else None,
    }


async def fill(url: str, threads: int, messages: int) -> Fixture:
    engine = create_engine(url)
    try:
        async with create_sessionmaker(engine)() as session:
            key, secret = await auth.create_api_key(session, "bench", "bench@bench.test", "bench")
            other = User(id="usr_bench_other", email="other@bench.test", created_at=datetime.now(UTC))
            session.add(other)
            await session.commit()
        org, user = key.organization_id, key.user_id
        base = datetime.now(UTC) - timedelta(days=30)
        for start in range(0, threads, BATCH):
            rows = [
                _thread_row(org, user if i % 2 == 0 else other.id, i, base)
                for i in range(start, min(start + BATCH, threads))
            ]
            async with engine.begin() as conn:
                await conn.execute(sa.insert(Thread), rows)
        big = "thread_bench_0000000"  # the oldest, visible thread of the caller
        for start in range(0, messages, BATCH):
            rows = [
                {
                    "organization_id": org,
                    "id": f"msg_bench_{seq:07d}",
                    "thread_id": big,
                    "seq": seq,
                    "role": "user" if seq % 2 else "assistant",
                    "content": f"message {seq}",
                    "metadata": {},
                    "created_at": base + timedelta(milliseconds=seq),
                    "edit_count": 0,
                }
                for seq in range(start + 1, min(start + BATCH, messages) + 1)
            ]
            async with engine.begin() as conn:
                await conn.execute(sa.insert(Message), rows)
        async with engine.begin() as conn:
            await conn.execute(
                sa.update(Thread)
                .where(Thread.organization_id == org, Thread.id == big)
                .values(message_count=messages, next_seq=messages + 1)
            )
        async with engine.connect() as conn:
            await conn.execute(sa.text("ANALYZE"))
            await conn.commit()
        return Fixture(secret, org, user, big)
    finally:
        await engine.dispose()


async def cursors(url: str, fx: Fixture) -> dict[str, dict[str, str | None]]:
    """For each list: the `after` cursor of its first, middle and last page (default order: newest first)."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:

            async def positions(query: sa.Select[Any]) -> dict[str, str | None]:
                ids = [r[0] for r in (await conn.execute(query)).all()]
                return {"first": None, "middle": ids[len(ids) // 2], "last": ids[len(ids) - LIMIT - 1]}

            visible = [
                Thread.organization_id == fx.organization_id,
                Thread.visible_in_ui.is_(True),
                Thread.deleted_at.is_(None),
            ]
            order = (Thread.created_at.desc(), Thread.id.desc())
            return {
                "threads": await positions(sa.select(Thread.id).where(*visible).order_by(*order)),
                "user threads": await positions(
                    sa.select(Thread.id).where(*visible, Thread.user_id == fx.user_id).order_by(*order)
                ),
                "messages": await positions(
                    sa.select(Message.id)
                    .where(Message.organization_id == fx.organization_id, Message.thread_id == fx.big_thread_id)
                    .order_by(Message.seq.desc())
                ),
            }
    finally:
        await engine.dispose()


async def plans(url: str, fx: Fixture, cursor_of: dict[str, dict[str, str | None]]) -> list[str]:
    """The last-page queries exactly as the repositories build them, explained with the planner left alone."""
    engine = create_engine(url)
    captured: list[tuple[str, Any]] = []

    def record(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "ORDER BY" in statement and "LIMIT" in statement:
            captured.append((statement, parameters))

    sa.event.listen(engine.sync_engine, "before_cursor_execute", record)
    lines = []
    try:
        async with create_sessionmaker(engine)() as session:
            org = fx.organization_id
            await ThreadRepository(session).list_page(
                ThreadFilter(organization_id=org), PageRequest(limit=LIMIT, after=cursor_of["threads"]["last"])
            )
            await ThreadRepository(session).list_page(
                ThreadFilter(organization_id=org, user_id=fx.user_id),
                PageRequest(limit=LIMIT, after=cursor_of["user threads"]["last"]),
            )
            await MessageRepository(session).list_page(
                org, fx.big_thread_id, PageRequest(limit=LIMIT, after=cursor_of["messages"]["last"])
            )
        sa.event.remove(engine.sync_engine, "before_cursor_execute", record)
        async with engine.connect() as conn:
            for name, (statement, parameters) in zip(("threads", "user threads", "messages"), captured, strict=True):
                if engine.dialect.name == "sqlite":
                    rows = (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)).all()
                    plan = [str(r[-1]) for r in rows]
                else:
                    rows = (await conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)).all()
                    plan = [str(r[0]) for r in rows]
                lines.append(f"  {name}, last page:")
                lines += [f"    {line}" for line in plan]
    finally:
        await engine.dispose()
    return lines


def measure(
    http: httpx.Client, path: str, cursors: dict[str, str | None], requests: int
) -> dict[str, tuple[float, float]]:
    """p50/p99 (ms) per page position. Positions are interleaved request by request, so a change in the
    machine's load (2 shared cores) hits all of them alike instead of whichever ran last."""
    params = {name: {"limit": LIMIT} | ({"after": after} if after else {}) for name, after in cursors.items()}
    samples: dict[str, list[float]] = {name: [] for name in cursors}
    for name in cursors:  # warm-up: connection, statement caches
        for _ in range(5):
            http.get(path, params=params[name]).raise_for_status()
    for _ in range(requests):
        for name in cursors:
            started = time.perf_counter()
            response = http.get(path, params=params[name])
            samples[name].append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
            assert len(response.json()["data"]) == LIMIT
    result = {}
    for name, values in samples.items():
        values.sort()
        result[name] = (statistics.median(values), values[min(len(values) - 1, round(0.99 * (len(values) - 1)))])
    return result


def run_backend(name: str, url: str, args: argparse.Namespace, workdir: str) -> None:
    print(f"\n== {name}: {args.threads:,} threads, one thread with {args.messages:,} messages ==", flush=True)
    upgrade(url)
    started = time.perf_counter()
    fx = asyncio.run(fill(url, args.threads, args.messages))
    print(f"filled in {time.perf_counter() - started:.1f} s", flush=True)
    cursor_of = asyncio.run(cursors(url, fx))
    server, base = serve(child_env(THREADLINE_DATABASE_URL=url, THREADLINE_LOCAL_MODEL_ENABLED="false"), workdir)
    try:
        paths = {
            "threads": "/v1/threads",
            "user threads": "/v1/user/threads",
            "messages": f"/v1/threads/{fx.big_thread_id}/messages",
        }
        print(f"{'list':<14}{'page':<8}{'p50 ms':>9}{'p99 ms':>9}   ({args.requests} requests each, limit {LIMIT})")
        with httpx.Client(base_url=base, headers={"X-API-Key": fx.api_key}, timeout=30) as http:
            for list_name, path in paths.items():
                results = measure(http, path, cursor_of[list_name], args.requests)
                for position, (p50, p99) in results.items():
                    print(f"{list_name:<14}{position:<8}{p50:>9.2f}{p99:>9.2f}", flush=True)
                ratio = results["last"][0] / results["first"][0]
                print(f"{'':<14}last/first p50 = {ratio:.2f}x")
    finally:
        stop([server])
    print("query plans:")
    for line in asyncio.run(plans(url, fx, cursor_of)):
        print(line)


def _pg(statement: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=100_000)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], action="append")
    args = parser.parse_args()
    backends = args.backend or ["sqlite", "postgresql"]
    with tempfile.TemporaryDirectory(prefix="threadline-bench-") as workdir:
        if "sqlite" in backends:
            run_backend("SQLite", f"sqlite+aiosqlite:///{Path(workdir) / 'bench.db'}", args, workdir)
        if "postgresql" in backends:
            name = f"threadline_bench_{uuid.uuid4().hex[:8]}"
            _pg(f'CREATE DATABASE "{name}"')
            try:
                base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
                run_backend("PostgreSQL", f"{base}/{name}", args, workdir)
            finally:
                _pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
