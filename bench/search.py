"""Thread search over a large organization: prints query times and the plan (full-text index, no table scan).

    .venv/bin/python bench/search.py [--threads 1000] [--messages 50] [--database-url URL]

Without --database-url it uses a temporary SQLite file. A PostgreSQL URL must name an empty database.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from threadline.services.search import search_threads
from threadline.storage.engine import create_engine, create_sessionmaker, upgrade
from threadline.storage.repositories.pagination import PageRequest
from threadline.storage.repositories.search import SearchRepository
from threadline.storage.repositories.threads import ThreadFilter
from threadline.storage.tables import Message, Organization, Thread

WORDS = [f"w{i}" for i in range(5000)]  # Zipf-ish: low indexes are common, high ones rare


def sentence(rng: random.Random) -> str:
    return " ".join(WORDS[min(int(rng.paretovariate(0.8)), len(WORDS) - 1)] for _ in range(20))


async def run(url: str, threads: int, per_thread: int) -> None:
    engine = create_engine(url)
    maker = create_sessionmaker(engine)
    rng = random.Random(7)
    base = datetime.now(UTC) - timedelta(days=30)
    started = time.perf_counter()
    async with maker() as session:
        session.add(Organization(id="org_bench", name="bench", created_at=base))
        await session.flush()
        for t in range(threads):
            at = base + timedelta(seconds=t)
            session.add(
                Thread(
                    organization_id="org_bench", id=f"t{t}", title=f"conversation about {sentence(rng)[:40]}",
                    metadata_={}, space_ids=[], visible_in_ui=True, kind="thread", state="open", status="inactive",
                    is_pinned=False, message_count=per_thread, next_seq=per_thread + 1, created_at=at,
                    updated_at=at, last_message_at=at,
                )
            )  # fmt: skip
        await session.flush()
        rows = [
            {"organization_id": "org_bench", "id": f"m{t}_{s}", "thread_id": f"t{t}", "seq": s, "role": "user",
             "content": sentence(rng), "metadata_": {}, "created_at": base, "edit_count": 0}
            for t in range(threads) for s in range(1, per_thread + 1)
        ]  # fmt: skip
        await session.execute(sa.insert(Message), rows)
        if engine.dialect.name == "postgresql":
            await session.execute(sa.text("ANALYZE"))
        await session.commit()
    print(f"{engine.dialect.name}: {threads} threads, {threads * per_thread} messages loaded in "
          f"{time.perf_counter() - started:.1f} s")  # fmt: skip
    where = ThreadFilter(organization_id="org_bench")
    for label, q in (("common word", "w1"), ("rare word", "w4000"), ("two words", "w2 w3"), ("prefix", "w40")):
        timings = []
        for _ in range(5):
            async with maker() as session:
                t0 = time.perf_counter()
                page, _ = await search_threads(session, where, q, PageRequest(limit=20))
                timings.append((time.perf_counter() - t0) * 1000)
                await session.rollback()
        print(f"  {label:12} q={q!r:9} {len(page.items):2} hits on page  median {statistics.median(timings):7.1f} ms")
    async with maker() as session:
        print("plan for 'w4000':")
        print("    " + (await SearchRepository(session).explain(where, ["w4000"])).replace("\n", "\n    "))
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=50, help="messages per thread")
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        asyncio.run(run(url, args.threads, args.messages))


if __name__ == "__main__":
    main()
