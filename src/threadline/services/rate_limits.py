"""Rate limits per credential (API key or user token): requests per minute and concurrent turns.

Both live in the database, so every process on it shares them (docs/leases.md, "no state in a process"):

- requests: a fixed one-minute window per credential, one row counted by one upsert per authenticated request
  (`RateLimitRepository.count_request`), in a transaction of its own so the row is locked only for that statement;
- concurrent turns: a credential with a limit of N has N named slots (`turns:<credential>:<i>` in `leases`). A turn
  takes a free one before it starts, its heartbeat renews it with the thread's lease, and it gives it back when the
  turn is settled. A process that dies mid-turn gives nothing back, but its slot expires with the lease time
  (`thread_lease_seconds`), so a crash never takes a credential's slot for good.

The server's limits (`THREADLINE_RATE_LIMIT_*`) apply to every credential; an organization's owner may tighten them
for the organization (`domain/limits.effective_limits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline.config import Settings
from threadline.domain.clock import utcnow
from threadline.domain.limits import Limits, effective_limits, seconds_until_reset, window_of
from threadline.errors import PermissionDenied, RateLimited
from threadline.ids import new_id
from threadline.services.auth import Principal
from threadline.storage.repositories.identity import IdentityRepository
from threadline.storage.repositories.leases import LeaseRepository
from threadline.storage.repositories.rate_limits import RateLimitRepository
from threadline.storage.tables import Organization

# How long a client refused for concurrent turns is told to wait: turns end at no known time.
TURN_RETRY_AFTER_SECONDS = 1.0


def server_limits(settings: Settings) -> Limits:
    return Limits(settings.rate_limit_requests_per_minute, settings.rate_limit_concurrent_turns)


def limits_for(settings: Settings, principal: Principal) -> Limits:
    """The limits `principal`'s credential runs under."""
    return effective_limits(server_limits(settings), principal.organization_limits)


@dataclass(frozen=True)
class RequestQuota:
    """Where a credential stands in the current window (the `x-ratelimit-*-requests` headers)."""

    limit: int
    count: int
    reset_seconds: float

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.count)

    @property
    def exceeded(self) -> bool:
        return self.count > self.limit


async def count_request(session: AsyncSession, settings: Settings, principal: Principal) -> RequestQuota | None:
    """Count this request against the credential's requests per minute; None when it has no such limit.

    The caller commits at once (the counter row stays locked until then) and then calls `enforce`."""
    limit = limits_for(settings, principal).requests_per_minute
    if limit is None:
        return None
    now = utcnow()
    count, window = await RateLimitRepository(session).count_request(principal.credential_id, window_of(now))
    reset = seconds_until_reset(now) if window == window_of(now) else 0.0
    return RequestQuota(limit=limit, count=count, reset_seconds=reset)


def enforce(quota: RequestQuota | None) -> None:
    """429 once the credential went over its requests per minute."""
    if quota is not None and quota.exceeded:
        raise RateLimited(
            f"Rate limit reached: {quota.limit} requests per minute for this credential. "
            f"Retry in {quota.reset_seconds:.1f} s.",
            retry_after_seconds=quota.reset_seconds,
        )


@dataclass(frozen=True)
class TurnSlot:
    """A concurrent-turn slot a turn holds: the lease name and its owner."""

    name: str
    owner: str


def _slot_prefix(principal: Principal) -> str:
    return f"turns:{principal.credential_id}:"


async def acquire_turn_slot(
    maker: async_sessionmaker[AsyncSession], settings: Settings, principal: Principal
) -> TurnSlot | None:
    """Take one of the credential's concurrent-turn slots (429 when all are taken); None when it has no limit."""
    limit = limits_for(settings, principal).concurrent_turns
    if limit is None:
        return None
    prefix = _slot_prefix(principal)
    owner = new_id("turn")
    async with maker() as session:
        now = utcnow()
        expires_at = now + timedelta(seconds=settings.thread_lease_seconds)
        repo = LeaseRepository(session)
        taken = await repo.live_names(prefix, now)
        if len(taken) < limit:
            for index in range(limit):
                name = f"{prefix}{index}"
                # A conditional upsert: of two processes racing for one free slot, one wins, the other tries on.
                if name not in taken and await repo.acquire(name, owner, now, expires_at):
                    await session.commit()
                    return TurnSlot(name, owner)
        await session.rollback()
    raise RateLimited(
        f"Rate limit reached: this credential may run {limit} turn{'s' if limit != 1 else ''} at once. "
        "Retry when one has finished.",
        retry_after_seconds=TURN_RETRY_AFTER_SECONDS,
    )


async def renew_turn_slot(session: AsyncSession, settings: Settings, slot: TurnSlot) -> None:
    """Heartbeat: the slot lives as long as its turn's thread lease."""
    await LeaseRepository(session).renew(
        slot.name, slot.owner, utcnow() + timedelta(seconds=settings.thread_lease_seconds)
    )


async def release_turn_slot(maker: async_sessionmaker[AsyncSession], slot: TurnSlot) -> None:
    async with maker() as session:
        await LeaseRepository(session).release(slot.name, slot.owner)
        await session.commit()


async def organization_limits(
    session: AsyncSession, settings: Settings, principal: Principal, organization_id: str
) -> tuple[Organization, Limits]:
    """An organization's own limits and the server's (any member may read them)."""
    principal.organization(organization_id)
    organization = await IdentityRepository(session).organization(organization_id)
    assert organization is not None, "a principal's organizations exist"
    return organization, server_limits(settings)


async def set_organization_limits(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    organization_id: str,
    changes: dict[str, int | None],
) -> tuple[Organization, Limits]:
    """Set the organization's limits (`requests_per_minute`, `concurrent_turns`; None removes one). Owner only."""
    organization, server = await organization_limits(session, settings, principal, organization_id)
    membership = await IdentityRepository(session).membership(organization_id, principal.user_id)
    if membership is None or membership.role != "owner":
        raise PermissionDenied(
            f"Only the owner of organization '{organization_id}' may change its limits.", code="owner_required"
        )
    if "requests_per_minute" in changes:
        organization.rate_limit_requests_per_minute = changes["requests_per_minute"]
    if "concurrent_turns" in changes:
        organization.rate_limit_concurrent_turns = changes["concurrent_turns"]
    await session.flush()
    return organization, server
