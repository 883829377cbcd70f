"""OpenAI-shaped wire schemas: Assistants v2 threads/messages and the Conversations API.

Same rows as the Freddy shapes (`freddy.py`), another projection: integer Unix-second timestamps, the exact
`object` literals, `[]` rather than null for lists. Requests take the fields of the SDK's params types and refuse
any other key (400 `unknown_parameter`, as OpenAI does); the values we read are validated here, and anything we
cannot honour (image parts, files, tool items) is a 400 with a stable code rather than silently dropped.
Images (`input_image`, Assistants `image_url`) are stored as `image` parts next to the text (docs/items.md).

Role mapping: the Assistants view shows `user` and `assistant` messages only (its `role` has no other value;
system prompts belong to assistants there). Conversation items take `developer` as well and store it as
`system`; it reads back as `system`.

All conversions between rows and OpenAI shapes live in this module (`…Read.of`, `new_message`, `new_item`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from fastapi import Depends, Query
from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from threadline.api.schemas.common import (
    ID_PATTERN,
    Identified,
    LimitQuery,
    MessageText,
    OrderQuery,
    ResponseModel,
    StorableText,
    StringMetadata,
    end_ids,
)
from threadline.domain.messages import (
    ContentParts,
    NewMessage,
    Role,
    check_image_count,
    image_part,
    parts_of,
    reasoning_text,
    role_of,
)
from threadline.errors import ValidationFailed
from threadline.storage.repositories.pagination import Page, PageRequest
from threadline.storage.tables import Message, Thread

# The roles the Assistants v2 view of a thread shows (services filter on it).
ASSISTANTS_ROLES: tuple[Role, ...] = ("user", "assistant")

_CONVERSATION_ROLES: dict[str, Role] = {
    "user": "user",
    "assistant": "assistant",
    "system": "system",
    "developer": "system",
}
# Known OpenAI part types that carry something other than plain text.
_NON_TEXT_PARTS = {
    "image_file",
    "image_url",
    "input_image",
    "input_file",
    "input_audio",
    "computer_screenshot",
    "refusal",
}
_TEXT_PARTS_ITEMS = {"input_text", "output_text", "text"}


class OpenAIRequest(StorableText):
    """A request body on an OpenAI surface: the fields of the SDK's params type; any other key is a 400
    `unknown_parameter`, as OpenAI answers it (docs/compatibility.md). camelCase is accepted; text follows the same
    rule as on the Freddy routes (`StorableText`)."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="forbid")


def unix(value: datetime) -> int:
    """OpenAI timestamps: integer Unix seconds."""
    return int(value.timestamp())


def string_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    """OpenAI metadata is {str: str}; structured values set through the Freddy API read back as JSON text."""
    return {k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in metadata.items()}


def _unsupported_part(kind: str, param: str) -> ValidationFailed:
    if kind in _NON_TEXT_PARTS:
        return ValidationFailed(
            f"Content parts of type '{kind}' are not supported: Threadline stores text, and images given by URL.",
            code="unsupported_content_type",
            param=param,
        )
    return ValidationFailed(f"Unknown content part type '{kind}'.", code="invalid_content_type", param=param)


def _parts_text(content: str | list[Any], param: str, text_types: set[str]) -> str:
    """The text of a string or of a list of text parts (joined as written, like `output_text`)."""
    return _content(content, param, text_types)[0]


