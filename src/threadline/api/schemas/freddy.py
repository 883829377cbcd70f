"""Freddy-shaped wire schemas (docs/surfaces.md): snake_case, ISO-8601 timestamps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, Self

from fastapi import Depends, Path, Query
from pydantic import Field, StringConstraints, model_validator

from threadline.api.schemas.common import (
    ID_PATTERN,
    Identified,
    LimitQuery,
    MessageText,
    Metadata,
    OrderQuery,
    RequestModel,
    ResponseModel,
    ThreadIdText,
    Title,
    end_ids,
    iso,
)
from threadline.domain.clock import utcnow
from threadline.domain.leases import thread_status
from threadline.storage.repositories.pagination import Page, PageRequest
from threadline.storage.tables import Message, MessageEdit, Thread
from threadline.turns.naming import DEFAULT_MAX_OUTPUT_TOKENS, DEFAULT_TEMPERATURE, NameRequest

ThreadStateField = Literal["open", "locked", "archived"]

# Ids in paths and query strings (`ID_PATTERN`, common.py): anything else can name no row, and is refused as a
# 400 before it reaches a database that might choke on it.
# Free-text filters (workflow_id): printable characters only.
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]+$"

ThreadIdPath = Annotated[str, Path(max_length=128, pattern=ID_PATTERN)]
MessageIdPath = Annotated[str, Path(max_length=64, pattern=ID_PATTERN)]
IdPath = Annotated[str, Path(max_length=128, pattern=ID_PATTERN)]  # assistants, responses
CursorQuery = Annotated[str | None, Query(max_length=128, pattern=ID_PATTERN)]
SpaceId = Annotated[str, StringConstraints(max_length=128)]


def page_query(
    limit: LimitQuery = 20,
    order: OrderQuery = "desc",
    after: CursorQuery = None,
    before: CursorQuery = None,
    include_total: bool = False,
) -> PageRequest:
    """The page parameters of a Freddy list (docs/freddy-spec.md); camelCase spellings are normalized earlier."""
    return PageRequest(limit=limit, order=order, after=after, before=before, include_total=include_total)


PageQueryDep = Annotated[PageRequest, Depends(page_query)]


class ThreadCreate(RequestModel):
    id: ThreadIdText | None = None
    metadata: Metadata | None = None
    assistant_id: str | None = Field(default=None, max_length=128)
    visible_in_ui: bool | None = None
    title: Title | None = None
    organization_id: str | None = Field(default=None, max_length=64)
    workflow_id: str | None = Field(default=None, max_length=128)
    space_ids: list[SpaceId] | None = Field(default=None, max_length=100)


class ThreadUpdate(RequestModel):
    metadata: Metadata | None = None
    title: Title | None = None
    assistant_id: str | None = Field(default=None, max_length=128)
    visible_in_ui: bool | None = None
    is_pinned: bool | None = None
    state: ThreadStateField | None = None
    workflow_id: str | None = Field(default=None, max_length=128)
    space_ids: list[SpaceId] | None = Field(default=None, max_length=100)
    organization_id: str | None = Field(default=None, max_length=64)


class MetadataPatch(RequestModel):
    metadata: Metadata
    organization_id: str | None = Field(default=None, max_length=64)


class ThreadRename(RequestModel):
    title: Title | None
    organization_id: str | None = Field(default=None, max_length=64)


class ThreadNameGenerate(RequestModel):
    """POST /v1/threads/{id}/generateName: every field is optional."""

    model: str | None = Field(default=None, max_length=200)
    organization_id: str | None = Field(default=None, max_length=64)
    stream: bool = False
    max_output_tokens: int = Field(default=DEFAULT_MAX_OUTPUT_TOKENS, ge=1, le=256)
    temperature: float | None = Field(default=DEFAULT_TEMPERATURE, ge=0, le=2)

    def to_request(self, organization_id: str, thread_id: str) -> NameRequest:
        return NameRequest(
            organization_id=organization_id,
            thread_id=thread_id,
            model=self.model,
            max_output_tokens=self.max_output_tokens,
            temperature=self.temperature,
        )


class TextPart(RequestModel):
    text: MessageText


class MessageCreate(RequestModel):
    role: Literal["user", "assistant", "system"] = "user"
    content: MessageText | None = None
    texts: list[TextPart] | None = Field(default=None, min_length=1, max_length=100)
    metadata: Metadata | None = None
    organization_id: str | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _one_body(self) -> MessageCreate:
        if (self.content is None) == (self.texts is None):
            raise ValueError("give the message as 'content' (a string) or 'texts' ([{text}]), not both")
        return self

    @property
    def text(self) -> str:
        return self.content if self.content is not None else "".join(p.text for p in self.texts or [])


class MessageUpdate(RequestModel):
    content: MessageText | None = None
    metadata: Metadata | None = None
    organization_id: str | None = Field(default=None, max_length=64)


class ThreadRead(ResponseModel):
    id: str
    object: Literal["thread"] = "thread"
    created_at: str
    updated_at: str
    last_message_at: str | None
    metadata: dict[str, Any]
    assistant_id: str | None
    organization_id: str
    user_id: str | None
    title: str | None
    status: str
    state: str
    message_count: int
    visible_in_ui: bool
    last_model_used: str | None
    is_pinned: bool
    pinned_at: str | None
    space_ids: list[Any]
    workflow_id: str | None
    deleted_at: str | None = None

    @classmethod
    def of(cls, thread: Thread) -> ThreadRead:
        return cls(
            id=thread.id,
            created_at=iso(thread.created_at) or "",
            updated_at=iso(thread.updated_at) or "",
            last_message_at=iso(thread.last_message_at),
            metadata=thread.metadata_,
            assistant_id=thread.assistant_id,
            organization_id=thread.organization_id,
            user_id=thread.user_id,
            title=thread.title,
            # Not the stored column alone: a thread whose turn's server died reads inactive once the lease expired.
            status=thread_status(thread.status, thread.lease_expires_at, utcnow()),
            state=thread.state,
            message_count=thread.message_count,
            visible_in_ui=thread.visible_in_ui,
            last_model_used=thread.last_model_used,
            is_pinned=thread.is_pinned,
            pinned_at=iso(thread.pinned_at),
            space_ids=thread.space_ids,
            workflow_id=thread.workflow_id,
            deleted_at=iso(thread.deleted_at),
        )


class ListEnvelope(ResponseModel):
    object: Literal["list"] = "list"
    first_id: str | None
    last_id: str | None
    has_more: bool
    limit: int
    total: int | None = None

    @classmethod
    def of_data(cls, data: Sequence[Identified], page: Page[Any], limit: int, **fields: Any) -> Self:
        """The envelope around one page's serialized items (`fields`: what a subclass adds)."""
        first_id, last_id = end_ids(data)
        return cls(data=data, first_id=first_id, last_id=last_id, has_more=page.has_more, limit=limit, **fields)


