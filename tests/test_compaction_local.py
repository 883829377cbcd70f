"""Compaction with the real embedded model (SmolLM2 through llama.cpp): it writes the summary of a thread within
its budget, the item records it, and the next turn's prompt starts from it (counted with the model's own
tokenizer). What the summary says is up to a 135M model: the test checks the mechanics, not its wisdom."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import make_caller, started_app
from tests.responses_helpers import thread_messages
from threadline.config import Settings

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"


@pytest.fixture
async def local_app(database_url: str) -> AsyncIterator[FastAPI]:
    settings = Settings(
        database_url=database_url,
        local_model_enabled=True,
        local_context_window=2048,
        retention_enabled=False,
        summary_max_tokens=48,
        default_max_output_tokens=12,
    )
    async for application in started_app(settings):
        yield application


async def test_the_embedded_model_writes_a_summary_the_next_turn_starts_from(local_app: FastAPI) -> None:
    caller = await make_caller(local_app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=local_app), base_url="http://t") as client:
        for text in ("My name is Ada and my cat is called Pixel.", "I live in Lisbon."):
            body = {"thread": "local", "inputs": [{"role": "user", "texts": [{"text": text}]}]}
            answered = await client.post("/v1/model/response", json=body, headers=caller.headers)
            assert answered.status_code == 200, answered.text

        compacted = await client.post("/v1/threads/local/compact", headers=caller.headers)
        assert compacted.status_code == 200, compacted.text
        item = compacted.json()
        assert item["type"] == "compaction" and item["model"] == MODEL and item["covers"] == [1, 4]
        assert item["content"].strip() and item["token_count"] > 0

        body = {"thread": "local", "inputs": [{"role": "user", "texts": [{"text": "What is my cat called?"}]}]}
        answered = await client.post("/v1/model/response", json=body, headers=caller.headers)
        assert answered.status_code == 200, answered.text
        report = answered.json()["context"]
        assert report["compaction"]["id"] == item["id"] and report["tokenizer"].startswith("llama:")
        assert report["items_by_type"] == {"compaction": 1, "message": 1}
        listed = await thread_messages(client, caller, "local")
        assert [m["type"] for m in listed] == ["message"] * 4 + ["compaction"] + ["message"] * 2