def _content(
    content: str | list[Any], param: str, text_types: set[str], image: str | None = None
) -> tuple[str, ContentParts | None]:
    """The text of a string or of a list of parts (joined as written, like `output_text`), and — when some part
    is an image of type `image` (`input_image` or `image_url`) — every part in order, to store (docs/items.md)."""
    if isinstance(content, str):
        return content, None
    if not content:
        raise ValidationFailed("Content needs at least one part.", code="empty_content", param=param)
    texts = []
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            raise ValidationFailed(
                "Each content part is an object with a 'type'.", code="invalid_type", param=f"{param}.{i}"
            )
        if image is not None and kind == image:
            parts.append(_image(part, kind, f"{param}.{i}"))
            continue
        if kind not in text_types:
            raise _unsupported_part(kind, f"{param}.{i}.type")
        text = part.get("text")
        if not isinstance(text, str):
            raise ValidationFailed(
                f"A '{kind}' part needs 'text' as a string.", code="invalid_type", param=f"{param}.{i}.text"
            )
        texts.append(text)
        parts.append({"type": "text", "text": text})
    if not any(p["type"] == "image" for p in parts):
        return "".join(texts), None
    check_image_count(parts, param)
    return "".join(texts), tuple(parts)


def _image(part: dict[str, Any], kind: str, param: str) -> dict[str, Any]:
    """`input_image` {image_url, detail, file_id} or Assistants `image_url` {image_url: {url, detail}}."""
    if kind == "input_image":
        if part.get("file_id") is not None:
            raise ValidationFailed(
                "'file_id' is not supported: Threadline has no files; give the image as 'image_url' (an https URL or "
                "a base64 data URL).",
                code="unsupported_parameter",
                param=f"{param}.file_id",
            )
        return image_part(part.get("image_url"), part.get("detail"), f"{param}.image_url")
    value = part.get("image_url")
    if not isinstance(value, dict):
        raise ValidationFailed(
            "An 'image_url' part needs 'image_url' as an object {url, detail}.",
            code="invalid_type",
            param=f"{param}.image_url",
        )
    return image_part(value.get("url"), value.get("detail"), f"{param}.image_url.url")


def _names_files(value: Any) -> bool:
    """Whether tool resources name any file or vector store (`{"code_interpreter": {"file_ids": []}}` does not)."""
    if isinstance(value, dict):
        return any(_names_files(v) for v in value.values())
    return bool(value) if isinstance(value, list) else False


def _files_unsupported(param: str) -> ValidationFailed:
    """File attachments and tool resources name files Threadline does not have: refuse rather than ignore."""
    return ValidationFailed(
        f"'{param}' is not supported: Threadline stores text only and has no files or vector stores.",
        code="unsupported_parameter",
        param=param,
    )


# ---- Assistants v2: requests ------------------------------------------------------------------------------


class OpenAIMessageCreate(OpenAIRequest):
    role: Literal["user", "assistant"]
    content: MessageText | list[dict[str, Any]]
    attachments: list[dict[str, Any]] | None = None
    metadata: StringMetadata | None = None

    def new_message(self, param: str = "") -> NewMessage:
        if self.attachments:
            raise _files_unsupported(f"{param}attachments")
        text, parts = _content(self.content, f"{param}content", {"text"}, image="image_url")
        payload = {"content": list(parts)} if parts else None
        return NewMessage(role=self.role, content=text, metadata=dict(self.metadata or {}), payload=payload)


class OpenAIThreadCreate(OpenAIRequest):
    messages: list[OpenAIMessageCreate] | None = None
    metadata: StringMetadata | None = None
    tool_resources: dict[str, Any] | None = None

    def new_messages(self) -> list[NewMessage]:
        if _names_files(self.tool_resources):
            raise _files_unsupported("tool_resources")
        return [m.new_message(f"messages.{i}.") for i, m in enumerate(self.messages or [])]


class OpenAIThreadUpdate(OpenAIRequest):
    metadata: StringMetadata | None = None
    tool_resources: dict[str, Any] | None = None

    def changes(self) -> dict[str, Any]:
        if _names_files(self.tool_resources):
            raise _files_unsupported("tool_resources")
        # `metadata: null` clears it.
        return {"metadata": self.metadata or {}} if "metadata" in self.model_fields_set else {}


class OpenAIMessageUpdate(OpenAIRequest):
    metadata: StringMetadata | None = None

    def changes(self) -> dict[str, Any]:
        # `metadata: null` clears it, as on the thread.
        return {"metadata": self.metadata or {}} if "metadata" in self.model_fields_set else {}


