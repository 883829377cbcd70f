"""What does Threadline add to a model turn, and does it grow with the thread?

Sequential turns through Threadline against an instant upstream, versus the same calls made directly to that
upstream, on threads of 10, 1,000 and 10,000 messages (pre-filled by bulk insert), on SQLite and PostgreSQL.
Prints p50/p99 per length, the time added per turn, the server's CPU per turn (median and mean) and each length's
CPU ratio to the 10-message turn. Aims: <= 4 ms of server CPU per turn; <= 8 us per message in context; the
10,000-message turn within 1.1x of the 10-message one at equal context, and a chain turn no dearer than a thread turn.

A long thread fills the model's window while a 10-message one does not, so with a wide window the longer turn
also carries a bigger prompt (more rows read, counted, sent): that is O(window), not O(thread length). Each run
therefore measures two windows by default: the wide one, and one small enough that every length fills it
(equal context), which is the comparison the 1.1x aim is about. The `ctx` column is the number of history
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
import contextlib
import functools
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, closing, suppress
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from processes import child_env, create_key, free_port, serve, stop, tree_rss_mb, wait_http  # noqa: E402
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
    # mode. Unlike latency it does not grow with the machine's load, but it follows the VM's speed, which drifts:
    # compare the rows of one run (measured in the same rounds), not runs.
    cpu_ms: float  # the median turn's
    cpu_mean_ms: float
    window: int = 0
    included: int = 0  # history messages in the last turn's model call
    chain: bool = False  # turns continuing `previousResponseId` (forked off the `length`-message thread)
    against: bool = False  # served by the `--against` tree
    # The serving process's CPU over all the measured rounds over its turns (every row it serves): what each turn
    # left running after its answer, and the process's own background work, included.
    cpu_all_in_ms: float = 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ---------------------------------------------------------------- databases


@asynccontextmanager
async def database(backend: str, workdir: Path) -> AsyncIterator[str]:
    name = f"threadline_bench_{uuid.uuid4().hex[:10]}"
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{workdir / name}.db"
        return
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
        if not url.startswith("sqlite"):
            # Fresh statistics, as autovacuum (PostgreSQL) would have them for a table that grew over time: right
            # after a bulk insert the planner still thinks the table is tiny. (Not on SQLite: Threadline never
            # analyzes it, and the server's connections would keep the plans they prepared under the statistics
            # of an earlier pre-fill: the 10,000-message thread's lease statement, planned while the threads were
            # short, scanned the thread's messages for a compaction item, ~4-6 ms a turn.)
            async with engine.begin() as conn:
                await conn.execute(sa.text("ANALYZE"))
        else:
            # And SQLite's write-ahead log emptied, as its checkpoints keep it for a database that grew turn by
            # turn: right after the bulk insert every page read looks the page up in a WAL of ~10,000 rows (the
            # 10,000-message thread's turns cost ~12 ms more until a checkpoint could reset it).
            await asyncio.to_thread(_checkpoint, url.split(":///", 1)[1])
    finally:
        await engine.dispose()


def _checkpoint(path: str) -> None:
    """Copy the WAL into the database file and empty it (outside any transaction: the app's dialect begins one
    for every statement)."""
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


# ---------------------------------------------------------------- timing


async def elapsed_ms(call: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await call()
    return (time.perf_counter() - started) * 1000


@dataclass
class Target:
    """A server under measurement: how to reach it and read its CPU, and its database (for the pre-fill)."""

    threadline: httpx.AsyncClient
    headers: dict[str, str]
    url: str
    window: int
    server_cpu: Callable[[], float] = time.process_time
    against: bool = False


@dataclass
class Series:
    """One row's turns as they are measured: its turn, and what each of its turns took."""

    target: Target
    length: int
    turn: Callable[[], Awaitable[int]]  # returns the history messages the model call received
    chain: bool = False
    threadline: list[float] = field(default_factory=list)
    direct: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    included: int = 0


