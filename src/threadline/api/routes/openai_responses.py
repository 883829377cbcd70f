"""OpenAI Responses API (`client.responses.*`): the same turns and response rows as Freddy's `/v1/model/response`,
in OpenAI's shapes (`api/schemas/openai_responses.py`).

- `DELETE /v1/responses/{id}` removes the response record only; the messages its turn saved stay in their
  thread (conversation). It can no longer be retrieved or continued (`previous_response_id` → 404).
- `POST /v1/responses/{id}/cancel` is a 400 `response_not_cancellable` for every existing response, as OpenAI
  answers for responses that are not `background` (Threadline runs none).
- `GET /v1/responses/{id}/input_items` lists the messages the turn saved as its inputs (none for a failed turn).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse

from threadline.api.deps import (
    ModelsDep,
    OrganizationDep,
    OrganizationQuery,
    SessionDep,
    SessionmakerDep,
    SettingsDep,
    TurnPrincipalDep,
)
from threadline.api.idempotency import Idempotent
from threadline.api.schemas.common import LimitQuery, OrderQuery
from threadline.api.schemas.freddy import ID_PATTERN
from threadline.api.schemas.openai import ConversationItemList, OpenAIDeletedRead, OutputTextRead
from threadline.api.schemas.openai_responses import OpenAIResponseCreate, OpenAIResponseRead, output_message
from threadline.api.sse import EventFramer, sse_response
from threadline.api.statuses import CONFLICT, MODEL_CALL, streamed
from threadline.errors import ContextLengthExceeded, InvalidRequest, ThreadlineError
from threadline.services import responses, stored_responses, turns
from threadline.services.turns import OutputDelta, Turn, TurnDone
from threadline.storage.repositories.pagination import PageRequest

router = APIRouter(prefix="/v1/responses", tags=["openai-responses"])

# Freddy parameter names in service errors → the OpenAI request's names.
# Ids are patterned (no NUL or control characters reach the database).
ResponseIdPath = Annotated[str, Path(max_length=64, pattern=ID_PATTERN)]
_PARAMS = {"thread": "conversation", "inputs": "input", "thread_context_mode": "truncation"}
# What `_sse` sends, in order (one of the last three ends the stream).
RESPONSE_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
    "response.incomplete",
    "response.failed",
]


@contextlib.contextmanager
def _openai_names() -> Iterator[None]:
    """Errors name the OpenAI request's fields, and a context overflow says how to allow truncation."""
    try:
        yield
    except ThreadlineError as exc:
        if exc.param is not None:
            head, _, rest = exc.param.partition(".")
            exc.param = _PARAMS.get(head, head) + (f".{rest}" if rest else "")
        if isinstance(exc, ContextLengthExceeded) and exc.param == "truncation":
            raise ContextLengthExceeded(
                "The input and the conversation do not fit the model's context window with truncation 'disabled'; "
                f"set truncation to 'auto' to drop the oldest items. ({exc.message})",
                param="truncation",
            ) from exc
        raise


@router.post(
    "",
    response_model=OpenAIResponseRead,
    dependencies=[Idempotent],
    responses=MODEL_CALL | streamed(RESPONSE_EVENTS),
)
async def create_response(
    body: OpenAIResponseCreate,
    principal: TurnPrincipalDep,
    maker: SessionmakerDep,
    settings: SettingsDep,
    models: ModelsDep,
    organization_id: OrganizationQuery = None,
) -> OpenAIResponseRead | StreamingResponse:
    with _openai_names():
        request = body.to_request(principal.organization(organization_id))
        if not body.stream:
            return OpenAIResponseRead.of(await responses.create_response(maker, settings, models, principal, request))
        # Errors found before the model is called (busy, unknown model, too long…) still answer as JSON errors.
        turn = await responses.start_turn(maker, settings, models, principal, request)
    return sse_response(_sse(turns.run_turn(maker, settings, turn), turn))


@router.get("/{response_id}", response_model=OpenAIResponseRead)
async def get_response(
    response_id: ResponseIdPath, session: SessionDep, organization_id: OrganizationDep, stream: bool = False
) -> OpenAIResponseRead:
    # `include[]` asks for logprobs, tool outputs, images: a text answer has none of them.
    if stream:
        # A JSON answer would look like an empty stream to the SDK: say plainly that there is nothing to resume.
        raise InvalidRequest(
            "Resuming a response stream is not supported (only background responses can be resumed, and "
            "Threadline runs none): retrieve the response without 'stream'.",
            code="unsupported_parameter",
            param="stream",
        )
    return OpenAIResponseRead.of(await responses.get_response(session, organization_id, response_id))


@router.delete("/{response_id}", response_model=OpenAIDeletedRead)
async def delete_response(
    response_id: ResponseIdPath, session: SessionDep, organization_id: OrganizationDep
) -> OpenAIDeletedRead:
    deleted = await stored_responses.delete_response(session, organization_id, response_id)
    return OpenAIDeletedRead(id=deleted.id, object="response.deleted")


@router.post("/{response_id}/cancel", response_model=OpenAIResponseRead, responses=CONFLICT)
async def cancel_response(
    response_id: ResponseIdPath, session: SessionDep, organization_id: OrganizationDep
) -> OpenAIResponseRead:
    return OpenAIResponseRead.of(await stored_responses.cancel_response(session, organization_id, response_id))


@router.get("/{response_id}/input_items", response_model=ConversationItemList)
async def list_input_items(
    response_id: ResponseIdPath,
    session: SessionDep,
    organization_id: OrganizationDep,
    limit: LimitQuery = 20,
    order: OrderQuery = "desc",
    after: Annotated[str | None, Query(max_length=64, pattern=ID_PATTERN)] = None,
) -> ConversationItemList:
    page = await stored_responses.list_inputs(
        session, organization_id, response_id, PageRequest(limit=limit, order=order, after=after)
    )
    return ConversationItemList.of(page.items, page.has_more)


async def _sse(events: AsyncGenerator[turns.TurnEvent, None], turn: Turn) -> AsyncIterator[str]:
    """OpenAI's canonical text-only event sequence; `sequence_number` counts from 0, ids never change."""
    frame = EventFramer().frame
    started = OpenAIResponseRead.of(turn.response).model_dump(mode="json")
    item = output_message(turn.response, "in_progress", None)
    where = {"item_id": item.id, "output_index": 0, "content_index": 0}
    yield frame("response.created", {"response": started})
    yield frame("response.in_progress", {"response": started})
    yield frame("response.output_item.added", {"output_index": 0, "item": item.model_dump(mode="json")})
    yield frame("response.content_part.added", {**where, "part": OutputTextRead(text="").model_dump(mode="json")})
    # aclosing: when the client goes away, the turn's cleanup (fail the response, free the thread) runs now,
    # not whenever the abandoned generator is garbage-collected.
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, OutputDelta):
                yield frame("response.output_text.delta", {**where, "delta": event.text, "logprobs": []})
            elif isinstance(event, TurnDone):
                final = OpenAIResponseRead.of(event.response)
                if event.error is not None or not final.output:
                    yield frame("response.failed", {"response": final.model_dump(mode="json")})
                    continue
                done = final.output[0]
                part = done.content[0].model_dump(mode="json")
                yield frame("response.output_text.done", {**where, "text": part["text"], "logprobs": []})
                yield frame("response.content_part.done", {**where, "part": part})
                yield frame("response.output_item.done", {"output_index": 0, "item": done.model_dump(mode="json")})
                name = "response.incomplete" if final.status == "incomplete" else "response.completed"
                yield frame(name, {"response": final.model_dump(mode="json")})
