"""Shared pieces of the function-tool tests: the upstream process (tests/upstream.py, which calls the tools it is
offered) for the whole session, and an app whose models it serves: `tool-model` calls tools, `plain-model` (same
upstream) is configured without the `tools` capability. A pytest plugin of tests/conftest.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi import FastAPI

from tests.conftest import started_app
from tests.servers import Upstream, upstream_server
from threadline.config import Capability, ProviderConfig, Settings

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
    """The upstream's base URL (…/v1), recording the requests, until the session ends."""
    with upstream_server(tmp_path_factory.mktemp("tool-upstream") / "server.log", record=True) as upstream:
        yield upstream.base_url


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


def last_request_with(upstream_url: str, marker: str) -> dict[str, Any]:
    """The newest request whose messages mention `marker` (the upstream is shared by the whole session)."""
    for body in reversed(Upstream(upstream_url.removesuffix("/v1")).requests()):
        if any(marker in str(m.get("content")) for m in body.get("messages", [])):
            return body
    raise AssertionError(f"no upstream request mentions {marker!r}")
