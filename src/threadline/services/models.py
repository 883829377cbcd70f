"""The models a deployment serves (the embedded one and every configured upstream)."""

from __future__ import annotations

from collections.abc import Sequence

from threadline.providers.base import ModelInfo
from threadline.providers.registry import ModelRegistry


def list_models(registry: ModelRegistry) -> Sequence[ModelInfo]:
    return registry.models()


def get_model(registry: ModelRegistry, model: str) -> ModelInfo:
    """The model named `model`; 404 `model_not_found` naming the available ones otherwise."""
    _, info = registry.resolve(model)
    return info
