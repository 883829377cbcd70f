"""Background responses (`background: true`, docs/streams.md): answered at once as `queued`, run by a job.

- `queue_response` records the response as `queued`, its first stream events, and a job of kind `JOB_KIND`, in one
  transaction: the response exists if and only if its job does. Jobs of one thread (conversation, or the previous
  response a chain continues) share a queue key, so queued turns of a thread run in the order they were asked.
- The job (its handler speaks the wire formats, `api/background_responses.py`) starts the turn through the
  engine, with the response id given: `queued` → `in_progress` only if it is still queued, so a response
  cancelled meanwhile never starts.
- `cancel_response`: a queued response is `cancelled` and never runs; one in progress is `cancelled`, its thread's
  lease released (its turn can save nothing any more) and its process told (`StreamHub`), which stops the turn
  at once. The thread is left as it was before the turn.
- A process killed mid-turn: its job is taken over once the job's lease expires; the new attempt finds the
  response `in_progress` and settles it `failed` (`turn_interrupted`) once the turn's lease expires, as for any
  interrupted turn. It is not run again: its stream was already partly sent, and a second run would answer
  differently after the same first events.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline.domain import leases
from threadline.domain.clock import utcnow
from threadline.domain.turns import IN_PROGRESS, QUEUED, StoredTurn
from threadline.errors import InvalidRequest, ThreadNotFound
from threadline.ids import new_id
from threadline.providers.registry import ModelRegistry
from threadline.services import jobs, webhooks
from threadline.services.auth import Principal
from threadline.services.response_streams import StreamHub, announce_cancel
from threadline.storage.repositories.response_events import ResponseEventRepository
from threadline.storage.repositories.responses import ResponseRepository
from threadline.storage.repositories.threads import ThreadRepository
from threadline.storage.tables import Response, ResponseEvent
from threadline.turns.record import stored
from threadline.turns.request import TurnRequest, validate
from threadline.turns.stored import get_row

JOB_KIND = "response.background"
# Attempts of a background job: a busy thread, or an earlier attempt interrupted mid-turn, takes one each.
MAX_ATTEMPTS = 5

# (type, JSON) of the events a queued response's stream starts with, built by the caller from the queued turn.
InitialEvents = Callable[[StoredTurn], Sequence[tuple[str, str]]]


def queue_key(request: TurnRequest) -> str | None:
    """Turns of one thread run in order: the thread (conversation), or the response a chain continues."""
    if request.thread_id is not None:
        return f"thread:{request.thread_id}"
    if request.previous_response_id is not None:
        return f"chain:{request.previous_response_id}"
    return None


async def queue_response(
    maker: async_sessionmaker[AsyncSession],
    models: ModelRegistry,
    principal: Principal,
    request: TurnRequest,
    *,
    surface: str,
    body: dict[str, Any],
    initial_events: InitialEvents,
) -> StoredTurn:
    """Record a background response as `queued` with its job; `body` is the request as sent (the job rebuilds the
    turn from it). Refusals a request can be judged on without running it come now, as a 4xx."""
    if not request.store:
        raise InvalidRequest(
            "Background responses must be stored: drop 'store': false (or set it to true) with 'background': true.",
            code="background_requires_store",
            param="store",
        )
    validate(request, models)
    _, info = models.resolve(request.model)
    now = utcnow()
    response = Response(
        organization_id=request.organization_id,
        id=new_id("resp"),
        thread_id=request.thread_id,
        previous_response_id=request.previous_response_id,
        user_id=principal.user_id,
        model=info.name,
        status=QUEUED,
        request={
            **request.record,
            "background": True,
            "store": True,
            "instructions": request.instructions,
            "thread_context_mode": request.context_mode,
            "max_output_tokens": request.max_output_tokens,
            "temperature": request.temperature,
        },
        context={},
        created_at=now,
    )
    async with maker() as session:
        must_exist = request.thread_id is not None and request.thread_must_exist
        if must_exist and await ThreadRepository(session).get(request.organization_id, request.thread_id or "") is None:
            raise ThreadNotFound(request.thread_id or "", param="thread")
        await ResponseRepository(session).add(response)
        await ResponseEventRepository(session).add_many(
            [
                ResponseEvent(
                    organization_id=response.organization_id,
                    response_id=response.id,
                    sequence_number=number,
                    type=type_,
                    data=data,
                    created_at=now,
                )
                for number, (type_, data) in enumerate(initial_events(stored(response)))
            ]
        )
        await jobs.enqueue(
            session,
            organization_id=request.organization_id,
            kind=JOB_KIND,
            payload={
                "response_id": response.id,
                "surface": surface,
                "body": body,
                "principal": {**asdict(principal), "organization_ids": [request.organization_id]},
            },
            queue_key=queue_key(request),
            max_attempts=MAX_ATTEMPTS,
        )
        await session.commit()
    return stored(response)


def principal_of(payload: dict[str, Any]) -> Principal:
    """The caller of a queued response, as the job payload remembers it (limits are read afresh)."""
    data = dict(payload["principal"])
    return Principal(
        user_id=data["user_id"],
        email=data["email"],
        organization_ids=tuple(data["organization_ids"]),
        auth_method=data["auth_method"],
        credential_id=data["credential_id"],
    )


async def load(maker: async_sessionmaker[AsyncSession], organization_id: str, response_id: str) -> StoredTurn | None:
    """The response a job runs, settled if its turn's lease expired (None: deleted meanwhile)."""
    async with maker() as session:
        found = await ResponseRepository(session).get(organization_id, response_id)
        if found is not None and found.status == IN_PROGRESS:
            found = await get_row(session, organization_id, response_id)
        await session.commit()
    return stored(found) if found is not None else None


