"""Message history of a thread: page, append, edit (audited), delete."""

from __future__ import annotations

from fastapi import APIRouter

from threadline.api.deps import OrganizationDep, PrincipalDep, SessionDep, SettingsDep
from threadline.api.idempotency import Idempotent
from threadline.api.schemas.freddy import (
    Deleted,
    MessageCreate,
    MessageEditList,
    MessageEditRead,
    MessageIdPath,
    MessageList,
    MessageRead,
    MessagesDeleted,
    MessageUpdate,
    PageQueryDep,
    ThreadIdPath,
)
from threadline.api.statuses import CONFLICT
from threadline.domain.messages import NewMessage
from threadline.services import messages

router = APIRouter(prefix="/v1/threads/{thread_id}/messages", tags=["messages"])


@router.get("", response_model=MessageList)
async def list_messages(
    thread_id: ThreadIdPath,
    session: SessionDep,
    organization_id: OrganizationDep,
    page: PageQueryDep,
) -> MessageList:
    return MessageList.of(await messages.list_messages(session, organization_id, thread_id, page), page.limit)


@router.post("", response_model=MessageRead, dependencies=[Idempotent], responses=CONFLICT)
async def add_message(
    thread_id: ThreadIdPath, body: MessageCreate, session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> MessageRead:
    message = await messages.add_message(
        session,
        settings,
        principal.organization(body.organization_id),
        thread_id,
        NewMessage(role=body.role, content=body.text, metadata=body.metadata or {}),
        user_id=principal.user_id,
    )
    return MessageRead.of(message)


@router.delete("", response_model=MessagesDeleted, responses=CONFLICT)
async def delete_all_messages(
    thread_id: ThreadIdPath, session: SessionDep, organization_id: OrganizationDep
) -> MessagesDeleted:
    count = await messages.delete_all_messages(session, organization_id, thread_id)
    return MessagesDeleted(thread_id=thread_id, deleted_count=count)


@router.get("/{message_id}", response_model=MessageRead)
async def get_message(
    thread_id: ThreadIdPath, message_id: MessageIdPath, session: SessionDep, organization_id: OrganizationDep
) -> MessageRead:
    return MessageRead.of(await messages.get_message(session, organization_id, thread_id, message_id))


@router.patch("/{message_id}", response_model=MessageRead, responses=CONFLICT)
async def update_message(
    thread_id: ThreadIdPath,
    message_id: MessageIdPath,
    body: MessageUpdate,
    session: SessionDep,
    principal: PrincipalDep,
) -> MessageRead:
    message = await messages.update_message(
        session,
        principal.organization(body.organization_id),
        thread_id,
        message_id,
        body.model_dump(exclude_unset=True, exclude={"organization_id"}),
        edited_by=principal.user_id,
    )
    return MessageRead.of(message)


@router.get("/{message_id}/edits", response_model=MessageEditList)
async def list_message_edits(
    thread_id: ThreadIdPath, message_id: MessageIdPath, session: SessionDep, organization_id: OrganizationDep
) -> MessageEditList:
    message, edits = await messages.message_edits(session, organization_id, thread_id, message_id)
    return MessageEditList(message=MessageRead.of(message), data=[MessageEditRead.of(e) for e in edits])


@router.delete("/{message_id}", response_model=Deleted, responses=CONFLICT)
async def delete_message(
    thread_id: ThreadIdPath, message_id: MessageIdPath, session: SessionDep, organization_id: OrganizationDep
) -> Deleted:
    message = await messages.delete_message(session, organization_id, thread_id, message_id)
    return Deleted(id=message.id, object="thread.message.deleted")