async def measure_lengths(
    backend: str,
    targets: list[Target],
    lengths: list[int],
    turns: int,
    direct: Callable[[], Awaitable[None]],
    chain: bool = True,
) -> list[Row]:
    """Every row's turns interleaved (of every target: each window, each tree), one turn of each row a round,
    each turn's server CPU taken on its own.

    Interleaving puts a slow minute of the machine (a neighbour, a frequency step: a fixed loop's time varies 2x
    within seconds on this VM) into every row alike instead of into whichever row ran then; the median per turn
    leaves out the turns that also paid for a garbage collection or a background job (the mean, printed beside
    it, keeps them)."""
    series = []
    for target in targets:
        for length in lengths:
            thread_id = f"bench_{length}"
            created = await target.threadline.post("/v1/threads", json={"id": thread_id}, headers=target.headers)
            created.raise_for_status()
            await prefill(target.url, created.json()["organization_id"], thread_id, length)
            series.append(Series(target, length, _thread_turn(target, thread_id)))
        if chain:
            series.append(Series(target, lengths[-1], await _chain_turn(target, f"bench_{lengths[-1]}"), chain=True))
    for one in series:
        for _ in range(3):  # warm-up: first counts of the tail, connection pools, caches
            await one.turn()
    targets_started = [(target, target.server_cpu()) for target in targets]
    for round_ in range(turns):
        # Each round starts at another row: the first turn after the direct call and the other rows' turns costs
        # more (reversing the rows' order reversed which of two equal rows looked dearer by 10-20%).
        start = round_ % len(series)
        for one in series[start:] + series[:start]:
            cpu_started = one.target.server_cpu()
            started = time.perf_counter()
            one.included = await one.turn()
            one.threadline.append((time.perf_counter() - started) * 1000)
            one.cpu.append((one.target.server_cpu() - cpu_started) * 1000)
            one.direct.append(await elapsed_ms(direct))
    all_in = {
        id(target): (target.server_cpu() - started) * 1000 / (turns * sum(one.target is target for one in series))
        for target, started in targets_started
    }
    return [
        Row(
            backend,
            one.length,
            one.threadline,
            one.direct,
            statistics.median(one.cpu),
            statistics.fmean(one.cpu),
            one.target.window,
            one.included,
            one.chain,
            one.target.against,
            all_in[id(one.target)],
        )
        for one in series
    ]


def _thread_turn(target: Target, thread_id: str) -> Callable[[], Awaitable[int]]:
    async def turn() -> int:
        response = await target.threadline.post(
            "/v1/model/response",
            json={"thread": thread_id, "inputs": QUESTION, "maxOutputTokens": 64},
            headers=target.headers,
        )
        if response.status_code != 200:
            raise SystemExit(f"turn failed: {response.status_code} {response.text}")
        return int(response.json()["context"]["messages_included"])

    return turn


async def _chain_turn(target: Target, thread_id: str) -> Callable[[], Awaitable[int]]:
    """Turns that each continue the previous one by `previousResponseId`, starting from a turn of the long thread:
    the first forks a hidden chain thread off it, the others append to that chain, whose context reaches back into
    the thread. Same question, same window: the same context as a thread turn."""
    first = await target.threadline.post(
        "/v1/model/response",
        json={"thread": thread_id, "inputs": QUESTION, "maxOutputTokens": 64},
        headers=target.headers,
    )
    first.raise_for_status()
    last = [first.json()["id"]]

    async def turn() -> int:
        response = await target.threadline.post(
            "/v1/model/response",
            json={"previousResponseId": last[-1], "inputs": QUESTION, "maxOutputTokens": 64},
            headers=target.headers,
        )
        if response.status_code != 200:
            raise SystemExit(f"chain turn failed: {response.status_code} {response.text}")
        body = response.json()
        last.append(body["id"])
        return int(body["context"]["messages_included"])

    return turn


# ---------------------------------------------------------------- modes


async def run_in_process(backend: str, url: str, lengths: list[int], turns: int, window: int, chain: bool) -> list[Row]:
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

            target = Target(client, {"X-API-Key": secret}, url, window)
            return await measure_lengths(backend, [target], lengths, turns, direct, chain=chain)


