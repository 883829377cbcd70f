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
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse

from threadline.api.deps import OrganizationDep, OrganizationQuery, SessionDep, TurnPrincipalDep, TurnsDep
from threadline.api.idempotency import Idempotent
from threadline.api.schemas.common import ID_PATTERN, LimitQuery, OrderQuery
from threadline.api.schemas.openai import (
    ConversationItemList,
    FunctionCallItemRead,
    OpenAIDeletedRead,
    OutputTextRead,
)
from threadline.api.schemas.openai_responses import (
    OpenAIResponseCreate,
    OpenAIResponseRead,
    OutputMessageRead,
    output_message,
)
from threadline.api.sse import EventFramer, sse_response
from threadline.api.statuses import CONFLICT, MODEL_CALL, streamed
from threadline.errors import ContextLengthExceeded, InvalidRequest, ThreadlineError
from threadline.storage.repositories.pagination import PageRequest
from threadline.turns import stored
from threadline.turns.turn import OutputCallArguments, OutputCallStarted, OutputDelta, Turn, TurnDone, TurnEvent

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
    turns: TurnsDep,
    organization_id: OrganizationQuery = None,
) -> OpenAIResponseRead | StreamingResponse:
    with _openai_names():
        request = body.to_request(principal.organization(organization_id))
        # Errors found before the model is called (busy, unknown model, too long…) still answer as JSON errors.
        turn = await turns.start(principal, request)
        if not body.stream:
            done = await turns.finish(turn)
            if done.error is not None:
                raise done.error  # recorded first: 502/504
            return OpenAIResponseRead.of(done.record)
    return sse_response(_sse(turns.run(turn), turn))


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
    return OpenAIResponseRead.of(await stored.get_turn(session, organization_id, response_id))


@router.delete("/{response_id}", response_model=OpenAIDeletedRead)
async def delete_response(
    response_id: ResponseIdPath, session: SessionDep, organization_id: OrganizationDep
) -> OpenAIDeletedRead:
    deleted = await stored.delete_turn(session, organization_id, response_id)
    return OpenAIDeletedRead(id=deleted.id, object="response.deleted")


@router.post("/{response_id}/cancel", response_model=OpenAIResponseRead, responses=CONFLICT)
async def cancel_response(
    response_id: ResponseIdPath, session: SessionDep, organization_id: OrganizationDep
) -> OpenAIResponseRead:
    return OpenAIResponseRead.of(await stored.cancel_response(session, organization_id, response_id))


@router.get("/{response_id}/input_items", response_model=ConversationItemList)
async def list_input_items(
    response_id: ResponseIdPath,
    session: SessionDep,
    organization_id: OrganizationDep,
    limit: LimitQuery = 20,
    order: OrderQuery = "desc",
    after: Annotated[str | None, Query(max_length=64, pattern=ID_PATTERN)] = None,
) -> ConversationItemList:
    page = await stored.list_inputs(
        session, organization_id, response_id, PageRequest(limit=limit, order=order, after=after)
    )
    return ConversationItemList.of(page.items, page.has_more)


