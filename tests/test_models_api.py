"""GET /v1/models and the registry built from settings (no model is called here)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from openai.types import Model

from tests.conftest import Caller, make_caller, started_app
from tests.helpers import refused
from threadline.config import ProviderConfig, Settings
from threadline.errors import ModelNotFound
from threadline.providers.openai_compat import OpenAICompatProvider
from threadline.providers.registry import ModelRegistry

CONTRACT_TOML = """
default_model = "gpt-4.1"        # optional; the embedded model otherwise
[[providers]]
name = "upstream"
type = "openai"                  # any OpenAI-compatible /v1/chat/completions
base_url = "http://127.0.0.1:9100/v1"
api_key_env = "UPSTREAM_API_KEY" # the key is read from this variable
models = ["gpt-4.1", "gpt-4o-mini"]
context_window = 128000          # per provider, overridable per model
"""

UPSTREAMS = [
    ProviderConfig(
        name="upstream",
        base_url="http://127.0.0.1:9/v1",
        models=["gpt-4.1", "meta-llama/Llama-3.1-8B-Instruct"],
        context_window=128000,
        model_context_windows={"meta-llama/Llama-3.1-8B-Instruct": 32000},
        capabilities={"vision": True},
        model_capabilities={"meta-llama/Llama-3.1-8B-Instruct": {"vision": False, "json_schema": False}},
    ),
    ProviderConfig(
        name="second", base_url="http://127.0.0.1:9/other/v1", models=["gpt-4.1", "qwen"], tokenizer="o200k"
    ),
]


def test_the_contract_toml_file_configures_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "threadline.toml"
    config.write_text(CONTRACT_TOML)
    monkeypatch.setenv("THREADLINE_CONFIG", str(config))
    settings = Settings()
    assert settings.default_model == "gpt-4.1"
    (provider,) = settings.providers
    assert provider.name == "upstream" and provider.type == "openai"
    assert provider.base_url == "http://127.0.0.1:9100/v1" and provider.api_key_env == "UPSTREAM_API_KEY"
    assert provider.models == ["gpt-4.1", "gpt-4o-mini"] and provider.context_window == 128000


def test_a_missing_config_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THREADLINE_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ValueError, match="not a file"):
        Settings()


async def test_registry_from_settings_builds_every_provider() -> None:
    async with httpx.AsyncClient() as client:
        settings = Settings(local_model_enabled=True, providers=UPSTREAMS)
        registry = ModelRegistry.from_settings(settings, client)
        try:
            names = [m.name for m in registry.models()]
            # First registration of a name wins: the second upstream's gpt-4.1 is shadowed.
            assert names == ["smollm2-135m-instruct", "gpt-4.1", "meta-llama/Llama-3.1-8B-Instruct", "qwen"]
            assert registry.default_model == "smollm2-135m-instruct"
            provider, _ = registry.resolve("gpt-4.1")
            assert isinstance(provider, OpenAICompatProvider) and provider.name == "upstream"
            assert registry.resolve("qwen")[1].tokenizer == "o200k"
            assert registry.resolve(None)[1].tokenizer == "llama:smollm2-135m-instruct"
            with pytest.raises(ModelNotFound) as caught:
                registry.resolve("gpt-9")
            assert "smollm2-135m-instruct" in caught.value.message
        finally:
            await registry.aclose()


async def test_a_default_model_nobody_serves_is_refused_at_start() -> None:
    async with httpx.AsyncClient() as client:
        settings = Settings(local_model_enabled=False, providers=UPSTREAMS, default_model="gpt-9")
        with pytest.raises(ValueError, match="gpt-9"):
            ModelRegistry.from_settings(settings, client)


@pytest.fixture
async def models_app(database_url: str) -> AsyncIterator[FastAPI]:
    settings = Settings(
        database_url=database_url, local_model_enabled=False, retention_enabled=False, providers=UPSTREAMS
    )
    async for application in started_app(settings):
        yield application


@pytest.fixture
async def models_client(models_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=models_app), base_url="http://t.test") as c:
        yield c


@pytest.fixture
async def models_caller(models_app: FastAPI) -> Caller:
    return await make_caller(models_app)


async def test_list_models(models_client: httpx.AsyncClient, models_caller: Caller) -> None:
    response = await models_client.get("/v1/models", headers=models_caller.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["gpt-4.1", "meta-llama/Llama-3.1-8B-Instruct", "qwen"]
    first = body["data"][0]
    assert first == {
        "id": "gpt-4.1",
        "object": "model",
        "created": first["created"],
        "owned_by": "upstream",
        "context_window": 128000,
        "default": True,
        "capabilities": {"tools": True, "vision": True, "json_schema": True, "reasoning": False},
    }
    assert isinstance(first["created"], int) and first["created"] > 1_700_000_000
    # The model's own configuration overrides its provider's; unconfigured, an upstream's defaults.
    assert [m["capabilities"] for m in body["data"][1:]] == [
        {"tools": True, "vision": False, "json_schema": False, "reasoning": False},
        {"tools": True, "vision": False, "json_schema": True, "reasoning": False},
    ]
    # OpenAI's `Model` shape stays exact: the SDK's type validates it strictly, extras aside.
    assert Model.model_validate(first, strict=True).id == "gpt-4.1"


async def test_get_one_model_including_slashes_in_its_id(
    models_client: httpx.AsyncClient, models_caller: Caller
) -> None:
    response = await models_client.get("/v1/models/meta-llama/Llama-3.1-8B-Instruct", headers=models_caller.headers)
    assert response.status_code == 200
    assert response.json()["context_window"] == 32000 and response.json()["default"] is False


async def test_unknown_model_is_404_naming_the_available_ones(
    models_client: httpx.AsyncClient, models_caller: Caller
) -> None:
    response = await models_client.get("/v1/models/gpt-9", headers=models_caller.headers)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "gpt-4.1" in error["message"] and "qwen" in error["message"]


async def test_models_need_a_credential(models_client: httpx.AsyncClient) -> None:
    response = await models_client.get("/v1/models")
    refused(response, 401, "missing_credentials")
