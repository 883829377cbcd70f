"""GET /v1/threads/search: threads by the words of their title and messages (full-text indexes).

Included before the threads router so that `/v1/threads/search` is not taken for a thread id.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from threadline.api.deps import OrganizationDep, SessionDep
from threadline.api.schemas.common import ID_PATTERN, LimitQuery, OrderQuery
from threadline.api.schemas.freddy import CursorQuery
from threadline.api.schemas.search import ThreadSearchList
from threadline.domain.search import MAX_QUERY_CHARS
from threadline.services import search
from threadline.storage.repositories.pagination import PageRequest
from threadline.storage.repositories.threads import ThreadFilter

router = APIRouter(prefix="/v1", tags=["threads"])


@router.get("/threads/search", response_model=ThreadSearchList)
async def search_threads(
    session: SessionDep,
    organization_id: OrganizationDep,
    q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS, description="Words to find (all of them).")],
    limit: LimitQuery = 20,
    order: OrderQuery = "desc",
    # Patterned like ids everywhere: a NUL would otherwise reach PostgreSQL (a 500 the fuzz test finds).
    after: CursorQuery = None,
    before: CursorQuery = None,
    assistant_id: Annotated[str | None, Query(max_length=128, pattern=ID_PATTERN)] = None,
    include_deleted: bool = False,
    visible_in_ui: bool = True,
) -> ThreadSearchList:
    where = ThreadFilter(
        organization_id=organization_id,
        assistant_id=assistant_id,
        visible_in_ui=visible_in_ui,
        include_deleted=include_deleted,
    )
    page = PageRequest(limit=limit, order=order, after=after, before=before)
    found, terms = await search.search_threads(session, where, q, page)
    return ThreadSearchList.of(found, limit, terms)
