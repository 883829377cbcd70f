"""The real `openai-agents` SDK's `OpenAIResponsesCompactionSession` against Threadline: after a run the session
calls `responses.compact`, replaces its stored history with the compacted output (the user messages and one
compaction item), and the next run sends that back as input, which Threadline honours (the model sees the
summary, then the new input). Real upstream process; SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, OpenAIResponsesCompactionSession, OpenAIResponsesModel, Runner, set_tracing_disabled
from agents.memory import SQLiteSession
from fastapi import FastAPI
from openai import AsyncOpenAI

from tests.conftest import make_caller, started_app
from tests.openai_sdk import sdk_client
from tests.tool_helpers import last_request_with
from threadline.config import ProviderConfig, Settings

pytestmark = pytest.mark.slow

# The session accepts only OpenAI model names: Threadline serves one by that name from the test upstream.
MODEL = "gpt-4.1-mini"


@pytest.fixture
async def gpt_app(database_url: str, tool_upstream_url: str) -> AsyncIterator[FastAPI]:
    settings = Settings(
        database_url=database_url,
        local_model_enabled=False,
        retention_enabled=False,
        providers=[ProviderConfig(name="upstream", base_url=tool_upstream_url, models=[MODEL])],
    )
    async for application in started_app(settings):
        yield application


@pytest.fixture
async def oa(gpt_app: FastAPI) -> AsyncIterator[AsyncOpenAI]:
    set_tracing_disabled(True)
    caller = await make_caller(gpt_app)
    # Lenient, as the agents SDK reads `responses.compact`'s user messages (typed as assistant messages).
    client, _ = sdk_client(gpt_app, caller.api_key, strict=False)
    async with client:
        yield client


@pytest.mark.parametrize("mode", ["previous_response_id", "input"])
async def test_the_agents_compaction_session_runs_against_threadline(
    oa: AsyncOpenAI, tool_upstream_url: str, tmp_path: Path, mode: str
) -> None:
    def after_two_candidates(context: dict[str, Any]) -> bool:
        return len(context["compaction_candidate_items"]) >= 2

    store = SQLiteSession(f"trip-{mode}", str(tmp_path / "sessions.db"))
    session = OpenAIResponsesCompactionSession(
        f"trip-{mode}",
        store,
        client=oa,
        model=MODEL,
        compaction_mode=mode,  # type: ignore[arg-type]
        should_trigger_compaction=after_two_candidates,
    )
    agent = Agent(name="planner", instructions="Plan trips.", model=OpenAIResponsesModel(model=MODEL, openai_client=oa))

    first = await Runner.run(agent, "The train leaves from platform 9.", session=session)
    assert first.final_output == "echo: The train leaves from platform 9."
    second = await Runner.run(agent, "Seat 42 is booked.", session=session)
    assert second.final_output == "echo: Seat 42 is booked."

    # The session compacted through Threadline: its history is the user messages and one compaction item.
    items = await session.get_items()
    assert [i.get("type") for i in items][-1] == "compaction"
    summary = items[-1]["encrypted_content"]  # type: ignore[typeddict-item]
    assert "platform 9" in summary and "Seat 42" in summary
    assert all(i.get("role") == "user" for i in items[:-1])

    third = await Runner.run(agent, "Which platform?", session=session)
    assert third.final_output == "echo: Which platform?"
    sent = last_request_with(tool_upstream_url, "Which platform?")
    # The instructions, the summary (standing for everything before it), the new input.
    assert [m["role"] for m in sent["messages"]] == ["system", "system", "user"]
    assert sent["messages"][0]["content"] == "Plan trips."
    assert sent["messages"][1]["content"].endswith(summary)
