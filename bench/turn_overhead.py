"""What does Threadline add to a model turn, and does it grow with the thread?

Sequential turns through Threadline against an instant upstream, versus the same calls made directly to that
upstream, on threads of 10, 1,000 and 10,000 messages (pre-filled by bulk insert), on SQLite and PostgreSQL.
Prints p50/p99 per length, the time added per turn, and each length's ratio to the 10-message turn.
Aims: < 3 ms p50 added per turn; the 10,000-message turn within 1.2x of the 10-message turn.

A long thread fills the model's window while a 10-message one does not, so with a wide window the longer turn
also carries a bigger prompt (more rows read, counted, sent): that is O(window), not O(thread length). Each run
therefore measures two windows by default: the wide one, and one small enough that every length fills it
(equal context), which is the comparison the 1.2x aim is about. The `ctx` column is the number of history
messages the last turn's model call received.

Modes:
  --mode server      (default) the real thing: the tests' upstream (`tests/upstream.py --reply`, answering at
                     once) and `threadline serve` as subprocesses, Threadline configured with an `openai` provider
                     pointing at that stub; HTTP over loopback.
  --mode in-process  the app in this process over httpx's ASGI transport, with the scripted FakeProvider as the
                     instant upstream (no sockets, no second process): isolates Threadline's own work.

    python bench/turn_overhead.py [--mode server|in-process] [--backends sqlite,postgresql] [--turns 40]
                                  [--context-windows 4096,256]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from processes import child_env, create_key, free_port, serve, stop, wait_http  # noqa: E402
from threadline.domain.clock import utcnow  # noqa: E402
from threadline.storage.engine import create_engine, upgrade  # noqa: E402
from threadline.storage.tables import Message, Thread  # noqa: E402

POSTGRES_ADMIN_URL = os.environ.get("THREADLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
FILLER = "the quick brown fox jumps over the lazy dog and keeps running through the field"  # ~16 tokens
QUESTION = [{"role": "user", "texts": [{"text": "What happens next in the story?"}]}]
STUB_REPLY = "Sure, here is an answer."


@dataclass
class Row:
    backend: str
    length: int
    threadline: list[float]
    direct: list[float]
    # CPU per Threadline turn of the process serving it: this process in-process, `threadline serve` in server
    # mode. Unlike latency it does not grow with the machine's load, so it is the figure to compare runs by.
    cpu_ms: float
    window: int = 0
    included: int = 0  # history messages in the last turn's model call


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ---------------------------------------------------------------- databases


@asynccontextmanager
async def database(backend: str, workdir: Path) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
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


async def prefill(url: str, organization_id: str, thread_id: str, count: int) -> None:
    """Bulk-insert `count` messages into an existing thread (no token counts: the first turns count them)."""
    engine = create_engine(url)
    now = utcnow()
    try:
        async with engine.begin() as conn:
            for start in range(1, count + 1, 1000):
                await conn.execute(
                    sa.insert(Message),
                    [
                        {
                            "organization_id": organization_id,
                            "id": f"msg_bench_{thread_id}_{seq:06d}",
                            "thread_id": thread_id,
                            "seq": seq,
                            "role": "user" if seq % 2 else "assistant",
                            "content": f"{seq}: {FILLER}",
                            "metadata_": {},
                            "created_at": now,
                            "edit_count": 0,
                        }
                        for seq in range(start, min(start + 1000, count + 1))
                    ],
                )
            await conn.execute(
                sa.update(Thread)
                .where(Thread.organization_id == organization_id, Thread.id == thread_id)
                .values(next_seq=count + 1, message_count=count)
            )
        # Fresh statistics, as autovacuum (PostgreSQL) would have them for a table that grew over time: right
        # after a bulk insert the planner still thinks the table is tiny.
        async with engine.begin() as conn:
            await conn.execute(sa.text("ANALYZE"))
    finally:
        await engine.dispose()


# ---------------------------------------------------------------- timing


async def timed(n: int, call: Callable[[], Awaitable[None]]) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def measure_lengths(
    backend: str,
    url: str,
    lengths: list[int],
    turns: int,
    threadline: httpx.AsyncClient,
    headers: dict[str, str],
    direct: Callable[[], Awaitable[None]],
    window: int,
    server_cpu: Callable[[], float] = time.process_time,
) -> list[Row]:
    rows = []
    for length in lengths:
        thread_id = f"bench_{length}"
        created = await threadline.post("/v1/threads", json={"id": thread_id}, headers=headers)
        created.raise_for_status()
        await prefill(url, created.json()["organization_id"], thread_id, length)

        included: list[int] = []

        async def one_turn(thread_id: str = thread_id, included: list[int] = included) -> None:
            response = await threadline.post(
                "/v1/model/response",
                json={"thread": thread_id, "inputs": QUESTION, "maxOutputTokens": 64},
                headers=headers,
            )
            if response.status_code != 200:
                raise SystemExit(f"turn failed: {response.status_code} {response.text}")
            included.append(response.json()["context"]["messages_included"])

        await timed(3, one_turn)  # warm-up: first counts of the tail, connection pools, caches
        cpu_started = server_cpu()
        samples = await timed(turns, one_turn)
        cpu_ms = (server_cpu() - cpu_started) * 1000 / turns
        rows.append(Row(backend, length, samples, await timed(turns, direct), cpu_ms, window, included[-1]))
    return rows


# ---------------------------------------------------------------- modes


async def run_in_process(backend: str, url: str, lengths: list[int], turns: int, window: int) -> list[Row]:
    from threadline.api.app import create_app
    from threadline.config import Settings
    from threadline.domain.messages import ChatMessage
    from threadline.providers.base import GenerationParams
    from threadline.providers.fake import FakeProvider, Script
    from threadline.providers.registry import ModelRegistry
    from threadline.services import auth
    from threadline.storage.engine import create_sessionmaker

    await asyncio.to_thread(upgrade, url)  # alembic runs its own event loop
    fake = FakeProvider(context_window=window, default=Script(reply="Sure, here is an answer."))
    registry = ModelRegistry()
    registry.register(fake)
    settings = Settings(
        database_url=url, local_model_enabled=False, retention_enabled=False, max_messages_per_thread=20_000
    )
    app = create_app(settings, models=registry)
    async with app.router.lifespan_context(app):
        async with create_sessionmaker(app.state.engine)() as session:
            _, secret = await auth.create_api_key(session, "bench", "bench@bench.test", "bench")
            await session.commit()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://threadline.bench") as client:

            async def direct() -> None:
                messages = [ChatMessage("user", QUESTION[0]["texts"][0]["text"])]
                async for _ in fake.stream("fake-model", messages, GenerationParams(max_output_tokens=64)):
                    pass

            return await measure_lengths(backend, url, lengths, turns, client, {"X-API-Key": secret}, direct, window)


def start_processes(
    url: str, window: int, workdir: Path, backend: str
) -> tuple[list[subprocess.Popen[bytes]], str, int, int]:
    """The stub upstream and `threadline serve` (configured through THREADLINE_CONFIG), plus an API key."""
    stub_port = free_port()
    config = workdir / f"threadline-{backend}.toml"
    config.write_text(
        f'database_url = "{url}"\n'
        "local_model_enabled = false\n"
        "retention_enabled = false\n"
        "max_messages_per_thread = 20000\n"  # room for the measured turns on top of the 10,000 pre-filled
        'default_model = "stub-model"\n'
        "\n[[providers]]\n"
        'name = "stub"\n'
        'type = "openai"\n'
        f'base_url = "http://127.0.0.1:{stub_port}/v1"\n'
        'api_key_env = "BENCH_STUB_KEY"\n'
        'models = ["stub-model"]\n'
        f"context_window = {window}\n"
        'tokenizer = "o200k"\n'
    )
    env = child_env(THREADLINE_CONFIG=str(config), BENCH_STUB_KEY="stub-secret")
    secret = create_key(env)
    quiet = subprocess.DEVNULL
    stub_cmd = [sys.executable, str(REPO / "tests" / "upstream.py"), "--port", str(stub_port), "--reply", STUB_REPLY]
    stub = subprocess.Popen(stub_cmd, stdout=quiet, stderr=quiet)
    try:
        wait_http(f"http://127.0.0.1:{stub_port}/v1/models", stub, "the stub upstream")
        server, base = serve(env)
    except BaseException:
        stop([stub])
        raise
    return [stub, server], secret, stub_port, int(base.rsplit(":", 1)[1])


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of another process so far (Linux /proc; clock-tick resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_server(backend: str, url: str, lengths: list[int], turns: int, window: int, workdir: Path) -> list[Row]:
    procs, secret, stub_port, port = await asyncio.to_thread(start_processes, url, window, workdir, backend)
    try:
        limits = httpx.Limits(max_keepalive_connections=4)
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits) as client,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{stub_port}", timeout=60, limits=limits) as upstream,
        ):
            body = {
                "model": "stub-model",
                "stream": True,
                "messages": [{"role": "user", "content": QUESTION[0]["texts"][0]["text"]}],
            }

            async def direct() -> None:
                async with upstream.stream("POST", "/v1/chat/completions", json=body) as response:
                    async for _ in response.aiter_lines():
                        pass

            serve_pid = procs[1].pid
            return await measure_lengths(
                backend,
                url,
                lengths,
                turns,
                client,
                {"X-API-Key": secret},
                direct,
                window,
                server_cpu=lambda: process_cpu_seconds(serve_pid),
            )
    finally:
        await asyncio.to_thread(stop, procs)


def report(rows: list[Row]) -> None:
    print(
        f"{'window':>6} {'backend':<11}{'messages':>9} {'ctx':>5} | {'threadline p50':>14} {'p99':>7} | "
        f"{'direct p50':>10} {'p99':>7} | {'added p50':>9} | {'vs 10 msgs':>10} | {'server cpu/turn':>15}"
    )
    base: dict[tuple[int, str], float] = {}
    for row in rows:
        p50 = statistics.median(row.threadline)
        base.setdefault((row.window, row.backend), p50)
        d50 = statistics.median(row.direct)
        print(
            f"{row.window:>6} {row.backend:<11}{row.length:>9} {row.included:>5} | {p50:>11.2f} ms "
            f"{percentile(row.threadline, 0.99):>7.2f} | {d50:>7.2f} ms {percentile(row.direct, 0.99):>7.2f} | "
            f"{p50 - d50:>6.2f} ms | {p50 / base[(row.window, row.backend)]:>9.2f}x | {row.cpu_ms:>5.2f} ms"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["server", "in-process"], default="server")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--lengths", default="10,1000,10000")
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument(
        "--context-windows", default="4096,256", help="model windows to measure (256: every length fills it)"
    )
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    rows: list[Row] = []
    for window in [int(x) for x in args.context_windows.split(",")]:
        for backend in args.backends.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                async with database(backend, Path(tmp)) as url:
                    if args.mode == "server":
                        rows += await run_server(backend, url, lengths, args.turns, window, Path(tmp))
                    else:
                        rows += await run_in_process(backend, url, lengths, args.turns, window)
    load = os.getloadavg()[0]
    print(f"mode={args.mode} turns={args.turns} cpus={os.cpu_count()} load={load:.1f} (milliseconds)")
    report(rows)


if __name__ == "__main__":
    asyncio.run(main())
