"""OpenAI Responses API (`client.responses.*`): the same turns and response rows as Freddy's `/v1/model/response`,
in OpenAI's shapes (`api/schemas/openai_responses.py`).

- `DELETE /v1/responses/{id}` removes the response record only; the messages its turn saved stay in their
  thread (conversation). It can no longer be retrieved or continued (`previous_response_id` → 404).
- `background: true` answers at once with the response `queued`; a job runs it (turns/background.py).
  `POST /v1/responses/{id}/cancel` cancels it (a 400 `response_not_cancellable` for responses that are not
  `background`, as OpenAI answers).
- Every streamed response's events are recorded: `GET /v1/responses/{id}?stream=true&starting_after=N` replays
  them after N and follows the rest live, from any process (docs/streams.md).
- `GET /v1/responses/{id}/input_items` lists the messages the turn saved as its inputs (none for a failed turn).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse

from threadline.api.deps import (
    OrganizationDep,
    OrganizationQuery,
    SessionDep,
    StreamHubDep,
    TurnPrincipalDep,
    TurnsDep,
)
from threadline.api.idempotency import Idempotent
from threadline.api.schemas.common import ID_PATTERN, LimitQuery, OrderQuery
from threadline.api.schemas.openai import (
    CompactionItemRead,
    ConversationItemList,
    FunctionCallItemRead,
    OpenAIDeletedRead,
    OutputTextRead,
    ReasoningItemRead,
    ReasoningTextRead,
)
from threadline.api.schemas.openai_responses import (
    OpenAIResponseCreate,
    OpenAIResponseRead,
    OutputMessageRead,
    output_message,
)
from threadline.api.sse import EventFramer, recorded, sse_response
from threadline.api.statuses import CONFLICT, MODEL_CALL, streamed
from threadline.api.streams import check_replay, follow_frames
from threadline.domain.turns import StoredTurn
from threadline.errors import ContextLengthExceeded, ThreadlineError
from threadline.services.response_streams import EventRecorder
from threadline.storage.repositories.pagination import PageRequest
from threadline.turns import background, stored
from threadline.turns.turn import (
    OutputCallArguments,
    OutputCallStarted,
    OutputCompaction,
    OutputDelta,
    OutputReasoning,
    Turn,
    TurnDone,
    TurnEvent,
)

router = APIRouter(prefix="/v1/responses", tags=["openai-responses"])

# Freddy parameter names in service errors → the OpenAI request's names.
# Ids are patterned (no NUL or control characters reach the database).
ResponseIdPath = Annotated[str, Path(max_length=64, pattern=ID_PATTERN)]
_PARAMS = {"thread": "conversation", "inputs": "input", "thread_context_mode": "truncation"}
# What `stream_frames` sends, in order (one of the last three ends the stream; `response.queued` only for a
# background response).
RESPONSE_EVENTS = [
    "response.created",
    "response.queued",
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
def openai_names() -> Iterator[None]:
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
    hub: StreamHubDep,
    organization_id: OrganizationQuery = None,
) -> OpenAIResponseRead | StreamingResponse:
    with openai_names():
        request = body.to_request(principal.organization(organization_id))
        if body.background:
            queued = await background.queue_response(
                turns.maker,
                turns.models,
                principal,
                request,
                surface="openai",
                body=body.model_dump(mode="json", exclude_unset=True),
                initial_events=queued_events,
            )
            if not body.stream:
                return OpenAIResponseRead.of(queued)
            return sse_response(follow_frames(turns.maker, hub, queued.organization_id, queued.id, -1, final_event))
        # Errors found before the model is called (busy, unknown model, too long…) still answer as JSON errors.
        turn = await turns.start(principal, request)
        if not body.stream:
            done = await turns.finish(turn)
            if done.error is not None:
                raise done.error  # recorded first: 502/504
            return OpenAIResponseRead.of(done.record)
    recorder = EventRecorder(turns.maker, hub, turn.organization_id, turn.id)
    return sse_response(recorded(stream_frames(turns.run(turn), turn, EventFramer(recorder.add)), recorder))


@router.get("/{response_id}", response_model=OpenAIResponseRead, responses=streamed(RESPONSE_EVENTS))
async def get_response(
    response_id: ResponseIdPath,
    session: SessionDep,
    turns: TurnsDep,
    hub: StreamHubDep,
    organization_id: OrganizationDep,
    stream: bool = False,
    starting_after: Annotated[int | None, Query(ge=-1, le=2**31 - 1)] = None,
) -> OpenAIResponseRead | StreamingResponse:
    # `include[]` asks for logprobs, tool outputs, images: a text answer has none of them.
    if stream:
        after = await check_replay(turns.maker, organization_id, response_id, starting_after)
        return sse_response(follow_frames(turns.maker, hub, organization_id, response_id, after, final_event))
    return OpenAIResponseRead.of(await stored.get_turn(session, organization_id, response_id))


@router.delete("/{response_id}", response_model=OpenAIDeletedRead)
async def delete_response(
    response_id: ResponseIdPath, session: SessionDep, organization_id: OrganizationDep
) -> OpenAIDeletedRead:
    deleted = await stored.delete_turn(session, organization_id, response_id)
    return OpenAIDeletedRead(id=deleted.id, object="response.deleted")


@router.post("/{response_id}/cancel", response_model=OpenAIResponseRead, responses=CONFLICT)
async def cancel_response(
    response_id: ResponseIdPath, session: SessionDep, hub: StreamHubDep, organization_id: OrganizationDep
) -> OpenAIResponseRead:
    return OpenAIResponseRead.of(await background.cancel_response(session, hub, organization_id, response_id))


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
        # The open reasoning item: (output index, item id, text so far); it comes before the answer.
        self.reasoning: tuple[int, str, list[str]] | None = None

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.message.id, "output_index": self.message_index, "content_index": 0}

    def reasoning_delta(self, event: OutputReasoning) -> Iterator[str]:
        """Raw reasoning as `response.reasoning_text.*` events on a `reasoning` item (its `content`)."""
        if not event.text:
            return
        if self.reasoning is None:
            self.reasoning = (self.next_index, event.item_id, [])
            self.next_index += 1
            item = ReasoningItemRead(id=event.item_id, summary=[], content=[], status="in_progress")
            yield self.frame(
                "response.output_item.added", {"output_index": self.reasoning[0], "item": item.model_dump(mode="json")}
            )
            part = ReasoningTextRead(text="").model_dump(mode="json")
            yield self.frame("response.content_part.added", {**self._reasoning_where(), "part": part})
        self.reasoning[2].append(event.text)
        yield self.frame("response.reasoning_text.delta", {**self._reasoning_where(), "delta": event.text})

    def _reasoning_where(self) -> dict[str, Any]:
        assert self.reasoning is not None
        return {"item_id": self.reasoning[1], "output_index": self.reasoning[0], "content_index": 0}

    def close_reasoning(self, final: ReasoningItemRead | None = None) -> Iterator[str]:
        if self.reasoning is None:
            return
        where = self._reasoning_where()
        index, item_id, texts = self.reasoning
        self.reasoning = None
        text = "".join(texts)
        if final is None:
            final = ReasoningItemRead(
                id=item_id, summary=[], content=[ReasoningTextRead(text=text)], status="completed"
            )
        yield self.frame("response.reasoning_text.done", {**where, "text": text})
        yield self.frame(
            "response.content_part.done", {**where, "part": ReasoningTextRead(text=text).model_dump(mode="json")}
        )
        yield self.frame("response.output_item.done", {"output_index": index, "item": final.model_dump(mode="json")})

    def open_message(self) -> Iterator[str]:
        if self.message_index is not None:
            return
        yield from self.close_reasoning()
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

    def compaction(self, event: OutputCompaction) -> Iterator[str]:
        """The turn compacted first: its compaction item is added and done at once (docs/compaction.md)."""
        index = self.next_index
        self.next_index += 1
        item = CompactionItemRead(id=event.item_id, encrypted_content=event.summary, created_by=event.model)
        for name in ("response.output_item.added", "response.output_item.done"):
            yield self.frame(name, {"output_index": index, "item": item.model_dump(mode="json")})

    def call_started(self, event: OutputCallStarted) -> Iterator[str]:
        yield from self.close_reasoning()
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
            if isinstance(item, ReasoningItemRead):
                if self.reasoning is not None and self.reasoning[1] == item.id:
                    yield from self.close_reasoning(item)
            elif isinstance(item, OutputMessageRead):
                yield from self.open_message()
                yield from self.close_message(item)
            elif isinstance(item, FunctionCallItemRead) and self.call is not None and self.call[1] == item.id:
                yield from self.close_call(item)


def queued_events(turn: StoredTurn) -> list[tuple[str, str]]:
    """How a background response's stream starts, recorded when it is queued: created, then queued."""
    events: list[tuple[str, str]] = []
    framer = EventFramer(lambda _n, name, data: events.append((name, data)))
    queued = OpenAIResponseRead.of(turn).model_dump(mode="json")
    framer.frame("response.created", {"response": queued})
    framer.frame("response.queued", {"response": queued})
    return events


