"""Compaction (docs/compaction.md): `POST /v1/threads/{id}/compact` (Freddy) and the OpenAI Responses API's
`POST /v1/responses/compact` and `POST /v1/responses/input_tokens`.

Included before the Responses router, so that `compact` and `input_tokens` are not taken for response ids."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from threadline.api.deps import (
    ModelsDep,
    OrganizationQuery,
    PrincipalDep,
    SessionDep,
    SessionmakerDep,
    SettingsDep,
    TurnPrincipalDep,
)
from threadline.api.idempotency import Idempotent
from threadline.api.routes.openai_responses import openai_names
from threadline.api.schemas.freddy import MessageRead, ThreadCompact, ThreadIdPath
from threadline.api.schemas.openai_responses import (
    CompactedResponseRead,
    InputTokensRead,
    OpenAIInputTokensCount,
    OpenAIResponseCompact,
)
from threadline.api.statuses import MODEL_CALL, REFERENCES
from threadline.services import compact_responses, compaction
from threadline.turns import input_tokens

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


@router.post(
    "/responses/compact", response_model=CompactedResponseRead, dependencies=[Idempotent], responses=MODEL_CALL
)
async def compact_response(
    body: OpenAIResponseCompact,
    principal: TurnPrincipalDep,
    maker: SessionmakerDep,
    settings: SettingsDep,
    models: ModelsDep,
    organization_id: OrganizationQuery = None,
) -> CompactedResponseRead:
    """OpenAI `client.responses.compact(...)`: the conversation's user messages and one compaction item."""
    with openai_names():
        request = body.to_request(principal.organization(organization_id))
        compacted = await compact_responses.compact(maker, settings, models, principal, request)
    return CompactedResponseRead.of(compacted)


@router.post("/responses/input_tokens", response_model=InputTokensRead, responses=REFERENCES)
async def count_input_tokens(
    body: OpenAIInputTokensCount,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    models: ModelsDep,
    organization_id: OrganizationQuery = None,
) -> InputTokensRead:
    """OpenAI `client.responses.input_tokens.count(...)`: exact for the model, over the context a turn would build."""
    with openai_names():
        request = body.to_request(principal.organization(organization_id))
        count = await input_tokens.count_input_tokens(session, settings, models, request)
    return InputTokensRead(input_tokens=count)
