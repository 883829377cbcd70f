"""Migrations: 0001 builds exactly the schema of tables.py, and upgrade → downgrade → upgrade works on both backends."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from threadline.storage.engine import create_engine, downgrade, is_full_text_object, upgrade
from threadline.storage.tables import Base


def _inspect(url: str) -> tuple[set[str], list[Any]]:
    """(table names, differences between the live schema and tables.py)."""

    def work(connection: sa.Connection) -> tuple[set[str], list[Any]]:
        tables = {t for t in sa.inspect(connection).get_table_names() if not is_full_text_object(t)}
        tables -= {"alembic_version"}
        context = MigrationContext.configure(
            connection,
            opts={"compare_type": False, "include_object": lambda _o, name, *_: not is_full_text_object(name)},
        )
        return tables, compare_metadata(context, Base.metadata)

    async def run() -> tuple[set[str], list[Any]]:
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(work)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_upgrade_downgrade_upgrade(empty_database_url: str) -> None:
    expected = set(Base.metadata.tables)
    upgrade(empty_database_url)
    tables, diff = _inspect(empty_database_url)
    assert tables == expected
    assert diff == []

    downgrade(empty_database_url, "base")
    tables, _ = _inspect(empty_database_url)
    assert tables == set()

    upgrade(empty_database_url)
    tables, diff = _inspect(empty_database_url)
    assert tables == expected
    assert diff == []
