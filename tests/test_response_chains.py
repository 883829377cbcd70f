"""previousResponseId chains (docs/chains.md) on SQLite and PostgreSQL, with a scripted FakeProvider.

A chain continues any earlier response, as often as wanted (branching): the model sees exactly that response's
conversation up to and including its output. Chains live in hidden threads of kind "chain" that point at their
parent (thread, seq) instead of copying it.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import Caller, registry_with
from tests.helpers import refused
from tests.responses_helpers import prefill, thread_messages, turn
from tests.test_query_plans import _assert_range_scan, _plan, _Recorder, generic_plan
from threadline.api.app import create_app
from threadline.config import Settings
from threadline.domain.clock import utcnow
from threadline.providers.fake import FakeProvider, Script
from threadline.services import retention
from threadline.storage.repositories.messages import MessageRepository
from threadline.storage.tables import Message, Response, Thread
from threadline.turns import start as turn_start

pytestmark = pytest.mark.fake_model()


@pytest.fixture
def maker(app: FastAPI) -> async_sessionmaker[AsyncSession]:
    result: async_sessionmaker[AsyncSession] = app.state.sessionmaker
    return result


async def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def seen(fake: FakeProvider, call: int = -1) -> list[str]:
    return [m.content for m in fake.calls[call]]


async def thread_row(maker: async_sessionmaker[AsyncSession], thread_id: str) -> Thread:
    async with maker() as session:
        found = await session.get(Thread, (await _org_of(session, thread_id), thread_id))
        assert found is not None
        return found


async def _org_of(session: AsyncSession, thread_id: str) -> str:
    return str((await session.execute(sa.select(Thread.organization_id).where(Thread.id == thread_id))).scalar_one())


async def count_rows(maker: async_sessionmaker[AsyncSession], table: type, **where: Any) -> int:
    async with maker() as session:
        query = sa.select(sa.func.count()).select_from(table)
        for column, value in where.items():
            query = query.where(getattr(table, column) == value)
        return int((await session.execute(query)).scalar_one())


async def test_a_linear_chain_is_one_hidden_thread_and_copies_nothing(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider, maker: async_sessionmaker[AsyncSession]
) -> None:
    first = await ok(await turn(client, caller, "one", store=False))
    chain = [first]
    for text in ("two", "three", "four"):
        chain.append(await ok(await turn(client, caller, text, previousResponseId=chain[-1]["id"])))
    # Every turn saw all the turns before it.
    assert seen(fake, 3) == ["one", "echo: one", "two", "echo: two", "three", "echo: three", "four"]
    chain_thread = chain[1]["thread_id"]
    assert {r["thread_id"] for r in chain[1:]} == {chain_thread} != {first["thread_id"]}
    row = await thread_row(maker, chain_thread)
    assert (row.kind, row.visible_in_ui, row.parent_thread_id, row.parent_seq) == (
        "chain",
        False,
        first["thread_id"],
        2,
    )
    assert row.message_count == 6
    assert (await thread_row(maker, first["thread_id"])).message_count == 2
    # Two rows per turn in all: no history was copied into the chain or into a response.
    assert await count_rows(maker, Message) == 8
    assert await count_rows(maker, Thread, kind="chain") == 1
    # The chain thread holds its own turns, numbered on from where it forked.
    assert [m["content"] for m in await thread_messages(client, caller, chain_thread)] == [
        "two",
        "echo: two",
        "three",
        "echo: three",
        "four",
        "echo: four",
    ]
    assert chain[3]["context"]["context_segments"] == [
        {"thread_id": first["thread_id"], "first_seq": 1, "last_seq": 2},
        {"thread_id": chain_thread, "first_seq": 3, "last_seq": 6},
    ]
    assert chain[3]["context"]["seq_ranges"] == [[1, 6]]
    # Hidden: not in the default thread list.
    listed = (await client.get("/v1/threads", headers=caller.headers)).json()["data"]
    assert chain_thread not in [t["id"] for t in listed]


async def test_branching_twice_from_one_response_keeps_the_branches_apart(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider, maker: async_sessionmaker[AsyncSession]
) -> None:
    root = await ok(await turn(client, caller, "root"))
    fork_point = await ok(await turn(client, caller, "middle", previousResponseId=root["id"]))
    later = await ok(await turn(client, caller, "later", previousResponseId=fork_point["id"]))
    assert later["thread_id"] == fork_point["thread_id"]

    prefix = ["root", "echo: root", "middle", "echo: middle"]
    left = await ok(await turn(client, caller, "left", previousResponseId=fork_point["id"]))
    assert seen(fake) == [*prefix, "left"]
    right = await ok(await turn(client, caller, "right", previousResponseId=fork_point["id"], store=True))
    assert seen(fake) == [*prefix, "right"]
    threads = {fork_point["thread_id"], left["thread_id"], right["thread_id"]}
    assert len(threads) == 3  # each branch is its own hidden chain
    for branch in (left, right):
        row = await thread_row(maker, branch["thread_id"])
        assert (row.kind, row.visible_in_ui) == ("chain", False)
        assert (row.parent_thread_id, row.parent_seq) == (fork_point["thread_id"], 4)

    # Continuing a branch appends to it and sees that branch only.
    left_again = await ok(await turn(client, caller, "left again", previousResponseId=left["id"]))
    assert left_again["thread_id"] == left["thread_id"]
    assert seen(fake) == [*prefix, "left", "echo: left", "left again"]
    # The original line is untouched and can still be continued from its latest turn.
    on = await ok(await turn(client, caller, "on", previousResponseId=later["id"]))
    assert on["thread_id"] == fork_point["thread_id"]
    assert seen(fake) == [*prefix, "later", "echo: later", "on"]
    assert await count_rows(maker, Message) == 2 * 7


async def test_chaining_from_a_visible_thread_leaves_it_untouched(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider, maker: async_sessionmaker[AsyncSession]
) -> None:
    await ok(await turn(client, caller, "What is Python?", thread="t_visible"))
    latest = await ok(await turn(client, caller, "Show an example", thread="t_visible"))
    chained = await ok(await turn(client, caller, "Shorter please", previousResponseId=latest["id"]))
    assert seen(fake) == [
        "What is Python?",
        "echo: What is Python?",
        "Show an example",
        "echo: Show an example",
        "Shorter please",
    ]
    assert chained["thread_id"] != "t_visible"
    visible = (await client.get("/v1/threads/t_visible", headers=caller.headers)).json()
    assert visible["message_count"] == 4
    assert len(await thread_messages(client, caller, "t_visible")) == 4
    hidden = (await client.get(f"/v1/threads/{chained['thread_id']}", headers=caller.headers)).json()
    assert hidden["visible_in_ui"] is False and hidden["message_count"] == 2
    # The visible thread goes on by itself: the chain's turn is not part of it.
    await ok(await turn(client, caller, "Next", thread="t_visible"))
    assert "Shorter please" not in seen(fake)


async def test_a_chain_of_a_chain_reads_every_segment_and_reports_them(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider, maker: async_sessionmaker[AsyncSession]
) -> None:
    root = await ok(await turn(client, caller, "a", thread="t_root"))
    b = await ok(await turn(client, caller, "b", previousResponseId=root["id"]))
    await ok(await turn(client, caller, "c", previousResponseId=b["id"]))
    # Fork from b, which is no longer the latest turn of its chain: a grandchild of t_root.
    d = await ok(await turn(client, caller, "d", previousResponseId=b["id"]))
    e = await ok(await turn(client, caller, "e", previousResponseId=d["id"]))
    assert seen(fake) == ["a", "echo: a", "b", "echo: b", "d", "echo: d", "e"]
    grandchild = await thread_row(maker, d["thread_id"])
    assert (grandchild.parent_thread_id, grandchild.parent_seq) == (b["thread_id"], 4)
    assert e["thread_id"] == d["thread_id"]
    assert e["context"]["context_segments"] == [
        {"thread_id": "t_root", "first_seq": 1, "last_seq": 2},
        {"thread_id": b["thread_id"], "first_seq": 3, "last_seq": 4},
        {"thread_id": d["thread_id"], "first_seq": 5, "last_seq": 6},
    ]
    assert e["context"]["messages_included"] == 6 and e["context"]["messages_omitted"] == 0
    # The stored response keeps the report: any answer can be traced to the rows the model saw.
    stored = (await client.get(f"/v1/model/response/{e['id']}", headers=caller.headers)).json()
    assert stored["context"]["context_segments"] == e["context"]["context_segments"]
    # full mode reads the whole path too.
    full = await ok(await turn(client, caller, "f", previousResponseId=e["id"], threadContextMode="full"))
    assert seen(fake) == ["a", "echo: a", "b", "echo: b", "d", "echo: d", "e", "echo: e", "f"]
    assert full["context"]["messages_included"] == 8


@pytest.mark.fake_model(context_window=52)
async def test_the_budget_spans_segments_recent_keeps_the_newest_smart_the_start(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    previous = None
    for text in ("q1", "q2", "q3"):
        previous = await ok(await turn(client, caller, text, thread="t_budget", maxOutputTokens=10))
    assert previous is not None
    for text in ("q4", "q5"):
        previous = await ok(await turn(client, caller, text, previousResponseId=previous["id"], maxOutputTokens=10))
    chain_thread = previous["thread_id"]
    # Costs (words + 4 framing + 1 role): user 6, assistant 7 → 65 in all over seqs 1..10 (t_budget 1–6, chain
    # 7–10). Budget = 52 - 10 reserve - 3 priming - 6 input = 33: the newest five fit (33), across the boundary.
    recent = await ok(await turn(client, caller, "q6", previousResponseId=previous["id"], maxOutputTokens=10))
    report = recent["context"]
    assert report["history_budget"] == 33
    assert report["messages_included"] == 5 and report["messages_omitted"] == 5
    assert report["context_segments"] == [
        {"thread_id": "t_budget", "first_seq": 6, "last_seq": 6},
        {"thread_id": chain_thread, "first_seq": 7, "last_seq": 10},
    ]
    assert seen(fake) == ["echo: q3", "q4", "echo: q4", "q5", "echo: q5", "q6"]

    # smart: the root thread's first exchange (13), a gap note (11) and the newest message that still fits (7).
    smart = await ok(
        await turn(
            client, caller, "q6", previousResponseId=previous["id"], maxOutputTokens=10, threadContextMode="smart"
        )
    )
    assert seen(fake) == ["q1", "echo: q1", "[… 7 earlier messages omitted …]", "echo: q5", "q6"]
    assert smart["context"]["gap_marked"] is True
    assert smart["context"]["context_segments"] == [
        {"thread_id": "t_budget", "first_seq": 1, "last_seq": 2},
        {"thread_id": chain_thread, "first_seq": 10, "last_seq": 10},
    ]

    refusal = await turn(
        client, caller, "q6", previousResponseId=previous["id"], maxOutputTokens=10, threadContextMode="full"
    )
    refused(refusal, 400, "context_length_exceeded")


async def test_chain_errors(
    client: httpx.AsyncClient,
    caller: Caller,
    other_caller: Caller,
    app: FastAPI,
    maker: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = await ok(await turn(client, caller, "hello"))

    unknown = await turn(client, caller, "x", previousResponseId="resp_nope")
    refused(unknown, 404, "previous_response_not_found")
    assert unknown.json()["error"]["param"] == "previous_response_id"
    foreign = await turn(client, other_caller, "x", previousResponseId=first["id"])
    refused(foreign, 404, "previous_response_not_found")
    both = await turn(client, caller, "x", previousResponseId=first["id"], thread="t_both")
    refused(both, 400, "thread_with_previous_response")
    assert (await client.get("/v1/threads/t_both", headers=caller.headers)).status_code == 404

    # A conversation that was deleted cannot be continued.
    await client.delete(f"/v1/threads/{first['thread_id']}", headers=caller.headers)
    deleted = await turn(client, caller, "x", previousResponseId=first["id"])
    refused(deleted, 404, "previous_response_not_found")

    second = await ok(await turn(client, caller, "again"))
    async with maker() as session:
        await session.execute(
            sa.update(Response).where(Response.id == second["id"]).values(created_at=utcnow() - timedelta(hours=25))
        )
        await session.commit()
    expired = await turn(client, caller, "x", previousResponseId=second["id"])
    refused(expired, 400, "previous_response_expired")

    # Forks are bounded, so a turn's reads stay bounded (one query per segment at most).
    monkeypatch.setattr(turn_start, "MAX_CHAIN_SEGMENTS", 3)
    link = await ok(await turn(client, caller, "s1"))
    for text in ("s2", "s3"):
        base = link
        await ok(await turn(client, caller, text + " line", previousResponseId=base["id"]))
        link = await ok(await turn(client, caller, text, previousResponseId=base["id"]))  # a fork: one more segment
    appended = await turn(client, caller, "s4", previousResponseId=link["id"])
    assert appended.status_code == 200  # appending to the latest turn adds no segment
    threads_before = await count_rows(maker, Thread)
    fork = await turn(client, caller, "s5", previousResponseId=link["id"])
    refused(fork, 400, "previous_response_chain_too_deep")
    assert await count_rows(maker, Thread) == threads_before  # the refused fork left no thread behind


async def test_concurrent_branches_from_one_response_do_not_wait_for_each_other(
    settings: Settings, caller: Caller, fake: FakeProvider, app: FastAPI, client: httpx.AsyncClient
) -> None:
    first = await ok(await turn(client, caller, "start"))
    tip = await ok(await turn(client, caller, "tip", previousResponseId=first["id"]))
    # Another process that would give up on a busy thread almost at once (409 thread_busy).
    impatient = create_app(settings.model_copy(update={"thread_busy_timeout_seconds": 0.1}), models=registry_with(fake))
    fake.script(Script(fail="hang"))
    async with impatient.router.lifespan_context(impatient):
        other = httpx.AsyncClient(transport=httpx.ASGITransport(app=impatient), base_url="http://t")
        async with other:
            fake.started.clear()
            stuck = asyncio.create_task(turn(client, caller, "stuck branch", previousResponseId=tip["id"]))
            await asyncio.wait_for(fake.started.wait(), timeout=10)
            # The stuck turn continues the chain's latest turn, so it holds the chain's lease until cancelled ...
            chain = await thread_row(app.state.sessionmaker, tip["thread_id"])
            assert chain.status == "streaming"
            # ... and another continuation of the same response forks instead of waiting for it.
            quick = await ok(await turn(other, caller, "quick branch", previousResponseId=tip["id"]))
            assert not stuck.done()
            stuck.cancel()
            await asyncio.gather(stuck, return_exceptions=True)
    assert quick["thread_id"] != tip["thread_id"]
    assert seen(fake, -2) == ["start", "echo: start", "tip", "echo: tip", "stuck branch"]
    assert seen(fake) == ["start", "echo: start", "tip", "echo: tip", "quick branch"]
    quick_thread = await thread_row(app.state.sessionmaker, quick["thread_id"])
    assert (quick_thread.parent_thread_id, quick_thread.parent_seq) == (tip["thread_id"], 4)


async def test_a_chain_survives_its_parent_being_deleted_and_purged(
    client: httpx.AsyncClient,
    caller: Caller,
    fake: FakeProvider,
    settings: Settings,
    maker: async_sessionmaker[AsyncSession],
) -> None:
    root = await ok(await turn(client, caller, "private", thread="t_parent"))
    chained = await ok(await turn(client, caller, "hello", previousResponseId=root["id"]))
    assert seen(fake) == ["private", "echo: private", "hello"]
    assert (await client.delete("/v1/threads/t_parent", headers=caller.headers)).status_code == 200
    # The deleted parent no longer reaches the model; the chain keeps its own turns.
    after_delete = await ok(await turn(client, caller, "more", previousResponseId=chained["id"]))
    assert seen(fake) == ["hello", "echo: hello", "more"]
    assert after_delete["context"]["context_segments"] == [
        {"thread_id": chained["thread_id"], "first_seq": 3, "last_seq": 4}
    ]
    async with maker() as session:
        await session.execute(
            sa.update(Thread).where(Thread.id == "t_parent").values(deleted_at=utcnow() - timedelta(days=31))
        )
        await session.commit()
    report = await retention.sweep(maker, settings)
    assert report.counts["deleted_threads"] == 1 and report.counts["expired_chains"] == 0
    assert await count_rows(maker, Thread, id="t_parent") == 0
    assert await count_rows(maker, Message, thread_id="t_parent") == 0
    last = await ok(await turn(client, caller, "still here", previousResponseId=after_delete["id"]))
    assert seen(fake) == ["hello", "echo: hello", "more", "echo: more", "still here"]
    assert last["thread_id"] == chained["thread_id"]


async def test_the_sweeper_keeps_an_idle_chain_while_a_live_chain_reads_through_it(
    client: httpx.AsyncClient,
    caller: Caller,
    fake: FakeProvider,
    settings: Settings,
    maker: async_sessionmaker[AsyncSession],
) -> None:
    root = await ok(await turn(client, caller, "root", thread="t_keep"))
    b = await ok(await turn(client, caller, "b", previousResponseId=root["id"]))
    await ok(await turn(client, caller, "c", previousResponseId=b["id"]))
    d = await ok(await turn(client, caller, "d", previousResponseId=b["id"]))  # forks from the middle chain
    middle, leaf = b["thread_id"], d["thread_id"]
    two_days_ago = utcnow() - timedelta(days=2)

    async def idle(thread_id: str) -> None:
        async with maker() as session:
            await session.execute(sa.update(Thread).where(Thread.id == thread_id).values(last_message_at=two_days_ago))
            await session.execute(
                sa.update(Response).where(Response.thread_id == thread_id).values(created_at=two_days_ago)
            )
            await session.commit()

    await idle(middle)
    dry = await retention.sweep(maker, settings, dry_run=True)
    assert dry.counts["expired_chains"] == 0 and dry.counts["chain_responses"] == 2
    report = await retention.sweep(maker, settings)
    assert report.counts == dry.counts
    # The middle chain lost its expired responses (they can no longer be continued) but not its messages.
    assert await count_rows(maker, Message, thread_id=middle) == 4
    assert await count_rows(maker, Response, thread_id=middle) == 0
    e = await ok(await turn(client, caller, "e", previousResponseId=d["id"]))
    assert seen(fake) == ["root", "echo: root", "b", "echo: b", "d", "echo: d", "e"]

    # Once the leaf is idle too, both chains go in one sweep (leaf first); the visible thread stays.
    await idle(leaf)
    dry = await retention.sweep(maker, settings, dry_run=True)
    assert dry.counts["expired_chains"] == 2
    report = await retention.sweep(maker, settings)
    assert report.counts == dry.counts
    for gone in (middle, leaf):
        assert await count_rows(maker, Thread, id=gone) == 0
        assert await count_rows(maker, Message, thread_id=gone) == 0
    assert await count_rows(maker, Message, thread_id="t_keep") == 2
    assert e["thread_id"] == leaf


# No job runner: a summary job the smart turn queues reads the thread in pages of its own, which would land in
# the turn's read counts whenever the job runs at once.
@pytest.mark.app_settings(job_concurrency=0)
async def test_a_chained_turn_finds_compaction_items_on_their_partial_index(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI
) -> None:
    """The previous-response statement asks each thread of the path for a live compaction item: on the partial
    index `ix_messages_compaction`, also under the generic plan PostgreSQL switches a prepared statement to. (With
    `type` bound, that plan walked every message of a 10,000-message parent: 5.4 ms a chained turn.)"""
    tip = await ok(await turn(client, caller, "tip", thread="t_tip"))
    recorder = _Recorder()
    sa.event.listen(app.state.engine.sync_engine, "before_cursor_execute", recorder)
    try:
        await ok(await turn(client, caller, "next", previousResponseId=tip["id"]))
    finally:
        sa.event.remove(app.state.engine.sync_engine, "before_cursor_execute", recorder)
    statement, parameters = next((s, p) for s, p in recorder.statements if "WITH RECURSIVE" in s)
    plan = await generic_plan(app.state.engine, statement, parameters)
    assert "ix_messages_compaction" in plan, plan


@pytest.mark.app_settings(job_concurrency=0)  # no job's statements among the turn's
async def test_appending_to_a_chain_takes_the_lease_and_the_path_in_one_statement(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider, app: FastAPI
) -> None:
    """A chain's usual turn continues its latest response: the lease of its thread and the conversation's path come
    from one UPDATE (storage/repositories/threads.py · `continue_chain`), whose look for compaction items along
    the path uses the partial index `ix_messages_compaction` under the generic plan too."""
    first = await ok(await turn(client, caller, "one", thread="t_root"))
    tip = await ok(await turn(client, caller, "two", previousResponseId=first["id"]))  # forks the chain
    recorder = _Recorder()
    sa.event.listen(app.state.engine.sync_engine, "before_cursor_execute", recorder)
    try:
        appended = await ok(await turn(client, caller, "three", previousResponseId=tip["id"]))
    finally:
        sa.event.remove(app.state.engine.sync_engine, "before_cursor_execute", recorder)
    assert appended["thread_id"] == tip["thread_id"]
    assert seen(fake) == ["one", "echo: one", "two", "echo: two", "three"]
    assert appended["context"]["context_segments"] == [
        {"thread_id": "t_root", "first_seq": 1, "last_seq": 2},
        {"thread_id": tip["thread_id"], "first_seq": 3, "last_seq": 4},
    ]
    # Up to the turn's record, the only statement on threads is the lease's (no separate path or response read).
    record = next(i for i, (s, _) in enumerate(recorder.statements) if s.startswith("INSERT INTO responses"))
    on_threads = [(s, p) for s, p in recorder.statements[:record] if "threads" in s]
    assert len(on_threads) == 1, recorder.statements[:record]
    statement, parameters = on_threads[0]
    assert statement.startswith("UPDATE threads") and "WITH RECURSIVE" in statement, statement
    plan = await generic_plan(app.state.engine, statement, parameters)
    assert "ix_messages_compaction" in plan, plan


async def test_a_chain_tip_that_cannot_be_continued_is_refused_as_before(
    client: httpx.AsyncClient, caller: Caller, maker: async_sessionmaker[AsyncSession]
) -> None:
    """The one-statement append takes only a completed, unexpired latest turn of a live chain; every other tip
    goes the long way, which says why it is refused."""
    first = await ok(await turn(client, caller, "one"))
    old = await ok(await turn(client, caller, "two", previousResponseId=first["id"]))
    async with maker() as session:
        await session.execute(
            sa.update(Response).where(Response.id == old["id"]).values(created_at=utcnow() - timedelta(hours=25))
        )
        await session.commit()
    refused(await turn(client, caller, "x", previousResponseId=old["id"]), 400, "previous_response_expired")

    failed = await ok(await turn(client, caller, "three", previousResponseId=first["id"]))
    async with maker() as session:
        await session.execute(sa.update(Response).where(Response.id == failed["id"]).values(status="failed"))
        await session.commit()
    refused(await turn(client, caller, "x", previousResponseId=failed["id"]), 400, "previous_response_not_completed")

    tip = await ok(await turn(client, caller, "four", previousResponseId=first["id"]))
    async with maker() as session:
        await session.execute(sa.update(Thread).where(Thread.id == tip["thread_id"]).values(deleted_at=utcnow()))
        await session.commit()
    refused(await turn(client, caller, "x", previousResponseId=tip["id"]), 404, "previous_response_not_found")


# No background summary: the smart turn below would queue one (it leaves out items no summary covers), and the
# job's own reads, should it run before the assertions, would count as the turn's.
@pytest.mark.app_settings(smart_summaries=False)
async def test_a_chained_turn_reads_only_the_window_of_a_long_parent(
    client: httpx.AsyncClient,
    caller: Caller,
    fake: FakeProvider,
    app: FastAPI,
    maker: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await client.post("/v1/threads", json={"id": "t_big"}, headers=caller.headers)
    await prefill(app, caller, "t_big", 2000)
    tip = await ok(await turn(client, caller, "tip", thread="t_big", maxOutputTokens=10))
    async with maker() as session:  # forget the counts that turn stored: counted rows below = rows read
        await session.execute(sa.update(Message).values(token_count=None, tokenizer=None))
        await session.commit()

    reads: list[int] = []
    recorder = _Recorder()
    original = MessageRepository.context_rows

    async def counting(self: MessageRepository, *args: Any, **kwargs: Any) -> Any:
        rows = await original(self, *args, **kwargs)
        reads.append(len(rows))
        return rows

    monkeypatch.setattr(MessageRepository, "context_rows", counting)
    sa.event.listen(app.state.engine.sync_engine, "before_cursor_execute", recorder)
    try:
        chained = await ok(await turn(client, caller, "next", previousResponseId=tip["id"], maxOutputTokens=10))
    finally:
        sa.event.remove(app.state.engine.sync_engine, "before_cursor_execute", recorder)
    # Every message costs 6 tokens; budget = 1000 - 10 - 3 - 6 = 981 → the newest 163 fit.
    report = chained["context"]
    assert report["messages_included"] == 163 and report["messages_omitted"] == 2002 - 163
    assert report["context_segments"] == [{"thread_id": "t_big", "first_seq": 1840, "last_seq": 2002}]
    # Pages of 64, 128: a bounded read, whatever the parent's length; a handful of statements in all.
    assert sum(reads) <= 2 * 163 and len(reads) <= 3
    # (One of them finds the newest compaction item of the path, on a partial index: docs/compaction.md.) Tried
    # first, the chain's one-statement append (an UPDATE of threads with the path's walk) finds no chain to append
    # to here, as the tip is in a plain thread: counted apart, once.
    appends = [s for s, _ in recorder.statements if s.startswith("UPDATE threads") and "WITH RECURSIVE" in s]
    assert len(appends) == 1, appends
    assert sum(1 for s, _ in recorder.statements if "FROM messages" in s and s not in appends) <= 5
    # The parent is read through the (organization_id, thread_id, seq) index, a range below the fork point. (No
    # ANALYZE here: statistics of this lopsided table would stay in the shared test database and sway the plans
    # that later tests check.)
    statement, parameters = recorder.page_query("messages")
    plan = await _plan(app, statement, parameters)
    _assert_range_scan(plan, app.state.engine.dialect.name, "messages:uq_messages_organization_id_thread_id_seq")
    async with maker() as session:
        counted = set(
            (
                await session.execute(
                    sa.select(Message.seq).where(Message.thread_id == "t_big", Message.token_count.is_not(None))
                )
            ).scalars()
        )
    assert len(counted) == sum(reads) and min(counted) > 1000

    # smart mode also reads the start: the root's head, one more short query.
    reads.clear()
    smart = await ok(
        await turn(
            client, caller, "again", previousResponseId=chained["id"], maxOutputTokens=10, threadContextMode="smart"
        )
    )
    assert seen(fake)[:2] == ["m1", "m2"] and seen(fake)[-1] == "again"
    assert smart["context"]["gap_marked"] is True
    assert smart["context"]["context_segments"][0] == {"thread_id": "t_big", "first_seq": 1, "last_seq": 2}
    assert sum(reads) <= 2 * 163 + 16
