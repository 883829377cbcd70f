"""The job that runs a background response (turns/background.py), on either surface: the turn runs
as a streamed one would, its events recorded (docs/streams.md) for whoever follows the stream, from any process.

It lives with the routes because it speaks their wire formats: the events a follower gets are the ones a streamed
create would have sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline.api.routes import openai_responses
from threadline.api.routes import responses as freddy_responses
from threadline.api.schemas.openai_responses import OpenAIResponseCreate
from threadline.api.schemas.responses import ResponseCreate
from threadline.api.sse import EventFramer
from threadline.api.streams import FinalEvent
from threadline.domain.turns import IN_PROGRESS, QUEUED, StoredTurn
from threadline.errors import (
    DatabaseUnavailable,
    RateLimited,
    ResponseNotQueued,
    ServiceUnavailable,
    ThreadBusy,
    ThreadlineError,
)
from threadline.services import jobs, response_streams
from threadline.services.response_streams import TERMINAL, EventRecorder, StreamHub, stream_key
from threadline.turns import background
from threadline.turns.engine import TurnEngine
from threadline.turns.request import TurnRequest
from threadline.turns.turn import Turn

# Refusals that can pass: the job is tried again later (a busy thread, the credential's turns all taken…).
_TRANSIENT = (ThreadBusy, RateLimited, ServiceUnavailable, DatabaseUnavailable)


@dataclass(frozen=True)
class Surface:
    """How one API's background responses are rebuilt, streamed and closed."""

    request: Callable[[dict[str, Any], str], TurnRequest]
    frames: Callable[..., AsyncGenerator[str, None]]
    final: FinalEvent
    # Freddy turns are heard by the observer of saved turns (auto-naming), as in the foreground.
    observed: bool


def _openai_request(body: dict[str, Any], organization_id: str) -> TurnRequest:
    return OpenAIResponseCreate.model_validate(body).to_request(organization_id)


def _freddy_request(body: dict[str, Any], organization_id: str) -> TurnRequest:
    return ResponseCreate.model_validate(body).to_request(organization_id)


SURFACES = {
    "openai": Surface(_openai_request, openai_responses.stream_frames, openai_responses.final_event, False),
    "freddy": Surface(_freddy_request, freddy_responses.stream_frames, freddy_responses.final_event, True),
}


def handler(turns: TurnEngine, hub: StreamHub) -> jobs.Handler:
    """The handler of `turns.background.JOB_KIND` jobs."""
    maker = turns.maker

    async def run(job: jobs.QueuedJob) -> None:
        org, response_id = job.organization_id, str(job.payload["response_id"])
        surface = SURFACES[str(job.payload["surface"])]
        response = await background.load(maker, org, response_id)
        if response is None:
            return  # deleted meanwhile
        if response.status == IN_PROGRESS:
            # An earlier attempt was interrupted mid-turn (its process died): once the turn's lease runs out the
            # response is settled failed (`load`). It is not run again: its stream was partly sent already.
            left = await background.lease_left(maker, response)
            raise jobs.RetryJob(
                "the interrupted turn's lease has not expired yet", delay_seconds=background.retry_delay(left)
            )
        if response.status != QUEUED:
            await close_stream(maker, hub, response, surface.final)
            return
        try:
            request = surface.request(dict(job.payload["body"]), org)
            request = dataclasses.replace(
                request, response_id=response_id, record={**request.record, "background": True}
            )
            turn = await turns.start(background.principal_of(job.payload), request, observed=surface.observed)
        except ResponseNotQueued:
            found = await background.load(maker, org, response_id)  # cancelled meanwhile
            if found is not None:
                await close_stream(maker, hub, found, surface.final)
            return
        except _TRANSIENT as exc:
            if job.attempt < job.max_attempts:
                raise jobs.RetryJob(exc.message) from exc
            await _fail(maker, hub, org, response_id, exc, surface.final)
            return
        except ThreadlineError as exc:
            await _fail(maker, hub, org, response_id, exc, surface.final)
            return
        await run_recorded(turns, hub, turn, surface)

    return run


async def _fail(
    maker: async_sessionmaker[AsyncSession],
    hub: StreamHub,
    organization_id: str,
    response_id: str,
    error: ThreadlineError,
    final: FinalEvent,
) -> None:
    """The turn could not start (its conversation is gone, its input does not fit…): the response is failed."""
    failed = await background.fail_unstarted(maker, organization_id, response_id, error.code, error.message)
    if failed is not None:
        await close_stream(maker, hub, failed, final)


async def run_recorded(turns: TurnEngine, hub: StreamHub, turn: Turn, surface: Surface) -> None:
    """Run the turn to its end with no client attached, recording its events; a cancel stops it at once."""
    maker = turns.maker
    org, response_id = turn.organization_id, turn.id
    last = await response_streams.last_sequence(maker, org, response_id)
    recorder = EventRecorder(maker, hub, org, response_id)
    framer = EventFramer(recorder.add, start=(-1 if last is None else last) + 1)
    frames = surface.frames(turns.run(turn), turn, framer, queued=True)
    with hub.cancellation(stream_key(org, response_id)) as cancelled:
        consume = asyncio.create_task(_consume(frames), name=f"background {response_id}")
        watch = asyncio.create_task(cancelled.wait())
        try:
            await asyncio.wait({consume, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not consume.done():
                # Cancelled (or this job is being stopped): the turn stops now; its cleanup saves nothing.
                consume.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consume
            if cancelled.is_set():
                found = await background.load(maker, org, response_id)
                if found is not None:
                    name, payload = surface.final(found)
                    framer.frame(name, payload)
            await recorder.aclose()


async def _consume(frames: AsyncGenerator[str, None]) -> None:
    async with contextlib.aclosing(frames):
        async for _ in frames:
            pass


async def close_stream(
    maker: async_sessionmaker[AsyncSession], hub: StreamHub, response: StoredTurn, final: FinalEvent
) -> None:
    """Record the last event of a response's stream if it has none yet (cancelled, failed before it started,
    interrupted): its followers, in any process, then end."""
    org = response.organization_id
    last = await response_streams.last_event(maker, org, response.id)
    if last is not None and last.type in TERMINAL:
        return
    recorder = EventRecorder(maker, hub, org, response.id)
    name, payload = final(response)
    EventFramer(recorder.add, start=(last.sequence_number if last is not None else -1) + 1).frame(name, payload)
    await recorder.aclose()
