"""Threads as data: fork a thread, export threads as JSON Lines, import an export (docs/threads-as-data.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from threadline.api.deps import PrincipalDep, SessionDep
from threadline.api.schemas.freddy import ThreadFork, ThreadIdPath, ThreadRead
from threadline.api.statuses import errors
from threadline.services import forks

router = APIRouter(prefix="/v1", tags=["threads"])


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
