"""The provider protocol: one async streaming method; capabilities and the context window are data.

Every OpenAI-compatible upstream is a config entry served by one class (`openai_compat.py`); the embedded model
is `local.py`. Providers translate their own failures into `UpstreamError` / `UpstreamTimeout` and never let
httpx or llama.cpp exceptions leak upward.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from threadline.domain.messages import ChatMessage, ToolCall
from threadline.domain.tokens import REPLY_PRIMING_TOKENS


@dataclass(frozen=True)
class ModelInfo:
    """A model as clients name it, with what the context builder needs to know about it."""

    name: str
    provider: str
    context_window: int
    # Which tokenizer gives exact counts: "o200k", "cl100k", "llama:<model>", or "estimate".
    tokenizer: str
    # Tokens a request costs beyond its messages' stored counts (reply priming, a template's default system
    # prompt…): the context builder reserves them. See domain/tokens.py.
    request_overhead_tokens: int = REPLY_PRIMING_TOKENS
    # Capabilities (docs/items.md): whether the model calls function tools, whether it sees images.
    tools: bool = False
    vision: bool = False


@dataclass(frozen=True)
class FunctionTool:
    """A function the model may call: `parameters` is its JSON Schema; `strict` is passed on when given."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def as_response_tool(self) -> dict[str, Any]:
        """The tool as the Responses API spells it: echoed in a response, and what its token count is taken of."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "strict": self.strict,
        }


@dataclass(frozen=True)
class ToolChoiceFunction:
    name: str


@dataclass(frozen=True)
class GenerationParams:
    max_output_tokens: int
    temperature: float | None = None
    tools: tuple[FunctionTool, ...] = ()
    tool_choice: str | ToolChoiceFunction | None = None
    parallel_tool_calls: bool | None = None


@dataclass(frozen=True)
class TextDelta:
    """A piece of the answer, as it is generated."""

    text: str


@dataclass(frozen=True)
class ToolCallStarted:
    """The model began a function call (`index`: its place among this answer's calls)."""

    index: int
    call_id: str
    name: str


@dataclass(frozen=True)
class ToolCallArgumentsDelta:
    index: int
    delta: str


@dataclass(frozen=True)
class Finished:
    """The last event of a successful stream, with the function calls the answer made (in order)."""

    finish_reason: str  # "stop" | "length" | "content_filter" | "tool_calls"
    input_tokens: int | None = None
    output_tokens: int | None = None
    tool_calls: tuple[ToolCall, ...] = field(default=())


StreamEvent = TextDelta | ToolCallStarted | ToolCallArgumentsDelta | Finished


class Tokenizer(Protocol):
    """Counts tokens exactly for one model family."""

    name: str

    def count(self, text: str) -> int: ...


class Provider(Protocol):
    name: str

    def models(self) -> Sequence[ModelInfo]: ...

    def tokenizer(self, model: str) -> Tokenizer: ...

    def stream(
        self, model: str, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[StreamEvent]:
        """Generate an answer. Ends with exactly one `Finished`, or raises UpstreamError/UpstreamTimeout."""
        ...

    async def aclose(self) -> None: ...
