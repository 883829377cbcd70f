"""The Responses API over one WebSocket (`client.responses.connect()` of the real `openai` SDK) against a real
`threadline serve` process, its model a real upstream process (tests/upstream.py), on SQLite and PostgreSQL:
the same events as the SSE stream, continuation within the socket, errors as error events, auth as on HTTP."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
import websockets
from openai import AsyncOpenAI
from openai.resources.responses.responses import AsyncResponsesConnection

from tests.conftest import make_caller, started_app
from tests.servers import free_port, running, serve_command, threadline_env, upstream_server
from tests.tool_helpers import WEATHER_TOOL, tool_settings
from threadline.config import ProviderConfig, Settings

pytestmark = pytest.mark.slow
FINAL = ("response.completed", "response.incomplete", "response.failed")


@contextlib.asynccontextmanager
async def served(settings: Settings, default_model: str, log: Path) -> AsyncIterator[AsyncOpenAI]:
    """An SDK client of a `threadline serve` process on `settings`' database and providers."""
    async for app in started_app(settings):  # (migrated database, a key; tables emptied afterwards)
        key = (await make_caller(app)).api_key
        env = threadline_env(settings.database_url)
        env.update(
            THREADLINE_PROVIDERS=json.dumps([p.model_dump() for p in settings.providers]),
            THREADLINE_DEFAULT_MODEL=default_model,
        )
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        with running(serve_command(port), ready_url=f"{base_url}/healthz", log=log, env=env):
            async with AsyncOpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0) as client:
                yield client


@pytest.fixture
async def oa(database_url: str, tool_upstream_url: str, tmp_path: Path) -> AsyncIterator[AsyncOpenAI]:
    """Models from the tool upstream."""
    async with served(tool_settings(database_url, tool_upstream_url), "tool-model", tmp_path / "server.log") as oa:
        yield oa


async def answer(connection: AsyncResponsesConnection) -> list[Any]:
    """The events of one response, up to its last (or one error event)."""
    events = []
    async for event in connection:
        events.append(event)
        if event.type in FINAL or event.type == "error":
            return events
    raise AssertionError("the socket closed mid-response")


def shape(events: list[Any]) -> list[tuple[str, Any]]:
    """What must match between two transports: each event's type and, for item events, the item's type."""
    return [(e.type, getattr(getattr(e, "item", None), "type", None)) for e in events]


async def test_one_socket_runs_a_tool_loop_with_the_sse_streams_events(oa: AsyncOpenAI) -> None:
    async with oa.responses.connect() as connection:
        await connection.response.create(model="tool-model", input="Paris", tools=[WEATHER_TOOL])  # type: ignore[list-item]
        called = await answer(connection)
        final = called[-1]
        assert final.type == "response.completed"
        assert [e.sequence_number for e in called] == list(range(len(called)))
        (call,) = final.response.output
        assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Paris"}

        # The same request over HTTP streams the same events.
        streamed = [
            e
            async for e in await oa.responses.create(
                model="tool-model", input="Paris", tools=[WEATHER_TOOL], stream=True
            )
        ]  # type: ignore[list-item]
        assert shape(called) == shape(streamed)

        # Continuation within the socket: the call's output, then a plain follow-up, each on the last response.
        output = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
        await connection.response.create(previous_response_id=final.response.id, input=[output], tools=[WEATHER_TOOL])  # type: ignore[list-item]
        answered = (await answer(connection))[-1]
        assert answered.type == "response.completed" and answered.response.output_text == "Tool said: sunny"
        assert answered.response.previous_response_id == final.response.id
        await connection.response.create(previous_response_id=answered.response.id, input="thanks", store=False)
        last = (await answer(connection))[-1]
        assert last.response.output_text == "echo: thanks" and last.response.store is False

    stored = await oa.responses.retrieve(last.response.id)
    assert stored.output_text == "echo: thanks" and stored.previous_response_id == answered.response.id
    items = await oa.responses.input_items.list(answered.response.id)
    assert [i.type for i in items.data] == ["function_call_output"]


async def test_refused_requests_are_error_events_and_the_socket_stays_open(oa: AsyncOpenAI) -> None:
    async with oa.responses.connect() as connection:
        cases: list[tuple[dict[str, Any], int, str, str | None]] = [
            ({"input": "x", "top_k": 3}, 400, "unknown_parameter", "top_k"),
            (
                {"input": "x", "previous_response_id": "resp_nothing"},
                404,
                "previous_response_not_found",
                "previous_response_id",
            ),
            ({"input": "x", "model": "plain-model", "tools": [WEATHER_TOOL]}, 400, "tools_not_supported", "tools"),
            ({"input": "x", "generate": False}, 400, "unsupported_parameter", "generate"),
            ({"input": "x", "background": True}, 400, "unsupported_parameter", "background"),
        ]
        for fields, status, code, param in cases:
            await connection.send({"type": "response.create", **fields})  # type: ignore[arg-type, typeddict-item]
            (error,) = await answer(connection)
            assert error.type == "error"
            assert (error.status, error.error.code, error.error.param) == (status, code, param), fields
            assert error.error.type and error.error.message
        await connection.response.steer(input="faster", previous_response_id="resp_x")
        (error,) = await answer(connection)
        assert error.type == "error" and error.error.code == "unsupported_event_type"

        await connection.send({"type": "response.create", "input": "still here", "stream_id": "lane-1"})  # type: ignore[typeddict-item]
        events = await answer(connection)
        assert events[-1].type == "response.completed" and events[-1].response.output_text == "echo: still here"
        assert {e.stream_id for e in events} == {"lane-1"}


async def test_the_handshake_authenticates_as_http_does(oa: AsyncOpenAI) -> None:
    wrong = oa.with_options(api_key="tl_not_a_key")
    with pytest.raises(openai.AuthenticationError) as over_http:
        await wrong.responses.create(input="x")
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with wrong.responses.connect():
            pass
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body or b"{}")["error"] == over_http.value.body and over_http.value.body


async def test_a_socket_closed_mid_response_leaves_the_conversation_as_it_was(
    database_url: str, tmp_path: Path
) -> None:
    """The turn of a socket that goes away fails and frees its thread; the conversation gains nothing from it."""
    with upstream_server(tmp_path / "upstream.log", words=200, pace=0.02) as upstream:
        settings = Settings(
            database_url=database_url,
            local_model_enabled=False,
            retention_enabled=False,
            providers=[ProviderConfig(name="paced", base_url=upstream.base_url, models=["paced"])],
        )
        async with served(settings, "paced", tmp_path / "server.log") as oa:
            conversation = await oa.conversations.create(items=[{"role": "user", "content": "before"}])
            async with oa.responses.connect() as connection:
                await connection.response.create(conversation=conversation.id, input="cut short")
                async for event in connection:
                    if event.type == "response.created":
                        cut_response = event.response.id
                    if event.type == "response.output_text.delta":
                        cut = event.item_id
                        break
            # The next turn on the conversation waits for the thread only as long as the cut turn holds it.
            after = await oa.responses.create(conversation=conversation.id, input="after", max_output_tokens=2)
            assert after.status in ("completed", "incomplete")
            items = await oa.conversations.items.list(conversation.id, order="asc")
            texts = [i.content[0].text for i in items.data if i.type == "message"]  # type: ignore[union-attr]
            assert texts[:2] == ["before", "after"] and "cut short" not in texts
            assert cut not in {i.id for i in items.data}
            assert (await oa.responses.retrieve(cut_response)).status == "failed"
