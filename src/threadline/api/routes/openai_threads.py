"""Assistants v2 threads and messages: the OpenAI shape of /v1/threads… (docs/surfaces.md, "one path, two shapes").

Routing by header: these routes use `AssistantsRoute`, which matches only requests carrying
`OpenAI-Beta: assistants=v2` (ASGI lower-cases header names, so any spelling works). The router is included
before the Freddy routers, so a request with the header lands here and one without falls through to the Freddy
route of the same path. Hidden from the OpenAPI schema, which can hold only one operation per path and method.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Scope

from threadline.api.deps import OrganizationDep, PrincipalDep, SessionDep, SettingsDep
from threadline.api.idempotency import Idempotent
from threadline.api.schemas.freddy import MessageIdPath, ThreadIdPath
from threadline.api.schemas.openai import (
    ASSISTANTS_ROLES,
    OpenAICursorQuery,
    OpenAIDeletedRead,
    OpenAIMessageCreate,
    OpenAIMessageList,
    OpenAIMessageRead,
    OpenAIMessageUpdate,
    OpenAIPageQueryDep,
    OpenAIThreadCreate,
    OpenAIThreadRead,
    OpenAIThreadUpdate,
)
from threadline.api.statuses import CONFLICT
from threadline.services import messages, threads


def wants_assistants_v2(scope: Scope) -> bool:
    """Whether the request carries `OpenAI-Beta: assistants=v2` (the header may list several betas)."""
    for name, value in scope.get("headers", ()):
        if name == b"openai-beta":
            betas = {beta.strip().lower() for beta in value.decode("latin-1").split(",")}
            if "assistants=v2" in betas:
                return True
    return False


class AssistantsRoute(APIRoute):
    """A route that exists only for requests in the Assistants v2 dialect."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or not wants_assistants_v2(scope):
            return Match.NONE, {}
        return super().matches(scope)


router = APIRouter(prefix="/v1/threads", tags=["openai"], route_class=AssistantsRoute, include_in_schema=False)


@router.post("", response_model=OpenAIThreadRead, dependencies=[Idempotent], responses=CONFLICT)
async def create_thread(
    body: OpenAIThreadCreate,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    organization_id: OrganizationDep,
) -> OpenAIThreadRead:
    thread, _ = await messages.create_thread_with_messages(
        session, settings, principal, organization_id, body.new_messages(), metadata=body.metadata
    )
    return OpenAIThreadRead.of(thread)


@router.get("/{thread_id}", response_model=OpenAIThreadRead)
async def get_thread(
    thread_id: ThreadIdPath, session: SessionDep, organization_id: OrganizationDep
) -> OpenAIThreadRead:
    return OpenAIThreadRead.of(await threads.get_thread(session, organization_id, thread_id))


@router.post("/{thread_id}", response_model=OpenAIThreadRead, responses=CONFLICT)
async def update_thread(
    thread_id: ThreadIdPath,
    body: OpenAIThreadUpdate,
    session: SessionDep,
    principal: PrincipalDep,
    organization_id: OrganizationDep,
) -> OpenAIThreadRead:
    thread = await threads.update_thread(session, principal, organization_id, thread_id, body.changes())
    return OpenAIThreadRead.of(thread)


@router.delete("/{thread_id}", response_model=OpenAIDeletedRead)
async def delete_thread(
    thread_id: ThreadIdPath, session: SessionDep, organization_id: OrganizationDep
) -> OpenAIDeletedRead:
    thread = await threads.delete_thread(session, organization_id, thread_id)
    return OpenAIDeletedRead(id=thread.id, object="thread.deleted")


@router.post("/{thread_id}/messages", response_model=OpenAIMessageRead, dependencies=[Idempotent], responses=CONFLICT)
async def create_message(
    thread_id: ThreadIdPath,
    body: OpenAIMessageCreate,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    organization_id: OrganizationDep,
) -> OpenAIMessageRead:
    message = await messages.add_message(
        session, settings, organization_id, thread_id, body.new_message(), user_id=principal.user_id
    )
    return OpenAIMessageRead.of(message)


@router.get("/{thread_id}/messages", response_model=OpenAIMessageList)
async def list_messages(
    thread_id: ThreadIdPath,
    session: SessionDep,
    organization_id: OrganizationDep,
    page: OpenAIPageQueryDep,
    run_id: OpenAICursorQuery = None,
) -> OpenAIMessageList:
    found = await messages.list_messages(
        session,
        organization_id,
        thread_id,
        page,
        roles=ASSISTANTS_ROLES,
        # A run is a response: its messages carry its id.
        response_id=run_id,
    )
    return OpenAIMessageList.of(found)


@router.get("/{thread_id}/messages/{message_id}", response_model=OpenAIMessageRead)
async def get_message(
    thread_id: ThreadIdPath, message_id: MessageIdPath, session: SessionDep, organization_id: OrganizationDep
) -> OpenAIMessageRead:
    message = await messages.get_message(session, organization_id, thread_id, message_id, roles=ASSISTANTS_ROLES)
    return OpenAIMessageRead.of(message)


@router.post("/{thread_id}/messages/{message_id}", response_model=OpenAIMessageRead, responses=CONFLICT)
async def update_message(
    thread_id: ThreadIdPath,
    message_id: MessageIdPath,
    body: OpenAIMessageUpdate,
    session: SessionDep,
    principal: PrincipalDep,
    organization_id: OrganizationDep,
) -> OpenAIMessageRead:
    message = await messages.update_message(
        session,
        organization_id,
        thread_id,
        message_id,
        body.changes(),
        edited_by=principal.user_id,
        roles=ASSISTANTS_ROLES,
    )
    return OpenAIMessageRead.of(message)


@router.delete("/{thread_id}/messages/{message_id}", response_model=OpenAIDeletedRead, responses=CONFLICT)
async def delete_message(
    thread_id: ThreadIdPath, message_id: MessageIdPath, session: SessionDep, organization_id: OrganizationDep
) -> OpenAIDeletedRead:
    message = await messages.delete_message(session, organization_id, thread_id, message_id, roles=ASSISTANTS_ROLES)
    return OpenAIDeletedRead(id=message.id, object="thread.message.deleted")
