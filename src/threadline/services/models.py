"""The models a deployment serves (the embedded one and every configured upstream)."""

from __future__ import annotations

from collections.abc import Sequence

from threadline.errors import ModelNotFound
from threadline.providers.base import ModelInfo
from threadline.providers.registry import ModelRegistry


def list_models(registry: ModelRegistry) -> Sequence[ModelInfo]:
    return registry.models()


def get_model(registry: ModelRegistry, model: str) -> ModelInfo:
    """The model named `model`; 404 `model_not_found` naming the available ones otherwise.

    An empty name names no model: it must not fall back to the default one, as a turn without a model does
    (Starlette reads `/v1/models/%0a` as the empty name, its route pattern's `$` matching before the newline).
    """
    if not model:
        raise ModelNotFound("A model name is required: GET /v1/models lists them.", param="model")
    _, info = registry.resolve(model)
    return info
