"""Thread search: threads whose title or live messages contain the query's words, newest first."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from threadline.domain.search import parse_query, snippet
from threadline.storage.repositories.pagination import Page, PageRequest
from threadline.storage.repositories.search import SearchRepository
from threadline.storage.repositories.threads import ThreadFilter
from threadline.storage.tables import Thread


@dataclass(frozen=True)
class SearchHit:
    thread: Thread
    # The newest matching message of the thread (None when only the title matched).
    message_id: str | None
    snippet: str | None


async def search_threads(
    session: AsyncSession, where: ThreadFilter, q: str, page: PageRequest
) -> tuple[Page[SearchHit], list[str]]:
    """One page of matching threads (keyset on created_at, id like the list) and the words searched for."""
    terms = parse_query(q)
    found, hits = await SearchRepository(session).search(where, terms, page)
    items = []
    for thread in found.items:
        hit = hits.get(thread.id)
        if hit is not None:
            items.append(SearchHit(thread, hit.message_id, snippet(hit.content, terms)))
        else:
            items.append(SearchHit(thread, None, snippet(thread.title, terms) if thread.title else None))
    return Page(items=items, has_more=found.has_more, total=found.total), terms
