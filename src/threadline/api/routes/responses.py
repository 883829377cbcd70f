"""POST /v1/model/response and GET /v1/model/response/{id}: the Freddy surface of the turn engine; background
responses and resumable streams (docs/streams.md).

`background: true` answers at once with the response `queued` (a job runs it, turns/background.py);
`POST /v1/model/response/{id}/cancel` cancels it. Every streamed response's events are recorded, so
`GET /v1/model/response/{id}?stream=true&starting_after=N` replays them after N and follows the rest live, from any
process.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from threadline.api.deps import OrganizationDep, SessionDep, StreamHubDep, TurnPrincipalDep, TurnsDep
from threadline.api.idempotency import Idempotent
from threadline.api.schemas.freddy import IdPath
from threadline.api.schemas.responses import ResponseCreate, ResponseRead
from threadline.api.sse import EventFramer, recorded, sse_response
from threadline.api.statuses import MODEL_CALL, streamed
from threadline.api.streams import check_replay, follow_frames
from threadline.domain.turns import COMPLETED, StoredTurn
from threadline.services.response_streams import EventRecorder
from threadline.turns import background, stored
from threadline.turns.turn import OutputCallArguments, OutputCallStarted, OutputDelta, Turn, TurnDone, TurnEvent

router = APIRouter(prefix="/v1/model/response", tags=["responses"])

STREAM_EVENTS = [
    "response.created",
    "response.queued",
    "response.in_progress",
    "response.output_text.delta",
    "response.output_item.added",
    "response.function_call_arguments.delta",
    "response.completed",
    "response.failed",
]


@router.post("", response_model=ResponseRead, dependencies=[Idempotent], responses=MODEL_CALL | streamed(STREAM_EVENTS))
async def create_response(
    body: ResponseCreate, principal: TurnPrincipalDep, turns: TurnsDep, hub: StreamHubDep
) -> ResponseRead | StreamingResponse:
    turn_request = body.to_request(principal.organization(body.organization_id))
    if body.background:
        queued = await background.queue_response(
            turns.maker,
            turns.models,
            principal,
            turn_request,
            surface="freddy",
            body=body.model_dump(mode="json", exclude_unset=True),
            initial_events=queued_events,
        )
        if not body.stream:
            return ResponseRead.of(queued)
        return sse_response(follow_frames(turns.maker, hub, queued.organization_id, queued.id, -1, final_event))
    # Errors found before the model is called (busy, locked, unknown model…) still answer as plain JSON errors.
    turn = await turns.start(principal, turn_request, observed=True)
    if not body.stream:
        done = await turns.finish(turn)
        if done.error is not None:
            raise done.error  # recorded first: 502/504
        return ResponseRead.of(done.record)
    recorder = EventRecorder(turns.maker, hub, turn.organization_id, turn.id)
    return sse_response(recorded(stream_frames(turns.run(turn), turn, EventFramer(recorder.add)), recorder))


@router.get("/{response_id}", response_model=ResponseRead, responses=streamed(STREAM_EVENTS))
async def get_response(
    response_id: IdPath,
    session: SessionDep,
    turns: TurnsDep,
    hub: StreamHubDep,
    organization_id: OrganizationDep,
    stream: bool = False,
    starting_after: Annotated[int | None, Query(ge=-1, le=2**31 - 1)] = None,
) -> ResponseRead | StreamingResponse:
    if stream:
        after = await check_replay(turns.maker, organization_id, response_id, starting_after)
        return sse_response(follow_frames(turns.maker, hub, organization_id, response_id, after, final_event))
    return ResponseRead.of(await stored.get_turn(session, organization_id, response_id))


@router.post("/{response_id}/cancel", response_model=ResponseRead)
async def cancel_response(
    response_id: IdPath, session: SessionDep, hub: StreamHubDep, organization_id: OrganizationDep
) -> ResponseRead:
    """Cancel a background response: a queued one never runs, a running one stops; nothing is saved to its thread."""
    return ResponseRead.of(await background.cancel_response(session, hub, organization_id, response_id))


def queued_events(turn: StoredTurn) -> list[tuple[str, str]]:
    """How a background response's stream starts, recorded when it is queued."""
    events: list[tuple[str, str]] = []
    framer = EventFramer(lambda _n, name, data: events.append((name, data)))
    queued = ResponseRead.of(turn).model_dump(mode="json")
    framer.frame("response.created", {"response": queued})
    framer.frame("response.queued", {"response": queued})
    return events


def final_event(turn: StoredTurn) -> tuple[str, dict[str, Any]]:
    """The last event of a stream that ended without one: the response as it stands."""
    name = "response.completed" if turn.status == COMPLETED else "response.failed"
    return name, {"response": ResponseRead.of(turn).model_dump(mode="json")}


async def stream_frames(
    events: AsyncGenerator[TurnEvent, None], turn: Turn, framer: EventFramer, *, queued: bool = False
) -> AsyncGenerator[str, None]:
    """Server-sent events named like OpenAI's Responses stream (a `queued` response's stream already holds
    `response.created` and `response.queued`: it goes on with `response.in_progress`)."""
    started = {"response": ResponseRead.of(turn.record).model_dump(mode="json")}
    yield framer.frame("response.in_progress" if queued else "response.created", started)
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
