"""OpenAI Conversations API: a conversation is a thread (new ones get `conv_` ids and kind "conversation"), its
items are the thread's messages. Any thread of the organization can be used as a conversation and the other way
round: the Freddy API sees the same rows."""

from __future__ import annotations

from fastapi import APIRouter

from threadline.api.deps import OrganizationDep, PrincipalDep, SessionDep, SettingsDep
from threadline.api.idempotency import Idempotent
from threadline.api.schemas.common import LimitQuery, OrderQuery
from threadline.api.schemas.freddy import MessageIdPath, ThreadIdPath
from threadline.api.schemas.openai import (
    ConversationCreate,
    ConversationItemList,
    ConversationItemsCreate,
    ConversationRead,
    ConversationUpdate,
    ItemRead,
    OpenAICursorQuery,
    OpenAIDeletedRead,
    item_of,
)
from threadline.api.statuses import CONFLICT
from threadline.ids import new_id
from threadline.services import messages, threads
from threadline.storage.repositories.pagination import PageRequest

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])


@router.post("", response_model=ConversationRead, dependencies=[Idempotent], responses=CONFLICT)
async def create_conversation(
    body: ConversationCreate,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    organization_id: OrganizationDep,
) -> ConversationRead:
    thread, _ = await messages.create_thread_with_messages(
        session,
        settings,
        principal,
        organization_id,
        body.new_messages(),
        thread_id=new_id("conv"),
        metadata=body.metadata,
        kind="conversation",
    )
    return ConversationRead.of(thread)


@router.get("/{conversation_id}", response_model=ConversationRead)
async def get_conversation(
    conversation_id: ThreadIdPath, session: SessionDep, organization_id: OrganizationDep
) -> ConversationRead:
    return ConversationRead.of(await threads.get_thread(session, organization_id, conversation_id))


@router.post("/{conversation_id}", response_model=ConversationRead, responses=CONFLICT)
async def update_conversation(
    conversation_id: ThreadIdPath,
    body: ConversationUpdate,
    session: SessionDep,
    principal: PrincipalDep,
    organization_id: OrganizationDep,
) -> ConversationRead:
    thread = await threads.update_thread(
        session, principal, organization_id, conversation_id, {"metadata": body.metadata or {}}
    )
    return ConversationRead.of(thread)


@router.delete("/{conversation_id}", response_model=OpenAIDeletedRead)
async def delete_conversation(
    conversation_id: ThreadIdPath, session: SessionDep, organization_id: OrganizationDep
) -> OpenAIDeletedRead:
    thread = await threads.delete_thread(session, organization_id, conversation_id)
    return OpenAIDeletedRead(id=thread.id, object="conversation.deleted")


@router.post(
    "/{conversation_id}/items", response_model=ConversationItemList, dependencies=[Idempotent], responses=CONFLICT
)
async def create_items(
    conversation_id: ThreadIdPath,
    body: ConversationItemsCreate,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    organization_id: OrganizationDep,
) -> ConversationItemList:
    rows = await messages.add_messages(
        session, settings, organization_id, conversation_id, body.new_messages(), user_id=principal.user_id
    )
    return ConversationItemList.of(rows)


@router.get("/{conversation_id}/items", response_model=ConversationItemList)
async def list_items(
    conversation_id: ThreadIdPath,
    session: SessionDep,
    organization_id: OrganizationDep,
    limit: LimitQuery = 20,
    order: OrderQuery = "desc",
    after: OpenAICursorQuery = None,
) -> ConversationItemList:
    # `include[]` asks for tool outputs, images and logprobs: text items have none, so it changes nothing.
    page = await messages.list_messages(
        session, organization_id, conversation_id, PageRequest(limit=limit, order=order, after=after)
    )
    return ConversationItemList.of(page.items, page.has_more)


@router.get("/{conversation_id}/items/{item_id}", response_model=ItemRead)
async def get_item(
    conversation_id: ThreadIdPath, item_id: MessageIdPath, session: SessionDep, organization_id: OrganizationDep
) -> ItemRead:
    return item_of(await messages.get_message(session, organization_id, conversation_id, item_id))


@router.delete("/{conversation_id}/items/{item_id}", response_model=ConversationRead, responses=CONFLICT)
async def delete_item(
    conversation_id: ThreadIdPath, item_id: MessageIdPath, session: SessionDep, organization_id: OrganizationDep
) -> ConversationRead:
    thread = await messages.delete_message_of_thread(session, organization_id, conversation_id, item_id)
    return ConversationRead.of(thread)
