"""Threads as data: fork a thread, export threads as JSON Lines, import an export (docs/threads-as-data.md)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import StreamingResponse

from threadline.api.deps import OrganizationDep, PrincipalDep, SessionDep, SessionmakerDep, SettingsDep
from threadline.api.schemas.common import ID_PATTERN
from threadline.api.schemas.freddy import TEXT_PATTERN, ThreadFork, ThreadIdPath, ThreadRead
from threadline.api.schemas.thread_data import ImportRead
from threadline.api.statuses import errors
from threadline.services import forks, thread_export, thread_import
from threadline.storage.repositories.threads import ThreadFilter

router = APIRouter(prefix="/v1", tags=["threads"])

# The body limit of this one route is its own (api/middleware.py, `max_import_bytes`).
IMPORT_PATH = "/v1/threads/import"
NDJSON = "application/x-ndjson"
_EXPORT_200: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON Lines (docs/export-format.md): per thread a header line, then its items in seq order.",
        "content": {NDJSON: {"schema": {"type": "string"}}},
    }
}
_IMPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The file itself: an export (application/x-ndjson) or ChatGPT's conversations.json "
        "(application/json).",
        "content": {
            NDJSON: {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
        },
    }
}


@router.post("/threads/{thread_id}/fork", response_model=ThreadRead, responses=errors(403))
async def fork_thread(
    thread_id: ThreadIdPath,
    session: SessionDep,
    principal: PrincipalDep,
    body: Annotated[ThreadFork | None, Body()] = None,
) -> ThreadRead:
    body = body or ThreadFork()
    thread = await forks.fork_thread(
        session,
        principal,
        principal.organization(body.organization_id),
        thread_id,
        message_id=body.message_id,
        title=body.title,
        metadata=body.metadata,
        visible_in_ui=body.visible_in_ui,
    )
    return ThreadRead.of(thread)


@router.get("/threads/export", response_class=StreamingResponse, responses=_EXPORT_200)
async def export_threads(
    maker: SessionmakerDep,
    organization_id: OrganizationDep,
    assistant_id: Annotated[str | None, Query(max_length=128, pattern=ID_PATTERN)] = None,
    include_deleted: bool = False,
    visible_in_ui: bool = True,
    workflow_id: Annotated[str | None, Query(max_length=128, pattern=TEXT_PATTERN)] = None,
    is_pinned: bool | None = None,
) -> StreamingResponse:
    """Every thread the filters of the thread list select, oldest first."""
    where = ThreadFilter(
        organization_id=organization_id,
        assistant_id=assistant_id,
        workflow_id=workflow_id,
        visible_in_ui=visible_in_ui,
        is_pinned=is_pinned,
        include_deleted=include_deleted,
    )
    return StreamingResponse(thread_export.export_threads(maker, where), media_type=NDJSON)


@router.get("/threads/{thread_id}/export", response_class=StreamingResponse, responses=_EXPORT_200)
async def export_thread(
    thread_id: ThreadIdPath, maker: SessionmakerDep, organization_id: OrganizationDep
) -> StreamingResponse:
    await thread_export.ensure_exportable(maker, organization_id, thread_id)
    return StreamingResponse(thread_export.export_thread(maker, organization_id, thread_id), media_type=NDJSON)


@router.post("/threads/import", response_model=ImportRead, responses=errors(413), openapi_extra=_IMPORT_BODY)
async def import_threads(
    request: Request,
    maker: SessionmakerDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    organization_id: OrganizationDep,
    atomic: bool = False,
) -> ImportRead:
    """Import the body's threads; a thread imported before from the same source is skipped. `atomic=true`: any
    error writes nothing (400 `import_failed`)."""
    import_format = thread_import.format_of(request.headers.get("content-type"))
    report = await thread_import.import_threads(
        maker, settings, principal, organization_id, request.stream(), import_format, atomic=atomic
    )
    return ImportRead.of(report)
