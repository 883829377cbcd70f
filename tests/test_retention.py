"""The retention sweeper on SQLite and PostgreSQL, with rows whose timestamps are set in the past."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import Caller, _empty_all_tables, make_caller, started_app
from tests.helpers import refused
from threadline.api.app import create_app
from threadline.config import Settings
from threadline.domain.clock import utcnow
from threadline.services import retention
from threadline.storage.engine import create_engine, create_sessionmaker
from threadline.storage.tables import (
    IdempotencyKey,
    Job,
    Lease,
    Message,
    MessageEdit,
    Response,
    ResponseEvent,
    Thread,
)

NOW = datetime.now(UTC)
REPO_SRC = Path(__file__).resolve().parents[1] / "src"


def ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


async def add_thread(
    maker: async_sessionmaker[AsyncSession],
    org: str,
    thread_id: str,
    *,
    created: datetime,
    last_message: datetime | None = None,
    messages: int = 0,
    deleted: datetime | None = None,
    kind: str = "thread",
    responses: tuple[datetime, ...] = (),
    edits: int = 0,
) -> None:
    last = last_message or created
    async with maker() as session:
        session.add(
            Thread(
                organization_id=org, id=thread_id, metadata_={}, space_ids=[], visible_in_ui=kind != "chain",
                kind=kind, state="open", status="inactive", is_pinned=False, message_count=messages,
                next_seq=messages + 1, created_at=created, updated_at=last, last_message_at=last, deleted_at=deleted,
            )
        )  # fmt: skip
        await session.flush()
        for seq in range(1, messages + 1):
            session.add(
                Message(
                    organization_id=org, id=f"{thread_id}_m{seq}", thread_id=thread_id, seq=seq, role="user",
                    content=f"message {seq}", metadata_={}, created_at=last, edit_count=0,
                )
            )  # fmt: skip
        for i in range(edits):
            session.add(
                MessageEdit(
                    organization_id=org, id=f"{thread_id}_e{i}", thread_id=thread_id, message_id=f"{thread_id}_m1",
                    previous_content="before", previous_metadata={}, edited_at=last,
                )
            )  # fmt: skip
        for i, at in enumerate(responses):
            session.add(
                Response(
                    organization_id=org, id=f"{thread_id}_r{i}", thread_id=thread_id, model="m", status="completed",
                    request={}, context={}, created_at=at,
                )
            )  # fmt: skip
        await session.commit()


async def count(maker: async_sessionmaker[AsyncSession], table: type, **where: str) -> int:
    async with maker() as session:
        query = sa.select(sa.func.count()).select_from(table)
        for column, value in where.items():
            query = query.where(getattr(table, column) == value)
        return int((await session.execute(query)).scalar_one())


async def all_jobs(maker: async_sessionmaker[AsyncSession]) -> list[Job]:
    async with maker() as session:
        return list((await session.scalars(sa.select(Job))).all())


async def snapshot(maker: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    tables = (Thread, Message, MessageEdit, Response, IdempotencyKey)
    return {t.__tablename__: await count(maker, t) for t in tables}


EXPECTED = {
    "deleted_threads": 1,
    "expired_threads": 1,
    "expired_chains": 1,
    "chain_responses": 1,
    "inactive_thread_messages": 4,
    "deleted_messages": 1,
    "idempotency_keys": 1,
    "webhook_deliveries": 0,  # tests/test_webhooks.py seeds and purges these
    "response_events": 1,
    "finished_jobs": 1,
}


async def seed_every_category(maker: async_sessionmaker[AsyncSession], org: str) -> None:
    await add_thread(maker, org, "fresh", created=ago(days=1), messages=3, responses=(ago(days=1),))
    await add_thread(
        maker, org, "inactive", created=ago(days=100), last_message=ago(days=95), messages=4, edits=1,
        responses=(ago(days=95),),
    )  # fmt: skip
    await add_thread(
        maker, org, "old", created=ago(days=400), last_message=ago(days=1), messages=2, edits=1,
        responses=(ago(days=1),),
    )  # fmt: skip
    await add_thread(maker, org, "deleted", created=ago(days=50), messages=2, deleted=ago(days=31))
    await add_thread(maker, org, "recently_deleted", created=ago(days=50), messages=1, deleted=ago(days=5))
    await add_thread(maker, org, "idle_chain", created=ago(days=2), messages=2, kind="chain", responses=(ago(days=2),))
    await add_thread(
        maker, org, "active_chain", created=ago(days=3), last_message=ago(hours=1), messages=4, kind="chain",
        responses=(ago(days=2), ago(hours=1)),
    )  # fmt: skip
    await add_thread(maker, org, "with_deleted_message", created=ago(days=41), last_message=ago(hours=2), messages=2)
    async with maker() as session:
        message = await session.get(Message, (org, "with_deleted_message_m1"))
        assert message is not None
        message.deleted_at = ago(days=40)
        thread = await session.get(Thread, (org, "with_deleted_message"))
        assert thread is not None
        thread.message_count = 1
        for key, expires in (("expired", ago(hours=1)), ("live", NOW + timedelta(hours=1))):
            session.add(
                IdempotencyKey(
                    organization_id=org, key=key, request_hash="h", status="completed", response_status=200,
                    response_headers={}, response_body=b"{}", created_at=expires - timedelta(hours=24),
                    expires_at=expires,
                )
            )  # fmt: skip
        # Stream events: one recorded over a day ago (purged), one an hour ago (kept).
        for number, at in enumerate((ago(hours=25), ago(hours=1))):
            session.add(
                ResponseEvent(
                    organization_id=org, response_id="resp_streamed", sequence_number=number, type="response.created",
                    data="{}", created_at=at,
                )
            )  # fmt: skip
        # Jobs: finished over a week ago (purged), finished yesterday (kept), and old but still queued (kept).
        for job_id, finished in (("job_old", ago(days=8)), ("job_recent", ago(days=1)), ("job_queued", None)):
            session.add(
                Job(
                    organization_id=org, id=job_id, kind="test", payload={}, status="done" if finished else "queued",
                    attempts=1, max_attempts=5, run_after=ago(days=9), created_at=ago(days=9), updated_at=ago(days=9),
                    finished_at=finished,
                )
            )  # fmt: skip
        await session.commit()


@pytest.fixture
def maker(app: FastAPI) -> async_sessionmaker[AsyncSession]:
    result: async_sessionmaker[AsyncSession] = app.state.sessionmaker
    return result


async def test_dry_run_counts_and_changes_nothing_then_sweep_purges(
    maker: async_sessionmaker[AsyncSession], settings: Settings, caller: Caller, client: httpx.AsyncClient
) -> None:
    org = caller.organization_id
    await seed_every_category(maker, org)
    before = await snapshot(maker)

    dry = await retention.sweep(maker, settings, dry_run=True, now=NOW)
    assert dry.dry_run and dry.ran
    assert dry.counts == EXPECTED
    assert await snapshot(maker) == before
    assert await count(maker, Lease) == 0

    report = await retention.sweep(maker, settings, now=NOW)
    assert report.ran and not report.dry_run
    assert report.counts == EXPECTED

    # Purged whole, with messages, edits and responses.
    for gone in ("old", "deleted", "idle_chain"):
        assert await count(maker, Thread, id=gone) == 0
        assert await count(maker, Message, thread_id=gone) == 0
        assert await count(maker, MessageEdit, thread_id=gone) == 0
        assert await count(maker, Response, thread_id=gone) == 0
    # Inactive: the thread stays, empty, with its count fixed.
    assert await count(maker, Thread, id="inactive") == 1
    assert await count(maker, Message, thread_id="inactive") == 0
    assert await count(maker, MessageEdit, thread_id="inactive") == 0
    assert await count(maker, Response, thread_id="inactive") == 0
    inactive = (await client.get("/v1/threads/inactive", headers=caller.headers)).json()
    assert inactive["message_count"] == 0
    # An active chain keeps its history but loses the responses older than the window.
    assert await count(maker, Message, thread_id="active_chain") == 4
    assert await count(maker, Response, id="active_chain_r0") == 0
    assert await count(maker, Response, id="active_chain_r1") == 1
    # Soft-deleted past the grace period: purged; within it: kept.
    assert await count(maker, Message, id="with_deleted_message_m1") == 0
    assert await count(maker, Message, id="with_deleted_message_m2") == 1
    assert (await client.get("/v1/threads/with_deleted_message", headers=caller.headers)).json()["message_count"] == 1
    assert await count(maker, Thread, id="recently_deleted") == 1
    # Stream events past their retention, and jobs finished past theirs: purged; the rest kept.
    assert await count(maker, ResponseEvent, sequence_number=0) == 0
    assert await count(maker, ResponseEvent, sequence_number=1) == 1
    assert {job.id for job in await all_jobs(maker)} == {"job_recent", "job_queued"}
    # Untouched.
    assert await count(maker, Message, thread_id="fresh") == 3
    assert await count(maker, Response, thread_id="fresh") == 1
    assert await count(maker, IdempotencyKey, key="live") == 1
    assert await count(maker, IdempotencyKey, key="expired") == 0
    assert await count(maker, Lease) == 0  # released

    again = await retention.sweep(maker, settings, now=NOW)
    assert again.total == 0


async def test_deletes_in_bounded_batches(
    maker: async_sessionmaker[AsyncSession], settings: Settings, caller: Caller
) -> None:
    await add_thread(maker, caller.organization_id, "big", created=ago(days=200), last_message=ago(days=91), messages=7)
    batches: list[tuple[str, int]] = []

    async def progress(category: str, rows: int) -> None:
        batches.append((category, rows))

    small = settings.model_copy(update={"retention_batch_size": 3})
    report = await retention.sweep(maker, small, now=NOW, progress=progress)
    assert report.counts["inactive_thread_messages"] == 7
    assert batches == [
        ("inactive_thread_messages", 3),
        ("inactive_thread_messages", 3),
        ("inactive_thread_messages", 1),
    ]


async def test_a_new_message_during_inactivity_purge_survives(
    maker: async_sessionmaker[AsyncSession], settings: Settings, caller: Caller, client: httpx.AsyncClient
) -> None:
    """A user returning to an inactive thread while it is swept keeps the new message (and the count says so)."""
    org = caller.organization_id
    await add_thread(maker, org, "returning", created=ago(days=200), last_message=ago(days=91), messages=4)
    appended: list[int] = []

    async def progress(category: str, rows: int) -> None:
        if not appended:
            response = await client.post(
                "/v1/threads/returning/messages", json={"content": "I'm back"}, headers=caller.headers
            )
            appended.append(response.status_code)

    small = settings.model_copy(update={"retention_batch_size": 2})
    await retention.sweep(maker, small, now=NOW, progress=progress)
    assert appended == [200]
    messages = (await client.get("/v1/threads/returning/messages", headers=caller.headers)).json()["data"]
    assert [m["content"] for m in messages] == ["I'm back"]
    assert (await client.get("/v1/threads/returning", headers=caller.headers)).json()["message_count"] == 1


async def test_only_one_sweep_at_a_time(app: FastAPI, settings: Settings, caller: Caller) -> None:
    """Two sweeps through two engines (as two server processes would): the second finds the lease taken."""
    org = caller.organization_id
    for i in range(3):
        await add_thread(app.state.sessionmaker, org, f"gone{i}", created=ago(days=400))
    first_engine, second_engine = create_engine(settings.database_url), create_engine(settings.database_url)
    try:
        first_maker, second_maker = create_sessionmaker(first_engine), create_sessionmaker(second_engine)
        paused, resume = asyncio.Event(), asyncio.Event()

        async def hold(category: str, rows: int) -> None:
            paused.set()
            await resume.wait()

        first = asyncio.create_task(retention.sweep(first_maker, settings, now=NOW, progress=hold))
        await paused.wait()  # the first sweep holds the lease, between two batches
        second = await retention.sweep(second_maker, settings, now=NOW)
        assert second.ran is False and second.total == 0
        resume.set()
        done = await first
        assert done.ran and done.counts["expired_threads"] == 3
        # Released: the next sweep runs.
        assert (await retention.sweep(second_maker, settings, now=NOW)).ran
    finally:
        await first_engine.dispose()
        await second_engine.dispose()


async def test_an_expired_lease_is_taken_over(maker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
    # The sweep reads the real clock for leases, so the lease is set relative to it (not to the data's NOW).
    async with maker() as session:
        session.add(Lease(name="retention", owner="crashed", expires_at=utcnow() + timedelta(minutes=5)))
        await session.commit()
    assert (await retention.sweep(maker, settings)).ran is False
    async with maker() as session:
        await session.execute(sa.update(Lease).values(expires_at=utcnow() - timedelta(seconds=1)))
        await session.commit()
    assert (await retention.sweep(maker, settings)).ran is True


async def test_thread_full_names_the_limit(database_url: str) -> None:
    settings = Settings(
        database_url=database_url, local_model_enabled=False, retention_enabled=False, max_messages_per_thread=2
    )
    application = create_app(settings)
    try:
        async with application.router.lifespan_context(application):
            caller = await make_caller(application)
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://threadline.test") as client:
                thread_id = (await client.post("/v1/threads", json={}, headers=caller.headers)).json()["id"]
                url = f"/v1/threads/{thread_id}/messages"
                for text in ("one", "two"):
                    assert (await client.post(url, json={"content": text}, headers=caller.headers)).status_code == 200
                full = await client.post(url, json={"content": "three"}, headers=caller.headers)
                refused(full, 409, "thread_full")
                assert "the limit is 2 per thread" in full.json()["error"]["message"]
                thread = (await client.get(f"/v1/threads/{thread_id}", headers=caller.headers)).json()
                assert thread["message_count"] == 2
    finally:
        await _empty_all_tables(database_url)


@pytest.fixture
async def sweeping_app(database_url: str) -> AsyncIterator[FastAPI]:
    settings = Settings(
        database_url=database_url, local_model_enabled=False, retention_enabled=True, retention_interval_seconds=0.05
    )
    async for application in started_app(settings):
        yield application


async def test_the_server_sweeps_in_the_background(sweeping_app: FastAPI) -> None:
    caller = await make_caller(sweeping_app)
    maker = sweeping_app.state.sessionmaker
    await add_thread(maker, caller.organization_id, "ancient", created=ago(days=500), messages=2)
    # The sweeper has no completion signal to wait on: poll the database, bounded (not a timing assertion).
    for _ in range(400):
        if not await count(maker, Thread, id="ancient"):
            break
        await asyncio.sleep(0.05)
    assert await count(maker, Thread, id="ancient") == 0
    assert await count(maker, Message, thread_id="ancient") == 0


def _cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_SRC), "THREADLINE_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "threadline", "retention", "run", *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.slow  # runs the CLI as a subprocess (docs/testing.md)
async def test_cli_reports_what_it_purges(
    maker: async_sessionmaker[AsyncSession], database_url: str, caller: Caller
) -> None:
    await seed_every_category(maker, caller.organization_id)
    dry = await asyncio.to_thread(_cli, database_url, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dict(line.split("\t") for line in dry.stdout.splitlines() if "\t" in line)
    assert {k: int(v) for k, v in lines.items()} == EXPECTED
    assert "Dry run: would purge 12 in all." in dry.stdout
    assert await count(maker, Thread, id="old") == 1

    done = await asyncio.to_thread(_cli, database_url)
    assert done.returncode == 0, done.stderr
    assert "purged 12 in all." in done.stdout
    assert await count(maker, Thread, id="old") == 0

    async with maker() as session:
        session.add(Lease(name="retention", owner="elsewhere", expires_at=datetime.now(UTC) + timedelta(minutes=5)))
        await session.commit()
    busy = await asyncio.to_thread(_cli, database_url)
    assert busy.returncode == 4
    assert "another retention sweep is running" in busy.stderr
