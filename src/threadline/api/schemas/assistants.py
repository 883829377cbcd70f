"""Freddy-shaped assistant objects: snake_case, ISO-8601 timestamps."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from threadline.api.schemas.common import Metadata, OutputTokens, RequestModel, ResponseModel, iso
from threadline.api.schemas.freddy import ListEnvelope
from threadline.api.schemas.tools import assistants_tools
from threadline.config import ContextMode
from threadline.storage.repositories.pagination import Page
from threadline.storage.tables import Assistant

INSTRUCTIONS_MAX_CHARS = 256_000


class _AssistantFields(RequestModel):
    name: str | None = Field(default=None, max_length=256)
    description: str | None = Field(default=None, max_length=512)
    model: str | None = Field(default=None, min_length=1, max_length=200)
    instructions: str | None = Field(default=None, max_length=INSTRUCTIONS_MAX_CHARS)
    thread_context_mode: ContextMode | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_output_tokens: OutputTokens | None = None
    metadata: Metadata | None = None
    # Compaction (docs/compaction.md): the share of the window past which its threads are compacted in the
    # background, and the model that writes their summaries.
    compact_at: float | None = Field(default=None, gt=0, le=1)
    summary_model: str | None = Field(default=None, min_length=1, max_length=200)
    # Function tools for its runs, in the Assistants v2 spelling: [{"type": "function", "function": {...}}].
    tools: list[Any] | None = None
    organization_id: str | None = Field(default=None, max_length=64)

    def values(self) -> dict[str, Any]:
        """The fields given (tools validated and normalized; `null` clears them)."""
        values = self.model_dump(exclude_unset=True, exclude={"organization_id"})
        if values.get("tools") is not None:
            values["tools"] = [t.as_assistants_tool() for t in assistants_tools(values["tools"])]
        return values


class AssistantCreate(_AssistantFields):
    pass


class AssistantUpdate(_AssistantFields):
    pass


class AssistantRead(ResponseModel):
    id: str
    object: Literal["assistant"] = "assistant"
    created_at: str
    updated_at: str
    organization_id: str
    user_id: str | None
    name: str | None
    description: str | None
    model: str | None
    instructions: str | None
    thread_context_mode: str | None
    temperature: float | None
    max_output_tokens: int | None
    compact_at: float | None = None
    summary_model: str | None = None
    metadata: dict[str, Any]
    tools: list[Any]

    @classmethod
    def of(cls, assistant: Assistant) -> AssistantRead:
        return cls(
            id=assistant.id,
            created_at=iso(assistant.created_at) or "",
            updated_at=iso(assistant.updated_at) or "",
            organization_id=assistant.organization_id,
            user_id=assistant.user_id,
            name=assistant.name,
            description=assistant.description,
            model=assistant.model,
            instructions=assistant.instructions,
            thread_context_mode=assistant.thread_context_mode,
            temperature=assistant.temperature,
            max_output_tokens=assistant.max_output_tokens,
            compact_at=assistant.compact_at,
            summary_model=assistant.summary_model,
            metadata=assistant.metadata_,
            tools=list(assistant.tools or []),
        )


class AssistantList(ListEnvelope):
    data: list[AssistantRead]

    @classmethod
    def of(cls, page: Page[Assistant], limit: int) -> AssistantList:
        return cls.of_data([AssistantRead.of(a) for a in page.items], page, limit, total=page.total)
