"""Token accounting for chat messages: content tokens plus the per-message framing a chat template adds.

Chat templates wrap every message in role markers (OpenAI's documented rule of thumb: ~4 tokens per message,
and ~2 to prime the reply). Counting them keeps the context budget honest instead of optimistic.
"""

from __future__ import annotations

from typing import Protocol

MESSAGE_OVERHEAD_TOKENS = 4
REPLY_PRIMING_TOKENS = 2


class CountsTokens(Protocol):
    """Anything with an exact `count(text)` (providers' tokenizers satisfy this)."""

    def count(self, text: str) -> int: ...


def message_token_count(tokenizer: CountsTokens, role: str, content: str) -> int:
    """Tokens one message costs in a prompt: its content plus the chat framing around it."""
    del role  # the framing costs the same for every role in the templates we serve
    return tokenizer.count(content) + MESSAGE_OVERHEAD_TOKENS
