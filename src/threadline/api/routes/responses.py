"""POST /v1/model/response and GET /v1/model/response/{id}: the Freddy surface of the turn engine."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from threadline.api.deps import OrganizationDep, SessionDep, TurnPrincipalDep, TurnsDep
from threadline.api.idempotency import Idempotent
from threadline.api.schemas.freddy import IdPath
from threadline.api.schemas.responses import ResponseCreate, ResponseRead
from threadline.api.sse import EventFramer, sse_response
from threadline.api.statuses import MODEL_CALL, streamed
from threadline.turns import stored
from threadline.turns.turn import OutputCallArguments, OutputCallStarted, OutputDelta, Turn, TurnDone, TurnEvent

router = APIRouter(prefix="/v1/model/response", tags=["responses"])


@router.post(
    "",
    response_model=ResponseRead,
    dependencies=[Idempotent],
    responses=MODEL_CALL
    | streamed(["response.created", "response.output_text.delta", "response.completed", "response.failed"]),
)
async def create_response(
    body: ResponseCreate,
    principal: TurnPrincipalDep,
    turns: TurnsDep,
) -> ResponseRead | StreamingResponse:
    turn_request = body.to_request(principal.organization(body.organization_id))
    # Errors found before the model is called (busy, locked, unknown model…) still answer as plain JSON errors.
    turn = await turns.start(principal, turn_request, observed=True)
    if not body.stream:
        done = await turns.finish(turn)
        if done.error is not None:
            raise done.error  # recorded first: 502/504
        return ResponseRead.of(done.record)
    return sse_response(_sse(turns.run(turn), turn))


@router.get("/{response_id}", response_model=ResponseRead)
async def get_response(response_id: IdPath, session: SessionDep, organization_id: OrganizationDep) -> ResponseRead:
    return ResponseRead.of(await stored.get_turn(session, organization_id, response_id))


async def _sse(events: AsyncGenerator[TurnEvent, None], turn: Turn) -> AsyncIterator[str]:
    """Server-sent events named like OpenAI's Responses stream."""
    framer = EventFramer()
    yield framer.frame("response.created", {"response": ResponseRead.of(turn.record).model_dump(mode="json")})
    # Calls follow the message in the output when the answer has text (the message is saved only then).
    texted = False
    # aclosing: when the client goes away, the turn's cleanup (fail the response, free the thread) runs now,
    # not whenever the abandoned generator is garbage-collected.
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, OutputDelta):
                texted = texted or bool(event.text)
                yield framer.frame(
                    "response.output_text.delta",
                    {"item_id": turn.id, "output_index": 0, "content_index": 0, "delta": event.text},
                )
            elif isinstance(event, OutputCallStarted):
                item = {"type": "function_call", "id": event.item_id, "call_id": event.call_id, "name": event.name}
                yield framer.frame(
                    "response.output_item.added",
                    {"output_index": event.index + texted, "item": {**item, "arguments": ""}},
                )
            elif isinstance(event, OutputCallArguments):
                yield framer.frame(
                    "response.function_call_arguments.delta",
                    {"item_id": event.item_id, "output_index": event.index + texted, "delta": event.delta},
                )
            elif isinstance(event, TurnDone):
                name = "response.completed" if event.error is None else "response.failed"
                yield framer.frame(name, {"response": ResponseRead.of(event.record).model_dump(mode="json")})
