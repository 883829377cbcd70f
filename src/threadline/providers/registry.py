"""Which provider serves which model. Built once per app from Settings; tests register fakes."""

from __future__ import annotations

from collections.abc import Sequence

from threadline.errors import ModelNotFound
from threadline.providers.base import ModelInfo, Provider


class ModelRegistry:
    def __init__(self, default_model: str | None = None) -> None:
        self.default_model = default_model
        self._providers: list[Provider] = []
        self._models: dict[str, tuple[Provider, ModelInfo]] = {}

    def register(self, provider: Provider) -> None:
        """Add a provider; its models become resolvable (first registration of a name wins)."""
        self._providers.append(provider)
        for info in provider.models():
            self._models.setdefault(info.name, (provider, info))
            if self.default_model is None:
                self.default_model = info.name

    def models(self) -> Sequence[ModelInfo]:
        return [info for _, info in self._models.values()]

    def resolve(self, model: str | None) -> tuple[Provider, ModelInfo]:
        """The provider and model info for `model` (or the default model); 404 `model_not_found` otherwise."""
        name = model or self.default_model
        if name is None or name not in self._models:
            available = ", ".join(sorted(self._models)) or "none configured"
            raise ModelNotFound(f"The model '{name}' does not exist. Available models: {available}.", param="model")
        return self._models[name]

    async def aclose(self) -> None:
        for provider in self._providers:
            await provider.aclose()
