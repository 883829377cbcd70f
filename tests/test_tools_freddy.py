"""A Freddy client runs a tool loop too: `POST /v1/model/response` with `tools`, the answer's calls in its output,
the outputs sent back as `function_call_output` inputs (real tool-calling upstream process; SQLite and
PostgreSQL)."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import make_caller
from tests.helpers import refused
from tests.responses_helpers import sse_events
from tests.tool_helpers import WEATHER_TOOL, last_request_with

pytestmark = pytest.mark.slow

USER = {"role": "user", "texts": [{"text": "Turin"}]}


async def test_a_freddy_tool_loop_plain_and_streamed(tool_app: FastAPI, tool_upstream_url: str) -> None:
    caller = await make_caller(tool_app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=tool_app), base_url="http://t") as client:
        first = await client.post(
            "/v1/model/response", json={"inputs": [USER], "tools": [WEATHER_TOOL]}, headers=caller.headers
        )
        assert first.status_code == 200, first.text
        body = first.json()
        (call,) = body["output"]
        assert call["type"] == "function_call" and call["name"] == "get_weather"
        assert json.loads(call["arguments"]) == {"city": "Turin"} and call["id"].startswith("fc_")

        output = {"type": "function_call_output", "callId": call["call_id"], "output": "foggy"}
        streamed = await client.post(
            "/v1/model/response",
            json={"thread": body["thread_id"], "inputs": [output], "tools": [WEATHER_TOOL], "stream": True},
            headers=caller.headers,
        )
        assert streamed.status_code == 200, streamed.text
        events = sse_events(streamed.text)
        assert events[-1][0] == "response.completed"
        final = events[-1][1]["response"]
        assert final["output_text"] == "Tool said: foggy"
        assert final["output"] == [{"role": "assistant", "texts": [{"text": "Tool said: foggy"}]}]
        assert final["context"]["items_by_type"] == {"function_call": 1, "function_call_output": 1, "message": 1}

        sent = last_request_with(tool_upstream_url, "foggy")
        assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool"]

        # A streamed call announces its item and its arguments.
        again = await client.post(
            "/v1/model/response",
            json={"thread": body["thread_id"], "inputs": [USER], "tools": [WEATHER_TOOL], "stream": True},
            headers=caller.headers,
        )
        names = [name for name, _ in sse_events(again.text)]
        assert names[0] == "response.created" and names[-1] == "response.completed"
        assert names[1] == "response.output_item.added"
        assert names[2:-1] == ["response.function_call_arguments.delta"] * (len(names) - 3)

        messages = await client.get(
            f"/v1/threads/{body['thread_id']}/messages", params={"order": "asc"}, headers=caller.headers
        )
        assert [m["type"] for m in messages.json()["data"]] == [
            "message",
            "function_call",
            "function_call_output",
            "message",
            "message",
            "function_call",
        ]

        refusal = await client.post(
            "/v1/model/response",
            json={"model": "plain-model", "inputs": [USER], "tools": [WEATHER_TOOL]},
            headers=caller.headers,
        )
        refused(refusal, 400, "tools_not_supported")
