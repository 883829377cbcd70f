"""Stored turns after the fact, in the request's transaction: read one (settling a turn whose server died), the
input items it saved, deleting one, cancelling one.

Deleting a response removes its record only. The messages the turn saved belong to the thread (a conversation's
items, a Freddy thread's history) and stay there; the response can no longer be retrieved or continued with
`previous_response_id`. Threadline runs no background responses, so none can be cancelled.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from threadline.domain.turns import IN_PROGRESS, StoredTurn
from threadline.errors import Conflict, InvalidRequest, NotFound
from threadline.services import recovery
from threadline.storage.repositories.messages import MessageRepository
from threadline.storage.repositories.pagination import Page, PageRequest
from threadline.storage.repositories.responses import ResponseRepository
from threadline.storage.repositories.threads import ThreadRepository
from threadline.storage.tables import Message, Response
from threadline.turns.record import stored


async def get_row(session: AsyncSession, organization_id: str, response_id: str) -> Response:
    found = await ResponseRepository(session).get(organization_id, response_id)
    if found is None:
        raise NotFound(f"No response found with id '{response_id}'.", code="response_not_found", param="response_id")
    if found.status == IN_PROGRESS:
        # A turn whose server died cannot finish once its lease is gone: say so now (and free its thread)
        # instead of leaving it in progress until the next turn on the thread takes over (docs/leases.md).
        thread = None
        if found.thread_id is not None:
            thread = await ThreadRepository(session).get(organization_id, found.thread_id, include_deleted=True)
        await recovery.settle_response(session, found, thread)
    return found


async def get_turn(session: AsyncSession, organization_id: str, response_id: str) -> StoredTurn:
    return stored(await get_row(session, organization_id, response_id))


async def list_inputs(
    session: AsyncSession, organization_id: str, response_id: str, page: PageRequest
) -> Page[Message]:
    """The live messages a completed turn saved as its inputs; a turn that saved nothing (failed) has none."""
    turn = await get_turn(session, organization_id, response_id)
    if turn.thread_id is None or turn.input_seqs is None:
        return Page(items=[], has_more=False)
    return await MessageRepository(session).list_page(
        organization_id, turn.thread_id, page, response_id=turn.id, seqs=turn.input_seqs
    )


async def delete_turn(session: AsyncSession, organization_id: str, response_id: str) -> StoredTurn:
    row = await get_row(session, organization_id, response_id)
    if row.status == IN_PROGRESS:
        raise Conflict(
            f"Response '{response_id}' is still being generated; delete it once it has finished.",
            code="response_in_progress",
        )
    turn = stored(row)
    await ResponseRepository(session).delete(row)
    return turn


async def cancel_response(session: AsyncSession, organization_id: str, response_id: str) -> StoredTurn:
    """Always refused (after the existence check), as OpenAI refuses to cancel a response that is not
    `background`: a turn runs in the request that started it, and ends when that client disconnects."""
    await get_row(session, organization_id, response_id)
    raise InvalidRequest(
        f"Response '{response_id}' cannot be cancelled: only background responses can be, and Threadline runs "
        "none (a streamed response stops when its client disconnects).",
        code="response_not_cancellable",
        param="response_id",
    )
