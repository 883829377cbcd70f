"""Webhooks across real processes, on SQLite and PostgreSQL: a Threadline server process (tests/fuzz_server.py: the
real app with a FakeProvider) sends a signed delivery to a receiver process (tests/webhook_receiver.py), which the
`openai` SDK verifies; a retry a stopped server left queued is sent by the next server, with nothing lost."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from openai import OpenAI
from openai.types.webhooks import ResponseCompletedWebhookEvent

from tests.helpers import with_session
from tests.servers import fuzz_server, until, webhook_receiver
from threadline.domain.clock import utcnow
from threadline.services import auth, webhook_delivery
from threadline.storage.tables import Job

pytestmark = pytest.mark.slow

SDK = OpenAI(api_key="unused", base_url="http://unused.invalid/v1")


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[str]:
    with webhook_receiver(tmp_path / "receiver.log") as base:
        yield base


def server(db: str, log: Path) -> AbstractContextManager[str]:
    """A server process (yields its base URL) that sends webhooks to 127.0.0.1."""
    return fuzz_server(
        db,
        log=log,
        THREADLINE_WEBHOOK_ALLOW_PRIVATE_URLS="true",
        THREADLINE_JOB_POLL_SECONDS="3600",  # work reaches it by its own commits and at start, never by the poll
    )


def test_a_server_delivers_and_the_next_one_sends_the_retry_it_left(db: str, receiver: str, tmp_path: Path) -> None:
    async def make_key(session: Any) -> str:
        _, secret = await auth.create_api_key(session, "acme", "ada@acme.test", "test")
        return secret

    headers = {"X-API-Key": with_session(db, make_key)}
    httpx.post(f"{receiver}/_script", json={"statuses": [500]})
    with server(db, tmp_path / "first.log") as base:
        hook = {"url": f"{receiver}/hook", "events": ["response.completed"]}
        endpoint = httpx.post(f"{base}/v1/webhooks", json=hook, headers=headers).json()
        inputs = [{"role": "user", "texts": [{"text": "Hello"}]}]
        answer = httpx.post(f"{base}/v1/model/response", json={"inputs": inputs}, headers=headers).json()
        log_url = f"{base}/v1/webhooks/{endpoint['id']}/deliveries"

        def first_attempt_recorded() -> bool:
            data = httpx.get(log_url, headers=headers).json()["data"]
            return len(data) == 1 and data[0]["attempt_count"] == 1

        until(first_attempt_recorded, "the first attempt (answered 500) was recorded", within=30)

    # The first server is gone; its retry waits in the queue. Due now, the next server sends it at start.
    async def due_now(session: Any) -> None:
        await session.execute(
            sa.update(Job)
            .where(Job.kind == webhook_delivery.JOB_KIND, Job.status == "queued")
            .values(run_after=utcnow())
        )

    with_session(db, due_now)
    with server(db, tmp_path / "second.log") as base:
        log_url = f"{base}/v1/webhooks/{endpoint['id']}/deliveries"

        def delivered() -> bool:
            return httpx.get(log_url, headers=headers).json()["data"][0]["status"] == "delivered"

        until(delivered, "the retry was delivered by the second server", within=30)
        [entry] = httpx.get(log_url, headers=headers).json()["data"]
    assert [a["status_code"] for a in entry["attempts"]] == [500, 200]
    got = httpx.get(f"{receiver}/_received").json()
    assert len(got) == 2 and got[0]["body"] == got[1]["body"]
    assert got[0]["headers"]["webhook-id"] == got[1]["headers"]["webhook-id"] == entry["id"]
    event = SDK.webhooks.unwrap(got[1]["body"], got[1]["headers"], secret=endpoint["secret"])
    assert isinstance(event, ResponseCompletedWebhookEvent) and event.data.id == answer["id"]