def start_processes(
    url: str,
    window: int,
    workdir: Path,
    backend: str,
    workers: int = 1,
    src: Path = REPO / "src",
    under: Sequence[str] = (),
    timeout: float = 60,
) -> tuple[list[subprocess.Popen[bytes]], str, int, int]:
    """The stub upstream and `threadline serve` of the tree `src` (configured through THREADLINE_CONFIG, run by
    the command `under` if any), plus an API key."""
    stub_port = free_port()
    config = workdir / f"threadline-{backend}-{stub_port}.toml"
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
    env = child_env(src, THREADLINE_CONFIG=str(config), BENCH_STUB_KEY="stub-secret")
    secret = create_key(env)
    quiet = subprocess.DEVNULL
    stub_cmd = [sys.executable, str(REPO / "tests" / "upstream.py"), "--port", str(stub_port), "--reply", STUB_REPLY]
    stub = subprocess.Popen(stub_cmd, stdout=quiet, stderr=quiet)
    try:
        wait_http(f"http://127.0.0.1:{stub_port}/v1/models", stub, "the stub upstream")
        server, base = serve(env, workers=workers, under=under, timeout=timeout)
    except BaseException:
        stop([stub])
        raise
    return [stub, server], secret, stub_port, int(base.rsplit(":", 1)[1])