async def lease_left(maker: async_sessionmaker[AsyncSession], response: StoredTurn) -> float:
    """Seconds until the lease of `response`'s turn expires (0 when it holds none, or it expired)."""
    if response.thread_id is None:
        return 0.0
    async with maker() as session:
        thread = await ThreadRepository(session).get(response.organization_id, response.thread_id, include_deleted=True)
    if thread is None or not leases.turn_alive(response.id, thread.lease_owner, thread.lease_expires_at, utcnow()):
        return 0.0
    assert thread.lease_expires_at is not None
    return max((thread.lease_expires_at - utcnow()).total_seconds(), 0.0)


async def fail_unstarted(
    maker: async_sessionmaker[AsyncSession], organization_id: str, response_id: str, code: str, message: str
) -> StoredTurn | None:
    """A queued response whose turn could not start (its thread was deleted, its input does not fit…): failed."""
    async with maker() as session:
        now = utcnow()
        response = await ResponseRepository(session).finish_queued(
            organization_id, response_id, "failed", now, {"code": code, "message": message}
        )
        if response is not None:
            await webhooks.response_settled(session, organization_id, response_id)  # the outbox (docs/webhooks.md)
        await session.commit()
    return stored(response) if response is not None else None


async def cancel_response(session: AsyncSession, hub: StreamHub, organization_id: str, response_id: str) -> StoredTurn:
    """Cancel a background response (idempotent: a finished one is returned as it is)."""
    response = await get_row(session, organization_id, response_id)
    if not stored(response).echo.get("background"):
        raise InvalidRequest(
            f"Response '{response_id}' cannot be cancelled: only background responses can be (a streamed response "
            "stops when its client disconnects).",
            code="response_not_cancellable",
            param="response_id",
        )
    repo = ResponseRepository(session)
    now = utcnow()
    changed = False
    if response.status == QUEUED:
        changed = await repo.finish_queued(organization_id, response_id, "cancelled", now) is not None
    elif response.status == IN_PROGRESS and response.thread_id is not None:
        # The thread row first, then the response row: the order the turn's own saving transaction takes them.
        # A turn that released the lease first is saving its answer: it completes, not cancelled.
        released = await ThreadRepository(session).release_lease(organization_id, response.thread_id, response_id)
        changed = released and await repo.cancel_if_in_progress(organization_id, response_id, now)
    if changed:
        await announce_cancel(session, hub, organization_id, response_id)
        await webhooks.response_settled(session, organization_id, response_id)
    await session.refresh(response)
    return stored(response)


def retry_delay(seconds: float) -> float:
    """A little past `seconds`: a lease is live up to its expiry (inclusive)."""
    return seconds + timedelta(milliseconds=200).total_seconds()
