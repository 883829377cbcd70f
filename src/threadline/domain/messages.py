"""Item types, roles and the pure rules about message content.

A thread is an ordered sequence of typed items (docs/items.md). Every item has a role and a text (`content`, the
column people search): a `message` its text; a `function_call` (role `assistant`: the model made it) its
arguments; a `function_call_output` (role `tool`) its output. What is structured (the call's `call_id`, `name`)
travels next to the text.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from threadline.errors import ValidationFailed

Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")
# The role stored with a function_call_output (never a message's role).
TOOL_ROLE = "tool"
ItemRole = Literal["system", "user", "assistant", "tool"]
# `reasoning` and `compaction` are reserved (docs/items.md); only these are stored today.
ItemType = Literal["message", "function_call", "function_call_output"]
ITEM_TYPES: tuple[ItemType, ...] = ("message", "function_call", "function_call_output")
TOOL_ITEM_TYPES: frozenset[str] = frozenset({"function_call", "function_call_output"})
MAX_MESSAGE_CHARS = 1_000_000


def role_of(item_type: ItemType, role: Role | None = None) -> ItemRole:
    """The role stored with an item: a message's own, `assistant` for a call, `tool` for its output."""
    if item_type == "function_call":
        return "assistant"
    if item_type == "function_call_output":
        return "tool"
    return role or "user"


@dataclass(frozen=True)
class ChatMessage:
    """An item as a model sees it: a message, a function call (`content` = its arguments) or a call's output
    (`content` = the output text)."""

    role: ItemRole
    content: str
    type: ItemType = "message"
    call_id: str | None = None
    # The function a call names.
    name: str | None = None


@dataclass(frozen=True)
class ItemReference:
    """An input that names a stored item by id (OpenAI `item_reference`): the item itself is used."""

    id: str
    type: Literal["item_reference"] = "item_reference"


@dataclass(frozen=True)
class ToolCall:
    """A function call the model made: `arguments` is the JSON text it wrote (not parsed: clients parse it)."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class NewMessage:
    """A message about to be appended to a thread."""

    role: ItemRole
    content: str
    metadata: dict[str, Any] = field(default_factory=dict)
    token_count: int | None = None
    tokenizer: str | None = None
    model: str | None = None
    response_id: str | None = None
    assistant_id: str | None = None
    # Chosen in advance (a turn's answer, see ids.sibling_id; a streamed Assistants run); otherwise a new `msg_` id.
    id: str | None = None
    type: ItemType = "message"
    call_id: str | None = None
    # The typed payload stored next to the text (`name`, `status`, an output given as content parts…).
    payload: dict[str, Any] | None = None

    @property
    def name(self) -> str | None:
        return (self.payload or {}).get("name")

    def as_chat(self) -> ChatMessage:
        return ChatMessage(self.role, self.content, self.type, self.call_id, self.name)


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


def check_pairing(
    pending: Sequence[str],
    items: Sequence[ChatMessage | NewMessage],
    known: Collection[str] = (),
    *,
    param: str = "inputs",
    all_answered: bool = True,
) -> None:
    """Raise unless `items`, appended after calls `pending` (unanswered, in order), pair calls with outputs as
    OpenAI requires, with its wording: an output needs its call (in `pending`, `known` — found earlier in the
    conversation — or earlier in `items`), a message needs every earlier call answered, and with `all_answered`
    no call may be left unanswered at the end (a model cannot be called with one)."""
    open_calls = list(pending)
    seen = set(pending) | set(known)
    for index, item in enumerate(items):
        if item.type == "function_call":
            assert item.call_id is not None
            open_calls.append(item.call_id)
            seen.add(item.call_id)
        elif item.type == "function_call_output":
            if item.call_id not in seen:
                raise ValidationFailed(
                    f"No tool call found for function call output with call_id {item.call_id}.",
                    code="invalid_value",
                    param=f"{param}.{index}",
                )
            if item.call_id in open_calls:
                open_calls.remove(item.call_id)
        elif open_calls:
            raise ValidationFailed(
                f"No tool output found for function call {open_calls[0]}.", code="invalid_value", param=param
            )
    if all_answered and open_calls:
        raise ValidationFailed(
            f"No tool output found for function call {open_calls[0]}.", code="invalid_value", param=param
        )


def unanswered_calls(newest_first: Iterable[tuple[str, str | None]]) -> list[str]:
    """The calls of the conversation's last turn still waiting for their output, oldest first, from its items
    (type, call_id) read newest first: only the trailing run of tool items can hold any."""
    answered: set[str] = set()
    waiting: list[str] = []
    for item_type, call_id in newest_first:
        if item_type not in TOOL_ITEM_TYPES or call_id is None:
            break
        if item_type == "function_call_output":
            answered.add(call_id)
        elif call_id not in answered:
            waiting.append(call_id)
    waiting.reverse()
    return waiting