def process_cpu_seconds(pid: int) -> float:
    """CPU of another process so far, all its threads (a tokenizer's first load, anything sent to a worker thread):
    the scheduler's nanosecond count (Linux /proc schedstat), fine enough to time a single turn."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with suppress(FileNotFoundError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


async def run_server(
    backend: str,
    lengths: list[int],
    turns: int,
    windows: list[int],
    workdir: Path,
    chain: bool,
    against: Path | None = None,
) -> list[Row]:
    """A server of this checkout for each window, and with `against` one of that tree for each window too, each on
    a database of its own, all measured in the same rounds."""
    trees = [REPO / "src"] + ([against / "src"] if against is not None else [])
    async with contextlib.AsyncExitStack() as stack:
        started = []
        for window in windows:
            for tree in trees:
                url = await stack.enter_async_context(database(backend, workdir))
                procs, secret, stub_port, port = await asyncio.to_thread(
                    start_processes, url, window, workdir, backend, 1, tree
                )
                stack.push_async_callback(asyncio.to_thread, stop, procs)
                started.append((procs[1].pid, secret, stub_port, port, url, window, tree))
        limits = httpx.Limits(max_keepalive_connections=4)
        targets = []
        for pid, secret, _, port, url, window, tree in started:
            client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits)
            await stack.enter_async_context(client)
            cpu = functools.partial(process_cpu_seconds, pid)
            targets.append(Target(client, {"X-API-Key": secret}, url, window, cpu, against=tree != REPO / "src"))
        upstream = httpx.AsyncClient(base_url=f"http://127.0.0.1:{started[0][2]}", timeout=60, limits=limits)
        await stack.enter_async_context(upstream)
        body = {
            "model": "stub-model",
            "stream": True,
            "messages": [{"role": "user", "content": QUESTION[0]["texts"][0]["text"]}],
        }

        async def direct() -> None:
            async with upstream.stream("POST", "/v1/chat/completions", json=body) as response:
                async for _ in response.aiter_lines():
                    pass

        return await measure_lengths(backend, targets, lengths, turns, direct, chain=chain)


def report(rows: list[Row]) -> None:
    print(
        f"{'window':>6} {'backend':<11}{'messages':>15} {'ctx':>5} | {'threadline p50':>14} {'p99':>7} | "
        f"{'direct p50':>10} {'p99':>7} | {'added p50':>9} | {'server cpu/turn':>15} {'mean':>8} | {'vs 10 msgs':>10}"
    )
    base: dict[tuple[int, str, bool], float] = {}
    for row in rows:
        p50 = statistics.median(row.threadline)
        base.setdefault((row.window, row.backend, row.against), row.cpu_ms)
        d50 = statistics.median(row.direct)
        label = (f"chain@{row.length}" if row.chain else str(row.length)) + (" (against)" if row.against else "")
        print(
            f"{row.window:>6} {row.backend:<11}{label:>15} {row.included:>5} | {p50:>11.2f} ms "
            f"{percentile(row.threadline, 0.99):>7.2f} | {d50:>7.2f} ms {percentile(row.direct, 0.99):>7.2f} | "
            f"{p50 - d50:>6.2f} ms | {row.cpu_ms:>12.2f} ms {row.cpu_mean_ms:>5.2f} ms | "
            f"{row.cpu_ms / base[(row.window, row.backend, row.against)]:>9.2f}x"
        )
    servers = {(row.window, row.backend, row.against): row.cpu_all_in_ms for row in rows}
    for (window, backend, against), all_in in servers.items():
        print(
            f"{backend} window {window}{' (against)' if against else ''}: {all_in:.2f} ms server CPU per turn all in "
            "(the process's CPU over every round, over its turns: what a turn leaves running after its answer included)"
        )
    # CPU per message in context: the same thread length at two windows, the difference over the extra messages.
    plain = [row for row in rows if not row.chain]
    for row in plain:
        for other in plain:
            same = (other.backend, other.length, other.against) == (row.backend, row.length, row.against)
            if same and other.included > row.included + 100:
                per_message = (other.cpu_ms - row.cpu_ms) * 1000 / (other.included - row.included)
                name = f"{row.backend} {row.length} messages" + (" (against)" if row.against else "")
                print(
                    f"{name}: {per_message:.1f} us of server CPU per message in context "
                    f"(ctx {row.included} -> {other.included}: {row.cpu_ms:.2f} -> {other.cpu_ms:.2f} ms)"
                )


# ---------------------------------------------------------------- concurrency and memory


ROUNDS = 3


async def run_concurrency(
    backend: str, url: str, window: int, clients: int, workers: int, seconds: float, workdir: Path
) -> None:
    """`clients` clients, each on its own conversation, for `seconds`, through `threadline serve --workers N`,
    and the same clients calling the stub directly for as long, in `ROUNDS` alternating rounds. Checks every
    guarantee afterwards: each conversation holds exactly its turns' messages, user and assistant alternating (one
    turn at a time, nothing lost)."""
    procs, secret, stub_port, port = await asyncio.to_thread(start_processes, url, window, workdir, backend, workers)
    headers = {"X-API-Key": secret}
    try:
        limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits) as client,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{stub_port}", timeout=60, limits=limits) as upstream,
        ):
            for i in range(clients):
                (await client.post("/v1/threads", json={"id": f"conc_{i}"}, headers=headers)).raise_for_status()

            included: list[int] = []

            async def turn(i: int) -> None:
                response = await client.post(
                    "/v1/model/response",
                    json={"thread": f"conc_{i}", "inputs": QUESTION, "maxOutputTokens": 64},
                    headers=headers,
                )
                if response.status_code != 200:
                    raise SystemExit(f"turn failed: {response.status_code} {response.text}")
                included.append(int(response.json()["context"]["messages_included"]))

            body = {"model": "stub-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}

            async def direct(_: int) -> None:
                async with upstream.stream("POST", "/v1/chat/completions", json=body) as response:
                    async for _line in response.aiter_lines():
                        pass

            async def loop(call: Callable[[int], Awaitable[None]], seconds: float, done: list[int]) -> float:
                """Every client calls until `seconds` have passed; adds each one's calls to `done`; the time taken."""
                deadline = time.monotonic() + seconds

                async def one(i: int) -> None:
                    while time.monotonic() < deadline:
                        await call(i)
                        done[i] += 1

                started = time.monotonic()
                await asyncio.gather(*(one(i) for i in range(clients)))
                return time.monotonic() - started

            await loop(turn, 2, [0] * clients)  # warm-up
            warm = [await _message_count(client, headers, i) for i in range(clients)]
            # Both sides in alternating rounds, so a slow stretch of this machine is shared by both.
            done, direct_done = [0] * clients, [0] * clients
            elapsed = direct_elapsed = cpu = 0.0
            for _ in range(ROUNDS):
                cpu_started = sum(process_cpu_seconds(pid) for pid in _tree(procs[1].pid))
                elapsed += await loop(turn, seconds / ROUNDS, done)
                cpu += sum(process_cpu_seconds(pid) for pid in _tree(procs[1].pid)) - cpu_started
                direct_elapsed += await loop(direct, seconds / ROUNDS, direct_done)
            rate, direct_rate = sum(done) / elapsed, sum(direct_done) / direct_elapsed
            for i in range(clients):
                roles = await _roles(client, headers, i)
                assert len(roles) == warm[i] + 2 * done[i], f"conversation {i}: messages lost or added"
                assert roles == ["user", "assistant"] * (len(roles) // 2), f"conversation {i}: turns interleaved"
    finally:
        await asyncio.to_thread(stop, procs)
    last = included[-clients:]
    print(
        f"{backend} --workers {workers}, window {window} (context {min(last)}–{max(last)} messages at the end), "
        f"{clients} clients on {clients} conversations, {seconds:g} s: "
        f"{rate:.1f} turns/s through Threadline ({cpu * 1000 / sum(done):.2f} ms server CPU per turn), "
        f"{direct_rate:.1f} calls/s straight to the stub: {rate / direct_rate:.2f} of the direct rate; "
        f"every conversation complete and alternating"
    )


async def _message_count(client: httpx.AsyncClient, headers: dict[str, str], i: int) -> int:
    response = await client.get(f"/v1/threads/conc_{i}", headers=headers)
    response.raise_for_status()
    return int(response.json()["message_count"])


async def _roles(client: httpx.AsyncClient, headers: dict[str, str], i: int) -> list[str]:
    roles: list[str] = []
    after: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 100, "order": "asc", **({"after": after} if after else {})}
        response = await client.get(f"/v1/threads/conc_{i}/messages", params=params, headers=headers)
        response.raise_for_status()
        page = response.json()
        roles += [m["role"] for m in page["data"]]
        if not page.get("has_more"):
            return roles
        after = page["data"][-1]["id"]


