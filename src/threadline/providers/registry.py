"""Which provider serves which model. Built once per app from Settings; tests register fakes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from threadline.config import ProviderConfig, Settings
from threadline.errors import ModelNotFound
from threadline.providers.base import ModelInfo, Provider

if TYPE_CHECKING:
    import httpx

    from threadline.providers.local import Sampling


class ModelRegistry:
    def __init__(self, default_model: str | None = None) -> None:
        self.default_model = default_model
        self._providers: list[Provider] = []
        self._models: dict[str, tuple[Provider, ModelInfo]] = {}
        # Unix seconds: the "created" of every model in /v1/models (when this process started serving it).
        self.created = int(time.time())

    @classmethod
    def from_settings(cls, settings: Settings, http_client: httpx.AsyncClient) -> ModelRegistry:
        """The embedded model (unless disabled) and every configured upstream, in that order.

        A configured `default_model` must be one of them (checked at start, not on the first request).
        """
        registry = cls(settings.default_model)
        try:
            if settings.local_model_enabled:
                from threadline.providers.local import LocalProvider

                registry.register(
                    LocalProvider(
                        model_name=settings.local_model_name,
                        model_path=settings.local_model_path,
                        context_window=settings.local_context_window,
                        n_threads=settings.local_threads,
                        ubatch_size=settings.local_ubatch_size,
                        sampling=local_sampling(settings),
                    )
                )
            for config in settings.providers:
                registry.register(_provider_from_config(config, settings, http_client))
        except BaseException:
            for provider in registry._providers:  # no worker thread outlives a failed start
                _close_now(provider)
            raise
        if settings.default_model is not None and settings.default_model not in registry._models:
            available = ", ".join(sorted(registry._models)) or "none configured"
            for provider in registry._providers:
                _close_now(provider)
            raise ValueError(f"default_model {settings.default_model!r} is not served by any provider ({available})")
        return registry

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


def local_sampling(settings: Settings) -> Sampling:
    from threadline.providers.local import Sampling

    return Sampling(
        temperature=settings.local_temperature,
        top_p=settings.local_top_p,
        repeat_penalty=settings.local_repeat_penalty,
    )


def _provider_from_config(config: ProviderConfig, settings: Settings, http_client: httpx.AsyncClient) -> Provider:
    if config.type == "local":
        from pathlib import Path

        from threadline.providers.local import LocalProvider

        model_name = config.models[0] if config.models else Path(config.model_path or "local").stem
        return LocalProvider(
            model_name=model_name,
            model_path=config.model_path,
            context_window=config.model_context_windows.get(model_name, config.context_window),
            n_threads=settings.local_threads,
            ubatch_size=settings.local_ubatch_size,
            sampling=local_sampling(settings),
            name=config.name,
        )
    from threadline.providers.openai_compat import OpenAICompatProvider

    assert config.base_url is not None  # ProviderConfig requires it for type "openai"
    return OpenAICompatProvider(
        name=config.name,
        base_url=config.base_url,
        models=config.models,
        http_client=http_client,
        api_key_env=config.api_key_env,
        context_window=config.context_window,
        model_context_windows=config.model_context_windows,
        tokenizer=config.tokenizer,
        timeout_seconds=config.timeout_seconds,
        max_tokens_param=config.max_tokens_param,
        capabilities={str(k): v for k, v in config.capabilities.items()},
        model_capabilities={
            model: {str(k): v for k, v in caps.items()} for model, caps in config.model_capabilities.items()
        },
    )


def _close_now(provider: Provider) -> None:
    """Release a provider's threads without an event loop at hand (a failed start)."""
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):
        shutdown()
