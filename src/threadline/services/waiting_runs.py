"""The guard of a thread whose Assistants run waits for tool outputs (`requires_action`), see docs/runs.md.

A waiting run holds no lease, so the thread's lease cannot say it is taken: this module finds the waiting run
(one lookup in a partial index) and refuses new messages and turns meanwhile, with OpenAI's rule and wording.
A run expires `run_expiry_seconds` (the setting when it started, kept on the run) after it was created
(OpenAI: ten minutes); nothing times it, the first read after that settles it `expired`. The rest of a waiting
run's life (its calls, the submission that continues it) is `turns/waiting.py`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from threadline.domain.clock import utcnow
from threadline.domain.turns import EXPIRED, REQUIRES_ACTION
from threadline.errors import InvalidRequest
from threadline.storage.repositories.responses import ResponseRepository
from threadline.storage.tables import Response

# OpenAI's ten minutes, for a run recorded without its expiry.
DEFAULT_EXPIRY_SECONDS = 600.0


def expires_at(created_at: datetime, expiry_seconds: float | None) -> datetime:
    return created_at + timedelta(seconds=DEFAULT_EXPIRY_SECONDS if expiry_seconds is None else expiry_seconds)


def row_expires_at(response: Response) -> datetime:
    return expires_at(response.created_at, (response.request.get("run") or {}).get("expiry_seconds"))


async def settle_expired(session: AsyncSession, response: Response) -> Response:
    """A waiting run past its expiry is `expired` from now on (written once, by whichever read sees it first)."""
    if response.status == REQUIRES_ACTION and utcnow() >= row_expires_at(response):
        values = {"status": EXPIRED, "completed_at": row_expires_at(response)}
        await ResponseRepository(session).move(response.organization_id, response.id, REQUIRES_ACTION, values)
        await session.refresh(response)
    return response


async def active_run(session: AsyncSession, organization_id: str, thread_id: str) -> str | None:
    """The id of the thread's run waiting for tool outputs, if one still waits."""
    found = await ResponseRepository(session).waiting_run(organization_id, thread_id)
    if found is None:
        return None
    await settle_expired(session, found)
    return found.id if found.status == REQUIRES_ACTION else None


async def ensure_no_active_run(
    session: AsyncSession, organization_id: str, thread_id: str, *, new_run: bool = False
) -> None:
    """Refuse new messages (or, with `new_run`, a new run) while a run of the thread waits for tool outputs."""
    run_id = await active_run(session, organization_id, thread_id)
    if run_id is None:
        return
    if new_run:
        message = f"Thread {thread_id} already has an active run {run_id}."
    else:
        message = f"Can't add messages to {thread_id} while a run {run_id} is active."
    raise InvalidRequest(message, code="run_active", param="thread_id")


def not_accepting(status: str) -> InvalidRequest:
    return InvalidRequest(
        f'Runs in status "{status}" do not accept tool outputs.', code="run_not_waiting", param="run_id"
    )
