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

Every other field of the SDK's `ResponseCreateParams` is honoured, refused or accepted as having no effect
(`api/schemas/openai_options.py`, docs/compatibility.md); a key OpenAI does not know is a 400 `unknown_parameter`,
as OpenAI answers it. The response echoes what was used, numbers where the OpenResponses schema says number.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

from pydantic import Field

from threadline.api.schemas import openai_options as options
from threadline.api.schemas.common import (
    INT32_MAX,
    MessageText,
    OutputTokens,
    RequestModel,
    ResponseModel,
    StringMetadata,
)
from threadline.api.schemas.openai import (
    CompactionItemRead,
    ConversationItemRead,
    FunctionCallItemRead,
    OutputTextRead,
    ReasoningItemRead,
    new_item,
    unix,
)
from threadline.domain import threads as rules
from threadline.domain.compaction import CompactionOptions
from threadline.domain.context import ContextMode
from threadline.domain.messages import ChatMessage, ItemReference, reasoning_payload
from threadline.domain.turns import EXPIRED, REQUIRES_ACTION, TRUNCATED_BY_FILTER, TRUNCATED_BY_LENGTH, StoredTurn
from threadline.errors import InvalidRequest, ValidationFailed
from threadline.ids import sibling_id
from threadline.providers.base import FunctionTool, ToolChoiceFunction
from threadline.services.compact_responses import Compacted, CompactRequest
from threadline.turns.request import TurnRequest

_TRUNCATION: dict[str, ContextMode] = {"disabled": "full", "auto": "recent"}
_RESPONSE_ERROR_CODES = {"rate_limited": "rate_limit_exceeded"}
# Request fields echoed from the response record as they were used (`OpenAIResponseCreate.to_request`).
_ECHOED = (
    "text",
    "reasoning",
    "service_tier",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
)


class ConversationRef(RequestModel):
    id: str = Field(max_length=128)


Identifier = Annotated[str, Field(max_length=512)]


class OpenAIResponseCreate(RequestModel):
    """`POST /v1/responses`: the fields of the SDK's `ResponseCreateParams`; any other key is a 400
    `unknown_parameter` (docs/compatibility.md)."""

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
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    include: list[Any] | None = Field(default=None, max_length=16)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    service_tier: str | None = Field(default=None, max_length=32)
    user: Identifier | None = None
    safety_identifier: Identifier | None = None
    prompt_cache_key: Identifier | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: dict[str, Any] | None = None
    stream_options: dict[str, Any] | None = None
    # Refused when given a value (`openai_options.REFUSED_FIELDS`), declared so that they are not "unknown".
    access_programs: Any = None
    background_options: Any = None
    image: Any = None
    moderation: Any = None
    prompt: Any = None
    context_management: list[Any] | None = Field(default=None, max_length=1)

    @property
    def conversation_id(self) -> str | None:
        return self.conversation.id if isinstance(self.conversation, ConversationRef) else self.conversation

    def to_request(self, organization_id: str) -> TurnRequest:
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
        options.check_refused(self.model_dump(include=set(options.REFUSED_FIELDS)))
        options.check_top_logprobs(self.top_logprobs)
        options.check_include(self.include)
        response_format, text = options.text_format(self.text)
        effort, reasoning = options.reasoning_effort(self.reasoning)
        tools = self._tools()
        choice = self._tool_choice(tools)
        echo: dict[str, Any] = {
            "text": text,
            "reasoning": reasoning,
            "service_tier": options.service_tier(self.service_tier),
            "user": self.user,
            "safety_identifier": self.safety_identifier,
            "prompt_cache_key": self.prompt_cache_key,
            "prompt_cache_retention": self.prompt_cache_retention,
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
            top_p=self.top_p,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            response_format=response_format,
            reasoning_effort=effort,
            context_mode=_TRUNCATION[self.truncation or "disabled"],
            instructions=self.instructions,
            record={"metadata": metadata, "conversation": conversation, **echo},
            tools=tuple(tools),
            tool_choice=choice,
            parallel_tool_calls=self.parallel_tool_calls,
            max_tool_calls=self.max_tool_calls,
            compaction=self._compaction(),
        )

    def _compaction(self) -> CompactionOptions | None:
        """`context_management` and a trailing `compaction_trigger` input (docs/compaction.md)."""
        trigger = _is_trigger(self.input[-1]) if isinstance(self.input, list) and self.input else False
        threshold: int | None = None
        managed = False
        for i, entry in enumerate(self.context_management or []):
            param = f"context_management.{i}"
            kind = entry.get("type") if isinstance(entry, dict) else None
            if kind != "compaction":
                raise InvalidRequest(
                    f"Context management of type '{kind}' is not supported: use 'compaction'.",
                    code="unsupported_parameter",
                    param=f"{param}.type",
                )
            value = entry.get("compact_threshold")
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= INT32_MAX
            ):
                raise ValidationFailed(
                    "'compact_threshold' is a positive number of tokens.",
                    code="invalid_type",
                    param=f"{param}.compact_threshold",
                )
            threshold, managed = value, True
        if not managed and not trigger:
            return None
        return CompactionOptions(threshold=threshold, trigger=trigger)

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
        # A `compaction_trigger` must be the last item (anywhere else `new_item` refuses it).
        items = self.input[:-1] if _is_trigger(self.input[-1]) else self.input
        return [_input_item(item, f"input.{i}") for i, item in enumerate(items)]