# ---- Assistants v2: objects --------------------------------------------------------------------------------


class OpenAIThreadRead(ResponseModel):
    id: str
    object: Literal["thread"] = "thread"
    created_at: int
    metadata: dict[str, str]
    tool_resources: dict[str, Any] | None = None

    @classmethod
    def of(cls, thread: Thread) -> OpenAIThreadRead:
        return cls(id=thread.id, created_at=unix(thread.created_at), metadata=string_metadata(thread.metadata_))


class TextValueRead(ResponseModel):
    value: str
    annotations: list[Any] = Field(default_factory=list)


class TextContentRead(ResponseModel):
    type: Literal["text"] = "text"
    text: TextValueRead


class ImageURLRead(ResponseModel):
    url: str
    detail: Literal["auto", "low", "high"] = "auto"


class ImageURLContentRead(ResponseModel):
    type: Literal["image_url"] = "image_url"
    image_url: ImageURLRead


def _message_content(message: Message) -> list[TextContentRead | ImageURLContentRead]:
    """A stored message's content as Assistants content blocks: its parts in order when it has images."""
    parts = parts_of(message.payload)
    if not parts:
        return [TextContentRead(text=TextValueRead(value=message.content))]
    return [
        ImageURLContentRead(image_url=ImageURLRead(url=p["url"], detail=p.get("detail", "auto")))
        if p.get("type") == "image"
        else TextContentRead(text=TextValueRead(value=p.get("text", "")))
        for p in parts
    ]


class OpenAIMessageRead(ResponseModel):
    id: str
    object: Literal["thread.message"] = "thread.message"
    created_at: int
    thread_id: str
    role: Literal["user", "assistant"]
    content: list[TextContentRead | ImageURLContentRead]
    status: Literal["in_progress", "incomplete", "completed"] = "completed"
    assistant_id: str | None
    run_id: str | None = None
    attachments: list[Any] = Field(default_factory=list)
    metadata: dict[str, str]
    completed_at: int | None
    incomplete_at: int | None = None
    incomplete_details: dict[str, Any] | None = None

    @classmethod
    def of(cls, message: Message) -> OpenAIMessageRead:
        created = unix(message.created_at)
        return cls(
            id=message.id,
            created_at=created,
            thread_id=message.thread_id,
            role="assistant" if message.role == "assistant" else "user",
            content=_message_content(message),
            assistant_id=message.assistant_id,
            # A run is a turn: the messages it saved carry its (response) id.
            run_id=message.response_id,
            metadata=string_metadata(message.metadata_),
            completed_at=created,
        )


# `after`/`before` of the OpenAI-shaped lists: any id string up to 64 characters (as the OpenAI APIs take them).
# Cursors are ids: anything outside the id alphabet names no row and is refused before it reaches the database.
OpenAICursorQuery = Annotated[str | None, Query(max_length=64, pattern=ID_PATTERN)]


def openai_page_query(
    limit: LimitQuery = 20,
    order: OrderQuery = "desc",
    after: OpenAICursorQuery = None,
    before: OpenAICursorQuery = None,
) -> PageRequest:
    """The page parameters of the Assistants v2 lists (messages, runs)."""
    return PageRequest(limit=limit, order=order, after=after, before=before)


OpenAIPageQueryDep = Annotated[PageRequest, Depends(openai_page_query)]


class OpenAIList(ResponseModel):
    object: Literal["list"] = "list"
    first_id: str | None
    last_id: str | None
    has_more: bool

    @classmethod
    def of_data(cls, data: Sequence[Identified], has_more: bool) -> Self:
        """The envelope around one page's serialized items."""
        first_id, last_id = end_ids(data)
        return cls(data=data, first_id=first_id, last_id=last_id, has_more=has_more)


class OpenAIMessageList(OpenAIList):
    data: list[OpenAIMessageRead]

    @classmethod
    def of(cls, page: Page[Message]) -> OpenAIMessageList:
        return cls.of_data([OpenAIMessageRead.of(m) for m in page.items], page.has_more)


