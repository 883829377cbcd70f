"""Stored responses after their turn: the input items a turn saved, deleting a response.

Deleting a response removes its record only. The messages the turn saved belong to the thread (a conversation's
items, a Freddy thread's history) and stay there; the response can no longer be retrieved or continued with
`previous_response_id`. (Cancelling a background response: services/background_responses.py.)
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from threadline.errors import Conflict
from threadline.services.responses import get_response
from threadline.storage.repositories.messages import MessageRepository
from threadline.storage.repositories.pagination import Page, PageRequest
from threadline.storage.repositories.responses import ResponseRepository
from threadline.storage.tables import Message, Response


async def list_inputs(
    session: AsyncSession, organization_id: str, response_id: str, page: PageRequest
) -> Page[Message]:
    """The live messages a completed turn saved as its inputs; a turn that saved nothing (failed) has none."""
    response = await get_response(session, organization_id, response_id)
    first, last = response.input_first_seq, response.input_last_seq
    if response.thread_id is None or first is None or last is None:
        return Page(items=[], has_more=False)
    return await MessageRepository(session).list_page(
        organization_id, response.thread_id, page, response_id=response.id, seqs=(first, last)
    )


async def delete_response(session: AsyncSession, organization_id: str, response_id: str) -> Response:
    response = await get_response(session, organization_id, response_id)
    if response.status == "in_progress":
        raise Conflict(
            f"Response '{response_id}' is still being generated; delete it once it has finished.",
            code="response_in_progress",
        )
    await ResponseRepository(session).delete(response)
    return response
