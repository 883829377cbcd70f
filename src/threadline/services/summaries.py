"""Where a conversation's context starts: its newest compaction item (docs/compaction.md); and the items a
request names by reference, which the compaction requests resolve like a turn does.

The newest compaction item of a conversation's path (docs/chains.md) is found with one indexed query over all its
segments, so a turn still reads O(window) rows: the items the summary covers are never read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from threadline.domain.compaction import CompactionRecord, framed
from threadline.domain.context import Summary
from threadline.domain.messages import ChatMessage, ItemReference
from threadline.errors import NotFound
from threadline.storage.repositories.messages import ContextRow, MessageRepository

if TYPE_CHECKING:
    from threadline.services.conversation import Segment


async def newest_summary(
    repo: MessageRepository, organization_id: str, segments: Sequence[Segment], count: Callable[[ContextRow], int]
) -> Summary | None:
    """The conversation's newest compaction item (segments newest first), with its tokens as `count` prices them."""
    found = await repo.newest_compaction(organization_id, [(s.thread_id, s.after_seq, s.before_seq) for s in segments])
    if found is None:
        return None
    thread_id, row = found
    record = CompactionRecord.of(row.payload, row.seq)
    return Summary(
        item_id=row.id,
        seq=row.seq,
        first_seq=record.first_seq,
        last_seq=record.last_seq,
        content=framed(row.content),
        tokens=count(row),
        model=record.model,
        thread_id=thread_id,
    )


def after(segments: Sequence[Segment], last_seq: int) -> list[Segment]:
    """The part of the path after `last_seq`: segments that end at or before it are gone, the others start above it
    (seqs rise along the whole path, so one number cuts every segment)."""
    return [
        dataclasses.replace(segment, after_seq=max(segment.after_seq, last_seq))
        for segment in segments
        if segment.last_seq is None or segment.last_seq > last_seq
    ]


async def resolve_references(
    repo: MessageRepository, organization_id: str, inputs: Sequence[ChatMessage | ItemReference], param: str
) -> list[ChatMessage]:
    """`inputs` with every `item_reference` replaced by the live item of the organization it names (else 404)."""
    out: list[ChatMessage] = []
    for index, item in enumerate(inputs):
        if not isinstance(item, ItemReference):
            out.append(item)
            continue
        found = await repo.get_any(organization_id, item.id)
        if found is None:
            raise NotFound(f"Item with id '{item.id}' not found.", code="item_not_found", param=f"{param}.{index}.id")
        name = (found.payload or {}).get("name")
        out.append(ChatMessage(found.role, found.content, found.type, found.call_id, name))  # type: ignore[arg-type]
    return out
