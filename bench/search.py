"""Thread search over a large organization: prints query times and the plan (full-text index, no table scan).

    .venv/bin/python bench/search.py [--threads 1000] [--messages 50] [--database-url URL] [--young]
    .venv/bin/python bench/search.py --mixed [--seconds 60] [--rate 8] [--backends sqlite,postgresql]

Without --database-url it uses a temporary SQLite file. A PostgreSQL URL must name an empty database. The bulk
load is followed by ANALYZE unless --young, which searches the database as a fresh one is: never analyzed.

--mixed: a soak on a fresh database (SQLite, and PostgreSQL on THREADLINE_TEST_POSTGRES_URL): the app in this
process (ASGI, the scripted FakeProvider as an instant model) takes `--rate` requests a second, open loop, in
turn: a turn, a streamed turn, the thread list, a message page, a search for the word the turns write. The
database grows from empty while it is searched, as a new deployment's does. Prints p50/p99 per family.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
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


POSTGRES_ADMIN_URL = os.environ.get("THREADLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


async def run(url: str, threads: int, per_thread: int, analyze: bool = True) -> None:
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
        if analyze and engine.dialect.name == "postgresql":
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


# ---------------------------------------------------------------- --mixed

FAMILIES = ("turn", "stream", "list", "page", "search")
SOAKWORD = "soakword"


@asynccontextmanager
async def fresh_database(backend: str, workdir: Path) -> AsyncIterator[str]:
    """An empty database, dropped afterwards (PostgreSQL: a throw-away one on THREADLINE_TEST_POSTGRES_URL)."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{workdir / 'mixed.db'}"
        return
    name = f"threadline_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1) + "/" + name
    finally:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def mixed(backend: str, url: str, seconds: float, rate: float) -> dict[str, list[float]]:
    """Open-loop mixed load on a fresh database; latencies in ms of the requests answered 200, per family."""
    from threadline.api.app import create_app
    from threadline.config import Settings
    from threadline.providers.fake import FakeProvider, Script
    from threadline.providers.registry import ModelRegistry
    from threadline.services import auth
    from threadline.storage.engine import create_sessionmaker

    await asyncio.to_thread(upgrade, url)  # alembic runs its own event loop
    registry = ModelRegistry()
    registry.register(FakeProvider(context_window=4096, default=Script()))  # echoes the user's words
    app = create_app(Settings(database_url=url, local_model_enabled=False, retention_enabled=False), models=registry)
    rng = random.Random(14)
    # Twelve threads talk about the word (in the user's turn and the echoed answer), thirty about other things.
    threads = [f"soak_{i}" for i in range(12)] + [f"chat_{i}" for i in range(30)]
    samples: dict[str, list[float]] = {f: [] for f in FAMILIES}
    failures: dict[str, dict[str, int]] = {f: {} for f in FAMILIES}
    async with app.router.lifespan_context(app):
        async with create_sessionmaker(app.state.engine)() as session:
            _, secret = await auth.create_api_key(session, "bench", "bench@bench.test", "bench")
            await session.commit()
        headers = {"X-API-Key": secret}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://threadline.bench", timeout=120) as client:

            def turn_body(stream: bool, thread: str) -> dict[str, object]:
                text = f"tell me more about {SOAKWORD} {rng.randrange(1000)}" if thread.startswith("soak") else (
                    f"what about the weather {rng.randrange(1000)}"
                )  # fmt: skip
                return {"thread": thread, "stream": stream, "inputs": [{"role": "user", "texts": [{"text": text}]}]}

            async def one(family: str) -> None:
                started = time.perf_counter()
                try:
                    if family in ("turn", "stream"):
                        # A thread takes one turn at a time (others wait, then 409): pick one not in a turn, as
                        # independent users would, so that the figures are the server's, not the queue's.
                        thread = rng.choice(sorted(idle))
                        idle.discard(thread)
                        try:
                            body = turn_body(family == "stream", thread)
                            response = await client.post("/v1/model/response", json=body, headers=headers)
                        finally:
                            idle.add(thread)
                    elif family == "list":
                        response = await client.get("/v1/threads", headers=headers)
                    elif family == "page":
                        response = await client.get(f"/v1/threads/{rng.choice(threads)}/messages", headers=headers)
                    else:
                        response = await client.get("/v1/threads/search", params={"q": SOAKWORD}, headers=headers)
                except Exception as exc:  # e.g. the connection pool ran dry: count it, keep the load going
                    failures[family][type(exc).__name__] = failures[family].get(type(exc).__name__, 0) + 1
                    return
                if response.status_code != 200:  # e.g. 409 thread_busy: two turns met on one thread
                    key = str(response.status_code)
                    failures[family][key] = failures[family].get(key, 0) + 1
                    return
                samples[family].append((time.perf_counter() - started) * 1000)

            idle = set(threads)
            for thread in threads:  # every thread exists from the start; the first turns fill them
                await client.post("/v1/model/response", json=turn_body(False, thread), headers=headers)
            tasks = []
            begin = time.perf_counter()
            for n in range(int(seconds * rate)):
                await asyncio.sleep(max(0.0, begin + n / rate - time.perf_counter()))
                tasks.append(asyncio.create_task(one(FAMILIES[n % len(FAMILIES)])))
            await asyncio.gather(*tasks)
        async with create_sessionmaker(app.state.engine)() as session:
            total = (await session.execute(sa.select(sa.func.count()).select_from(Message))).scalar_one()
            word = (
                await session.execute(
                    sa.select(sa.func.count()).select_from(Message).where(Message.content.contains(SOAKWORD))
                )
            ).scalar_one()
    print(f"{backend}: {total} messages at the end ({word} with {SOAKWORD!r}), {seconds:.0f} s at {rate:g} req/s")
    failed = {f: counts for f, counts in failures.items() if counts}
    if failed:
        print(f"  not answered 200 (status or exception: count): {failed}")
    return samples


async def run_mixed(backends: list[str], seconds: float, rate: float) -> None:
    results = {}
    for backend in backends:
        with tempfile.TemporaryDirectory() as tmp:
            async with fresh_database(backend, Path(tmp)) as url:
                results[backend] = await mixed(backend, url, seconds, rate)
    print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}; p50 / p99 ms (requests)")
    print(f"{'backend':<11}" + "".join(f"{f:>22}" for f in FAMILIES))
    for backend, samples in results.items():
        cells = [
            f"{statistics.median(v):7.1f} / {percentile(v, 0.99):7.1f} ({len(v):3})" if v else f"{'-':>20}"
            for v in (samples[f] for f in FAMILIES)
        ]
        print(f"{backend:<11}" + "".join(f"{c:>22}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=50, help="messages per thread")
    parser.add_argument("--database-url")
    parser.add_argument("--young", action="store_true", help="no ANALYZE after the load (PostgreSQL)")
    parser.add_argument("--mixed", action="store_true", help="turns, streams, lists, pages and searches at once")
    parser.add_argument("--seconds", type=float, default=60, help="--mixed: how long")
    parser.add_argument("--rate", type=float, default=8, help="--mixed: requests per second, all families")
    parser.add_argument("--backends", default="sqlite,postgresql", help="--mixed: which databases")
    args = parser.parse_args()
    if args.mixed:
        asyncio.run(run_mixed(args.backends.split(","), args.seconds, args.rate))
        return
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        asyncio.run(run(url, args.threads, args.messages, analyze=not args.young))


if __name__ == "__main__":
    main()
