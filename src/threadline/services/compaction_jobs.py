"""Background compaction (docs/compaction.md): a saved turn whose prompt asked for a new summary queues a job
(services/jobs.py), and the job writes it, so the next turns start from it and no turn waits for a summary.

A turn asks when its prompt passed the thread's `compact_at` share of the window (else its assistant's, else the
server's), or when a `smart` prompt left out items no summary covers (`THREADLINE_SMART_SUMMARIES`). The summary
leaves the newest half of the turn's history budget as it was said, after it. Jobs of one thread run one at a
time, and a job that finds nothing left to summarise (an earlier job did it) is done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline.config import Settings
from threadline.domain.compaction import compaction_due
from threadline.errors import Conflict, InvalidRequest, NotFound
from threadline.providers.registry import ModelRegistry
from threadline.services import compaction, jobs
from threadline.storage.repositories.assistants import AssistantRepository
from threadline.storage.repositories.threads import FreedThread

logger = logging.getLogger("threadline.compaction")

KIND = "compaction.thread"


async def enqueue_if_due(
    session: AsyncSession,
    settings: Settings,
    thread: FreedThread,
    report: Mapping[str, Any],
    mode: str,
    window: int,
    assistant_compact_at: tuple[str, float | None] | None = None,
) -> None:
    """In a turn's saving transaction: queue the thread's compaction if the turn's context `report` (its prompt
    in `mode`, for a model of `window` tokens) asks for one. `assistant_compact_at`: (an assistant, its
    `compact_at`) as the turn's start read them; the thread's assistant is read only when it is another."""
    if report.get("compaction_item"):
        return  # the turn compacted first: its summary is fresh
    compact_at = thread.compact_at
    if compact_at is None and thread.assistant_id is not None:
        if assistant_compact_at is not None and assistant_compact_at[0] == thread.assistant_id:
            compact_at = assistant_compact_at[1]
        else:
            assistant = await AssistantRepository(session).get(thread.organization_id, thread.assistant_id)
            compact_at = assistant.compact_at if assistant is not None else None
    compact_at = compact_at if compact_at is not None else settings.compact_at
    if not compaction_due(
        report, mode=mode, window=window, compact_at=compact_at, smart_summaries=settings.smart_summaries
    ):
        return
    await jobs.enqueue(
        session,
        organization_id=thread.organization_id,
        kind=KIND,
        payload={"thread_id": thread.id, "keep_tokens": keep_tokens(report, window, compact_at, settings)},
        queue_key=f"compaction:{thread.id}",
        max_attempts=3,
    )


def keep_tokens(report: Mapping[str, Any], window: int, compact_at: float | None, settings: Settings) -> int:
    """How much of the newest history the summary leaves as it was said: half the history budget, or, under a
    `compact_at` share, half of what the share leaves once the fixed part and a summary are in, so that the next
    prompts fall back well under it."""
    budget = int(report.get("history_budget", 0))
    if compact_at is None:
        return budget // 2
    fixed = window - int(report.get("max_output_tokens", 0)) - budget
    return max(0, min(budget // 2, (int(compact_at * window) - fixed - settings.summary_max_tokens) // 2))


def handler(
    maker: async_sessionmaker[AsyncSession], settings: Settings, models: ModelRegistry
) -> Callable[[jobs.QueuedJob], Coroutine[Any, Any, None]]:
    """The job handler (registered on the app's runner). A summary that fails is retried with backoff; a thread
    that is gone, archived or locked ends the job."""

    async def run(job: jobs.QueuedJob) -> None:
        request = compaction.ThreadCompaction(
            job.organization_id,
            str(job.payload["thread_id"]),
            keep_tokens=int(job.payload.get("keep_tokens", 0)),
            reason="background",
        )
        try:
            await compaction.compact_thread(maker, settings, models, request)
        except InvalidRequest as exc:
            if exc.code == "nothing_to_compact":
                return
            raise jobs.JobFailed(f"{exc.code}: {exc.message}") from exc
        except (NotFound, Conflict) as exc:
            raise jobs.JobFailed(f"{exc.code}: {exc.message}") from exc

    return run