# ---- objects -----------------------------------------------------------------------------------------------


class OutputMessageRead(ResponseModel):
    type: Literal["message"] = "message"
    id: str
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputTextRead]


def _is_trigger(item: Any) -> bool:
    return isinstance(item, dict) and item.get("type") == "compaction_trigger"


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


class ConversationIdRead(ResponseModel):
    id: str


ResponseStatus = Literal["completed", "failed", "in_progress", "incomplete", "queued", "cancelled"]


class OpenAIResponseRead(ResponseModel):
    """Every field of the OpenResponses `ResponseResource` (and of the SDK's `Response`), with its types."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None
    status: ResponseStatus
    model: str
    output: list[CompactionItemRead | ReasoningItemRead | OutputMessageRead | FunctionCallItemRead]
    error: OpenAIResponseError | None
    incomplete_details: IncompleteDetails | None
    instructions: str | None
    metadata: dict[str, str]
    previous_response_id: str | None
    conversation: ConversationIdRead | None
    usage: OpenAIUsage | None
    max_output_tokens: int | None
    temperature: float
    top_p: float
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    top_logprobs: int = 0
    truncation: Literal["auto", "disabled"]
    store: bool
    background: bool = False
    parallel_tool_calls: bool = True
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    max_tool_calls: int | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}, "verbosity": "medium"})
    reasoning: dict[str, Any] | None = None
    service_tier: str = "default"
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None

    @classmethod
    def of(cls, turn: StoredTurn) -> OpenAIResponseRead:
        """The stored turn; `in_progress` ones (a stream's first events) have no output yet."""
        echo = turn.echo
        incomplete = None
        # `requires_action` and `expired` belong to Assistants runs, which are never read as responses.
        status = cast(ResponseStatus, "failed" if turn.status in (REQUIRES_ACTION, EXPIRED) else turn.status)
        if turn.completed and turn.finish_reason in (TRUNCATED_BY_LENGTH, TRUNCATED_BY_FILTER):
            status = "incomplete"
            reason = "max_output_tokens" if turn.finish_reason == TRUNCATED_BY_LENGTH else "content_filter"
            incomplete = IncompleteDetails(reason=reason)
        output: list[CompactionItemRead | ReasoningItemRead | OutputMessageRead | FunctionCallItemRead] = []
        compacted = turn.context.get("compaction_item")
        if turn.completed and compacted:
            # The turn compacted first (docs/compaction.md): its compaction item leads the output.
            output.append(
                CompactionItemRead(
                    id=compacted["id"], encrypted_content=compacted["summary"], created_by=compacted["model"]
                )
            )
        if turn.reasoning is not None:
            output.append(ReasoningItemRead.of_payload(turn.reasoning[0], reasoning_payload(turn.reasoning[1])))
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
                input_tokens=usage.input_tokens,
                input_tokens_details=InputTokensDetails(cached_tokens=usage.cached_tokens),
                output_tokens=usage.output_tokens,
                output_tokens_details=OutputTokensDetails(reasoning_tokens=usage.reasoning_tokens),
                total_tokens=usage.total_tokens,
            )
            if usage
            else None,
            max_output_tokens=turn.max_output_tokens,
            # Turns recorded before `sampling` was kept sent no top_p, and the temperature asked (if any).
            temperature=turn.sampling.get("temperature", turn.temperature or 1.0),
            top_p=turn.sampling.get("top_p", 1.0),
            presence_penalty=turn.sampling.get("presence_penalty", 0.0),
            frequency_penalty=turn.sampling.get("frequency_penalty", 0.0),
            truncation="disabled" if turn.context_mode == "full" else "auto",
            store=turn.store,
            background=bool(echo.get("background", False)),
            parallel_tool_calls=echo.get("parallel_tool_calls", True),
            tool_choice=echo.get("tool_choice") or "auto",
            tools=echo.get("tools") or [],
            max_tool_calls=echo.get("max_tool_calls"),
            **{key: echo[key] for key in _ECHOED if echo.get(key) is not None},
        )


