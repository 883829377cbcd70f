"""Shared pieces of the function-tool tests: the tool-emitting upstream process (tests/tool_upstream.py) and an
app whose models are served by it: `tool-model` calls tools, `plain-model` (same upstream) is configured
without the `tools` capability."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import started_app
from tests.servers import REPO_SRC, free_port, running
from threadline.config import Capability, ProviderConfig, Settings

TOOL_UPSTREAM = Path(__file__).resolve().parent / "tool_upstream.py"

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
TIME_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_time",
    "description": "The local time in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="session")
def tool_upstream_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tool upstream on a free port, until the session ends."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    log = tmp_path_factory.mktemp("tool-upstream") / "server.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_SRC)}
    command = [sys.executable, str(TOOL_UPSTREAM), "--port", str(port)]
    with running(command, ready_url=f"{base_url}/models", log=log, env=env):
        yield base_url


def tool_settings(database_url: str, upstream_url: str, *, capable: Capability | None = None) -> Settings:
    """`capable`: also serve `<capable>-model` from the same upstream with that capability (`vision`,
    `reasoning`)."""
    extra = (
        [
            ProviderConfig(
                name=capable,
                base_url=upstream_url,
                models=[f"{capable}-model"],
                tokenizer="o200k",
                capabilities={capable: True},
            )
        ]
        if capable
        else []
    )
    return Settings(
        database_url=database_url,
        local_model_enabled=False,
        retention_enabled=False,
        default_model="tool-model",
        providers=[
            ProviderConfig(name="tools", base_url=upstream_url, models=["tool-model"], tokenizer="o200k"),
            ProviderConfig(name="plain", base_url=upstream_url, models=["plain-model"], capabilities={"tools": False}),
            *extra,
        ],
    )


@pytest.fixture
async def tool_app(database_url: str, tool_upstream_url: str) -> AsyncIterator[FastAPI]:
    async for application in started_app(tool_settings(database_url, tool_upstream_url)):
        yield application


def upstream_requests(upstream_url: str) -> list[dict[str, Any]]:
    """Every request body the tool upstream received so far."""
    received: list[dict[str, Any]] = httpx.get(upstream_url.removesuffix("/v1") + "/requests").json()
    return received


def last_request_with(upstream_url: str, marker: str) -> dict[str, Any]:
    """The newest request whose messages mention `marker` (the upstream is shared by the whole session)."""
    for body in reversed(upstream_requests(upstream_url)):
        if any(marker in str(m.get("content")) for m in body.get("messages", [])):
            return body
    raise AssertionError(f"no upstream request mentions {marker!r}")
