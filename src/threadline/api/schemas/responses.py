"""Wire shapes of POST /v1/model/response and GET /v1/model/response/{id} (the Freddy surface).

Function tools (docs/items.md) in the shapes the messages endpoint shows items in: `tools` (functions),
`tool_choice`, `parallel_tool_calls`; inputs may be `{"type": "function_call_output", "call_id", "output"}` (and
`function_call` items, for clients that keep the history themselves); the output lists the answer's message (left
out when the answer is only calls), then its `{"type": "function_call", "id", "call_id", "name", "arguments"}`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from threadline.api.schemas.common import Metadata, OutputTokens, RequestModel, ResponseModel, ThreadIdText, iso
from threadline.api.schemas.freddy import TextPart
from threadline.domain.messages import ChatMessage
from threadline.domain.turns import StoredTurn
from threadline.errors import InvalidRequest
from threadline.providers.base import FunctionTool, ToolChoiceFunction
from threadline.turns.request import TurnRequest

# Which fields each input item type needs (one flat model, so errors name `inputs.N.<field>` as they always did).
_REQUIRED = {
    "message": ("role", "texts"),
    "function_call": ("call_id", "name", "arguments"),
    "function_call_output": ("call_id", "output"),
}


class InputMessage(RequestModel):
    """An input item: a message (`role`, `texts`), a `function_call` (`call_id`, `name`, `arguments`) or a
    `function_call_output` (`call_id`, `output`)."""

    type: Literal["message", "function_call", "function_call_output"] = "message"
    role: Literal["user", "system", "assistant"] | None = Field(default=None, validate_default=True)
    texts: list[TextPart] | None = Field(default=None, min_length=1, max_length=100, validate_default=True)
    call_id: str | None = Field(default=None, min_length=1, max_length=128, validate_default=True)
    name: str | None = Field(default=None, min_length=1, max_length=128, validate_default=True)
    arguments: str | None = Field(default=None, validate_default=True)
    output: str | None = Field(default=None, validate_default=True)

    @field_validator("role", "texts", "call_id", "name", "arguments", "output", mode="after")
    @classmethod
    def _needed(cls, value: Any, info: ValidationInfo) -> Any:
        kind = info.data.get("type", "message")
        needed = info.field_name in _REQUIRED.get(kind, ())
        if needed and value is None:
            raise ValueError(f"Field required for an item of type '{kind}'")
        if not needed and value is not None:
            raise ValueError(f"Not a field of an item of type '{kind}'")
        return value

    @property
    def text(self) -> str:
        return "".join(part.text for part in self.texts or [])

    def item(self) -> ChatMessage:
        if self.type == "function_call":
            return ChatMessage("assistant", self.arguments or "", "function_call", self.call_id, self.name)
        if self.type == "function_call_output":
            return ChatMessage("tool", self.output or "", "function_call_output", self.call_id)
        assert self.role is not None
        return ChatMessage(role=self.role, content=self.text)


class FunctionToolCreate(RequestModel):
    type: Literal["function"] = "function"
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceCreate(RequestModel):
    type: Literal["function"] = "function"
    name: str = Field(min_length=1, max_length=128)


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
    tools: list[FunctionToolCreate] | None = Field(default=None, max_length=128)
    tool_choice: Literal["auto", "none", "required"] | ToolChoiceCreate | None = None
    parallel_tool_calls: bool | None = None

    def _tool_choice(self, tools: list[FunctionTool]) -> str | ToolChoiceFunction | None:
        choice = self.tool_choice
        if isinstance(choice, ToolChoiceCreate):
            if not any(t.name == choice.name for t in tools):
                raise InvalidRequest(
                    f"toolChoice names the function '{choice.name}', which is not among 'tools'.",
                    code="invalid_value",
                    param="tool_choice.name",
                )
            return ToolChoiceFunction(choice.name)
        return choice

    def to_request(self, organization_id: str) -> TurnRequest:
        thread_id: str | None
        metadata: dict[str, Any] | None = None
        if isinstance(self.thread, ThreadRef):
            thread_id, metadata = self.thread.id, self.thread.metadata
        else:
            thread_id = self.thread
        tools = [FunctionTool(t.name, t.description, t.parameters, t.strict) for t in self.tools or []]
        return TurnRequest(
            organization_id=organization_id,
            inputs=[m.item() for m in self.inputs],
            tools=tuple(tools),
            tool_choice=self._tool_choice(tools),
            parallel_tool_calls=self.parallel_tool_calls,
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
    """Shaped like an input, so `history.push(result.output[0])` works."""

    role: Literal["assistant"] = "assistant"
    texts: list[OutputText]


class OutputFunctionCall(ResponseModel):
    """A function call of the answer; answer it with a `function_call_output` input naming its `call_id`."""

    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str


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
    # A Freddy-native object: ISO-8601 UTC timestamps (docs/surfaces.md); the OpenAI Responses API has its own.
    created_at: str
    completed_at: str | None
    model: str
    status: str
    thread_id: str | None
    previous_response_id: str | None
    output: list[OutputMessage | OutputFunctionCall]
    output_text: str | None
    usage: Usage | None
    context: dict[str, Any]
    error: ResponseError | None

    @classmethod
    def of(cls, turn: StoredTurn) -> ResponseRead:
        output: list[OutputMessage | OutputFunctionCall] = []
        if turn.has_message:
            output.append(OutputMessage(texts=[OutputText(text=turn.output_text or "")]))
        output += [
            OutputFunctionCall(id=c.id, call_id=c.call_id, name=c.name, arguments=c.arguments) for c in turn.calls
        ]
        usage = turn.usage
        return cls(
            id=turn.id,
            created_at=iso(turn.created_at) or "",
            completed_at=iso(turn.completed_at),
            model=turn.model,
            status=turn.status,
            thread_id=turn.thread_id,
            previous_response_id=turn.previous_response_id,
            output=output,
            output_text=turn.output_text,
            usage=Usage(
                input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, total_tokens=usage.total_tokens
            )
            if usage
            else None,
            context=dict(turn.context),
            error=ResponseError(code=turn.error.code, message=turn.error.message) if turn.error else None,
        )
