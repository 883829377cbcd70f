"""Token bookkeeping for chat messages (pure: the tokenizer is passed in).

A chat model does not see a message's content alone: each message is framed by its chat format, and every
request ends with the tokens that prime the assistant's reply. A message's stored token count is
`tokens(content) + message_overhead(tokenizer, role)`, so summing stored counts and adding the model's
`request_overhead_tokens` (see `providers.base.ModelInfo`: at least `reply_overhead(tokenizer)`, more when a
chat template adds text of its own such as a default system prompt) gives the prompt size.

The numbers:
- OpenAI encodings ("o200k", "cl100k"): `<|start|>{role}\\n{content}<|end|>\\n` — 3 framing tokens plus the role
  (1 token for system/user/assistant), so 4 per message; 3 more prime the reply (`<|start|>assistant<|message|>`).
  These are the figures of OpenAI's own token-counting guide.
- Everything else (llama.cpp chat templates such as ChatML `<|im_start|>{role}\\n{content}<|im_end|>\\n`, and the
  "estimate"): 4 framing tokens plus the role as the tokenizer counts it — exact for ChatML models such as
  SmolLM2, and at least as large as Llama-3-style headers; the reply is primed by 2 framing tokens plus
  "assistant" as the tokenizer counts it (`<|im_start|>assistant\\n`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

OPENAI_ENCODINGS = frozenset({"o200k", "cl100k"})
OPENAI_FRAME_TOKENS = 3
TEMPLATE_FRAME_TOKENS = 4
TEMPLATE_REPLY_FRAME_TOKENS = 2
REPLY_PRIMING_TOKENS = 3


class TokenCounter(Protocol):
    """What a tokenizer offers (structurally the same as `providers.base.Tokenizer`)."""

    name: str

    def count(self, text: str) -> int: ...


def message_overhead(tokenizer: TokenCounter, role: str) -> int:
    """The tokens a chat format adds around one message's content."""
    frame = OPENAI_FRAME_TOKENS if tokenizer.name in OPENAI_ENCODINGS else TEMPLATE_FRAME_TOKENS
    return frame + tokenizer.count(role)


def reply_overhead(tokenizer: TokenCounter) -> int:
    """The tokens every request ends with to prime the assistant's reply."""
    if tokenizer.name in OPENAI_ENCODINGS:
        return REPLY_PRIMING_TOKENS
    return TEMPLATE_REPLY_FRAME_TOKENS + tokenizer.count("assistant")


def message_token_count(tokenizer: TokenCounter, role: str, content: str) -> int:
    """The tokens one message costs in a prompt: its content plus its chat-format overhead."""
    return tokenizer.count(content) + message_overhead(tokenizer, role)


def item_token_count(
    tokenizer: TokenCounter,
    role: str,
    content: str,
    name: str | None = None,
    parts: Sequence[Mapping[str, Any]] | None = None,
) -> int:
    """The tokens one item costs: a message as above, plus its images (`parts`, estimated); a function call its
    arguments (`content`) plus the function's name, framed like an assistant message; an output its text,
    framed like a message."""
    return message_token_count(tokenizer, role, content) + (tokenizer.count(name) if name else 0) + image_tokens(parts)


# Threadline neither fetches nor decodes images, so an image's cost is an estimate by its detail: OpenAI's 85
# tokens at low detail, and at high (or auto) detail its figure for a 1024×1024 image, 85 + 4 tiles × 170
# (docs/items.md). An upstream may count a larger image higher.
IMAGE_TOKENS = {"low": 85, "high": 765, "auto": 765}


def image_tokens(parts: Sequence[Mapping[str, Any]] | None) -> int:
    return sum(IMAGE_TOKENS.get(str(p.get("detail")), 765) for p in parts or () if p.get("type") == "image")
