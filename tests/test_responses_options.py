"""`POST /v1/responses` never drops a field silently (docs/compatibility.md): structured output, sampling and the
reasoning effort reach a real upstream process (tests/upstream.py) and are echoed as used; what Threadline
cannot honour is a 400 naming the field. Real `openai` SDK (strict validation), SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI
from pydantic import BaseModel

from tests.conftest import make_caller, started_app
from tests.openai_sdk import sdk_client
from tests.tool_helpers import last_request_with, tool_settings
from threadline.config import ProviderConfig

pytestmark = pytest.mark.slow

CITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "letters": {"type": "integer"}},
    "required": ["city", "letters"],
    "additionalProperties": False,
}
CITY_FORMAT: dict[str, Any] = {"type": "json_schema", "name": "city", "schema": CITY_SCHEMA, "strict": True}


class City(BaseModel):
    city: str
    letters: int


@pytest.fixture
async def oa(database_url: str, tool_upstream_url: str) -> AsyncIterator[AsyncOpenAI]:
    """The tool upstream's models, plus `reasoner` (the same upstream, configured with the reasoning capability)
    and `no-schema` (configured without json_schema)."""
    settings = tool_settings(database_url, tool_upstream_url)
    settings.providers.append(
        ProviderConfig(
            name="more",
            base_url=tool_upstream_url,
            models=["reasoner", "no-schema"],
            model_capabilities={"reasoner": {"reasoning": True}, "no-schema": {"json_schema": False}},
        )
    )
    async for app in started_app(settings):
        client, _ = sdk_client(app, (await make_caller(app)).api_key)
        async with client:
            yield client


async def test_structured_output_reaches_the_upstream_and_is_echoed(oa: AsyncOpenAI, tool_upstream_url: str) -> None:
    response = await oa.responses.create(model="tool-model", input="Lyon [plain]", text={"format": CITY_FORMAT})  # type: ignore[typeddict-item]
    assert json.loads(response.output_text) == {"city": "Lyon", "letters": 4}
    sent = last_request_with(tool_upstream_url, "Lyon [plain]")
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True},
    }
    assert response.text is not None and response.text.format is not None
    echoed = response.text.format.model_dump(by_alias=True, exclude_none=True)
    assert echoed == CITY_FORMAT
    retrieved = await oa.responses.retrieve(response.id)
    assert retrieved.text == response.text


async def test_the_sdks_parse_helper_gets_a_typed_answer_streamed_and_not(oa: AsyncOpenAI) -> None:
    parsed = await oa.responses.parse(model="tool-model", input="Nantes", text_format=City)
    assert parsed.output_parsed == City(city="Nantes", letters=6)
    async with oa.responses.stream(model="tool-model", input="Brest", text_format=City) as stream:
        events = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert "response.output_text.delta" in events and events[-1] == "response.completed"
    assert final.output_parsed == City(city="Brest", letters=5)


async def test_json_object_sampling_and_reasoning_effort_reach_the_upstream(
    oa: AsyncOpenAI, tool_upstream_url: str
) -> None:
    response = await oa.responses.create(
        model="reasoner",
        input="Metz",
        text={"format": {"type": "json_object"}},
        reasoning={"effort": "low"},
        top_p=0.25,
        # OpenResponses request fields the openai SDK does not spell.
        extra_body={"presence_penalty": 0.5, "frequency_penalty": -0.5},
    )
    assert json.loads(response.output_text) == {"echo": "Metz"}
    sent = last_request_with(tool_upstream_url, "Metz")
    assert sent["response_format"] == {"type": "json_object"}
    assert (sent["reasoning_effort"], sent["top_p"], sent["presence_penalty"], sent["frequency_penalty"]) == (
        "low",
        0.25,
        0.5,
        -0.5,
    )
    assert "temperature" not in sent  # not asked: the upstream's default, reported as OpenAI's 1.0
    assert (response.top_p, response.presence_penalty, response.frequency_penalty) == (0.25, 0.5, -0.5)  # type: ignore[attr-defined]
    assert response.temperature == 1.0
    assert response.reasoning is not None and response.reasoning.effort == "low"
    assert response.usage is not None  # the upstream's usage details, passed on
    assert (
        response.usage.input_tokens_details.cached_tokens,
        response.usage.output_tokens_details.reasoning_tokens,
    ) == (
        1,
        7,
    )


@pytest.mark.parametrize(
    ("model", "fields", "code", "param"),
    [
        ("tool-model", {"reasoning": {"effort": "high"}}, "reasoning_not_supported", "reasoning.effort"),
        ("no-schema", {"text": {"format": CITY_FORMAT}}, "json_schema_not_supported", "text.format"),
        ("reasoner", {"reasoning": {"summary": "auto"}}, "unsupported_parameter", "reasoning.summary"),
        ("tool-model", {"include": ["message.output_text.logprobs"]}, "unsupported_parameter", "include"),
        ("tool-model", {"include": ["everything"]}, "invalid_value", "include.0"),
        ("tool-model", {"include": [{"not": "a string"}]}, "invalid_type", "include.0"),
        ("tool-model", {"top_logprobs": 3}, "unsupported_parameter", "top_logprobs"),
        ("tool-model", {"service_tier": "priority"}, "unsupported_parameter", "service_tier"),
        ("tool-model", {"text": {"verbosity": "low"}}, "unsupported_parameter", "text.verbosity"),
        ("tool-model", {"text": {"format": {"type": "xml"}}}, "invalid_value", "text.format.type"),
        (
            "tool-model",
            {"text": {"format": {"type": "json_schema", "schema": {}}}},
            "missing_required_parameter",
            "text.format.name",
        ),
        ("tool-model", {"prompt": {"id": "pmpt_1"}}, "unsupported_parameter", "prompt"),
        ("tool-model", {"extra_body": {"moderation": {"model": "m"}}}, "unsupported_parameter", "moderation"),
        ("tool-model", {"extra_body": {"image": {"size": "auto"}}}, "unsupported_parameter", "image"),
        ("tool-model", {"extra_body": {"top_k": 5}}, "unknown_parameter", "top_k"),
    ],
)
async def test_what_cannot_be_honoured_is_refused_by_name(
    oa: AsyncOpenAI, tool_upstream_url: str, model: str, fields: dict[str, Any], code: str, param: str
) -> None:
    marker = f"refused {code} {param}"
    with pytest.raises(openai.BadRequestError) as failed:
        await oa.responses.create(model=model, input=marker, **fields)
    assert (failed.value.code, failed.value.param) == (code, param)
    if code.endswith("_not_supported"):
        assert model in failed.value.message  # names the model and the capability
    with pytest.raises(AssertionError):
        last_request_with(tool_upstream_url, marker)  # nothing reached the model


async def test_an_agent_with_an_output_type_gets_structured_output(oa: AsyncOpenAI, tool_upstream_url: str) -> None:
    """The `openai-agents` SDK asks for its `output_type` through `text.format`; the answer parses into it."""
    from agents import Agent, OpenAIResponsesModel, Runner, set_tracing_disabled

    set_tracing_disabled(True)
    agent = Agent(
        name="cities",
        instructions="Name the city.",
        model=OpenAIResponsesModel(model="tool-model", openai_client=oa),
        output_type=City,
    )
    result = await Runner.run(agent, "Toulouse")
    assert result.final_output == City(city="Toulouse", letters=8)
    sent = last_request_with(tool_upstream_url, "Toulouse")
    assert sent["response_format"]["type"] == "json_schema"
    assert set(sent["response_format"]["json_schema"]["schema"]["properties"]) == {"city", "letters"}
