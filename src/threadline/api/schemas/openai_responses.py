"""OpenAI Responses API wire shapes (`client.responses.*`), projected from the same response rows as Freddy's
`/v1/model/response`.

A response is one turn on a thread. Its output is the turn's saved assistant message (`msg_…`, named before it is
generated: see `ids.sibling_id`), its input items are the messages the turn saved. Field mapping:

- `conversation` → the thread the turn runs on (it must exist); none → a new thread, as Freddy does.
- `truncation`: `disabled` (the default) → Threadline's `full` context mode (too long is a 400
  `context_length_exceeded`), `auto` → `recent` (the oldest messages are dropped).
- `instructions` → a system message for this turn only: always in the context, never saved to the thread.
- `finish_reason` `length` → status `incomplete` with `incomplete_details.reason = max_output_tokens`.
- An error's Threadline code goes to `error.type`; `error.code` takes the SDK's enum (`server_error`,
  `rate_limit_exceeded`), which strict clients validate.

Function tools (docs/items.md): `tools` (type `function` only; others are a 400 `unsupported_tool_type`),
`tool_choice`, `parallel_tool_calls` and `max_tool_calls` go to the model and are echoed. Input items may be
`message`, `function_call` and `function_call_output`; the output holds the answer's text as a message (left out
when the answer is only calls), then its `function_call` items (`fc_…` ids, the model's `call_…` call ids).

Unknown and unsupported-but-harmless fields (`text`, `reasoning`, `include`, `user`, …) are accepted and
ignored; the response reports what was actually used (`text.format: text`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from threadline.api.schemas.common import MessageText, OutputTokens, RequestModel, ResponseModel, StringMetadata
from threadline.api.schemas.openai import FunctionCallItemRead, OutputTextRead, new_item, unix
from threadline.domain import threads as rules
from threadline.domain.context import ContextMode
from threadline.domain.messages import ChatMessage, ItemReference
from threadline.domain.turns import TRUNCATED_BY_FILTER, TRUNCATED_BY_LENGTH, StoredTurn
from threadline.errors import InvalidRequest, ValidationFailed
from threadline.ids import sibling_id
from threadline.providers.base import FunctionTool, ToolChoiceFunction
from threadline.turns.request import TurnRequest

_TRUNCATION: dict[str, ContextMode] = {"disabled": "full", "auto": "recent"}
_RESPONSE_ERROR_CODES = {"rate_limited": "rate_limit_exceeded"}


class ConversationRef(RequestModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(max_length=128)


class OpenAIResponseCreate(RequestModel):
    """`POST /v1/responses`. Unknown keys are ignored (the SDK merges `extra_body` into the body)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(default=None, max_length=200)
    input: MessageText | list[Any] | None = None
    instructions: MessageText | None = None
    conversation: str | ConversationRef | None = None
    previous_response_id: str | None = Field(default=None, max_length=64)
    store: bool | None = None
    stream: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None
    max_output_tokens: OutputTokens | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    metadata: StringMetadata | None = None
    background: bool | None = None
    tools: list[Any] | None = Field(default=None, max_length=128)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: int | None = Field(default=None, ge=1, le=1_000)

    @property
    def conversation_id(self) -> str | None:
        return self.conversation.id if isinstance(self.conversation, ConversationRef) else self.conversation

    def to_request(self, organization_id: str) -> TurnRequest:
        if self.background:
            raise InvalidRequest(
                "Background responses are not supported: omit 'background' (or set it to false) and stream instead.",
                code="unsupported_parameter",
                param="background",
            )
        conversation = self.conversation_id
        if conversation is not None and self.previous_response_id is not None:
            raise InvalidRequest(
                "'conversation' and 'previous_response_id' cannot be used together: continue either a conversation "
                "or a previous response.",
                code="conversation_with_previous_response",
                param="previous_response_id",
            )
        metadata = dict(self.metadata or {})
        rules.validate_metadata(metadata)
        tools = self._tools()
        choice = self._tool_choice(tools)
        echo: dict[str, Any] = {
            "tools": [t.as_response_tool() for t in tools],
            "tool_choice": self.tool_choice if isinstance(self.tool_choice, str) else None,
            "parallel_tool_calls": self.parallel_tool_calls is not False,
            "max_tool_calls": self.max_tool_calls,
        }
        if isinstance(choice, ToolChoiceFunction):
            echo["tool_choice"] = {"type": "function", "name": choice.name}
        return TurnRequest(
            organization_id=organization_id,
            inputs=self._inputs(),
            thread_id=conversation,
            thread_must_exist=conversation is not None,
            store=self.store is not False,
            previous_response_id=self.previous_response_id,
            model=self.model,
            max_output_tokens=self.max_output_tokens,
            temperature=self.temperature,
            context_mode=_TRUNCATION[self.truncation or "disabled"],
            instructions=self.instructions,
            record={"metadata": metadata, "conversation": conversation, **echo},
            tools=tuple(tools),
            tool_choice=choice,
            parallel_tool_calls=self.parallel_tool_calls,
            max_tool_calls=self.max_tool_calls,
        )

    def _tools(self) -> list[FunctionTool]:
        tools: list[FunctionTool] = []
        for i, tool in enumerate(self.tools or []):
            param = f"tools.{i}"
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                raise InvalidRequest(
                    f"Tools of type '{kind}' are not supported: Threadline offers the model function tools only.",
                    code="unsupported_tool_type",
                    param=f"{param}.type",
                )
            name = tool.get("name")
            if not isinstance(name, str) or not 1 <= len(name) <= 128:
                raise ValidationFailed(
                    "A function tool needs 'name' as a string of 1 to 128 characters.",
                    code="invalid_type",
                    param=f"{param}.name",
                )
            description, parameters, strict = tool.get("description"), tool.get("parameters"), tool.get("strict")
            if description is not None and not isinstance(description, str):
                raise ValidationFailed("'description' is a string.", code="invalid_type", param=f"{param}.description")
            if parameters is not None and not isinstance(parameters, dict):
                raise ValidationFailed(
                    "'parameters' is a JSON Schema object.", code="invalid_type", param=f"{param}.parameters"
                )
            if strict is not None and not isinstance(strict, bool):
                raise ValidationFailed("'strict' is a boolean.", code="invalid_type", param=f"{param}.strict")
            if any(t.name == name for t in tools):
                raise ValidationFailed(
                    f"Two tools are named '{name}': tool names must be unique.",
                    code="duplicate_tool_name",
                    param=f"{param}.name",
                )
            tools.append(FunctionTool(name, description, parameters, strict))
        return tools

    def _tool_choice(self, tools: list[FunctionTool]) -> str | ToolChoiceFunction | None:
        choice = self.tool_choice
        if choice is None:
            return None
        if isinstance(choice, str):
            if choice not in ("auto", "none", "required"):
                raise ValidationFailed(
                    f"Invalid tool_choice '{choice}': use auto, none, required or a function.",
                    code="invalid_value",
                    param="tool_choice",
                )
            if choice == "required" and not tools:
                raise InvalidRequest(
                    "Tool choice 'required' must be specified with 'tools' parameter.",
                    code="invalid_value",
                    param="tool_choice",
                )
            return choice
        if choice.get("type") != "function":
            raise InvalidRequest(
                f"tool_choice of type '{choice.get('type')}' is not supported: use auto, none, required or a function.",
                code="unsupported_tool_type",
                param="tool_choice.type",
            )
        name = choice.get("name")
        if not any(t.name == name for t in tools):
            raise InvalidRequest(
                f"Tool choice names the function '{name}', which is not among 'tools'.",
                code="invalid_value",
                param="tool_choice.name",
            )
        return ToolChoiceFunction(str(name))

    def _inputs(self) -> list[ChatMessage | ItemReference]:
        if self.input is None:
            raise ValidationFailed(
                "Missing required parameter 'input': a string or a list of message items.",
                code="missing_required_parameter",
                param="input",
            )
        if isinstance(self.input, str):
            return [ChatMessage(role="user", content=self.input)]
        if not self.input:
            raise ValidationFailed("'input' needs at least one item.", code="empty_input", param="input")
        return [_input_item(item, f"input.{i}") for i, item in enumerate(self.input)]


