"""Alembic environment: runs migrations over the async engine of `storage.engine`."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection

from threadline.storage.engine import create_engine, is_full_text_object
from threadline.storage.tables import Base

target_metadata = Base.metadata


def _include_object(_obj: Any, name: str | None, _type: str, _reflected: bool, _compare_to: Any) -> bool:
    return not is_full_text_object(name)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_object=_include_object,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `threadline db upgrade`")
asyncio.run(_run_async())
