"""Freddy Threads API: /v1/threads and /v1/user/threads (docs/freddy-spec.md)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import StreamingResponse

from threadline.api.deps import (
    OrganizationDep,
    PrincipalDep,
    SessionDep,
    TurnPrincipalDep,
    TurnsDep,
)
from threadline.api.errors import error_body, status_of
from threadline.api.idempotency import Idempotent
from threadline.api.schemas.common import ID_PATTERN
from threadline.api.schemas.freddy import (
    TEXT_PATTERN,
    Deleted,
    MetadataPatch,
    PageQueryDep,
    ThreadCreate,
    ThreadIdPath,
    ThreadList,
    ThreadNameGenerate,
    ThreadRead,
    ThreadRename,
    ThreadUpdate,
)
from threadline.api.sse import EventFramer, sse_response
from threadline.api.statuses import CONFLICT, MODEL_CALL, REFERENCES, streamed
from threadline.services import threads
from threadline.storage.repositories.threads import ThreadFilter
from threadline.turns import naming
from threadline.turns.naming import NameDelta, NameDone, NameEvent

router = APIRouter(prefix="/v1", tags=["threads"])


class ThreadListQuery:
    """The list parameters of docs/freddy-spec.md (camelCase spellings are normalized before they get here)."""

    def __init__(
        self,
        page: PageQueryDep,
        assistant_id: Annotated[str | None, Query(max_length=128, pattern=ID_PATTERN)] = None,
        include_deleted: bool = False,
        visible_in_ui: bool = True,
        workflow_id: Annotated[str | None, Query(max_length=128, pattern=TEXT_PATTERN)] = None,
        is_pinned: bool | None = None,
    ) -> None:
        self.page = page
        self.assistant_id = assistant_id
        self.include_deleted = include_deleted
        self.visible_in_ui = visible_in_ui
        self.workflow_id = workflow_id
        self.is_pinned = is_pinned

    def filter(self, organization_id: str, user_id: str | None = None) -> ThreadFilter:
        return ThreadFilter(
            organization_id=organization_id,
            user_id=user_id,
            assistant_id=self.assistant_id,
            workflow_id=self.workflow_id,
            visible_in_ui=self.visible_in_ui,
            is_pinned=self.is_pinned,
            include_deleted=self.include_deleted,
        )


ListQueryDep = Annotated[ThreadListQuery, Depends()]


@router.post("/threads", response_model=ThreadRead, dependencies=[Idempotent], responses=CONFLICT | REFERENCES)
async def create_thread(
    session: SessionDep, principal: PrincipalDep, body: Annotated[ThreadCreate | None, Body()] = None
) -> ThreadRead:
    # Every field is optional (docs/freddy-spec.md), so is the body itself.
    body = body or ThreadCreate()
    thread = await threads.create_thread(
        session,
        principal,
        principal.organization(body.organization_id),
        thread_id=body.id,
        metadata=body.metadata,
        title=body.title,
        assistant_id=body.assistant_id,
        visible_in_ui=body.visible_in_ui,
        workflow_id=body.workflow_id,
        space_ids=body.space_ids,
    )
    return ThreadRead.of(thread)


@router.get("/threads", response_model=ThreadList)
async def list_threads(session: SessionDep, organization_id: OrganizationDep, query: ListQueryDep) -> ThreadList:
    page = await threads.list_threads(session, query.filter(organization_id), query.page)
    return ThreadList.of(page, query.page.limit)


@router.get("/user/threads", response_model=ThreadList)
async def list_user_threads(
    session: SessionDep, principal: PrincipalDep, organization_id: OrganizationDep, query: ListQueryDep
) -> ThreadList:
    page = await threads.list_threads(session, query.filter(organization_id, principal.user_id), query.page)
    return ThreadList.of(page, query.page.limit)


@router.get("/threads/{thread_id}", response_model=ThreadRead)
async def get_thread(thread_id: ThreadIdPath, session: SessionDep, organization_id: OrganizationDep) -> ThreadRead:
    return ThreadRead.of(await threads.get_thread(session, organization_id, thread_id))


@router.post("/threads/{thread_id}", response_model=ThreadRead, responses=CONFLICT | REFERENCES)
@router.patch("/threads/{thread_id}", response_model=ThreadRead, responses=CONFLICT | REFERENCES)
async def update_thread(
    thread_id: ThreadIdPath, body: ThreadUpdate, session: SessionDep, principal: PrincipalDep
) -> ThreadRead:
    changes = body.model_dump(exclude_unset=True, exclude={"organization_id"})
    thread = await threads.update_thread(
        session, principal, principal.organization(body.organization_id), thread_id, changes
    )
    return ThreadRead.of(thread)


@router.delete("/threads/{thread_id}", response_model=Deleted)
async def delete_thread(thread_id: ThreadIdPath, session: SessionDep, organization_id: OrganizationDep) -> Deleted:
    thread = await threads.delete_thread(session, organization_id, thread_id)
    return Deleted(id=thread.id, object="thread.deleted")


@router.patch("/threads/{thread_id}/metadata", response_model=ThreadRead, responses=CONFLICT)
async def patch_metadata(
    thread_id: ThreadIdPath, body: MetadataPatch, session: SessionDep, principal: PrincipalDep
) -> ThreadRead:
    thread = await threads.patch_metadata(
        session, principal.organization(body.organization_id), thread_id, body.metadata
    )
    return ThreadRead.of(thread)


@router.put("/threads/{thread_id}/rename", response_model=ThreadRead, responses=CONFLICT)
async def rename_thread(
    thread_id: ThreadIdPath, body: ThreadRename, session: SessionDep, principal: PrincipalDep
) -> ThreadRead:
    thread = await threads.rename_thread(session, principal.organization(body.organization_id), thread_id, body.title)
    return ThreadRead.of(thread)


@router.post(
    "/threads/{thread_id}/generateName",
    response_model=ThreadRead,
    dependencies=[Idempotent],
    responses=MODEL_CALL | streamed(["thread.name.delta", "thread.name.completed", "thread.name.failed"]),
)
async def generate_name(
    thread_id: ThreadIdPath,
    principal: TurnPrincipalDep,
    turns: TurnsDep,
    body: Annotated[ThreadNameGenerate | None, Body()] = None,
) -> ThreadRead | StreamingResponse:
    body = body or ThreadNameGenerate()
    request = body.to_request(principal.organization(body.organization_id), thread_id)
    if not body.stream:
        return ThreadRead.of(await naming.generate_name(turns, principal, request))
    # Errors found before the model is called (missing, archived, empty, unknown model…) answer as JSON errors.
    started = await naming.start_naming(turns, principal, request)
    return sse_response(_name_sse(naming.run_naming(turns, started)))


async def _name_sse(events: AsyncGenerator[NameEvent, None]) -> AsyncIterator[str]:
    """`thread.name.delta` while the title is generated, then `thread.name.completed` or `thread.name.failed`."""
    framer = EventFramer()
    # aclosing: a client that goes away ends the naming turn now (recorded as failed, nothing renamed).
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, NameDelta):
                yield framer.frame("thread.name.delta", {"delta": event.text})
            elif isinstance(event, NameDone) and event.error is not None:
                _, type_ = status_of(event.error)
                envelope = error_body(event.error.message, type_, event.error.code, event.error.param)
                yield framer.frame("thread.name.failed", envelope)
            elif isinstance(event, NameDone) and event.thread is not None:
                yield framer.frame(
                    "thread.name.completed", {"thread": ThreadRead.of(event.thread).model_dump(mode="json")}
                )