# ---- objects -----------------------------------------------------------------------------------------------


class OutputMessageRead(ResponseModel):
    type: Literal["message"] = "message"
    id: str
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputTextRead]


def _input_item(item: Any, param: str) -> ChatMessage | ItemReference:
    """An input item: a stored item named by an `item_reference`, else an item to save (`new_item`)."""
    if isinstance(item, dict) and item.get("type") == "item_reference":
        item_id = item.get("id")
        if not isinstance(item_id, str) or not 1 <= len(item_id) <= 64:
            raise ValidationFailed(
                "An 'item_reference' needs 'id' as a string of 1 to 64 characters.",
                code="invalid_type",
                param=f"{param}.id",
            )
        return ItemReference(item_id)
    return new_item(item, param).as_chat()


class InputTokensDetails(ResponseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(ResponseModel):
    reasoning_tokens: int = 0


class OpenAIUsage(ResponseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class OpenAIResponseError(ResponseModel):
    code: str
    message: str
    type: str | None = None
    param: str | None = None


class IncompleteDetails(ResponseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class TextFormat(ResponseModel):
    type: Literal["text"] = "text"


class TextConfig(ResponseModel):
    format: TextFormat = Field(default_factory=TextFormat)


class ConversationIdRead(ResponseModel):
    id: str


class OpenAIResponseRead(ResponseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None
    status: Literal["completed", "failed", "in_progress", "incomplete"]
    model: str
    output: list[OutputMessageRead | FunctionCallItemRead]
    error: OpenAIResponseError | None
    incomplete_details: IncompleteDetails | None
    instructions: str | None
    metadata: dict[str, str]
    previous_response_id: str | None
    conversation: ConversationIdRead | None
    usage: OpenAIUsage | None
    max_output_tokens: int | None
    temperature: float | None
    top_p: float | None
    truncation: Literal["auto", "disabled"]
    store: bool
    background: bool = False
    parallel_tool_calls: bool = True
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    max_tool_calls: int | None = None
    text: TextConfig = Field(default_factory=TextConfig)
    reasoning: None = None
    user: None = None

    @classmethod
    def of(cls, turn: StoredTurn) -> OpenAIResponseRead:
        """The stored turn; `in_progress` ones (a stream's first events) have no output yet."""
        echo = turn.echo
        incomplete = None
        status: Literal["completed", "failed", "in_progress", "incomplete"] = turn.status  # type: ignore[assignment]
        if turn.completed and turn.finish_reason in (TRUNCATED_BY_LENGTH, TRUNCATED_BY_FILTER):
            status = "incomplete"
            reason = "max_output_tokens" if turn.finish_reason == TRUNCATED_BY_LENGTH else "content_filter"
            incomplete = IncompleteDetails(reason=reason)
        output: list[OutputMessageRead | FunctionCallItemRead] = []
        if turn.has_message:
            output.append(output_message(turn.id, "incomplete" if incomplete else "completed", turn.output_text))
        output += [
            FunctionCallItemRead(id=c.id, call_id=c.call_id, name=c.name, arguments=c.arguments) for c in turn.calls
        ]
        usage = turn.usage
        error = turn.error
        conversation = echo.get("conversation")
        return cls(
            id=turn.id,
            created_at=unix(turn.created_at),
            completed_at=unix(turn.completed_at) if turn.completed_at and status == "completed" else None,
            status=status,
            model=turn.model,
            output=output,
            error=OpenAIResponseError(
                code=_RESPONSE_ERROR_CODES.get(error.code, "server_error"), message=error.message, type=error.code
            )
            if error
            else None,
            incomplete_details=incomplete,
            instructions=turn.instructions,
            metadata=echo.get("metadata") or {},
            previous_response_id=turn.previous_response_id,
            conversation=ConversationIdRead(id=conversation) if conversation else None,
            usage=OpenAIUsage(
                input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, total_tokens=usage.total_tokens
            )
            if usage
            else None,
            max_output_tokens=turn.max_output_tokens,
            temperature=turn.temperature,
            top_p=None,  # accepted, not applied: the providers sample with temperature only
            truncation="disabled" if turn.context_mode == "full" else "auto",
            store=turn.store,
            parallel_tool_calls=echo.get("parallel_tool_calls", True),
            tool_choice=echo.get("tool_choice") or "auto",
            tools=echo.get("tools") or [],
            max_tool_calls=echo.get("max_tool_calls"),
        )


def output_message(
    turn_id: str, status: Literal["in_progress", "completed", "incomplete"], text: str | None
) -> OutputMessageRead:
    """The turn's answer as an output item: `text=None` while it is being generated (no content part yet)."""
    content = [] if text is None else [OutputTextRead(text=text)]
    return OutputMessageRead(id=sibling_id("msg", turn_id), status=status, content=content)