class ThreadList(ListEnvelope):
    data: list[ThreadRead]

    @classmethod
    def of(cls, page: Page[Thread], limit: int) -> ThreadList:
        return cls.of_data([ThreadRead.of(t) for t in page.items], page, limit, total=page.total)


class TextRead(ResponseModel):
    text: str


class MessageRead(ResponseModel):
    """A thread item. `type` says which (docs/items.md): a `message`, a `function_call` (role `assistant`; `name`
    and `arguments`, which are also its `content`) or a `function_call_output` (role `tool`; `output`, also its
    `content`). `call_id` pairs a call with its output."""

    id: str
    object: Literal["thread.message"] = "thread.message"
    type: str = "message"
    thread_id: str
    role: str
    content: str
    texts: list[TextRead]
    metadata: dict[str, Any]
    created_at: str
    edited_at: str | None
    edit_count: int
    token_count: int | None
    model: str | None
    response_id: str | None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[Any] | None = None

    @classmethod
    def of(cls, message: Message) -> MessageRead:
        payload = message.payload or {}
        is_call, is_output = message.type == "function_call", message.type == "function_call_output"
        return cls(
            id=message.id,
            type=message.type,
            call_id=message.call_id,
            name=payload.get("name") if is_call else None,
            arguments=message.content if is_call else None,
            output=payload.get("output", message.content) if is_output else None,
            thread_id=message.thread_id,
            role=message.role,
            content=message.content,
            texts=[TextRead(text=message.content)],
            metadata=message.metadata_,
            created_at=iso(message.created_at) or "",
            edited_at=iso(message.edited_at),
            edit_count=message.edit_count,
            token_count=message.token_count,
            model=message.model,
            response_id=message.response_id,
        )


class MessageList(ListEnvelope):
    data: list[MessageRead]

    @classmethod
    def of(cls, page: Page[Message], limit: int) -> MessageList:
        return cls.of_data([MessageRead.of(m) for m in page.items], page, limit, total=page.total)


class MessageEditRead(ResponseModel):
    id: str
    object: Literal["thread.message.edit"] = "thread.message.edit"
    message_id: str
    previous_content: str
    previous_metadata: dict[str, Any]
    edited_by: str | None
    edited_at: str

    @classmethod
    def of(cls, edit: MessageEdit) -> MessageEditRead:
        return cls(
            id=edit.id,
            message_id=edit.message_id,
            previous_content=edit.previous_content,
            previous_metadata=edit.previous_metadata,
            edited_by=edit.edited_by,
            edited_at=iso(edit.edited_at) or "",
        )


class MessageEditList(ResponseModel):
    object: Literal["list"] = "list"
    message: MessageRead
    data: list[MessageEditRead]


class Deleted(ResponseModel):
    id: str
    object: str
    deleted: bool = True


class MessagesDeleted(ResponseModel):
    thread_id: str
    object: Literal["thread.messages.deleted"] = "thread.messages.deleted"
    deleted_count: int
