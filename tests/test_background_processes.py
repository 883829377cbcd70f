"""Background responses and resumable streams across real `threadline serve` processes, through the `openai` SDK.

The upstream model is its own process (tests/upstream.py, `gate="rest"`): it streams a first word, then holds the
rest until the test releases it, so every turn is mid-answer exactly when the test acts.

- On PostgreSQL, a stream started on one server is followed live from another (`starting_after`), to its end.
- On both backends, a server is killed mid-way through a background turn, with another background turn of the
  same conversation queued behind it: the next server settles the interrupted one (`failed`, `turn_interrupted`:
  it is not run again) and then runs the queued one; nothing queued is lost, and the conversation holds only what
  completed. On PostgreSQL the next server is already running, following the turn's stream (`starting_after`)
  when the first is killed; its stream ends with the settled `response.failed`.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa

from tests.conftest import _empty_all_tables
from tests.helpers import with_session
from tests.servers import free_port, running, serve_command, threadline_env, until, upstream_server
from threadline.services import auth
from threadline.storage.tables import Job, Response, ResponseEvent

pytestmark = pytest.mark.slow

MODEL = "held-model"
LEASE_SECONDS = 3.0


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The held-back upstream: a first word at once, the rest at the next release (docs/testing.md)."""
    with upstream_server(tmp_path_factory.mktemp("upstream") / "upstream.log", words=64, gate="rest") as held:
        yield held.url


@pytest.fixture
def env(database_url: str, upstream: str) -> Iterator[dict[str, str]]:
    async def key(session: Any) -> str:
        _, secret = await auth.create_api_key(session, "acme", "ada@acme.test", "background")
        return secret

    values = threadline_env(database_url)
    values.update(
        THREADLINE_PROVIDERS=json.dumps(
            [{"name": "held", "type": "openai", "base_url": f"{upstream}/v1", "models": [MODEL]}]
        ),
        THREADLINE_DEFAULT_MODEL=MODEL,
        THREADLINE_THREAD_LEASE_SECONDS=str(LEASE_SECONDS),
        THREADLINE_JOB_LEASE_SECONDS=str(LEASE_SECONDS),
        API_KEY=with_session(database_url, key),
    )
    yield values
    asyncio.run(_empty_all_tables(database_url))


class Server:
    def __init__(self, env: dict[str, str], log: Path, stack: ExitStack) -> None:
        port = free_port()
        self.process = stack.enter_context(
            running(serve_command(port), ready_url=f"http://127.0.0.1:{port}/healthz", log=log, env=env)
        )
        self.sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=env["API_KEY"], max_retries=0)
        stack.callback(self.sdk.close)


def release(upstream: str) -> None:
    httpx.post(f"{upstream}/release", timeout=10).raise_for_status()


def recorded(database_url: str, response_id: str) -> list[str]:
    async def read(session: Any) -> list[str]:
        query = (
            sa.select(ResponseEvent.type)
            .where(ResponseEvent.response_id == response_id)
            .order_by(ResponseEvent.sequence_number)
        )
        return list((await session.scalars(query)).all())

    found: list[str] = with_session(database_url, read)
    return found


def response_row(database_url: str, response_id: str) -> tuple[str, str | None]:
    async def read(session: Any) -> tuple[str, str | None]:
        row = (await session.scalars(sa.select(Response).where(Response.id == response_id))).one()
        return row.status, (row.error or {}).get("code")

    found: tuple[str, str | None] = with_session(database_url, read)
    return found


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite is one process
def test_a_stream_started_on_one_server_is_followed_live_from_another(
    database_url: str, env: dict[str, str], upstream: str, tmp_path: Path
) -> None:
    with ExitStack() as stack:
        first = Server(env, tmp_path / "first.log", stack)
        second = Server(env, tmp_path / "second.log", stack)
        stream = first.sdk.responses.create(model=MODEL, input="hello", max_output_tokens=4, stream=True)
        started = []
        for event in stream:
            started.append(event)
            if event.type == "response.output_text.delta":
                break
        response_id = started[0].response.id
        # The first delta may still be in the recorder's batch: resume after what is surely recorded.
        until(lambda: "response.output_text.delta" in recorded(database_url, response_id), "the delta is recorded")
        follower = second.sdk.responses.retrieve(response_id, stream=True, starting_after=1)
        followed = []
        for event in follower:
            followed.append(event)
            if event.type == "response.output_text.delta":
                break
        release(upstream)  # only now does the model go on: the rest reaches the follower live, from the other process
        followed += list(follower)
        started += list(stream)

    assert [e.to_dict() for e in followed] == [e.to_dict() for e in started[2:]]
    assert followed[-1].type == "response.completed"
    assert followed[-1].response.output_text == "w0 w1 w2 w3"


