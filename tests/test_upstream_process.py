"""A REAL OpenAI-compatible upstream: llama-cpp-python's server in its own process, serving SmolLM2.

The provider streams from it over real HTTP, and an app configured by a real TOML file (THREADLINE_CONFIG) lists
and resolves its models.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import make_caller, started_app
from tests.helpers import refused
from tests.servers import REPO_SRC, free_port, running
from threadline.config import Settings
from threadline.domain.messages import ChatMessage
from threadline.providers.base import Finished, GenerationParams, TextDelta
from threadline.providers.local import default_model_path, default_ubatch_size
from threadline.providers.openai_compat import OpenAICompatProvider

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def upstream_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m llama_cpp.server` on a free port; waits for /v1/models (≤120 s); always terminated."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(default_model_path()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--n_ubatch",
        str(default_ubatch_size()),  # the same AMX guard as the embedded provider (see providers/local.py)
    ]
    base_url = f"http://127.0.0.1:{port}/v1"
    log = tmp_path_factory.mktemp("upstream") / "server.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_SRC)}
    with running(command, ready_url=f"{base_url}/models", log=log, env=env, within=120):
        yield base_url


async def test_provider_streams_a_completion_from_a_real_upstream(upstream_url: str) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0)) as client:
        provider = OpenAICompatProvider(name="llama-server", base_url=upstream_url, models=["smol"], http_client=client)
        messages = [ChatMessage("user", "Say hello.")]
        events = [e async for e in provider.stream("smol", messages, GenerationParams(max_output_tokens=12))]

    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert "".join(d.text for d in deltas).strip()
    assert isinstance(events[-1], Finished) and events[-1].finish_reason in {"stop", "length"}
    assert all(not isinstance(e, Finished) for e in events[:-1])


@pytest.fixture
async def toml_app(
    upstream_url: str, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[FastAPI]:
    """An app configured by exactly the README's TOML contract, pointing at the real upstream."""
    config = tmp_path / "threadline.toml"
    config.write_text(
        f"""
default_model = "gpt-4.1"        # optional; the embedded model otherwise
[[providers]]
name = "upstream"
type = "openai"                  # any OpenAI-compatible /v1/chat/completions
base_url = "{upstream_url}"
api_key_env = "UPSTREAM_API_KEY" # the key is read from this variable
models = ["gpt-4.1", "gpt-4o-mini"]
context_window = 128000          # per provider, overridable per model
model_context_windows = {{"gpt-4o-mini" = 64000}}
"""
    )
    monkeypatch.setenv("THREADLINE_CONFIG", str(config))
    monkeypatch.setenv("UPSTREAM_API_KEY", "sk-test-upstream")
    settings = Settings(database_url=database_url, retention_enabled=False)
    async for application in started_app(settings):
        yield application


async def test_v1_models_of_an_app_configured_by_toml(toml_app: FastAPI) -> None:
    caller = await make_caller(toml_app)
    transport = httpx.ASGITransport(app=toml_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://threadline.test") as client:
        listed = await client.get("/v1/models", headers=caller.headers)
        one = await client.get("/v1/models/gpt-4o-mini", headers=caller.headers)
        missing = await client.get("/v1/models/gpt-9", headers=caller.headers)

    assert listed.status_code == 200
    body = listed.json()
    assert body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    # The embedded model is on by default, listed first; the upstream's models follow.
    assert list(by_id) == ["smollm2-135m-instruct", "gpt-4.1", "gpt-4o-mini"]
    assert by_id["gpt-4.1"]["owned_by"] == "upstream" and by_id["gpt-4.1"]["context_window"] == 128000
    assert by_id["gpt-4.1"]["default"] is True
    assert by_id["smollm2-135m-instruct"]["context_window"] == 8192
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in body["data"])
    assert one.status_code == 200 and one.json()["context_window"] == 64000
    refused(missing, 404, "model_not_found")
    assert "gpt-4.1" in missing.json()["error"]["message"]

    # The registry the app built streams from the real upstream for the default model.
    provider, info = toml_app.state.models.resolve(None)
    assert info.name == "gpt-4.1" and info.tokenizer == "o200k"
    events = [e async for e in provider.stream("gpt-4.1", [ChatMessage("user", "Hi")], GenerationParams(8))]
    assert isinstance(events[-1], Finished) and any(isinstance(e, TextDelta) for e in events)
