"""How a turn samples and shapes its answer: what the model must be able to do for it, and what was used.

A request the model cannot serve is a 400 naming the model and the capability (structured output needs
`json_schema`, a reasoning effort needs `reasoning`), never a silent drop. What was used — the request's value,
else the model's own default — is kept on the response record, so the Responses API echoes numbers, not nulls.
"""

from __future__ import annotations

from typing import Any

from threadline.errors import InvalidRequest
from threadline.providers.base import GenerationParams, ModelInfo
from threadline.turns.request import TurnRequest


def check_capabilities(request: TurnRequest, info: ModelInfo) -> None:
    if request.response_format is not None and not info.json_schema:
        raise InvalidRequest(
            f"The model '{info.name}' does not support structured output ({request.response_format.type}): use a "
            "model whose configuration allows json_schema, or send the request with text.format 'text'.",
            code="json_schema_not_supported",
            param="text.format",
        )
    if request.reasoning_effort is not None and not info.reasoning:
        raise InvalidRequest(
            f"The model '{info.name}' does not take a reasoning effort: use a model whose configuration allows "
            "reasoning, or send the request without 'reasoning.effort'.",
            code="reasoning_not_supported",
            param="reasoning.effort",
        )


def used(params: GenerationParams, info: ModelInfo) -> dict[str, Any]:
    """The sampling a turn ran with, as the Responses API reports it."""
    return {
        "temperature": info.temperature if params.temperature is None else params.temperature,
        "top_p": info.top_p if params.top_p is None else params.top_p,
        "presence_penalty": params.presence_penalty or 0.0,
        "frequency_penalty": params.frequency_penalty or 0.0,
    }