def test_a_killed_servers_background_turn_is_settled_and_the_queued_one_behind_it_runs(
    database_url: str, env: dict[str, str], upstream: str, tmp_path: Path
) -> None:
    with ExitStack() as stack:
        first = Server(env, tmp_path / "first.log", stack)
        conversation = first.sdk.conversations.create()
        interrupted = first.sdk.responses.create(
            model=MODEL, input="first", max_output_tokens=4, background=True, conversation=conversation.id
        )
        queued = first.sdk.responses.create(
            model=MODEL, input="second", max_output_tokens=4, background=True, conversation=conversation.id
        )
        assert (interrupted.status, queued.status) == ("queued", "queued")
        until(
            lambda: "response.output_text.delta" in recorded(database_url, interrupted.id),
            "the first background turn is mid-answer",
        )
        assert response_row(database_url, queued.id) == ("queued", None)  # behind the first, not beside it
        followed: list[Any] = []
        if database_url.startswith("postgresql"):
            # A second server on the same database follows the running turn from the first (SQLite is one process:
            # there the second server only starts once the first is dead). It cannot take either job meanwhile: the
            # running one's lease is live, the queued one waits behind it.
            second = Server(env, tmp_path / "second.log", stack)
            follower = second.sdk.responses.retrieve(interrupted.id, stream=True, starting_after=1)
            for event in follower:
                followed.append(event)
                if event.type == "response.output_text.delta":
                    break
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()

        if followed:
            followed += list(follower)  # goes on until the second server settles the turn
            assert followed[0].type == "response.in_progress" and followed[-1].type == "response.failed"
            assert followed[-1].response.error.type == "turn_interrupted"
        else:
            second = Server(env, tmp_path / "second.log", stack)
        until(lambda: response_row(database_url, interrupted.id)[0] == "failed", "the interrupted turn is settled")
        assert response_row(database_url, interrupted.id) == ("failed", "turn_interrupted")
        until(
            lambda: "response.output_text.delta" in recorded(database_url, queued.id),
            "the queued turn runs on the new server",
        )
        release(upstream)
        until(lambda: response_row(database_url, queued.id)[0] == "completed", "the queued turn completes")

        replay = list(second.sdk.responses.retrieve(interrupted.id, stream=True))
        assert replay[0].type == "response.created" and replay[-1].type == "response.failed"
        assert [e.sequence_number for e in replay] == list(range(len(replay)))
        items = second.sdk.conversations.items.list(conversation.id, order="asc")
        texts = [part.text for item in items.data for part in item.content]  # type: ignore[union-attr]
        assert texts == ["second", "w0 w1 w2 w3"]

    async def jobs(session: Any) -> list[tuple[str, int]]:
        return [(j.status, j.attempts) for j in (await session.scalars(sa.select(Job).order_by(Job.id))).all()]

    statuses = with_session(database_url, jobs)
    assert [status for status, _ in statuses] == ["done", "done"]
    assert statuses[0][1] >= 2  # taken over after the kill


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite is one process
def test_an_api_only_server_leaves_background_turns_to_a_worker_process(
    database_url: str, env: dict[str, str], upstream: str, tmp_path: Path
) -> None:
    api_env = {**env, "THREADLINE_JOB_CONCURRENCY": "0"}
    # The worker polls once an hour: the job reaches it by NOTIFY.
    worker_env = {**env, "THREADLINE_JOB_POLL_SECONDS": "3600"}
    log = tmp_path / "worker.log"
    with ExitStack() as stack, log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "threadline", "worker"], stdout=out, stderr=subprocess.STDOUT, env=worker_env
        )
        stack.callback(worker.wait)
        stack.callback(worker.kill)
        api = Server(api_env, tmp_path / "api.log", stack)
        created = api.sdk.responses.create(model=MODEL, input="hello", max_output_tokens=3, background=True)
        until(lambda: "response.output_text.delta" in recorded(database_url, created.id), "the worker runs the turn")
        release(upstream)
        until(lambda: response_row(database_url, created.id)[0] == "completed", "the turn completes")
        assert api.sdk.responses.retrieve(created.id).output_text == "w0 w1 w2"
        worker.send_signal(signal.SIGTERM)  # drains, then stops
        assert worker.wait(timeout=60) == 0, log.read_text()[-3000:]
