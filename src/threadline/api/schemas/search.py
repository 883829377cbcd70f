"""Search results: thread objects (as in the list) with the newest matching message and a snippet."""

from __future__ import annotations

from threadline.api.schemas.freddy import ListEnvelope, ThreadRead
from threadline.services.search import SearchHit
from threadline.storage.repositories.pagination import Page


class ThreadSearchRead(ThreadRead):
    matched_message_id: str | None
    snippet: str | None

    @classmethod
    def of_hit(cls, hit: SearchHit) -> ThreadSearchRead:
        return cls(**ThreadRead.of(hit.thread).model_dump(), matched_message_id=hit.message_id, snippet=hit.snippet)


class ThreadSearchList(ListEnvelope):
    data: list[ThreadSearchRead]
    query_terms: list[str]

    @classmethod
    def of(cls, page: Page[SearchHit], limit: int, terms: list[str]) -> ThreadSearchList:
        return cls.of_data([ThreadSearchRead.of_hit(h) for h in page.items], page, limit, query_terms=terms)
