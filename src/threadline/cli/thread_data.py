"""`threadline export` and `threadline import`: the HTTP routes' services, run on the configured database.

Progress goes to standard error (a bar when it is a terminal), so standard output can carry the export itself.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from threadline.config import Settings
from threadline.services import auth, thread_export, thread_import
from threadline.services.auth import Principal
from threadline.storage.engine import create_engine, create_sessionmaker
from threadline.storage.repositories.threads import ThreadFilter

CHUNK_BYTES = 256 * 1024


def _progress(console: Console, *, with_total: bool) -> Progress:
    columns = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn()]
    if not with_total:
        columns = [TextColumn("{task.description}"), TextColumn("{task.fields[threads]} threads"), TimeElapsedColumn()]
    return Progress(*columns, console=console, transient=False)


async def export(
    settings: Settings, org: str, out: BinaryIO, *, thread_id: str | None, include_hidden: bool, console: Console
) -> int:
    """Write the organization's threads (or one) as JSON Lines; returns how many threads."""
    engine = create_engine(settings.database_url)
    try:
        maker = create_sessionmaker(engine)
        async with maker() as session:
            organization = await auth.find_organization(session, org)
        if thread_id is not None:
            await thread_export.ensure_exportable(maker, organization.id, thread_id)
            chunks = thread_export.export_thread(maker, organization.id, thread_id)
        else:
            where = ThreadFilter(organization_id=organization.id, visible_in_ui=None if include_hidden else True)
            chunks = thread_export.export_threads(maker, where)
        threads = 0
        with _progress(console, with_total=False) as progress:
            task = progress.add_task("exporting", threads=0)
            async for chunk in chunks:
                await asyncio.to_thread(out.write, chunk)
                threads += chunk.count(b'{"object":"thread",')
                progress.update(task, threads=threads)
        out.flush()
        return threads
    finally:
        await engine.dispose()


async def import_file(
    settings: Settings, org: str, email: str, path: Path, import_format: str | None, *, atomic: bool, console: Console
) -> thread_import.ImportReport:
    """Import FILE into the organization (created if missing) as `email` (likewise)."""
    chosen = thread_import.format_of(None, import_format or _guess(path))
    engine = create_engine(settings.database_url)
    try:
        maker = create_sessionmaker(engine)
        async with maker() as session:
            organization, user = await auth.ensure_member(session, org, email)
            await session.commit()
        # The operator at the console: hidden threads may be imported (a user token's right).
        principal = Principal(user.id, user.email, (organization.id,), "user_token", "cli")
        size = (await asyncio.to_thread(path.stat)).st_size
        file = await asyncio.to_thread(path.open, "rb")
        with _progress(console, with_total=True) as progress, file:
            task = progress.add_task(f"importing {path.name}", total=size)

            async def chunks() -> AsyncIterator[bytes]:
                while chunk := await asyncio.to_thread(file.read, CHUNK_BYTES):
                    progress.update(task, advance=len(chunk))
                    yield chunk

            return await thread_import.import_threads(
                maker, settings, principal, organization.id, chunks(), chosen, atomic=atomic
            )
    finally:
        await engine.dispose()


def _guess(path: Path) -> str:
    """`.json` is a ChatGPT export; anything else (.jsonl, .ndjson) the export format."""
    return "chatgpt" if path.suffix.lower() == ".json" else "threadline"


def stdout_binary() -> BinaryIO:
    return sys.stdout.buffer