class _StreamLayout:
    """Where each output item of a streamed response sits: the message opens with the first text (or at the end,
    when an answer had none), each call when it starts; an item is done before the next one is added."""

    def __init__(self, turn: Turn, frame: Callable[[str, dict[str, Any]], str]) -> None:
        self.frame = frame
        self.message = output_message(turn.id, "in_progress", None)
        self.message_index: int | None = None
        self.text: list[str] = []
        self.next_index = 0
        # The open call: (output index, item id, call id, name, arguments so far).
        self.call: tuple[int, str, str, str, list[str]] | None = None
        self.message_done = False

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.message.id, "output_index": self.message_index, "content_index": 0}

    def open_message(self) -> Iterator[str]:
        if self.message_index is not None:
            return
        yield from self.close_call()
        self.message_index = self.next_index
        self.next_index += 1
        item = self.message.model_dump(mode="json")
        yield self.frame("response.output_item.added", {"output_index": self.message_index, "item": item})
        part = OutputTextRead(text="").model_dump(mode="json")
        yield self.frame("response.content_part.added", {**self._where(), "part": part})

    def text_delta(self, delta: str) -> Iterator[str]:
        if not delta:
            return  # (an empty answer's message still opens at the end, in `finish`)
        yield from self.open_message()
        self.text.append(delta)
        yield self.frame("response.output_text.delta", {**self._where(), "delta": delta, "logprobs": []})

    def close_message(self, final: OutputMessageRead | None = None) -> Iterator[str]:
        if self.message_index is None or self.message_done:
            return
        self.message_done = True
        if final is None:
            final = self.message.model_copy(
                update={"status": "completed", "content": [OutputTextRead(text="".join(self.text))]}
            )
        part = final.content[0].model_dump(mode="json")
        yield self.frame("response.output_text.done", {**self._where(), "text": part["text"], "logprobs": []})
        yield self.frame("response.content_part.done", {**self._where(), "part": part})
        item = final.model_dump(mode="json")
        yield self.frame("response.output_item.done", {"output_index": self.message_index, "item": item})

    def call_started(self, event: OutputCallStarted) -> Iterator[str]:
        yield from self.close_message()
        yield from self.close_call()
        index = self.next_index
        self.next_index += 1
        self.call = (index, event.item_id, event.call_id, event.name, [])
        item = FunctionCallItemRead(
            id=event.item_id, call_id=event.call_id, name=event.name, arguments="", status="in_progress"
        ).model_dump(mode="json")
        yield self.frame("response.output_item.added", {"output_index": index, "item": item})

    def call_arguments(self, event: OutputCallArguments) -> Iterator[str]:
        if self.call is None or self.call[1] != event.item_id:
            return
        self.call[4].append(event.delta)
        yield self.frame(
            "response.function_call_arguments.delta",
            {"item_id": event.item_id, "output_index": self.call[0], "delta": event.delta},
        )

    def close_call(self, final: FunctionCallItemRead | None = None) -> Iterator[str]:
        if self.call is None:
            return
        index, item_id, call_id, name, arguments = self.call
        self.call = None
        if final is None:
            final = FunctionCallItemRead(id=item_id, call_id=call_id, name=name, arguments="".join(arguments))
        yield self.frame(
            "response.function_call_arguments.done",
            {"item_id": item_id, "output_index": index, "arguments": final.arguments},
        )
        yield self.frame("response.output_item.done", {"output_index": index, "item": final.model_dump(mode="json")})

    def finish(self, final: OpenAIResponseRead) -> Iterator[str]:
        """Close what is open with the saved items (their final text and arguments)."""
        for item in final.output:
            if isinstance(item, OutputMessageRead):
                yield from self.open_message()
                yield from self.close_message(item)
            elif self.call is not None and self.call[1] == item.id:
                yield from self.close_call(item)


async def _sse(events: AsyncGenerator[TurnEvent, None], turn: Turn) -> AsyncIterator[str]:
    """OpenAI's canonical event sequence; `sequence_number` counts from 0, ids never change."""
    frame = EventFramer().frame
    started = OpenAIResponseRead.of(turn.record).model_dump(mode="json")
    yield frame("response.created", {"response": started})
    yield frame("response.in_progress", {"response": started})
    layout = _StreamLayout(turn, frame)
    # aclosing: when the client goes away, the turn's cleanup (fail the response, free the thread) runs now,
    # not whenever the abandoned generator is garbage-collected.
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, OutputDelta):
                for chunk in layout.text_delta(event.text):
                    yield chunk
            elif isinstance(event, OutputCallStarted):
                for chunk in layout.call_started(event):
                    yield chunk
            elif isinstance(event, OutputCallArguments):
                for chunk in layout.call_arguments(event):
                    yield chunk
            elif isinstance(event, TurnDone):
                final = OpenAIResponseRead.of(event.record)
                if event.error is not None or not final.output:
                    yield frame("response.failed", {"response": final.model_dump(mode="json")})
                    continue
                for chunk in layout.finish(final):
                    yield chunk
                name = "response.incomplete" if final.status == "incomplete" else "response.completed"
                yield frame(name, {"response": final.model_dump(mode="json")})
