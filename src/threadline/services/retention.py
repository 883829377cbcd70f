"""Retention: the limits of docs/freddy-spec.md, enforced by a sweeper.

What a sweep purges, in this order (each category excludes the ones before it, so a dry run counts exactly):

- `deleted_threads`: threads soft-deleted more than `deleted_thread_grace_days` ago;
- `expired_threads`: threads created more than `thread_max_age_days` ago;
- `expired_chains`: hidden `previousResponseId` chains (threads of kind "chain") with no turn for
  `response_chain_hours` — their responses can no longer be referenced — unless a chain still in use forked from
  them (its context reads through them): chains are purged leaf first, so a parent goes once its last live
  child has gone;
- `chain_responses`: response rows older than `response_chain_hours` in chains still in use (they only served
  chaining, and a link older than the window must not resolve);
- `inactive_thread_messages`: the messages (with their edit history, and the thread's responses, which hold
  copies of the text) of threads with no new message for `message_retention_days`; the thread stays, with
  `message_count` fixed;
- `deleted_messages`: messages soft-deleted more than `deleted_thread_grace_days` ago;
- `idempotency_keys`: expired Idempotency-Key records.

Purging a thread removes its messages, message edits and responses too. Every delete is a bounded batch in its
own short transaction. One sweep at a time across all processes on the database: the sweep holds the lease
"retention" (renewed while it runs); a process that cannot take it skips.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TypeVar

from sqlalchemy import ColumnElement
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline import observability
from threadline.config import Settings
from threadline.domain.clock import utcnow
from threadline.ids import new_id
from threadline.storage.repositories.idempotency import IdempotencyRepository
from threadline.storage.repositories.leases import LeaseRepository
from threadline.storage.repositories.retention import (
    Cutoffs,
    RetentionRepository,
    ThreadCategory,
    inactive_condition,
    thread_condition,
)

logger = logging.getLogger("threadline.retention")

LEASE_NAME = "retention"
LEASE_SECONDS = 300.0
CATEGORIES = (
    "deleted_threads",
    "expired_threads",
    "expired_chains",
    "chain_responses",
    "inactive_thread_messages",
    "deleted_messages",
    "idempotency_keys",
)
_THREAD_CATEGORIES: tuple[ThreadCategory, ...] = ("deleted_threads", "expired_threads", "expired_chains")
# Threads handled per batch; their rows are still deleted `retention_batch_size` at a time.
_THREADS_PER_BATCH = 50

T = TypeVar("T")
Progress = Callable[[str, int], Awaitable[None]]


@dataclass
class RetentionReport:
    """What a sweep purged (or, in a dry run, would purge), per category."""

    dry_run: bool
    # False when another process held the lease: this sweep did nothing.
    ran: bool = True
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def cutoffs(settings: Settings, now: datetime) -> Cutoffs:
    return Cutoffs(
        now=now,
        deleted_before=now - timedelta(days=settings.deleted_thread_grace_days),
        created_before=now - timedelta(days=settings.thread_max_age_days),
        chain_before=now - timedelta(hours=settings.response_chain_hours),
        inactive_before=now - timedelta(days=settings.message_retention_days),
    )


async def count_due(maker: async_sessionmaker[AsyncSession], settings: Settings, now: datetime) -> RetentionReport:
    """A dry run: what a sweep at `now` would purge. Reads only."""
    c = cutoffs(settings, now)
    report = RetentionReport(dry_run=True)
    async with maker() as session:
        repo = RetentionRepository(session)
        for category in _THREAD_CATEGORIES:
            report.counts[category] = await repo.count_threads(category, c)
        report.counts["chain_responses"] = await repo.count_chain_responses(c)
        report.counts["inactive_thread_messages"] = await repo.count_inactive_messages(c)
        report.counts["deleted_messages"] = await repo.count_deleted_messages(c)
        report.counts["idempotency_keys"] = await IdempotencyRepository(session).count_expired(now)
        await session.rollback()
    return report


async def sweep(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> RetentionReport:
    """Run one sweep (or count, with `dry_run`). `progress(category, rows)` is awaited after every batch."""
    now = now or utcnow()
    if dry_run:
        return await count_due(maker, settings, now)
    owner = new_id("sweep")
    if not await _in_tx(maker, lambda s: LeaseRepository(s).acquire(LEASE_NAME, owner, utcnow(), _lease_end())):
        return RetentionReport(dry_run=False, ran=False)
    try:
        return await _Sweep(maker, settings, cutoffs(settings, now), owner, progress).run()
    finally:
        try:
            await _in_tx(maker, lambda s: LeaseRepository(s).release(LEASE_NAME, owner))
        except Exception:  # the lease expires by itself
            logger.exception("could not release the retention lease")


def _lease_end() -> datetime:
    return utcnow() + timedelta(seconds=LEASE_SECONDS)


async def _in_tx(maker: async_sessionmaker[AsyncSession], work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """One short transaction."""
    async with maker() as session:
        result = await work(session)
        await session.commit()
        return result


class LeaseLost(Exception):
    """The sweep outlived its lease and another process took it: stop here."""


class _Sweep:
    def __init__(
        self,
        maker: async_sessionmaker[AsyncSession],
        settings: Settings,
        c: Cutoffs,
        owner: str,
        progress: Progress | None,
    ) -> None:
        self.maker = maker
        self.c = c
        self.owner = owner
        self.progress = progress
        self.batch = settings.retention_batch_size
        self.report = RetentionReport(dry_run=False)
        self.renewed_at = asyncio.get_running_loop().time()

    async def run(self) -> RetentionReport:
        try:
            for category in _THREAD_CATEGORIES:
                await self._purge_threads(category)
            await self._repeat("chain_responses", lambda r: r.purge_chain_responses(self.c, self.batch))
            await self._purge_inactive()
            await self._repeat("deleted_messages", lambda r: r.purge_deleted_messages(self.c, self.batch))
            await self._repeat_keys()
        except LeaseLost:
            logger.warning("retention sweep stopped: its lease was taken over")
        return self.report

    async def _step(self, category: str, rows: int) -> None:
        """After each committed batch: count, report progress, keep the lease."""
        self.report.counts[category] += rows
        observability.current().retention_purged(category, rows)
        if self.progress is not None:
            await self.progress(category, rows)
        loop_time = asyncio.get_running_loop().time()
        if loop_time - self.renewed_at > LEASE_SECONDS / 3:
            renewed = await _in_tx(self.maker, lambda s: LeaseRepository(s).renew(LEASE_NAME, self.owner, _lease_end()))
            if not renewed:
                raise LeaseLost
            self.renewed_at = loop_time

    async def _tx(self, work: Callable[[RetentionRepository], Awaitable[T]]) -> T:
        return await _in_tx(self.maker, lambda s: work(RetentionRepository(s)))

    async def _repeat(self, category: str, batch: Callable[[RetentionRepository], Awaitable[int]]) -> None:
        while (rows := await self._tx(batch)) > 0:
            await self._step(category, rows)

    async def _repeat_keys(self) -> None:
        while True:
            rows = await _in_tx(self.maker, lambda s: IdempotencyRepository(s).delete_expired(self.c.now, self.batch))
            if rows == 0:
                return
            await self._step("idempotency_keys", rows)

    async def _due(
        self, condition: ColumnElement[bool], seen: set[tuple[str, str]], stuck: set[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """The next threads to work on. A thread listed again after its turn could not be purged (it changed
        under the sweep): it is skipped from then on, so a sweep never loops."""
        while True:
            skip = sorted(stuck)
            keys = await self._tx(lambda r: r.due_threads(condition, _THREADS_PER_BATCH, skip))  # noqa: B023
            again = {k for k in keys if k in seen}
            if not again:
                seen.update(keys)
                return keys
            stuck |= again

    async def _purge_threads(self, category: ThreadCategory) -> None:
        condition = thread_condition(category, self.c)
        seen: set[tuple[str, str]] = set()
        stuck: set[tuple[str, str]] = set()
        while keys := await self._due(condition, seen, stuck):
            for organization_id, ids in _by_organization(keys).items():
                await self._purge_thread_rows(organization_id, ids, None, None)
                deleted = await self._tx(partial(_delete_threads, organization_id, ids, condition))
                await self._step(category, deleted)

    async def _purge_inactive(self) -> None:
        condition = inactive_condition(self.c)
        seen: set[tuple[str, str]] = set()
        stuck: set[tuple[str, str]] = set()
        while keys := await self._due(condition, seen, stuck):
            for organization_id, ids in _by_organization(keys).items():
                before = self.c.inactive_before
                await self._purge_thread_rows(organization_id, ids, before, "inactive_thread_messages")
                await self._tx(partial(_recount, organization_id, ids))

    async def _purge_thread_rows(
        self, organization_id: str, ids: list[str], created_before: datetime | None, counted_as: str | None
    ) -> None:
        """The threads' messages (with edits) and responses, one bounded batch per transaction."""
        purge_messages = partial(_purge_messages, organization_id, ids, self.batch, created_before)
        while rows := await self._tx(purge_messages):
            if counted_as is not None:
                await self._step(counted_as, rows)
        purge_responses = partial(_purge_responses, organization_id, ids, self.batch, created_before)
        while await self._tx(purge_responses):
            pass