def output_message(
    turn_id: str, status: Literal["in_progress", "completed", "incomplete"], text: str | None
) -> OutputMessageRead:
    """The turn's answer as an output item: `text=None` while it is being generated (no content part yet)."""
    content = [] if text is None else [OutputTextRead(text=text)]
    return OutputMessageRead(id=sibling_id("msg", turn_id), status=status, content=content)


# ---- compaction (docs/compaction.md) -------------------------------------------------------------------------


class OpenAIResponseCompact(RequestModel):
    """`POST /v1/responses/compact`: the fields of the SDK's `ResponseCompactParams`, any other key a 400
    `unknown_parameter`. `model` is required (checked by the service, with OpenAI's wording); the caching hints
    have no effect, `service_tier` and `image` are checked as on `POST /v1/responses` (docs/compatibility.md)."""

    model: str | None = Field(default=None, max_length=200)
    input: MessageText | list[Any] | None = None
    instructions: MessageText | None = None
    previous_response_id: str | None = Field(default=None, max_length=64)
    prompt_cache_key: Identifier | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: dict[str, Any] | None = None
    service_tier: str | None = Field(default=None, max_length=32)
    image: Any = None

    def to_request(self, organization_id: str) -> CompactRequest:
        options.check_refused({"image": self.image})
        options.service_tier(self.service_tier)
        inputs: list[ChatMessage | ItemReference] = []
        if isinstance(self.input, str):
            inputs = [ChatMessage(role="user", content=self.input)]
        elif self.input:
            inputs = [_input_item(item, f"input.{i}") for i, item in enumerate(self.input)]
        return CompactRequest(organization_id, self.model, inputs, self.previous_response_id, self.instructions)


class CompactedResponseRead(ResponseModel):
    id: str
    object: Literal["response.compaction"] = "response.compaction"
    created_at: int
    output: list[ConversationItemRead | CompactionItemRead]
    usage: OpenAIUsage

    @classmethod
    def of(cls, compacted: Compacted) -> CompactedResponseRead:
        response = compacted.response
        inp, out = response.input_tokens or 0, response.output_tokens or 0
        output: list[ConversationItemRead | CompactionItemRead] = [
            ConversationItemRead.of(m) for m in compacted.user_messages
        ]
        item = compacted.item
        output.append(CompactionItemRead(id=item.id, encrypted_content=item.content, created_by=item.model))
        return cls(
            id=response.id,
            created_at=unix(response.created_at),
            output=output,
            usage=OpenAIUsage(input_tokens=inp, output_tokens=out, total_tokens=inp + out),
        )


class OpenAIInputTokensCount(OpenAIResponseCreate):
    """`POST /v1/responses/input_tokens`: the body of a response (its generation settings are not needed to count,
    and are ignored); `input` may be left out to count a conversation alone."""

    def _inputs(self) -> list[ChatMessage | ItemReference]:
        return [] if self.input is None else super()._inputs()


class InputTokensRead(ResponseModel):
    object: Literal["response.input_tokens"] = "response.input_tokens"
    input_tokens: int
