"""The Responses API end to end with the real embedded model (SmolLM2 through llama.cpp) and the real SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI

from tests.conftest import make_caller, started_app
from tests.openai_sdk import sdk_client
from threadline.config import Settings

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"


@pytest.fixture
async def local_app(database_url: str) -> AsyncIterator[FastAPI]:
    settings = Settings(
        database_url=database_url, local_model_enabled=True, local_context_window=2048, retention_enabled=False
    )
    async for application in started_app(settings):
        yield application


async def test_create_and_stream_with_the_embedded_model(local_app: FastAPI) -> None:
    caller = await make_caller(local_app)
    oa, _ = sdk_client(local_app, caller.api_key)
    async with oa:
        first = await oa.responses.create(
            input="What is the capital of France?", instructions="Answer in one short sentence.", max_output_tokens=8
        )
        assert first.model == MODEL
        assert first.status in ("completed", "incomplete")
        assert first.output_text.strip()
        assert first.usage is not None and 0 < first.usage.output_tokens <= 8
        assert first.usage.input_tokens > 10  # the instructions and the question were read

        async with oa.responses.stream(
            model=MODEL, previous_response_id=first.id, input="And of Italy?", max_output_tokens=8
        ) as stream:
            events = [e async for e in stream]
        deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
        assert deltas and "".join(deltas).strip()
        # Cut at 8 tokens the turn ends with `response.incomplete`, otherwise `response.completed`.
        last = events[-1]
        assert last.type in ("response.completed", "response.incomplete")
        second = await oa.responses.retrieve(last.response.id)
        assert second.previous_response_id == first.id
        assert second.output_text == "".join(deltas)
        assert (await oa.responses.retrieve(first.id)).output_text == first.output_text
        inputs = await oa.responses.input_items.list(first.id)
        assert [i.content[0].text for i in inputs.data] == ["What is the capital of France?"]


async def test_the_embedded_model_keeps_to_a_json_schema(local_app: FastAPI) -> None:
    """Structured output through a llama.cpp grammar: the answer parses and keeps to the schema."""
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    caller = await make_caller(local_app)
    oa, _ = sdk_client(local_app, caller.api_key)
    async with oa:
        response = await oa.responses.create(
            input="Is Paris in France? Answer in JSON.",
            text={"format": {"type": "json_schema", "name": "verdict", "schema": schema}},
            max_output_tokens=40,
        )
    assert response.status == "completed"
    assert json.loads(response.output_text)["answer"] in ("yes", "no")
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"
    assert (response.temperature, response.top_p) == (0.2, 0.9)  # the embedded model's sampling defaults