class OpenAIDeletedRead(ResponseModel):
    """`thread.deleted`, `thread.message.deleted`, `conversation.deleted`."""

    id: str
    object: str
    deleted: bool = True


# ---- Conversations: requests -------------------------------------------------------------------------------


def _string_field(item: dict[str, Any], key: str, param: str, kind: str, max_length: int | None = None) -> str:
    value = item.get(key)
    if not isinstance(value, str) or (max_length is not None and not 1 <= len(value) <= max_length):
        size = f" of 1 to {max_length} characters" if max_length is not None else ""
        raise ValidationFailed(
            f"A '{kind}' item needs '{key}' as a string{size}.", code="invalid_type", param=f"{param}.{key}"
        )
    return value


_ITEM_STATUSES = ("in_progress", "completed", "incomplete")


def _status(item: dict[str, Any], param: str) -> str:
    status = item.get("status") or "completed"
    if status not in _ITEM_STATUSES:
        raise ValidationFailed(
            f"Invalid status '{status}': use one of {', '.join(_ITEM_STATUSES)}.",
            code="invalid_value",
            param=f"{param}.status",
        )
    return str(status)


def _tool_item(item: dict[str, Any], kind: str, param: str) -> NewMessage:
    """A `function_call` (its arguments are the searchable text) or a `function_call_output` (its output is)."""
    call_id = _string_field(item, "call_id", param, kind, max_length=128)
    status = _status(item, param)
    if kind == "function_call":
        name = _string_field(item, "name", param, kind, max_length=128)
        arguments = _string_field(item, "arguments", param, kind)
        return NewMessage(
            role=role_of("function_call"),
            content=arguments,
            type="function_call",
            call_id=call_id,
            payload={"name": name, "status": status},
        )
    output = item.get("output")
    payload: dict[str, Any] = {"status": status}
    if isinstance(output, list):
        text = _parts_text(output, f"{param}.output", _TEXT_PARTS_ITEMS)
        payload["output"] = output  # read back as given
    elif isinstance(output, str):
        text = output
    else:
        raise ValidationFailed(
            "A 'function_call_output' item needs 'output' as a string or a list of text parts.",
            code="invalid_type",
            param=f"{param}.output",
        )
    return NewMessage(
        role=role_of("function_call_output"),
        content=text,
        type="function_call_output",
        call_id=call_id,
        payload=payload,
    )


def _reasoning_item(item: dict[str, Any], param: str) -> NewMessage:
    """A `reasoning` item, kept as sent (docs/items.md): `summary` (summary_text parts), `content` (reasoning_text
    parts), `encrypted_content`, `status`; its readable text is the searchable `content`."""
    payload: dict[str, Any] = {}
    for key, part_type in (("summary", "summary_text"), ("content", "reasoning_text")):
        parts = item.get(key)
        if parts is None and key == "content":
            continue
        if not isinstance(parts, list):
            raise ValidationFailed(
                f"A 'reasoning' item needs '{key}' as a list of {part_type} parts.",
                code="invalid_type",
                param=f"{param}.{key}",
            )
        for i, part in enumerate(parts):
            if not isinstance(part, dict) or part.get("type") != part_type or not isinstance(part.get("text"), str):
                raise ValidationFailed(
                    f"Each '{key}' part is {{'type': '{part_type}', 'text': str}}.",
                    code="invalid_type",
                    param=f"{param}.{key}.{i}",
                )
        payload[key] = [{"type": part_type, "text": p["text"]} for p in parts]
    encrypted = item.get("encrypted_content")
    if encrypted is not None and not isinstance(encrypted, str):
        raise ValidationFailed(
            "'encrypted_content' is a string.", code="invalid_type", param=f"{param}.encrypted_content"
        )
    payload["encrypted_content"] = encrypted
    payload["status"] = _status(item, param) if item.get("status") is not None else None
    return NewMessage(role=role_of("reasoning"), content=reasoning_text(payload), type="reasoning", payload=payload)


