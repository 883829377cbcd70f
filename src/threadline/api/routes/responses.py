"""POST /v1/model/response (seed 000) and GET /v1/model/response/{id}."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from threadline.api.deps import (
    ModelsDep,
    OrganizationDep,
    SessionDep,
    SessionmakerDep,
    SettingsDep,
    credential_of,
)
from threadline.api.idempotency import Idempotent
from threadline.api.schemas.freddy import IdPath
from threadline.api.schemas.responses import ResponseCreate, ResponseRead
from threadline.services import auth, responses, turns
from threadline.services.auth import Principal
from threadline.services.turns import OutputDelta, Turn, TurnDone

router = APIRouter(prefix="/v1/model/response", tags=["responses"])


async def principal_outside_turn(request: Request, maker: SessionmakerDep) -> Principal:
    """Authenticate in a transaction of its own: a turn must not hold one open across the model call."""
    async with maker() as session:
        principal = await auth.authenticate(session, credential_of(request))
        await session.commit()
    return principal


TurnPrincipalDep = Annotated[Principal, Depends(principal_outside_turn)]


@router.post("", response_model=ResponseRead, dependencies=[Idempotent])
async def create_response(
    body: ResponseCreate,
    principal: TurnPrincipalDep,
    maker: SessionmakerDep,
    settings: SettingsDep,
    models: ModelsDep,
) -> ResponseRead | StreamingResponse:
    turn_request = body.to_request(principal.organization(body.organization_id))
    if not body.stream:
        return ResponseRead.of(await responses.create_response(maker, settings, models, principal, turn_request))
    # Errors found before the model is called (busy, locked, unknown model…) still answer as plain JSON errors.
    turn = await responses.start_turn(maker, settings, models, principal, turn_request)
    return StreamingResponse(
        _sse(turns.run_turn(maker, settings, turn), turn),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/{response_id}", response_model=ResponseRead)
async def get_response(response_id: IdPath, session: SessionDep, organization_id: OrganizationDep) -> ResponseRead:
    return ResponseRead.of(await responses.get_response(session, organization_id, response_id))


async def _sse(events: AsyncGenerator[turns.TurnEvent, None], turn: Turn) -> AsyncIterator[str]:
    """Server-sent events named like OpenAI's Responses stream, each with `type` and a rising `sequence_number`."""
    sequence = 0

    def frame(name: str, payload: dict[str, Any]) -> str:
        nonlocal sequence
        data = {"type": name, "sequence_number": sequence, **payload}
        sequence += 1
        return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

    yield frame("response.created", {"response": ResponseRead.of(turn.response).model_dump(mode="json")})
    # aclosing: when the client goes away, the turn's cleanup (fail the response, free the thread) runs now,
    # not whenever the abandoned generator is garbage-collected.
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, OutputDelta):
                yield frame(
                    "response.output_text.delta",
                    {"item_id": turn.response.id, "output_index": 0, "content_index": 0, "delta": event.text},
                )
            elif isinstance(event, TurnDone):
                name = "response.completed" if event.error is None else "response.failed"
                yield frame(name, {"response": ResponseRead.of(event.response).model_dump(mode="json")})
