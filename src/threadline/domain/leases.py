"""Turn leases: what a reader may conclude from a thread's lease (docs/leases.md).

A turn holds its thread's lease while it runs: `lease_owner` is the turn's response id, `lease_expires_at` is
pushed out by the turn's heartbeat. A lease past its expiry belongs to a turn whose server died (or stopped
renewing): that turn can save nothing any more (its saving UPDATE needs the lease), so it is over. Every surface
tells that truth from these rules, whether or not the settling UPDATEs (services/recovery.py) have written it down
yet: the thread is `inactive`, the turn's response (an Assistants run) is `failed` with `INTERRUPTED`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from threadline.domain.threads import INACTIVE, STREAMING
from threadline.domain.turns import FAILED, IN_PROGRESS

# The one error of a turn whose lease ran out under it, on every surface (a Freddy response, an OpenAI response,
# an Assistants run's `last_error`).
INTERRUPTED_CODE = "turn_interrupted"


def interrupted_error() -> dict[str, Any]:
    return {"code": INTERRUPTED_CODE, "message": "The server handling this turn stopped before it finished."}


def lease_expired(expires_at: datetime | None, now: datetime) -> bool:
    """A lease is live until its expiry (inclusive); a lease without one cannot be renewed, so it is expired."""
    return expires_at is None or expires_at < now


def thread_status(status: str, lease_expires_at: datetime | None, now: datetime) -> str:
    """The thread's streaming status as a reader must see it: `streaming` only while the lease is live."""
    if status == STREAMING and lease_expired(lease_expires_at, now):
        return INACTIVE
    return status


def turn_alive(response_id: str, lease_owner: str | None, lease_expires_at: datetime | None, now: datetime) -> bool:
    """Whether the turn of `response_id` can still finish: it holds its thread's lease, and the lease is live."""
    return lease_owner == response_id and not lease_expired(lease_expires_at, now)


def response_status(
    status: str, response_id: str, lease_owner: str | None, lease_expires_at: datetime | None, now: datetime
) -> str:
    """A response (run) is `in_progress` only while its turn is alive; otherwise its turn was interrupted.

    `lease_owner`/`lease_expires_at` are those of the response's thread (None for a thread that is gone)."""
    if status == IN_PROGRESS and not turn_alive(response_id, lease_owner, lease_expires_at, now):
        return FAILED
    return status
