"""Compaction (docs/compaction.md): `POST /v1/threads/{id}/compact` (Freddy) and the OpenAI Responses API's
`POST /v1/responses/compact` and `POST /v1/responses/input_tokens`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from threadline.api.deps import ModelsDep, SessionmakerDep, SettingsDep, TurnPrincipalDep
from threadline.api.idempotency import Idempotent
from threadline.api.schemas.freddy import MessageRead, ThreadCompact, ThreadIdPath
from threadline.api.statuses import MODEL_CALL
from threadline.services import compaction

router = APIRouter(prefix="/v1", tags=["compaction"])


@router.post(
    "/threads/{thread_id}/compact", response_model=MessageRead, dependencies=[Idempotent], responses=MODEL_CALL
)
async def compact_thread(
    thread_id: ThreadIdPath,
    principal: TurnPrincipalDep,
    maker: SessionmakerDep,
    settings: SettingsDep,
    models: ModelsDep,
    body: Annotated[ThreadCompact | None, Body()] = None,
) -> MessageRead:
    """Summarise the thread up to its newest messages now; the summary is a `compaction` item of the thread."""
    body = body or ThreadCompact()
    request = compaction.ThreadCompaction(
        principal.organization(body.organization_id), thread_id, model=body.model, keep_tokens=body.keep_tokens
    )
    return MessageRead.of(await compaction.compact_thread(maker, settings, models, request))