def new_item(item: Any, param: str) -> NewMessage:
    """A conversation (or Responses input) item to store: a message (text and images), a function call, its
    output, or reasoning. Other OpenAI item types are a 400 `unsupported_item_type` naming the type."""
    if not isinstance(item, dict):
        raise ValidationFailed("Each item is an object.", code="invalid_type", param=param)
    kind = item.get("type", "message")
    if kind in ("function_call", "function_call_output"):
        return _tool_item(item, kind, param)
    if kind == "compaction":
        # A summary sent back (docs/compaction.md): Threadline's `encrypted_content` is the readable summary.
        summary = _string_field(item, "encrypted_content", param, kind)
        if not summary.strip():
            raise ValidationFailed(
                "A 'compaction' item needs a non-empty 'encrypted_content'.",
                code="invalid_value",
                param=f"{param}.encrypted_content",
            )
        return NewMessage(role=role_of("compaction"), content=summary, type="compaction")
    if kind == "compaction_trigger":
        raise ValidationFailed(
            "A 'compaction_trigger' item must be the last input item of a response.",
            code="invalid_compaction_trigger",
            param=f"{param}.type",
        )
    if kind == "reasoning":
        return _reasoning_item(item, param)
    if kind != "message":
        raise ValidationFailed(
            f"Items of type '{kind}' are not supported: Threadline stores message, function_call, "
            "function_call_output, reasoning and compaction items.",
            code="unsupported_item_type",
            param=f"{param}.type",
        )
    role = item.get("role")
    if not isinstance(role, str) or role not in _CONVERSATION_ROLES:
        raise ValidationFailed(
            f"Invalid role '{role}': use one of user, assistant, system, developer.",
            code="invalid_role",
            param=f"{param}.role",
        )
    content = item.get("content")
    if not isinstance(content, str | list):
        raise ValidationFailed(
            "'content' is a string or a list of parts.", code="invalid_type", param=f"{param}.content"
        )
    text, parts = _content(content, f"{param}.content", _TEXT_PARTS_ITEMS, image="input_image")
    payload = {"content": list(parts)} if parts else None
    return NewMessage(role=_CONVERSATION_ROLES[role], content=text, payload=payload)


class ConversationCreate(OpenAIRequest):
    items: list[Any] | None = Field(default=None, max_length=20)
    metadata: StringMetadata | None = None

    def new_messages(self) -> list[NewMessage]:
        return [new_item(item, f"items.{i}") for i, item in enumerate(self.items or [])]


class ConversationUpdate(OpenAIRequest):
    # Required by the SDK's signature; `null` clears it.
    metadata: StringMetadata | None


class ConversationItemsCreate(OpenAIRequest):
    items: list[Any] = Field(min_length=1, max_length=20)

    def new_messages(self) -> list[NewMessage]:
        return [new_item(item, f"items.{i}") for i, item in enumerate(self.items)]


# ---- Conversations: objects --------------------------------------------------------------------------------


class ConversationRead(ResponseModel):
    id: str
    object: Literal["conversation"] = "conversation"
    created_at: int
    metadata: dict[str, Any]

    @classmethod
    def of(cls, thread: Thread) -> ConversationRead:
        return cls(id=thread.id, created_at=unix(thread.created_at), metadata=dict(thread.metadata_))


class InputTextRead(ResponseModel):
    type: Literal["input_text"] = "input_text"
    text: str


