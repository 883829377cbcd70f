"""Message roles and the pure rules about message content."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from threadline.errors import ValidationFailed

Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")
MAX_MESSAGE_CHARS = 1_000_000


@dataclass(frozen=True)
class ChatMessage:
    """A message as a model sees it."""

    role: Role
    content: str


@dataclass(frozen=True)
class NewMessage:
    """A message about to be appended to a thread."""

    role: Role
    content: str
    metadata: dict[str, Any] = field(default_factory=dict)
    token_count: int | None = None
    tokenizer: str | None = None
    model: str | None = None
    response_id: str | None = None
    assistant_id: str | None = None
    # Chosen in advance (a turn's answer, see ids.sibling_id; a streamed Assistants run); otherwise a new `msg_` id.
    id: str | None = None


def validate_content(content: str, param: str = "content") -> str:
    if len(content) > MAX_MESSAGE_CHARS:
        raise ValidationFailed(
            f"Message content has {len(content)} characters; the maximum is {MAX_MESSAGE_CHARS}.",
            code="content_too_long",
            param=param,
        )
    return content


def validate_role(role: str, param: str = "role") -> Role:
    if role not in ROLES:
        raise ValidationFailed(
            f"Invalid role '{role}': use one of {', '.join(ROLES)}.", code="invalid_role", param=param
        )
    return role
