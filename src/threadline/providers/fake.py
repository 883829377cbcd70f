"""A scriptable provider for tests and in-process benchmarks, where the model's words do not matter.

Each call takes the next `Script` from the queue (or the default one). A script says what to answer, how fast,
and how to fail: raise before the first token, raise after some tokens, or hang until cancelled. The tokenizer
counts whitespace-separated words, so tests can compute budgets by hand. Every call's messages are recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from threadline.domain.messages import ChatMessage, ToolCall
from threadline.errors import UpstreamError, UpstreamTimeout
from threadline.providers.base import (
    Finished,
    GenerationParams,
    ModelInfo,
    StreamEvent,
    TextDelta,
    ToolCallArgumentsDelta,
    ToolCallStarted,
)

FailureMode = Literal["before", "mid", "hang"]


class WordTokenizer:
    """One token per whitespace-separated word: deterministic and easy to reason about in tests."""

    name = "words"

    def count(self, text: str) -> int:
        return len(text.split())


@dataclass
class Script:
    """One scripted answer. `reply=None` echoes the last user message as "echo: <text>"."""

    reply: str | None = None
    delay_per_token: float = 0.0
    fail: FailureMode | None = None
    # How many tokens to send before a "mid" failure.
    fail_after_tokens: int = 1
    error: type[UpstreamError] = UpstreamError
    finish_reason: str = "stop"
    # Function calls made after the text (their arguments streamed in two pieces).
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass
class FakeProvider:
    name: str = "fake"
    model_names: Sequence[str] = ("fake-model",)
    context_window: int = 1000
    default: Script = field(default_factory=Script)
    scripts: list[Script] = field(default_factory=list)
    calls: list[list[ChatMessage]] = field(default_factory=list)
    params: list[GenerationParams] = field(default_factory=list)
    closed: bool = False
    # Set when a call starts: lets a test act while a turn is in flight without polling.
    started: asyncio.Event = field(default_factory=asyncio.Event)
    # The `tools` capability of its models.
    tools: bool = False

    def models(self) -> Sequence[ModelInfo]:
        return [
            ModelInfo(name, self.name, self.context_window, WordTokenizer.name, tools=self.tools)
            for name in self.model_names
        ]

    def tokenizer(self, model: str) -> WordTokenizer:
        return WordTokenizer()

    def script(self, *scripts: Script) -> None:
        """Queue scripts for the next calls, in order."""
        self.scripts.extend(scripts)

    async def stream(
        self, model: str, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[StreamEvent]:
        self.calls.append(list(messages))
        self.params.append(params)
        self.started.set()
        script = self.scripts.pop(0) if self.scripts else self.default
        if script.fail == "before":
            raise script.error(f"fake upstream failed ({script.error.__name__})")
        if script.fail == "hang":
            await asyncio.Event().wait()
        reply = script.reply if script.reply is not None else _echo(messages)
        words = reply.split(" ")
        words = words[: params.max_output_tokens]
        for index, word in enumerate(words):
            if script.fail == "mid" and index == script.fail_after_tokens:
                raise script.error(f"fake upstream cut off after {index} tokens")
            if script.delay_per_token:
                await asyncio.sleep(script.delay_per_token)
            yield TextDelta(word if index == 0 else " " + word)
        for index, call in enumerate(script.tool_calls):
            yield ToolCallStarted(index, call.call_id, call.name)
            middle = len(call.arguments) // 2
            for piece in (call.arguments[:middle], call.arguments[middle:]):
                yield ToolCallArgumentsDelta(index, piece)
        yield Finished(finish_reason=script.finish_reason, tool_calls=script.tool_calls)

    async def aclose(self) -> None:
        self.closed = True


def _echo(messages: Sequence[ChatMessage]) -> str:
    last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
    return f"echo: {last_user}"


__all__ = ["FakeProvider", "Script", "UpstreamError", "UpstreamTimeout", "WordTokenizer"]
