"""The real `openai-agents` SDK runs its tool loop against Threadline (Responses API, tracing off), with a real
tool-calling upstream process: a `Runner` with one `@function_tool`, streamed and not, its history kept by an
`OpenAIConversationsSession` or chained with `previous_response_id`. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from agents import (
    Agent,
    OpenAIConversationsSession,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from fastapi import FastAPI
from openai import AsyncOpenAI

from tests.conftest import Caller, make_caller
from tests.openai_sdk import sdk_client
from tests.tool_helpers import last_request_with

pytestmark = pytest.mark.slow

CALLED: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    CALLED.append(city)
    return f"cloudy in {city}"


@pytest.fixture(autouse=True)
def no_tracing() -> None:
    set_tracing_disabled(True)
    CALLED.clear()


@pytest.fixture
async def tool_caller(tool_app: FastAPI) -> Caller:
    return await make_caller(tool_app)


@pytest.fixture
async def oa(tool_app: FastAPI, tool_caller: Caller) -> AsyncIterator[AsyncOpenAI]:
    client, _ = sdk_client(tool_app, tool_caller.api_key)
    async with client:
        yield client


def weather_agent(client: AsyncOpenAI) -> Agent:
    return Agent(
        name="weather",
        instructions="Answer with the weather tool.",
        model=OpenAIResponsesModel(model="tool-model", openai_client=client),
        tools=[get_weather],
    )


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
async def test_runner_with_a_conversations_session(oa: AsyncOpenAI, streamed: bool) -> None:
    session = OpenAIConversationsSession(openai_client=oa)
    agent = weather_agent(oa)
    if streamed:
        result = Runner.run_streamed(agent, "Paris", session=session)
        async for _ in result.stream_events():
            pass
    else:
        result = await Runner.run(agent, "Paris", session=session)  # type: ignore[assignment]

    assert CALLED == ["Paris"]
    assert result.final_output == "Tool said: cloudy in Paris"
    # The state lives in Threadline's conversation: the user turn, the call, its output, the answer.
    items = [i async for i in oa.conversations.items.list(session.session_id, order="asc")]
    assert [i.type for i in items] == ["message", "function_call", "function_call_output", "message"]
    assert items[2].output == "cloudy in Paris"  # type: ignore[union-attr]

    # A second run on the same session sees the history and calls the tool again for the new turn.
    again = await Runner.run(agent, "Bern", session=session)
    assert again.final_output == "Tool said: cloudy in Bern" and CALLED == ["Paris", "Bern"]
    assert len([i async for i in oa.conversations.items.list(session.session_id)]) == 8


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
async def test_runner_chained_with_previous_response_id(
    oa: AsyncOpenAI, streamed: bool, tool_upstream_url: str
) -> None:
    agent = weather_agent(oa)
    first = await Runner.run(agent, "Oslo", auto_previous_response_id=True)
    assert first.final_output == "Tool said: cloudy in Oslo"
    assert first.last_response_id is not None

    if streamed:
        second = Runner.run_streamed(agent, "Lima", previous_response_id=first.last_response_id)
        async for _ in second.stream_events():
            pass
    else:
        second = await Runner.run(agent, "Lima", previous_response_id=first.last_response_id)  # type: ignore[assignment]
    assert second.final_output == "Tool said: cloudy in Lima"
    assert CALLED == ["Oslo", "Lima"]
    # The last model call of the chain sent only the new output: the rest came from Threadline's thread.
    sent = last_request_with(tool_upstream_url, "cloudy in Lima")
    users = [m["content"] for m in sent["messages"] if m["role"] == "user"]
    assert users == ["Oslo", "Lima"]
    stored = await oa.responses.retrieve(second.last_response_id)  # type: ignore[arg-type]
    assert stored.output_text == "Tool said: cloudy in Lima"
