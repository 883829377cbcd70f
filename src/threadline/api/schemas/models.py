"""OpenAI-shaped model objects (`GET /v1/models`): integer Unix seconds, as the openai SDK expects."""

from __future__ import annotations

from typing import Literal

from threadline.api.schemas.common import ResponseModel
from threadline.providers.base import ModelInfo


class CapabilitiesRead(ResponseModel):
    """What the model can serve; a request needing more is a 400 naming the capability (docs/compatibility.md)."""

    tools: bool
    vision: bool
    json_schema: bool
    reasoning: bool


class ModelRead(ResponseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # Threadline's additions: the window the context builder fills, whether requests without a model get it, and
    # what the model can do (function tools, images, structured output, a reasoning effort).
    context_window: int
    default: bool = False
    capabilities: CapabilitiesRead

    @classmethod
    def of(cls, info: ModelInfo, created: int, default_model: str | None) -> ModelRead:
        return cls(
            id=info.name,
            created=created,
            owned_by=info.provider,
            context_window=info.context_window,
            default=info.name == default_model,
            capabilities=CapabilitiesRead(**info.capabilities()),
        )


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelRead]
