"""Assistants: a stored configuration that threads bind to with `assistant_id` (docs/freddy-spec.md)."""

from __future__ import annotations

from fastapi import APIRouter

from threadline.api.deps import ModelsDep, OrganizationDep, PrincipalDep, SessionDep
from threadline.api.idempotency import Idempotent
from threadline.api.schemas.assistants import AssistantCreate, AssistantList, AssistantRead, AssistantUpdate
from threadline.api.schemas.freddy import Deleted, IdPath, PageQueryDep
from threadline.api.statuses import REFERENCES
from threadline.services import assistants

router = APIRouter(prefix="/v1/assistants", tags=["assistants"])


@router.post("", response_model=AssistantRead, dependencies=[Idempotent], responses=REFERENCES)
async def create_assistant(
    body: AssistantCreate, session: SessionDep, principal: PrincipalDep, models: ModelsDep
) -> AssistantRead:
    values = body.values()
    assistant = await assistants.create_assistant(
        session, principal, principal.organization(body.organization_id), values, models
    )
    return AssistantRead.of(assistant)


@router.get("", response_model=AssistantList)
async def list_assistants(session: SessionDep, organization_id: OrganizationDep, page: PageQueryDep) -> AssistantList:
    return AssistantList.of(await assistants.list_assistants(session, organization_id, page), page.limit)


@router.get("/{assistant_id}", response_model=AssistantRead)
async def get_assistant(assistant_id: IdPath, session: SessionDep, organization_id: OrganizationDep) -> AssistantRead:
    return AssistantRead.of(await assistants.get_assistant(session, organization_id, assistant_id))


@router.post("/{assistant_id}", response_model=AssistantRead)
@router.patch("/{assistant_id}", response_model=AssistantRead)
async def update_assistant(
    assistant_id: IdPath, body: AssistantUpdate, session: SessionDep, principal: PrincipalDep, models: ModelsDep
) -> AssistantRead:
    changes = body.values()
    assistant = await assistants.update_assistant(
        session, principal.organization(body.organization_id), assistant_id, changes, models
    )
    return AssistantRead.of(assistant)


@router.delete("/{assistant_id}", response_model=Deleted)
async def delete_assistant(assistant_id: IdPath, session: SessionDep, organization_id: OrganizationDep) -> Deleted:
    assistant = await assistants.delete_assistant(session, organization_id, assistant_id)
    return Deleted(id=assistant.id, object="assistant.deleted")