def final_event(turn: StoredTurn) -> tuple[str, dict[str, Any]]:
    """The last event of a stream that ended without one: the response as it stands (a cancelled one is
    `response.failed` with status `cancelled`: OpenAI's stream has no cancelled event)."""
    read = OpenAIResponseRead.of(turn)
    name = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(read.status, "response.failed")
    return name, {"response": read.model_dump(mode="json")}


async def stream_frames(
    events: AsyncGenerator[TurnEvent, None], turn: Turn, framer: EventFramer, *, queued: bool = False
) -> AsyncGenerator[str, None]:
    """OpenAI's canonical event sequence; `sequence_number` counts on from the framer's, ids never change. A
    `queued` (background) response's stream already holds `response.created` and `response.queued`."""
    frame = framer.frame
    started = OpenAIResponseRead.of(turn.record).model_dump(mode="json")
    if not queued:
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
            elif isinstance(event, OutputReasoning):
                for chunk in layout.reasoning_delta(event):
                    yield chunk
            elif isinstance(event, OutputCallStarted):
                for chunk in layout.call_started(event):
                    yield chunk
            elif isinstance(event, OutputCallArguments):
                for chunk in layout.call_arguments(event):
                    yield chunk
            elif isinstance(event, OutputCompaction):
                for chunk in layout.compaction(event):
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
