"""Migration 0002 goes down and up again, and the full-text index is rebuilt from the rows already there."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import sqlalchemy as sa

from threadline.storage.engine import create_engine, create_sessionmaker, downgrade, upgrade
from threadline.storage.repositories.pagination import PageRequest
from threadline.storage.repositories.search import SearchRepository
from threadline.storage.repositories.threads import ThreadFilter
from threadline.storage.tables import Message, Organization, Thread


async def _seed_and_search(url: str, *, seed: bool) -> list[str]:
    engine = create_engine(url)
    try:
        async with create_sessionmaker(engine)() as session:
            if seed:
                now = datetime.now(UTC)
                session.add(Organization(id="org_1", name="acme", created_at=now))
                await session.flush()
                session.add(
                    Thread(
                        organization_id="org_1", id="t1", title="Quarterly numbers", metadata_={}, space_ids=[],
                        visible_in_ui=True, kind="thread", state="open", status="inactive", is_pinned=False,
                        message_count=1, next_seq=2, created_at=now, updated_at=now, last_message_at=now,
                    )
                )  # fmt: skip
                await session.flush()
                session.add(
                    Message(
                        organization_id="org_1", id="m1", thread_id="t1", seq=1, role="user",
                        content="the invoice is overdue", metadata_={}, created_at=now, edit_count=0,
                    )
                )  # fmt: skip
                await session.commit()
            repo = SearchRepository(session)
            found = []
            for word in ("invoice", "quarterly"):
                page, _ = await repo.search(ThreadFilter(organization_id="org_1"), [word], PageRequest())
                found += [t.id for t in page.items]
            return found
    finally:
        await engine.dispose()


def test_up_down_up_keeps_search_working(empty_database_url: str) -> None:
    # A database of its own: the shared test databases must stay at head.
    upgrade(empty_database_url)
    assert asyncio.run(_seed_and_search(empty_database_url, seed=True)) == ["t1", "t1"]
    downgrade(empty_database_url, "0001")

    async def leftovers() -> list[str]:
        engine = create_engine(empty_database_url)
        try:
            async with engine.connect() as conn:
                if engine.dialect.name == "sqlite":
                    query = "SELECT name FROM sqlite_master WHERE name LIKE '%fts%'"
                else:
                    query = "SELECT indexname FROM pg_indexes WHERE indexname LIKE '%fts%'"
                return [r[0] for r in (await conn.execute(sa.text(query))).all()]
        finally:
            await engine.dispose()

    assert asyncio.run(leftovers()) == []
    upgrade(empty_database_url)
    # Rows written before 0002 (or while it was down) are found: the upgrade indexes existing data.
    assert asyncio.run(_seed_and_search(empty_database_url, seed=False)) == ["t1", "t1"]