def _tree(pid: int) -> list[int]:
    pids, pending = [], [pid]
    while pending:
        current = pending.pop()
        pids.append(current)
        with suppress(FileNotFoundError):
            pending += [int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
    return pids


async def run_memory(backend: str, url: str, workdir: Path) -> None:
    """Resident memory of `threadline serve` (embedded model disabled) idle after start, then after one turn."""
    procs, secret, _, port = await asyncio.to_thread(start_processes, url, 4096, workdir, backend)
    try:
        await asyncio.sleep(2)
        idle = tree_rss_mb(procs[1].pid)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            response = await client.post("/v1/model/response", json={"inputs": QUESTION}, headers={"X-API-Key": secret})
            response.raise_for_status()
        after = tree_rss_mb(procs[1].pid)
    finally:
        await asyncio.to_thread(stop, procs)
    print(f"{backend}: idle RSS {idle:.0f} MB (embedded model disabled), {after:.0f} MB after the first turn")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["server", "in-process"], default="server")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--lengths", default="10,1000,10000")
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument(
        "--context-windows", default="4096,256", help="model windows to measure (256: every length fills it)"
    )
    parser.add_argument("--no-chain", action="store_true", help="skip the previousResponseId chain rows")
    parser.add_argument("--concurrency", type=int, default=0, help="N clients on N conversations (server mode)")
    parser.add_argument("--workers", type=int, default=1, help="`threadline serve --workers` for --concurrency")
    parser.add_argument("--seconds", type=float, default=10, help="how long --concurrency runs each side")
    parser.add_argument("--memory", action="store_true", help="idle RSS of `threadline serve`, then after a turn")
    parser.add_argument(
        "--against",
        type=Path,
        help="another source tree (a `git worktree` of an earlier commit, say): its server is measured in the same "
        "rounds, on a database of its own, rows marked (against); the comparison this noisy machine allows",
    )
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    if args.against is not None and (args.mode != "server" or args.concurrency or args.memory):
        parser.error("--against compares servers turn by turn: server mode, without --concurrency or --memory")
    windows = [int(x) for x in args.context_windows.split(",")]
    if args.concurrency or args.memory:
        for backend in args.backends.split(","):
            if args.memory:
                with tempfile.TemporaryDirectory() as tmp:
                    async with database(backend, Path(tmp)) as url:
                        await run_memory(backend, url, Path(tmp))
            for window in windows if args.concurrency else []:  # each window on a database of its own
                with tempfile.TemporaryDirectory() as tmp:
                    async with database(backend, Path(tmp)) as url:
                        await run_concurrency(
                            backend, url, window, args.concurrency, args.workers, args.seconds, Path(tmp)
                        )
        return
    rows: list[Row] = []
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            if args.mode == "server":
                rows += await run_server(
                    backend, lengths, args.turns, windows, Path(tmp), not args.no_chain, args.against
                )
                continue
            for window in windows:
                async with database(backend, Path(tmp)) as url:
                    rows += await run_in_process(backend, url, lengths, args.turns, window, not args.no_chain)
    rows.sort(key=lambda row: -row.window)  # the wide window first, as the rows of each were measured
    load = os.getloadavg()[0]
    print(f"mode={args.mode} turns={args.turns} cpus={os.cpu_count()} load={load:.1f} (milliseconds)")
    report(rows)


if __name__ == "__main__":
    asyncio.run(main())
