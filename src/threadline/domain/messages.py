"""Item types, roles and the pure rules about message content.

A thread is an ordered sequence of typed items (docs/items.md). Every item has a role and a text (`content`, the
column people search): a `message` its text; a `function_call` (role `assistant`: the model made it) its
arguments; a `function_call_output` (role `tool`) its output. What is structured (the call's `call_id`, `name`)
travels next to the text.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from threadline.errors import ValidationFailed

Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")
ItemRole = Literal["system", "user", "assistant", "tool"]
# A `compaction` item (role `system`, `content` = its summary) stands for the items before it (docs/compaction.md);
# the payload of each type is in docs/items.md.
ItemType = Literal["message", "function_call", "function_call_output", "reasoning", "compaction"]
ITEM_TYPES: tuple[ItemType, ...] = ("message", "function_call", "function_call_output", "reasoning", "compaction")
TOOL_ITEM_TYPES: frozenset[str] = frozenset({"function_call", "function_call_output"})
MAX_MESSAGE_CHARS = 1_000_000


def role_of(item_type: ItemType, role: Role | None = None) -> ItemRole:
    """The role stored with an item: a message's own, `assistant` for a call (or reasoning), `tool` for an
    output."""
    if item_type in ("function_call", "reasoning"):
        return "assistant"
    if item_type == "function_call_output":
        return "tool"
    if item_type == "compaction":
        return "system"
    return role or "user"


# Content parts of a message that holds more than text (docs/items.md): `{"type": "text", "text"}` and
# `{"type": "image", "url", "detail"}`, in the order sent; `content` keeps the text parts joined.
ContentParts = tuple[dict[str, Any], ...]
IMAGE_DETAILS = ("auto", "low", "high")
# Bounds on images: a data URL carries the image itself, so it is bounded like any other large value.
MAX_IMAGES_PER_MESSAGE = 20
MAX_IMAGE_URL_CHARS = 8_000_000
_DATA_URL = re.compile(r"data:image/(png|jpeg|jpg|gif|webp);base64,[A-Za-z0-9+/=\s]+", re.ASCII)


@dataclass(slots=True)
class ChatMessage:
    """An item as a model sees it: a message, a function call (`content` = its arguments) or a call's output
    (`content` = the output text). A value (never changed once built), but not frozen: every prompt item of every
    turn is one, and a frozen dataclass's __init__ costs twice as much."""

    role: ItemRole
    content: str
    type: ItemType = "message"
    call_id: str | None = None
    # The function a call names.
    name: str | None = None
    # A message with images: all its parts in order (`content` is then the text parts joined).
    parts: ContentParts | None = None

    @property
    def has_images(self) -> bool:
        return has_images(self.parts)


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
        return ChatMessage(self.role, self.content, self.type, self.call_id, self.name, parts_of(self.payload))


def reasoning_text(payload: Mapping[str, Any]) -> str:
    """The readable text of a reasoning item (its searchable `content`): summary texts, then content texts, joined
    by a blank line."""
    texts = [p.get("text", "") for key in ("summary", "content") for p in payload.get(key) or () if p.get("text")]
    return "\n\n".join(texts)


def reasoning_payload(text: str) -> dict[str, Any]:
    """The payload of a reasoning item an upstream produced: its raw text is the item's `content` part."""
    return {
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "encrypted_content": None,
        "status": "completed",
    }


def parts_of(payload: Mapping[str, Any] | None) -> ContentParts | None:
    """A stored message's content parts (its payload's `content`), None for a text-only item."""
    parts = (payload or {}).get("content") if payload else None
    return tuple(parts) if isinstance(parts, list) and parts else None


def has_images(parts: Sequence[Mapping[str, Any]] | None) -> bool:
    return any(p.get("type") == "image" for p in parts or ())


def image_part(url: Any, detail: Any, param: str) -> dict[str, Any]:
    """An image part to store: a `data:image/…;base64,` URL or an https URL (never fetched by Threadline: the
    upstream model fetches it), and its detail."""
    if not isinstance(url, str) or not url:
        raise ValidationFailed("An image needs its URL as a string.", code="invalid_type", param=param)
    if len(url) > MAX_IMAGE_URL_CHARS:
        raise ValidationFailed(
            f"The image URL has {len(url)} characters; the maximum is {MAX_IMAGE_URL_CHARS} (a data URL carries "
            "the image: send a smaller one, or an https URL).",
            code="image_too_large",
            param=param,
        )
    if not (url.startswith("https://") and len(url) > len("https://")) and not _DATA_URL.fullmatch(url):
        raise ValidationFailed(
            "An image URL is an https URL or a base64 data URL of a png, jpeg, gif or webp image "
            "('data:image/png;base64,…').",
            code="invalid_image_url",
            param=param,
        )
    detail = "auto" if detail is None else detail
    if detail not in IMAGE_DETAILS:
        raise ValidationFailed(
            f"Invalid image detail '{detail}': use one of {', '.join(IMAGE_DETAILS)}.",
            code="invalid_value",
            param=param.rsplit(".", 1)[0] + ".detail",
        )
    return {"type": "image", "url": url, "detail": detail}


def check_image_count(parts: Sequence[Mapping[str, Any]], param: str) -> None:
    count = sum(1 for p in parts if p.get("type") == "image")
    if count > MAX_IMAGES_PER_MESSAGE:
        raise ValidationFailed(
            f"A message holds {count} images; the maximum is {MAX_IMAGES_PER_MESSAGE}.",
            code="too_many_images",
            param=param,
        )


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
        elif item.type == "reasoning":
            continue  # the model's thinking between calls and outputs pairs nothing
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
