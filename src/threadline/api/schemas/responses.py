"""Wire shapes of POST /v1/model/response (seed 000) and GET /v1/model/response/{id}."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from threadline.api.schemas.common import Metadata, OutputTokens, RequestModel, ResponseModel, ThreadIdText, iso
from threadline.api.schemas.freddy import TextPart
from threadline.domain.messages import ChatMessage
from threadline.services.responses import ResponseRequest
from threadline.storage.tables import Response


class InputMessage(RequestModel):
    role: Literal["user", "system", "assistant"]
    texts: list[TextPart] = Field(min_length=1, max_length=100)

    @property
    def text(self) -> str:
        return "".join(part.text for part in self.texts)


class ThreadRef(RequestModel):
    """`thread` as an object: the id (optional: one is generated) and metadata for a thread created here."""

    id: ThreadIdText | None = None
    metadata: Metadata | None = None


class ResponseCreate(RequestModel):
    model: str | None = Field(default=None, max_length=200)
    organization_id: str | None = Field(default=None, max_length=64)
    thread: ThreadIdText | ThreadRef | None = None
    inputs: list[InputMessage] = Field(min_length=1, max_length=1000)
    store: bool = True
    thread_state: Literal["open", "locked", "archived"] | None = None
    previous_response_id: str | None = Field(default=None, max_length=64)
    max_output_tokens: OutputTokens | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    thread_context_mode: Literal["recent", "smart", "full"] | None = None
    stream: bool = False

    def to_request(self, organization_id: str) -> ResponseRequest:
        thread_id: str | None
        metadata: dict[str, Any] | None = None
        if isinstance(self.thread, ThreadRef):
            thread_id, metadata = self.thread.id, self.thread.metadata
        else:
            thread_id = self.thread
        return ResponseRequest(
            organization_id=organization_id,
            inputs=[ChatMessage(role=m.role, content=m.text) for m in self.inputs],
            thread_id=thread_id,
            thread_metadata=metadata,
            store=self.store,
            thread_state=self.thread_state,
            previous_response_id=self.previous_response_id,
            model=self.model,
            max_output_tokens=self.max_output_tokens,
            temperature=self.temperature,
            context_mode=self.thread_context_mode,
        )


class OutputText(ResponseModel):
    text: str


class OutputMessage(ResponseModel):
    """Shaped like an input, so `history.push(result.output[0])` works (seed 000)."""

    role: Literal["assistant"] = "assistant"
    texts: list[OutputText]


class Usage(ResponseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class ResponseError(ResponseModel):
    code: str
    message: str


class ResponseRead(ResponseModel):
    id: str
    object: Literal["response"] = "response"
    # A Freddy-native object: ISO-8601 UTC timestamps (DESIGN.md §4); the OpenAI Responses API has its own shape.
    created_at: str
    completed_at: str | None
    model: str
    status: str
    thread_id: str | None
    previous_response_id: str | None
    output: list[OutputMessage]
    output_text: str | None
    usage: Usage | None
    context: dict[str, Any]
    error: ResponseError | None

    @classmethod
    def of(cls, response: Response) -> ResponseRead:
        completed = response.status == "completed"
        usage = None
        if response.input_tokens is not None or response.output_tokens is not None:
            inp, out = response.input_tokens or 0, response.output_tokens or 0
            usage = Usage(input_tokens=inp, output_tokens=out, total_tokens=inp + out)
        return cls(
            id=response.id,
            created_at=iso(response.created_at) or "",
            completed_at=iso(response.completed_at),
            model=response.model,
            status=response.status,
            thread_id=response.thread_id,
            previous_response_id=response.previous_response_id,
            output=[OutputMessage(texts=[OutputText(text=response.output_text or "")])] if completed else [],
            output_text=response.output_text if completed else None,
            usage=usage,
            context=dict(response.context),
            error=ResponseError(**response.error) if response.error else None,
        )
