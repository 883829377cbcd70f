"""A server killed mid-turn, for real: `threadline serve` processes, SIGKILL, a restart, on SQLite and PostgreSQL.

The upstream model is its own process too (tests/upstream.py, `gate="rest"`): it streams a first word, then holds
the rest back until the test releases it, so every turn is mid-answer exactly when the test acts (no timing involved).
Three kinds of turn are interrupted at once: a Freddy streamed response, an Assistants v2 streamed run and an
OpenAI Responses stream in a conversation. A restarted server must settle all of them at start-up (before any
request) and every surface must then tell the same story, without a new turn on any thread. And a server that
starts while another one is running a turn must leave that turn alone.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import _empty_all_tables
from tests.servers import Upstream, free_port, running, serve_command, threadline_env, until, upstream_server
from threadline.domain.clock import utcnow
from threadline.services import auth
from threadline.services.recovery import settle_expired
from threadline.storage.engine import create_engine, create_sessionmaker
from threadline.storage.tables import Response, Thread

pytestmark = pytest.mark.slow

# Short, so the test waits little for a killed server's lease to run out; three heartbeats per lease keep a live
# turn's lease far from expiring even on a busy machine.
LEASE_SECONDS = 3.0
BETA = {"OpenAI-Beta": "assistants=v2"}
MODEL = "held-model"
INTERRUPTED = "turn_interrupted"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """Answers `max_tokens` words, the first at once, the rest when released."""
    with upstream_server(tmp_path_factory.mktemp("upstream") / "upstream.log", words=64, gate="rest") as server:
        yield server


@dataclass(frozen=True)
class Deployment:
    """What every `threadline serve` of a test shares: the database, the upstream, an API key."""

    database_url: str
    upstream: Upstream
    env: dict[str, str]
    headers: dict[str, str]


async def _create_key(database_url: str) -> str:
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            _, secret = await auth.create_api_key(session, "acme", "ada@acme.test", "crash")
            await session.commit()
    finally:
        await engine.dispose()
    return secret


@pytest.fixture
def deployment(database_url: str, upstream: Upstream) -> Iterator[Deployment]:
    key = asyncio.run(_create_key(database_url))
    env = threadline_env(database_url)
    env.update(
        THREADLINE_PROVIDERS=json.dumps(
            [{"name": "held", "type": "openai", "base_url": upstream.base_url, "models": [MODEL]}]
        ),
        THREADLINE_DEFAULT_MODEL=MODEL,
        THREADLINE_THREAD_LEASE_SECONDS=str(LEASE_SECONDS),
    )
    yield Deployment(database_url, upstream, env, {"X-API-Key": key})
    asyncio.run(_empty_all_tables(database_url))


class Server:
    """One `threadline serve` process of the deployment."""

    def __init__(self, deployment: Deployment, log: Path, stack: ExitStack) -> None:
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self.process = stack.enter_context(
            running(serve_command(port), ready_url=f"{self.base_url}/healthz", log=log, env=deployment.env)
        )
        self.http = stack.enter_context(httpx.Client(base_url=self.base_url, headers=deployment.headers, timeout=30))

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        answer = self.http.post(path, json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def get(self, path: str, headers: dict[str, str] | None = None, **params: Any) -> Any:
        answer = self.http.get(path, headers=headers, params=params)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def stream_until_first_delta(
        self, stack: ExitStack, path: str, body: dict[str, Any], delta: str, headers: dict[str, str] | None = None
    ) -> tuple[dict[str, Any], Iterator[str]]:
        """Start a streamed turn and read it up to its first text delta: (the first event's data, the rest)."""
        answer = stack.enter_context(self.http.stream("POST", path, json=body, headers=headers))
        assert answer.status_code == 200, answer.read()
        lines = answer.iter_lines()
        events = _events(lines)
        first: dict[str, Any] | None = None
        for name, data in events:
            first = first or data
            if name == delta:
                assert first is not None
                return first, lines
        pytest.fail(f"the stream of {path} ended before its first {delta}")


def _events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    name = None
    for line in lines:
        if line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:") and name is not None:
            data = line.removeprefix("data:").strip()
            yield name, json.loads(data) if data.startswith("{") else {}


@dataclass(frozen=True)
class Row:
    status: str
    lease_owner: str | None
    lease_expires_at: datetime | None
    message_count: int
    responses: dict[str, tuple[str, str | None]]  # id → (status, error code)


def rows(database_url: str, thread_ids: list[str]) -> dict[str, Row]:
    """The stored threads and their responses, read straight from the database (no server involved)."""

    async def read() -> dict[str, Row]:
        engine = create_engine(database_url)
        try:
            async with create_sessionmaker(engine)() as session:
                threads = (await session.execute(sa.select(Thread).where(Thread.id.in_(thread_ids)))).scalars()
                found = {}
                for t in threads:
                    query = sa.select(Response).where(Response.thread_id == t.id)
                    responses = {
                        r.id: (r.status, (r.error or {}).get("code")) for r in (await session.execute(query)).scalars()
                    }
                    found[t.id] = Row(t.status, t.lease_owner, t.lease_expires_at, t.message_count, responses)
                await session.rollback()
                return found
        finally:
            await engine.dispose()

    return asyncio.run(read())


def settle_from_outside(database_url: str) -> int:
    """The settling pass run by yet another process on the database (this test's)."""

    async def run() -> int:
        engine = create_engine(database_url)
        try:
            return await settle_expired(create_sessionmaker(engine))
        finally:
            await engine.dispose()

    return asyncio.run(run())


def user_turn(text: str, **fields: Any) -> dict[str, Any]:
    return {"inputs": [{"role": "user", "texts": [{"text": text}]}], "stream": True, **fields}


def test_a_restarted_server_settles_every_turn_a_killed_server_left(deployment: Deployment, tmp_path: Path) -> None:
    with ExitStack() as stack:
        first = Server(deployment, tmp_path / "first.log", stack)
        first.post("/v1/threads", {"id": "crash_freddy", "title": "crash recovery"})
        assistant = first.post("/v1/assistants", {"name": "crash recovery", "model": MODEL})["id"]
        assistants_thread = first.post("/v1/threads", {"messages": [{"role": "user", "content": "hi"}]}, BETA)["id"]
        conversation = first.post("/v1/conversations", {"metadata": {"topic": "crash recovery"}})["id"]

        with ExitStack() as streams:
            # The rest of each stream is kept unread but referenced: a stream let go is closed, and its turn aborted.
            freddy, freddy_rest = first.stream_until_first_delta(
                streams,
                "/v1/model/response",
                user_turn("hello", thread="crash_freddy", maxOutputTokens=8),
                "response.output_text.delta",
            )
            run, run_rest = first.stream_until_first_delta(
                streams,
                f"/v1/threads/{assistants_thread}/runs",
                {"assistant_id": assistant, "stream": True, "max_completion_tokens": 8},
                "thread.message.delta",
                BETA,
            )
            openai, openai_rest = first.stream_until_first_delta(
                streams,
                "/v1/responses",
                {
                    "model": MODEL,
                    "input": "hello",
                    "conversation": conversation,
                    "stream": True,
                    "max_output_tokens": 8,
                },
                "response.output_text.delta",
            )
            # Every turn is mid-answer: the server dies without a chance to record anything (kill -9).
            first.process.kill()
            first.process.wait()
            del freddy_rest, run_rest, openai_rest

    turns = {
        "crash_freddy": freddy["response"]["id"],
        assistants_thread: run["id"],
        conversation: openai["response"]["id"],
    }
    assert run["thread_id"] == assistants_thread and freddy["response"]["thread_id"] == "crash_freddy"
    left = rows(deployment.database_url, list(turns))
    for thread_id, response_id in turns.items():
        # What the killed server left: a thread streaming under the turn's lease, its response in progress.
        assert (left[thread_id].status, left[thread_id].lease_owner) == ("streaming", response_id), left
        assert left[thread_id].responses == {response_id: ("in_progress", None)}, thread_id
    expiry = max(row.lease_expires_at for row in left.values() if row.lease_expires_at is not None)
    until(lambda: utcnow() > expiry, "the killed server's leases expire", within=LEASE_SECONDS * 2)

    with ExitStack() as stack:
        second = Server(deployment, tmp_path / "second.log", stack)
        # Settled at start-up: the rows say so before anyone has read anything.
        settled = rows(deployment.database_url, list(turns))
        for thread_id, response_id in turns.items():
            row = settled[thread_id]
            assert (row.status, row.lease_owner, row.lease_expires_at) == ("inactive", None, None), thread_id
            assert row.responses == {response_id: ("failed", INTERRUPTED)}, thread_id
            assert row.message_count == left[thread_id].message_count, "an interrupted turn saves nothing"

        # Every surface tells the same story (and no new turn was started anywhere).
        listed = {t["id"]: t["status"] for t in second.get("/v1/threads")["data"]}
        assert listed == dict.fromkeys(turns, "inactive")
        found = second.get("/v1/threads/search", q="crash recovery")["data"]
        assert [(t["id"], t["status"]) for t in found] == [("crash_freddy", "inactive")]
        for thread_id, response_id in turns.items():
            assert second.get(f"/v1/threads/{thread_id}")["status"] == "inactive"
            freddy_read = second.get(f"/v1/model/response/{response_id}")
            assert (freddy_read["status"], freddy_read["error"]["code"]) == ("failed", INTERRUPTED)
            openai_read = second.get(f"/v1/responses/{response_id}")
            assert (openai_read["status"], openai_read["error"]["type"]) == ("failed", INTERRUPTED)
            # Every turn of a thread is one of its runs, whichever API started it.
            runs = second.get(f"/v1/threads/{thread_id}/runs", BETA)["data"]
            assert [(r["id"], r["status"]) for r in runs] == [(response_id, "failed")]
            one = second.get(f"/v1/threads/{thread_id}/runs/{response_id}", BETA)
            assert one["status"] == "failed" and one["failed_at"] is not None and one["last_error"] is not None
            steps = second.get(f"/v1/threads/{thread_id}/runs/{response_id}/steps", BETA)["data"]
            assert [s["status"] for s in steps] == ["failed"]
        assert second.get(f"/v1/conversations/{conversation}")["metadata"] == {"topic": "crash recovery"}
        assert second.get(f"/v1/conversations/{conversation}/items")["data"] == []
        assert [m["content"] for m in second.get(f"/v1/threads/{assistants_thread}/messages")["data"]] == ["hi"]


def test_a_starting_server_leaves_a_turn_another_server_is_running_alone(
    deployment: Deployment, tmp_path: Path
) -> None:
    with ExitStack() as stack:
        running_server = Server(deployment, tmp_path / "running.log", stack)
        running_server.post("/v1/threads", {"id": "shared"})
        started, rest = running_server.stream_until_first_delta(
            stack,
            "/v1/model/response",
            user_turn("hello", thread="shared", maxOutputTokens=4),
            "response.output_text.delta",
        )
        response_id = started["response"]["id"]
        first_expiry = rows(deployment.database_url, ["shared"])["shared"].lease_expires_at
        assert first_expiry is not None

        # Another server starts (its start-up pass runs) while the turn is mid-answer, and the turn outlives the
        # lease it started with: only its heartbeat keeps the lease live.
        other = Server(deployment, tmp_path / "other.log", stack)
        until(lambda: utcnow() > first_expiry, "the turn outlives its first lease", within=LEASE_SECONDS * 2)
        row = rows(deployment.database_url, ["shared"])["shared"]
        assert (row.status, row.lease_owner) == ("streaming", response_id)
        assert row.lease_expires_at is not None and row.lease_expires_at > first_expiry, "the heartbeat renewed it"
        assert settle_from_outside(deployment.database_url) == 0
        # Reads on the other server see it running and leave it so.
        assert other.get("/v1/threads/shared")["status"] == "streaming"
        assert other.get(f"/v1/model/response/{response_id}")["status"] == "in_progress"
        assert [r["status"] for r in other.get("/v1/threads/shared/runs", BETA)["data"]] == ["in_progress"]

        deployment.upstream.release()
        names = [name for name, _ in _events(rest)]
        assert names[-1] == "response.completed", names
        assert other.get(f"/v1/model/response/{response_id}")["status"] == "completed"
        thread = other.get("/v1/threads/shared")
        assert (thread["status"], thread["message_count"]) == ("inactive", 2)
