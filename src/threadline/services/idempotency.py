"""Retry safety: a POST carrying `Idempotency-Key` runs once; a retry with the same key and request gets the
first result (replayed), a retry with another request gets 409 `idempotency_key_reused`.

Records live in the database (so any process of a deployment can answer a retry), scoped to the organization,
for `idempotency_ttl_hours`. The request hash covers method, path, query and body. The flow:

1. `begin` claims the key in its own short transaction (committed at once, so concurrent duplicates see it);
   a duplicate of a request still running waits up to `idempotency_wait_seconds` for its result.
2. The request runs (its own transaction).
3. `finish` stores status, headers and the full body (SSE streams too) — or `abandon` drops the claim when the
   result must not be final (5xx, retryable errors, a stream cut short), so a retry runs again.

A claim older than `idempotency_stale_seconds` whose result never came (its process died) may be run again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline.config import Settings
from threadline.domain.clock import utcnow
from threadline.errors import IdempotencyKeyInProgress, IdempotencyKeyReused, ValidationFailed
from threadline.storage.repositories.idempotency import IdempotencyRepository

HEADER = "Idempotency-Key"
# 1 to 255 printable ASCII characters, not all spaces (declared with the header in OpenAPI: api/idempotency.py).
KEY_PATTERN = re.compile(r"^(?=.{1,255}$)[\x20-\x7e]*[\x21-\x7e][\x20-\x7e]*$")
_POLL_FIRST, _POLL_MAX = 0.02, 0.5


@dataclass(frozen=True)
class Claim:
    """This request owns the key: run it, then `finish` or `abandon`."""

    organization_id: str
    key: str
    claimed_at: datetime


@dataclass(frozen=True)
class Stored:
    """The first request's result, to replay."""

    status: int
    headers: dict[str, Any]
    body: bytes


def validate_key(key: str) -> str:
    if not KEY_PATTERN.fullmatch(key):
        raise ValidationFailed(
            f"The {HEADER} header must be 1 to 255 printable ASCII characters.",
            code="invalid_idempotency_key",
            param=HEADER,
        )
    return key


def request_hash(method: str, path: str, query: str, body: bytes) -> str:
    """What makes two requests "the same": method, path, query and body (JSON compared by value)."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode() if body else b""
    except (ValueError, UnicodeDecodeError):
        canonical = body
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), query.encode(), canonical):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


async def begin(
    maker: async_sessionmaker[AsyncSession], settings: Settings, organization_id: str, key: str, request_hash: str
) -> Claim | Stored:
    """Claim the key, or return the stored result of the same request (waiting, bounded, if it still runs)."""
    deadline = asyncio.get_running_loop().time() + settings.idempotency_wait_seconds
    ttl = timedelta(hours=settings.idempotency_ttl_hours)
    stale = timedelta(seconds=settings.idempotency_stale_seconds)
    pause = _POLL_FIRST
    while True:
        async with maker() as session:
            repo = IdempotencyRepository(session)
            now = utcnow()
            if await repo.insert_claim(organization_id, key, request_hash, now, now + ttl):
                await session.commit()
                return Claim(organization_id, key, now)
            record = await repo.get(organization_id, key)
            if record is not None:
                reusable = record.expires_at <= now or (
                    record.status == "in_progress" and record.created_at <= now - stale
                )
                if reusable:
                    if await repo.take_over(organization_id, key, record.created_at, request_hash, now, now + ttl):
                        await session.commit()
                        return Claim(organization_id, key, now)
                elif record.request_hash != request_hash:
                    raise IdempotencyKeyReused(
                        f"The {HEADER} '{key}' was already used with a different request (body, path or method). "
                        "Use a new key for a new request.",
                        param=HEADER,
                    )
                elif record.status == "completed" and record.response_status is not None:
                    return Stored(
                        record.response_status, dict(record.response_headers or {}), record.response_body or b""
                    )
            await session.commit()
        # In progress elsewhere (or just released): wait for its result, bounded.
        if asyncio.get_running_loop().time() + pause > deadline:
            raise IdempotencyKeyInProgress(
                f"A request with {HEADER} '{key}' is still being processed. Retry later to get its result.",
                param=HEADER,
            )
        await asyncio.sleep(pause)
        pause = min(pause * 2, _POLL_MAX)


async def finish(
    maker: async_sessionmaker[AsyncSession], claim: Claim, status: int, headers: dict[str, Any], body: bytes
) -> None:
    async with maker() as session:
        await IdempotencyRepository(session).complete(
            claim.organization_id, claim.key, claim.claimed_at, status, headers, body
        )
        await session.commit()


async def abandon(maker: async_sessionmaker[AsyncSession], claim: Claim) -> None:
    async with maker() as session:
        await IdempotencyRepository(session).release(claim.organization_id, claim.key, claim.claimed_at)
        await session.commit()
