"""The provider protocol: one async streaming method; capabilities and the context window are data.

Every OpenAI-compatible upstream is a config entry served by one class (`openai_compat.py`); the embedded model
is `local.py`. Providers translate their own failures into `UpstreamError` / `UpstreamTimeout` and never let
httpx or llama.cpp exceptions leak upward.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from threadline.domain.messages import ChatMessage
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


@dataclass(frozen=True)
class GenerationParams:
    max_output_tokens: int
    temperature: float | None = None


@dataclass(frozen=True)
class TextDelta:
    """A piece of the answer, as it is generated."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The last event of a successful stream."""

    finish_reason: str  # "stop" | "length" | "content_filter"
    input_tokens: int | None = None
    output_tokens: int | None = None


StreamEvent = TextDelta | Finished


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
