"""Background compaction (docs/compaction.md): a `smart` turn that leaves messages out, or a prompt past the
thread's `compact_at` share of the window, queues a summary job; the turn itself does not wait, and the next turns
start from the summary: the conversation's start, the summary, the newest messages. Real upstream process, the
app's own job runner; SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from tests.conftest import Caller, make_caller, started_app
from tests.responses_helpers import thread_messages
from tests.test_jobs import until
from tests.tool_helpers import last_request_with
from threadline.config import ProviderConfig, Settings
from threadline.storage.engine import create_sessionmaker
from threadline.storage.tables import Job

pytestmark = pytest.mark.slow

WINDOW = 320


def small_settings(database_url: str, tool_upstream_url: str, **overrides: Any) -> Settings:
    """A model with a small window on the real upstream, `smart` by default."""
    return Settings(
        database_url=database_url,
        local_model_enabled=False,
        retention_enabled=False,
        default_model="small-model",
        default_context_mode="smart",
        default_max_output_tokens=20,
        providers=[
            ProviderConfig(
                name="small",
                base_url=tool_upstream_url,
                models=["small-model"],
                context_window=WINDOW,
                tokenizer="o200k",
                capabilities={"tools": False},
            )
        ],
        **overrides,
    )


@pytest.fixture
async def small_app(database_url: str, tool_upstream_url: str) -> AsyncIterator[FastAPI]:
    async for application in started_app(small_settings(database_url, tool_upstream_url)):
        yield application


@pytest.fixture
async def quiet_app(database_url: str, tool_upstream_url: str) -> AsyncIterator[FastAPI]:
    """`small_app` without a job runner: queued summaries stay queued."""
    async for application in started_app(small_settings(database_url, tool_upstream_url, job_concurrency=0)):
        yield application


@pytest.fixture
async def client(small_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=small_app), base_url="http://t") as c:
        yield c


@pytest.fixture
async def caller(small_app: FastAPI) -> Caller:
    return await make_caller(small_app)


async def turn(client: httpx.AsyncClient, caller: Caller, thread: str, text: str, **extra: Any) -> dict[str, Any]:
    body = {"thread": thread, "inputs": [{"role": "user", "texts": [{"text": text}]}], **extra}
    response = await client.post("/v1/model/response", json=body, headers=caller.headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def compaction_jobs(app: FastAPI) -> list[Job]:
    async with create_sessionmaker(app.state.engine)() as session:
        return list((await session.execute(sa.select(Job).where(Job.kind == "compaction.thread"))).scalars())


async def settled(app: FastAPI, *, some: bool = True) -> None:
    """Until every compaction job queued so far has run (and, with `some`, at least one was queued)."""

    async def done() -> bool:
        found = await compaction_jobs(app)
        return (bool(found) or not some) and all(j.status in ("done", "failed") for j in found)

    await until(done, "the compaction jobs ran")


async def test_smart_turns_that_leave_messages_out_get_a_summary_for_the_next_turns(
    small_app: FastAPI, client: httpx.AsyncClient, caller: Caller, tool_upstream_url: str
) -> None:
    await turn(client, caller, "long", "Hello, I am Ines and I plan the trip.")
    facts = [f"Fact {i}: the locker number for bag {i} is {4000 + i}." for i in range(12)]
    reports = []
    for fact in facts:
        reports.append((await turn(client, caller, "long", fact))["context"])
        # The turn has answered without waiting for its summary; the test lets the summary finish before the next
        # turn, so what each summary covers (and the thread's final state) does not depend on the job's timing.
        await settled(small_app, some=False)
    # Until something is left out, no summary is asked for; the turn that leaves messages out does not wait.
    first_gap = next(i for i, r in enumerate(reports) if r["unsummarized_omitted"] > 0)
    assert all(r["compaction"] is None for r in reports[: first_gap + 1])
    assert reports[first_gap]["gap_marked"]
    await settled(small_app)
    assert {j.status for j in await compaction_jobs(small_app)} == {"done"}

    items = await thread_messages(client, caller, "long")
    compactions = [m for m in items if m["type"] == "compaction"]
    assert compactions and compactions[-1]["covers"][0] == 1
    assert "4000" in compactions[0]["content"]  # an early fact, kept by the summary

    answered = await turn(client, caller, "long", "Which locker holds bag 0?")
    report = answered["context"]
    # It starts from the newest summary. The summary left the newest half of the history budget as it was said,
    # and the summary itself now takes room in the prompt, so at most the last exchange before this turn can be
    # left out uncovered (it is queued for the next summary).
    assert report["compaction"]["id"] == compactions[-1]["id"] and report["unsummarized_omitted"] <= 2
    sent = last_request_with(tool_upstream_url, "Which locker holds bag 0?")
    contents = [m["content"] for m in sent["messages"]]
    # The conversation's start as it was said, the summary, then the newest messages.
    assert contents[0] == "Hello, I am Ines and I plan the trip." and contents[1].startswith("echo: Hello")
    assert contents[2].startswith("Summary of the earlier conversation") and "4000" in contents[2]
    assert contents[-1] == "Which locker holds bag 0?"
    await settled(small_app)  # nothing of the thread's is still running when the app stops
    # Every message is still in the history.
    assert len([m for m in await thread_messages(client, caller, "long") if m["type"] == "message"]) == 28


async def test_compact_at_compacts_any_mode_past_its_share_of_the_window(
    small_app: FastAPI, client: httpx.AsyncClient, caller: Caller
) -> None:
    await turn(client, caller, "shared", "start", threadContextMode="recent")
    patched = await client.patch("/v1/threads/shared", json={"compactAt": 0.4}, headers=caller.headers)
    assert patched.status_code == 200 and patched.json()["compact_at"] == 0.4
    for i in range(6):
        report = (await turn(client, caller, "shared", f"message number {i} " * 4, threadContextMode="recent"))[
            "context"
        ]
        if report["input_tokens"] > 0.4 * WINDOW:
            break
    else:
        pytest.fail("the prompt never passed the threshold")
    await settled(small_app)
    items = await thread_messages(client, caller, "shared")
    assert [m["type"] for m in items].count("compaction") == 1

    # A share is of the window: more than all of it is refused.
    refused = await client.patch("/v1/threads/shared", json={"compactAt": 2}, headers=caller.headers)
    assert refused.status_code == 400


async def test_an_assistants_compact_at_holds_for_its_threads_and_the_save_reads_no_assistant(
    quiet_app: FastAPI,
) -> None:
    """A thread without a share of its own is compacted past its assistant's; the start read that assistant
    already, so the turn's save does not read it again. (No job runner here: the summary job reads the assistant
    too, and its statements would land among a turn's.)"""
    caller = await make_caller(quiet_app)
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=quiet_app), base_url="http://t") as client:
        made = await client.post("/v1/assistants", json={"name": "a", "compactAt": 0.4}, headers=caller.headers)
        assert made.status_code == 200, made.text
        created = await client.post(
            "/v1/threads", json={"id": "assisted", "assistantId": made.json()["id"]}, headers=caller.headers
        )
        assert created.status_code == 200, created.text
        sa.event.listen(quiet_app.state.engine.sync_engine, "before_cursor_execute", record)
        try:
            for i in range(6):
                statements.clear()
                body = await turn(client, caller, "assisted", f"message number {i} " * 4, threadContextMode="recent")
                reads = [s for s in statements if "FROM assistants" in s]
                assert len(reads) == 1, reads  # the start's
                if body["context"]["input_tokens"] > 0.4 * WINDOW:
                    break
            else:
                pytest.fail("the prompt never passed the threshold")
        finally:
            sa.event.remove(quiet_app.state.engine.sync_engine, "before_cursor_execute", record)
    queued = [j for j in await compaction_jobs(quiet_app) if j.payload["thread_id"] == "assisted"]
    assert [j.status for j in queued] == ["queued"]
