"""Crash recovery: the turns of a stopped server (their leases expired), settled so the rows say what they are.

The rules are `domain.leases`: readers already see an expired lease's thread as `inactive` and its response as
`failed` (`turn_interrupted`). Settling makes the rows say so too:

- lazily, when a read finds such a response or run (`settle_response`, `settle_runs`);
- at start-up (`threadline serve`'s lifespan, before the first request) and every `thread_lease_seconds` after
  (`run_periodically`), for every streaming thread whose lease expired (`settle_expired`).

Each step is a conditional UPDATE on the thread (still streaming, still the same holder, lease still expired),
then the holder's response if it is still in progress, in that order and in one transaction: the order in which
a turn's own saving transaction takes the two rows. So any number of processes may settle at once: a thread whose
turn is alive elsewhere (its heartbeat keeps the lease live) is never touched, a thread settled twice is settled
once, and a turn that revives (a heartbeat after a long stall) finds its lease gone and saves nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline.config import Settings
from threadline.domain import leases as rules
from threadline.domain.clock import utcnow
from threadline.services import webhooks
from threadline.storage.repositories.responses import ResponseRepository
from threadline.storage.repositories.threads import ThreadRepository
from threadline.storage.tables import Response, Thread

logger = logging.getLogger("threadline.recovery")

# Expired threads looked up per query by `settle_expired`; each is then settled in its own short transaction.
_BATCH = 100
_START_TIMEOUT_SECONDS = 30.0


async def _settle_lease(
    session: AsyncSession, organization_id: str, thread_id: str, holder: str | None, now: datetime
) -> bool:
    """Free the thread if `holder`'s lease on it expired, and fail the holder's response; True if it was freed."""
    if not await ThreadRepository(session).settle_expired_lease(organization_id, thread_id, holder, now):
        return False
    if holder is not None and await ResponseRepository(session).fail_if_in_progress(
        organization_id, holder, rules.interrupted_error(), now
    ):
        await webhooks.response_settled(session, organization_id, holder)
    return True


async def settle_thread(session: AsyncSession, thread: Thread, now: datetime | None = None) -> None:
    """Write down what `thread`'s expired lease means (nothing if its lease is live); `thread` is refreshed."""
    now = now or utcnow()
    if rules.thread_status(thread.status, thread.lease_expires_at, now) == thread.status:
        return
    await _settle_lease(session, thread.organization_id, thread.id, thread.lease_owner, now)
    await session.refresh(thread)


async def settle_response(
    session: AsyncSession, response: Response, thread: Thread | None, now: datetime | None = None
) -> None:
    """A response still `in_progress` whose turn is not alive (`thread`: its thread, None if gone) is failed.

    Through its thread when the response still holds the thread's lease (the thread is freed in the same step);
    directly when it holds no lease at all (nothing can finish it). `response` (and `thread`) are refreshed."""
    now = now or utcnow()
    owner = thread.lease_owner if thread is not None else None
    expires_at = thread.lease_expires_at if thread is not None else None
    if rules.response_status(response.status, response.id, owner, expires_at, now) == response.status:
        return
    if thread is not None and owner == response.id:
        await settle_thread(session, thread, now)
    elif await ResponseRepository(session).fail_if_in_progress(
        response.organization_id, response.id, rules.interrupted_error(), now
    ):
        await webhooks.response_settled(session, response.organization_id, response.id)
    await session.refresh(response)


async def settle_runs(session: AsyncSession, thread: Thread, responses: Sequence[Response]) -> None:
    """`settle_response` for every response of `thread` on a page (an Assistants thread's runs)."""
    now = utcnow()
    for response in responses:
        await settle_response(session, response, thread, now)


async def settle_expired(maker: async_sessionmaker[AsyncSession], now: datetime | None = None) -> int:
    """Settle every thread left streaming under an expired lease (a dead predecessor's turns), in every
    organization; returns how many were settled. Threads whose lease is live are never touched."""
    settled = 0
    while True:
        at = now or utcnow()
        async with maker() as session:
            found = await ThreadRepository(session).expired_leases(at, _BATCH)
            await session.commit()
        done = 0
        for organization_id, thread_id, holder in found:
            async with maker() as session:
                if await _settle_lease(session, organization_id, thread_id, holder, at):
                    done += 1
                await session.commit()
        settled += done
        # Fewer than a batch: that was all. A full batch none of which could be settled (others settled them
        # meanwhile, or took them over): stop rather than find the same rows again.
        if len(found) < _BATCH or done == 0:
            return settled


async def settle_at_start(maker: async_sessionmaker[AsyncSession]) -> None:
    """The start-up pass: a restarted server settles what its predecessor left before it serves. A database that
    cannot be reached yet (or is not migrated) does not stop the start: the periodic pass retries."""
    try:
        # Bounded: a database that does not answer yet must not hold the start up for a driver's connect timeout.
        async with asyncio.timeout(_START_TIMEOUT_SECONDS):
            settled = await settle_expired(maker)
    except Exception:
        logger.exception("could not settle expired turn leases at start-up")
        return
    if settled:
        logger.info("settled %d thread(s) left streaming by a stopped server", settled)


async def run_periodically(maker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
    """Every `thread_lease_seconds` (between 1 s and 60 s): settle leases that expired since. Never raises (a
    failed pass is logged and retried next time); cancel it to stop."""
    interval = min(max(settings.thread_lease_seconds, 1.0), 60.0)
    while True:
        await asyncio.sleep(interval)
        try:
            settled = await settle_expired(maker)
        except Exception:
            logger.exception("settling expired turn leases failed")
            continue
        if settled:
            logger.info("settled %d thread(s) whose turn lease expired", settled)