async def _purge_messages(
    organization_id: str, ids: list[str], limit: int, before: datetime | None, repo: RetentionRepository
) -> int:
    return await repo.purge_messages(organization_id, ids, limit, created_before=before)


async def _purge_responses(
    organization_id: str, ids: list[str], limit: int, before: datetime | None, repo: RetentionRepository
) -> int:
    return await repo.purge_responses(organization_id, ids, limit, created_before=before)


async def _delete_threads(
    organization_id: str, ids: list[str], condition: ColumnElement[bool], repo: RetentionRepository
) -> int:
    return await repo.delete_threads(organization_id, ids, condition)


async def _recount(organization_id: str, ids: list[str], repo: RetentionRepository) -> None:
    await repo.recount_messages(organization_id, ids)


def _by_organization(keys: list[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for organization_id, thread_id in keys:
        grouped.setdefault(organization_id, []).append(thread_id)
    return grouped


async def run_periodically(maker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
    """The sweeper inside `serve`: a first sweep shortly after start, then every `retention_interval_seconds`.
    Never raises (a failed sweep is logged and retried next time); cancel it to stop."""
    delay = min(settings.retention_interval_seconds, 30.0)
    while True:
        await asyncio.sleep(delay)
        delay = settings.retention_interval_seconds
        try:
            report = await sweep(maker, settings)
        except Exception:
            logger.exception("retention sweep failed")
            continue
        if report.ran and report.total:
            logger.info("retention sweep purged %s", {k: v for k, v in report.counts.items() if v})