class OutputTextRead(ResponseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class InputImageRead(ResponseModel):
    type: Literal["input_image"] = "input_image"
    image_url: str
    detail: Literal["auto", "low", "high"] = "auto"
    file_id: None = None


class ConversationItemRead(ResponseModel):
    """A stored message as a conversation `message` item (user/system text in, assistant text out)."""

    type: Literal["message"] = "message"
    id: str
    role: Literal["user", "assistant", "system"]
    status: Literal["completed"] = "completed"
    content: list[InputTextRead | OutputTextRead | InputImageRead]

    @classmethod
    def of(cls, message: Message) -> ConversationItemRead:
        role: Literal["user", "assistant", "system"] = (
            "assistant" if message.role == "assistant" else "system" if message.role == "system" else "user"
        )

        def text(value: str) -> InputTextRead | OutputTextRead:
            return OutputTextRead(text=value) if role == "assistant" else InputTextRead(text=value)

        parts = parts_of(message.payload)
        if not parts:
            return cls(id=message.id, role=role, content=[text(message.content)])
        content: list[InputTextRead | OutputTextRead | InputImageRead] = [
            InputImageRead(image_url=p["url"], detail=p.get("detail", "auto"))
            if p.get("type") == "image"
            else text(p.get("text", ""))
            for p in parts
        ]
        return cls(id=message.id, role=role, content=content)


class FunctionCallItemRead(ResponseModel):
    """A stored `function_call` item (Responses output, conversation item)."""

    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"] = "completed"


class FunctionCallOutputItemRead(ResponseModel):
    type: Literal["function_call_output"] = "function_call_output"
    id: str
    call_id: str
    output: str | list[Any]
    status: Literal["in_progress", "completed", "incomplete"] = "completed"


class CompactionItemRead(ResponseModel):
    """A stored `compaction` item: `encrypted_content` is its summary, readable (Threadline does not encrypt it;
    docs/compaction.md); `created_by` the model that wrote it."""

    type: Literal["compaction"] = "compaction"
    id: str
    encrypted_content: str
    created_by: str | None = None


class SummaryTextRead(ResponseModel):
    type: Literal["summary_text"] = "summary_text"
    text: str


class ReasoningTextRead(ResponseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class ReasoningItemRead(ResponseModel):
    """A stored `reasoning` item, as it was sent or as the upstream produced it."""

    type: Literal["reasoning"] = "reasoning"
    id: str
    summary: list[SummaryTextRead]
    content: list[ReasoningTextRead] | None = None
    encrypted_content: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    @classmethod
    def of_payload(cls, item_id: str, payload: Mapping[str, Any]) -> ReasoningItemRead:
        content = payload.get("content")
        return cls(
            id=item_id,
            summary=[SummaryTextRead(text=p["text"]) for p in payload.get("summary") or []],
            content=None if content is None else [ReasoningTextRead(text=p["text"]) for p in content],
            encrypted_content=payload.get("encrypted_content"),
            status=payload.get("status"),
        )


ItemRead = (
    ConversationItemRead | FunctionCallItemRead | FunctionCallOutputItemRead | ReasoningItemRead | CompactionItemRead
)


def item_of(message: Message) -> ItemRead:
    """A stored item in the OpenAI item shape of its type."""
    payload = message.payload or {}
    if message.type == "reasoning":
        return ReasoningItemRead.of_payload(message.id, payload)
    status = payload.get("status", "completed")
    if message.type == "function_call":
        return FunctionCallItemRead(
            id=message.id,
            call_id=message.call_id or "",
            name=str(payload.get("name", "")),
            arguments=message.content,
            status=status,
        )
    if message.type == "function_call_output":
        output = payload.get("output")
        return FunctionCallOutputItemRead(
            id=message.id,
            call_id=message.call_id or "",
            output=output if isinstance(output, list) else message.content,
            status=status,
        )
    if message.type == "compaction":
        return CompactionItemRead(id=message.id, encrypted_content=message.content, created_by=message.model)
    return ConversationItemRead.of(message)


class ConversationItemList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ItemRead]
    first_id: str | None
    last_id: str | None
    has_more: bool

    @classmethod
    def of(cls, messages: list[Message], has_more: bool = False) -> ConversationItemList:
        data = [item_of(m) for m in messages]
        first_id, last_id = end_ids(data)
        return cls(data=data, first_id=first_id, last_id=last_id, has_more=has_more)
