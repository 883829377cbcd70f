"""The start's first part: find or create the turn's thread and take its lease (docs/leases.md).

The turn's id doubles as the lease owner, so a takeover knows which turn was interrupted. For
`previousResponseId` the thread is the chain to append to, or a new chain forked from the previous response
(docs/chains.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from threadline.config import Settings
from threadline.domain import leases
from threadline.domain.turns import COMPLETED
from threadline.errors import InvalidRequest, NotFound, ThreadNotFound
from threadline.services import threads as thread_service
from threadline.services import webhooks
from threadline.services.auth import Principal
from threadline.services.conversation import MAX_CHAIN_SEGMENTS, Segment, conversation_path, segments_of
from threadline.storage.repositories.responses import ResponseRepository
from threadline.storage.repositories.threads import LeasedThread, PathRow, PreviousResponse, ThreadRepository
from threadline.storage.tables import Thread
from threadline.turns.request import TurnRequest


@dataclass(frozen=True)
class LeaseAttempt:
    """One try at taking the thread, inside the start's transaction."""

    session: AsyncSession
    settings: Settings
    principal: Principal
    request: TurnRequest
    owner: str
    now: datetime

    @property
    def expires_at(self) -> datetime:
        return self.now + timedelta(seconds=self.settings.thread_lease_seconds)

    async def take(self) -> tuple[LeasedThread, list[Segment]] | None:
        """The leased thread and its conversation's path (services/conversation.py); None while another live turn
        holds it."""
        if self.request.previous_response_id is not None:
            return await self._chain(self.request.previous_response_id)
        thread = await self._thread()
        if thread is None:
            return None
        return thread, await conversation_path(self.session, thread)

    async def _thread(self) -> LeasedThread | None:
        """Fast path (an existing, idle thread): one UPDATE … RETURNING. Otherwise read the thread to tell apart a
        missing thread (create it), a busy one (wait) and one whose holder died (take the lease over).
        """
        request = self.request
        org = request.organization_id
        repo = ThreadRepository(self.session)
        thread_id = request.thread_id
        if thread_id is not None:
            leased = await repo.acquire_free_lease(org, thread_id, self.owner, self.expires_at)
            if leased is not None:
                return leased
            found = await repo.get(org, thread_id)
            if found is not None:
                return await self._take_over(found)
            if await repo.exists(org, thread_id):
                # Deleted (its id stays taken) — or created by a concurrent request a moment ago: retry to tell.
                if await repo.get(org, thread_id) is None:
                    raise ThreadNotFound(thread_id, param="thread")
                return None
            if request.thread_must_exist:
                raise ThreadNotFound(thread_id, param="thread")
        creator = thread_service.create_thread if request.store else thread_service.create_hidden_thread
        created = await creator(
            self.session, self.principal, org, thread_id=thread_id, metadata=request.thread_metadata
        )
        return await self._lease_new(created)

    async def _lease_new(self, thread: Thread) -> LeasedThread:
        leased = await ThreadRepository(self.session).acquire_free_lease(
            thread.organization_id, thread.id, self.owner, self.expires_at
        )
        assert leased is not None, "a thread created in this transaction is free"
        return leased

    async def _chain(self, previous_id: str) -> tuple[LeasedThread, list[Segment]]:
        """`previousResponseId = R`: the turn's context is R's conversation up to and including R's output.

        When R is the latest turn of an idle chain thread, the turn is appended to that chain. Otherwise (R in a
        plain or `store=false` thread, an earlier turn of a chain, a chain busy with another continuation of R) a
        new hidden chain thread forks from R: it records (R's thread, R's output seq) as its parent and copies
        nothing. So a branch never waits for another, and a linear chain stays one thread. Appending to the chain
        takes one statement (the lease and the chain's path); otherwise R, its thread and the thread's path come
        from one statement, and the path of the turn's thread follows from it.
        """
        org = self.request.organization_id
        repo = ThreadRepository(self.session)
        created_after = self.now - timedelta(hours=self.settings.response_chain_hours)
        continued = await repo.continue_chain(
            org, previous_id, self.owner, self.expires_at, created_after, MAX_CHAIN_SEGMENTS + 1
        )
        if continued is not None:
            # The usual case, in one statement: R is the latest turn of its idle chain.
            return _appended(*continued)
        previous = await repo.previous_response(org, previous_id, MAX_CHAIN_SEGMENTS + 1)
        if previous is None:
            raise NotFound(
                f"No response found with id '{previous_id}'.",
                code="previous_response_not_found",
                param="previous_response_id",
            )
        output_seq = self._chainable(previous)
        parent, path = previous.thread, previous.path
        if parent is None:
            # The conversation R belongs to was deleted.
            raise NotFound(
                f"Response '{previous.id}' belongs to a conversation that was deleted.",
                code="previous_response_not_found",
                param="previous_response_id",
            )
        if parent.kind == "chain" and parent.state == "open" and output_seq == parent.next_seq - 1:
            # The lease is taken only while nothing was appended since R (the condition is part of the UPDATE).
            leased = await repo.acquire_free_lease(org, parent.id, self.owner, self.expires_at, next_seq=output_seq + 1)
            if leased is not None:
                return _appended(leased, path)
        chain = await thread_service.create_chain_thread(self.session, self.principal, parent, output_seq)
        fork = PathRow(chain.id, parent.id, output_seq, 0, False)
        return await self._lease_new(chain), segments_of([fork, *path])

    def _chainable(self, previous: PreviousResponse) -> int:
        """Raise unless `previous` can be continued; returns the seq of its output (where its conversation ends)."""
        hours = self.settings.response_chain_hours
        if self.now - previous.created_at > timedelta(hours=hours):
            raise InvalidRequest(
                f"Response '{previous.id}' is older than {hours:g} hours and can no longer be continued; start a "
                "thread instead.",
                code="previous_response_expired",
                param="previous_response_id",
            )
        if previous.status != COMPLETED or previous.thread_id is None or previous.output_seq is None:
            raise InvalidRequest(
                f"Response '{previous.id}' did not complete ({previous.status}); only completed responses can be "
                "continued.",
                code="previous_response_not_completed",
                param="previous_response_id",
            )
        return previous.output_seq

    async def _take_over(self, thread: Thread) -> LeasedThread | None:
        """Take the lease of a thread whose holder stopped renewing it (a crashed server); None if it is alive."""
        holder = thread.lease_owner
        if leases.thread_status(thread.status, thread.lease_expires_at, self.now) == thread.status:
            return None  # busy (a live lease), or freed a moment ago: the next attempt's fast path takes it
        repo = ThreadRepository(self.session)
        org = thread.organization_id
        leased = await repo.take_over_lease(org, thread.id, holder, self.owner, self.now, self.expires_at)
        if leased is None:
            return None
        if holder is not None and await ResponseRepository(self.session).fail_if_in_progress(
            org, holder, leases.interrupted_error(), self.now
        ):
            await webhooks.response_settled(self.session, org, holder)
        return leased


def _appended(leased: LeasedThread, path: list[PathRow]) -> tuple[LeasedThread, list[Segment]]:
    """A chain leased to append to, and its conversation's segments (`path`: the chain first). The lease's count
    is the current one: a message may have been deleted since the path was read."""
    own = path[0]._replace(message_count=leased.message_count)
    return leased, segments_of([own, *path[1:]])
