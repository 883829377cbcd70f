"""Replaying and following a recorded stream (`GET …?stream=true&starting_after=N`, a background response's
streamed create), for both surfaces: each passes how to close a stream that ended without its last event."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline.api.sse import EventFramer, replayed
from threadline.domain.turns import IN_PROGRESS, QUEUED, StoredTurn
from threadline.errors import InvalidRequest
from threadline.services import response_streams
from threadline.services.response_streams import TERMINAL, StreamHub
from threadline.turns import stored

# The last event of a stream that ended without one (its process died, it was cancelled): (type, payload).
FinalEvent = Callable[[StoredTurn], tuple[str, dict[str, Any]]]


async def _current(maker: async_sessionmaker[AsyncSession], organization_id: str, response_id: str) -> StoredTurn:
    async with maker() as session:
        # get_turn settles a turn whose lease expired (its process died) as failed.
        turn = await stored.get_turn(session, organization_id, response_id)
        await session.commit()
    return turn


async def check_replay(
    maker: async_sessionmaker[AsyncSession], organization_id: str, response_id: str, starting_after: int | None
) -> int:
    """Refuse what cannot be replayed (404 unknown response, 400 never streamed or past the end) before any event
    is sent; returns the sequence number to replay after."""
    await _current(maker, organization_id, response_id)
    last = await response_streams.last_sequence(maker, organization_id, response_id)
    if last is None:
        raise InvalidRequest(
            f"Response '{response_id}' has no stream to resume: it was not streamed (nor run in the background), or "
            "its events are past their retention. Retrieve it without 'stream'.",
            code="response_not_streamed",
            param="stream",
        )
    after = -1 if starting_after is None else starting_after
    if after > last:
        raise InvalidRequest(
            f"starting_after={after} is past the end of the stream of response '{response_id}' (its last event so "
            f"far is {last}).",
            code="invalid_starting_after",
            param="starting_after",
        )
    return after


async def follow_frames(
    maker: async_sessionmaker[AsyncSession],
    hub: StreamHub,
    organization_id: str,
    response_id: str,
    after: int,
    final: FinalEvent,
) -> AsyncIterator[str]:
    """The recorded events after `after`, then the live ones, framed; closed with `final` when the stream ends
    without a last event (that one is sent, not recorded)."""

    async def is_over() -> bool:
        return (await _current(maker, organization_id, response_id)).status not in (QUEUED, IN_PROGRESS)

    last = after
    async for event in response_streams.follow(maker, hub, organization_id, response_id, after, is_over):
        last = event.sequence_number
        yield replayed(event)
        if event.type in TERMINAL:
            return
    name, payload = final(await _current(maker, organization_id, response_id))
    yield EventFramer(start=last + 1).frame(name, payload)
