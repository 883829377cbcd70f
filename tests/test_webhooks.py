"""Webhooks (docs/webhooks.md), on SQLite and PostgreSQL: endpoints through the API, events written with the turn
that settles a response, and deliveries to a real receiving process (tests/webhook_receiver.py), verified by the
official `openai` SDK's `client.webhooks.unwrap`. Time is a parameter (the attempt's clock), never a sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from openai import BadRequestError, InvalidWebhookSignatureError, NotFoundError, OpenAI
from openai.types.webhooks import (
    ResponseCancelledWebhookEvent,
    ResponseCompletedWebhookEvent,
    ResponseFailedWebhookEvent,
    ResponseIncompleteWebhookEvent,
)

from tests.conftest import Caller, make_caller, running_app
from tests.helpers import refused
from tests.openai_sdk import sdk_client
from tests.responses_helpers import turn
from tests.servers import free_port, webhook_receiver
from threadline.config import Settings
from threadline.domain.clock import utcnow
from threadline.ids import new_id
from threadline.providers.fake import FakeProvider, Script
from threadline.services import recovery, retention, webhook_delivery, webhooks
from threadline.storage.repositories.responses import ResponseRepository
from threadline.storage.tables import Job, Response, Thread, WebhookDelivery

pytestmark = [
    pytest.mark.fake_model(),
    pytest.mark.app_settings(
        webhook_allow_private_urls=True,
        webhook_disable_after_hours=1,
        webhook_disable_after_failures=3,
        job_poll_seconds=3600,  # every job that runs was woken by a commit, never by the poll
    ),
]

SDK = OpenAI(api_key="unused", base_url="http://unused.invalid/v1")


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with webhook_receiver(tmp_path_factory.mktemp("receiver") / "receiver.log") as base:
        yield base


def reset(receiver: str) -> None:
    httpx.post(f"{receiver}/_reset")


@pytest.fixture
def hook(receiver: str) -> str:
    reset(receiver)
    return f"{receiver}/hook"


def received(receiver: str) -> list[dict[str, Any]]:
    answer: list[dict[str, Any]] = httpx.get(f"{receiver}/_received").json()
    return answer


def script(receiver: str, *statuses: int) -> None:
    httpx.post(f"{receiver}/_script", json={"statuses": list(statuses)})


@pytest.fixture
async def by_hand(app: FastAPI) -> None:
    """The app's job runner stopped: the test makes each attempt itself (`attempt`), at the time it chooses."""
    await app.state.jobs.stop()


async def register(client: httpx.AsyncClient, caller: Caller, url: str, **fields: Any) -> dict[str, Any]:
    fields.setdefault("events", ["response.completed", "response.failed", "response.incomplete"])
    answer = await client.post("/v1/webhooks", json={"url": url, **fields}, headers=caller.headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def deliveries(app: FastAPI, organization_id: str) -> list[WebhookDelivery]:
    async with app.state.sessionmaker() as session:
        rows = await session.execute(
            sa.select(WebhookDelivery)
            .where(WebhookDelivery.organization_id == organization_id)
            .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
        )
        return list(rows.scalars())


async def delivery_jobs(app: FastAPI) -> list[Job]:
    async with app.state.sessionmaker() as session:
        rows = await session.execute(
            sa.select(Job).where(Job.kind == webhook_delivery.JOB_KIND).order_by(Job.created_at, Job.id)
        )
        return list(rows.scalars())


async def due_now(app: FastAPI) -> None:
    """Make the queued delivery jobs due at once (the time a retry waits is the job's `run_after`), and wake."""
    async with app.state.sessionmaker() as session:
        await session.execute(
            sa.update(Job)
            .where(Job.kind == webhook_delivery.JOB_KIND, Job.status == "queued")
            .values(run_after=utcnow())
        )
        await session.commit()
    app.state.jobs.wake()


async def until(check: Callable[[], Awaitable[bool]], what: str, within: float = 30.0) -> None:
    """Wait for what the code under test brings about (bounded; the bound is no timing assertion)."""
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.02)


async def attempt(app: FastAPI, delivery: WebhookDelivery, at: datetime | None = None) -> webhook_delivery.Outcome:
    return await webhook_delivery.attempt_delivery(
        app.state.sessionmaker,
        app.state.settings,
        app.state.webhook_http,
        delivery.organization_id,
        delivery.id,
        clock=(lambda: at) if at is not None else utcnow,
    )


# ---- endpoints through the API -------------------------------------------------------------------------------


async def test_create_shows_the_secret_once(client: httpx.AsyncClient, caller: Caller, hook: str) -> None:
    created = await register(client, caller, hook, description="orders", metadata={"team": "billing"})
    assert created["object"] == "webhook_endpoint"
    assert created["id"].startswith("whep_")
    assert created["secret"].startswith("whsec_")
    assert created["secret_hint"] == f"whsec_…{created['secret'][-4:]}"
    assert created["status"] == "enabled"
    assert created["disabled_reason"] is None
    assert created["events"] == ["response.completed", "response.failed", "response.incomplete"]
    assert (created["description"], created["metadata"]) == ("orders", {"team": "billing"})

    fetched = (await client.get(f"/v1/webhooks/{created['id']}", headers=caller.headers)).json()
    assert "secret" not in fetched
    assert fetched["secret_hint"] == created["secret_hint"]
    listed = (await client.get("/v1/webhooks", headers=caller.headers)).json()
    assert [e["id"] for e in listed["data"]] == [created["id"]]
    assert all("secret" not in e for e in listed["data"])


async def test_list_pages_with_cursors(client: httpx.AsyncClient, caller: Caller, hook: str) -> None:
    ids = [(await register(client, caller, f"{hook}/{n}"))["id"] for n in range(5)]
    first = (await client.get("/v1/webhooks?limit=2&order=asc", headers=caller.headers)).json()
    assert [e["id"] for e in first["data"]] == ids[:2] and first["has_more"]
    second = (
        await client.get(f"/v1/webhooks?limit=2&order=asc&after={first['last_id']}", headers=caller.headers)
    ).json()
    assert [e["id"] for e in second["data"]] == ids[2:4]
    newest = (await client.get("/v1/webhooks?limit=10", headers=caller.headers)).json()
    assert [e["id"] for e in newest["data"]] == ids[::-1] and not newest["has_more"]
    refused(await client.get("/v1/webhooks?after=whep_nothing", headers=caller.headers), 400, "invalid_cursor")


async def test_update_delete_and_validation(client: httpx.AsyncClient, caller: Caller, hook: str) -> None:
    created = await register(client, caller, hook)
    url = f"/v1/webhooks/{created['id']}"
    changed = await client.patch(
        url, json={"events": ["response.cancelled"], "description": "d", "url": f"{hook}/x"}, headers=caller.headers
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["events"] == ["response.cancelled"]
    assert changed.json()["url"] == f"{hook}/x"
    refused(await client.patch(url, json={"events": ["thread.created"]}, headers=caller.headers), 400, "invalid_value")
    refused(await client.patch(url, json={"events": []}, headers=caller.headers), 400, "invalid_value", "events")
    refused(await client.patch(url, json={"url": None}, headers=caller.headers), 400, "invalid_value", "url")
    refused(await client.patch(url, json={"colour": "red"}, headers=caller.headers), 400, "unknown_parameter")
    deleted = await client.delete(url, headers=caller.headers)
    assert deleted.json() == {"id": created["id"], "object": "webhook_endpoint.deleted", "deleted": True}
    refused(await client.get(url, headers=caller.headers), 404, "webhook_endpoint_not_found")


async def test_other_organizations_cannot_see_or_touch_it(
    client: httpx.AsyncClient, caller: Caller, other_caller: Caller, hook: str
) -> None:
    created = await register(client, caller, hook)
    url = f"/v1/webhooks/{created['id']}"
    for answer in (
        await client.get(url, headers=other_caller.headers),
        await client.patch(url, json={"description": "mine"}, headers=other_caller.headers),
        await client.post(f"{url}/rotate_secret", headers=other_caller.headers),
        await client.get(f"{url}/deliveries", headers=other_caller.headers),
        await client.delete(url, headers=other_caller.headers),
    ):
        refused(answer, 404, "webhook_endpoint_not_found")
    assert (await client.get("/v1/webhooks", headers=other_caller.headers)).json()["data"] == []
    foreign = f"/v1/webhooks?organization_id={caller.organization_id}"
    refused(await client.get(foreign, headers=other_caller.headers), 403, "organization_forbidden")
    body = {"url": hook, "events": ["response.completed"], "organization_id": caller.organization_id}
    refused(await client.post("/v1/webhooks", json=body, headers=other_caller.headers), 403, "organization_forbidden")
    refused(await client.get("/v1/webhooks"), 401, "missing_credentials")


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("ftp://example.com/hook", "invalid_webhook_url"),
        ("file:///etc/passwd", "invalid_webhook_url"),
        ("https://user:pw@example.com/hook", "invalid_webhook_url"),
        ("http:///nohost", "invalid_webhook_url"),
        ("https://example.com:99999/", "invalid_webhook_url"),
        ("http://127.0.0.1:9/hook", "webhook_url_not_allowed"),
        ("http://localhost:9/hook", "webhook_url_not_allowed"),
        ("http://[::1]:9/hook", "webhook_url_not_allowed"),
        ("http://10.1.2.3/hook", "webhook_url_not_allowed"),
        ("http://192.168.0.10/hook", "webhook_url_not_allowed"),
        ("http://[::ffff:10.0.0.1]/hook", "webhook_url_not_allowed"),
        ("http://169.254.169.254/latest/meta-data", "webhook_url_not_allowed"),
        ("http://224.0.0.1/hook", "webhook_url_not_allowed"),
        ("http://0.0.0.0/hook", "webhook_url_not_allowed"),
        ("http://100.64.0.1/hook", "webhook_url_not_allowed"),
        ("http://no-such-host.invalid/hook", "webhook_url_unresolvable"),
    ],
)
async def test_urls_refused_without_private_targets(database_url: str, fake: FakeProvider, url: str, code: str) -> None:
    settings = Settings(database_url=database_url, local_model_enabled=False, retention_enabled=False)
    async for app in running_app(settings, fake):
        caller = await make_caller(app)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            answer = await client.post(
                "/v1/webhooks", json={"url": url, "events": ["response.completed"]}, headers=caller.headers
            )
            refused(answer, 400, code, "url")
            assert (await client.get("/v1/webhooks", headers=caller.headers)).json()["data"] == []


async def test_private_targets_allowed_but_never_link_local_or_the_server(
    client: httpx.AsyncClient, caller: Caller, settings: Settings, hook: str
) -> None:
    await register(client, caller, hook)  # loopback: allowed by the setting
    await register(client, caller, "http://10.1.2.3/hook")
    for url in (
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]/hook",
        "http://224.0.0.1/hook",
        f"http://127.0.0.1:{settings.port}/v1/threads",
        f"http://localhost:{settings.port}/v1/threads",
    ):
        answer = await client.post(
            "/v1/webhooks", json={"url": url, "events": ["response.completed"]}, headers=caller.headers
        )
        refused(answer, 400, "webhook_url_not_allowed", "url")


# ---- events: written with the turn that settles the response ---------------------------------------------------


async def test_each_settled_response_yields_exactly_one_event(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider, app: FastAPI, hook: str, by_hand: None
) -> None:
    first = await register(client, caller, hook)
    completed_only = await register(client, caller, f"{hook}/2", events=["response.completed"])
    await register(client, caller, f"{hook}/3", events=["response.cancelled"])

    ok = (await turn(client, caller, "Hello")).json()
    fake.script(Script(fail="before"))
    failed = await turn(client, caller, "Fail please")
    assert failed.status_code == 502
    fake.script(Script(reply="one two three", finish_reason="length"))
    cut = (await turn(client, caller, "Long answer", maxOutputTokens=3)).json()

    rows = await deliveries(app, caller.organization_id)
    by_endpoint = sorted((row.endpoint_id, row.event_type) for row in rows)
    assert by_endpoint == sorted(
        [
            (first["id"], "response.completed"),
            (first["id"], "response.failed"),
            (first["id"], "response.incomplete"),
            (completed_only["id"], "response.completed"),
        ]
    )
    bodies = {row.event_type: row.body for row in rows if row.endpoint_id == first["id"]}
    completed = ResponseCompletedWebhookEvent.model_validate_json(bodies["response.completed"])
    assert completed.data.id == ok["id"] and completed.object == "event"
    assert ResponseIncompleteWebhookEvent.model_validate_json(bodies["response.incomplete"]).data.id == cut["id"]
    assert ResponseFailedWebhookEvent.model_validate_json(bodies["response.failed"]).data.id.startswith("resp_")
    assert all(row.status == "pending" and row.attempt_count == 0 for row in rows)
    # …and each one's first attempt is a job, queued in the same transaction.
    queued = await delivery_jobs(app)
    assert sorted(job.payload["delivery_id"] for job in queued) == sorted(row.id for row in rows)
    assert {(job.organization_id, job.status) for job in queued} == {(caller.organization_id, "queued")}
    # One event per response, shared by the endpoints that take it.
    same = [row.event_id for row in rows if row.event_type == "response.completed"]
    assert len(set(same)) == 1 and same[0] == "evt_" + ok["id"].removeprefix("resp_")


async def test_no_endpoint_no_event_and_disabled_endpoints_get_none(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI, hook: str
) -> None:
    await turn(client, caller, "Nobody listens")
    assert await deliveries(app, caller.organization_id) == []
    created = await register(client, caller, hook)
    await client.patch(f"/v1/webhooks/{created['id']}", json={"status": "disabled"}, headers=caller.headers)
    await turn(client, caller, "Still nobody")
    assert await deliveries(app, caller.organization_id) == []


# ---- deliveries to a real receiver -------------------------------------------------------------------------------


async def test_delivery_is_verified_by_the_openai_sdk(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI, receiver: str, hook: str, by_hand: None
) -> None:
    created = await register(client, caller, hook)
    ok = (await turn(client, caller, "Hello")).json()
    [row] = await deliveries(app, caller.organization_id)
    outcome = await attempt(app, row)
    assert outcome.status == "delivered"
    [got] = received(receiver)
    event = SDK.webhooks.unwrap(got["body"], got["headers"], secret=created["secret"])
    assert isinstance(event, ResponseCompletedWebhookEvent)
    assert event.type == "response.completed" and event.object == "event"
    assert event.data.id == ok["id"]
    assert event.id == row.event_id
    assert got["headers"]["webhook-id"] == row.id
    assert got["headers"]["content-type"] == "application/json"
    assert got["headers"]["user-agent"].startswith("Threadline/")
    with pytest.raises(InvalidWebhookSignatureError):
        SDK.webhooks.unwrap(got["body"], got["headers"], secret="whsec_" + "A" * 43 + "=")
    with pytest.raises(InvalidWebhookSignatureError):
        SDK.webhooks.unwrap(got["body"].replace(ok["id"], "resp_forged"), got["headers"], secret=created["secret"])

    log = (await client.get(f"/v1/webhooks/{created['id']}/deliveries", headers=caller.headers)).json()
    [entry] = log["data"]
    assert entry["status"] == "delivered" and entry["attempt_count"] == 1 and entry["next_attempt_at"] is None
    assert entry["event"] == {
        "id": row.event_id,
        "object": "event",
        "type": "response.completed",
        "created_at": entry["event"]["created_at"],
        "data": {"id": ok["id"]},
    }
    [first] = entry["attempts"]
    assert first["status_code"] == 200 and first["error"] is None and first["duration_ms"] >= 0
    assert first["response_excerpt"].startswith("answered 200") and len(first["response_excerpt"]) == 500
    one = await client.get(f"/v1/webhooks/{created['id']}/deliveries/{row.id}", headers=caller.headers)
    assert one.json() == entry
    again = await attempt(app, row)
    assert again.status == "gone" and len(received(receiver)) == 1  # never sent twice


async def test_retries_back_off_then_succeed(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI, receiver: str, hook: str, by_hand: None
) -> None:
    created = await register(client, caller, hook)
    await turn(client, caller, "Hello")
    [row] = await deliveries(app, caller.organization_id)
    script(receiver, 500, 503)
    start = utcnow()
    first = await attempt(app, row, start)
    assert first.status == "pending" and first.next_attempt_at is not None
    assert timedelta(seconds=5) <= first.next_attempt_at - start <= timedelta(seconds=5.5)
    [row] = await deliveries(app, caller.organization_id)
    second = await attempt(app, row, first.next_attempt_at)
    assert second.status == "pending" and second.next_attempt_at is not None
    assert timedelta(seconds=15) <= second.next_attempt_at - first.next_attempt_at <= timedelta(seconds=16.5)
    [row] = await deliveries(app, caller.organization_id)
    third = await attempt(app, row, second.next_attempt_at)
    assert third.status == "delivered"
    bodies = [got["body"] for got in received(receiver)]
    assert len(bodies) == 3 and len(set(bodies)) == 1  # the same bytes every time
    ids = {got["headers"]["webhook-id"] for got in received(receiver)}
    assert ids == {row.id}
    entry = (await client.get(f"/v1/webhooks/{created['id']}/deliveries/{row.id}", headers=caller.headers)).json()
    assert [a["status_code"] for a in entry["attempts"]] == [500, 503, 200]
    assert entry["attempts"][0]["error"] == "The endpoint answered 500."
    endpoint = (await client.get(f"/v1/webhooks/{created['id']}", headers=caller.headers)).json()
    assert endpoint["status"] == "enabled"


async def test_retries_stop_at_the_end_of_the_window(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI, receiver: str, hook: str, by_hand: None
) -> None:
    app.state.settings.webhook_retry_hours = 0.01  # 36 s: the third wait (45 s) is past it
    app.state.settings.webhook_disable_after_failures = 100
    created = await register(client, caller, hook)
    await turn(client, caller, "Hello")
    script(receiver, 500, 500, 500)
    [row] = await deliveries(app, caller.organization_id)
    at = row.created_at
    statuses = []
    for _ in range(3):
        outcome = await attempt(app, row, at)
        statuses.append(outcome.status)
        [row] = await deliveries(app, caller.organization_id)
        at = outcome.next_attempt_at or at
    assert statuses == ["pending", "pending", "failed"]
    assert row.next_attempt_at is None and row.attempt_count == 3
    endpoint = (await client.get(f"/v1/webhooks/{created['id']}", headers=caller.headers)).json()
    assert endpoint["status"] == "enabled"  # three failures in 20 s are no reason to disable it


async def test_an_endpoint_that_keeps_failing_is_disabled_and_can_be_enabled(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI, receiver: str, hook: str, by_hand: None
) -> None:
    created = await register(client, caller, hook)
    url = f"/v1/webhooks/{created['id']}"
    await turn(client, caller, "One")
    await turn(client, caller, "Two")
    script(receiver, *([500] * 10))
    one, two = await deliveries(app, caller.organization_id)
    start = utcnow()
    # Three failures, but all within the first hour: still enabled.
    assert (await attempt(app, one, start)).status == "pending"
    [one, two] = await deliveries(app, caller.organization_id)
    assert (await attempt(app, two, start + timedelta(minutes=1))).status == "pending"
    [one, two] = await deliveries(app, caller.organization_id)
    assert (await attempt(app, one, start + timedelta(minutes=2))).status == "pending"
    assert (await client.get(url, headers=caller.headers)).json()["status"] == "enabled"
    # Failing for an hour and more, three attempts in a row or more: disabled, and says why.
    [one, two] = await deliveries(app, caller.organization_id)
    assert (await attempt(app, two, start + timedelta(hours=1))).status == "failed"
    endpoint = (await client.get(url, headers=caller.headers)).json()
    assert endpoint["status"] == "disabled"
    assert "4 failed attempts in a row" in endpoint["disabled_reason"]
    assert endpoint["disabled_at"] is not None
    rows = await deliveries(app, caller.organization_id)
    assert {row.status for row in rows} == {"failed"}
    assert all(row.next_attempt_at is None for row in rows)
    assert len(received(receiver)) == 4
    # Nothing more is sent; a new event is not even written.
    await turn(client, caller, "Three")
    assert len(await deliveries(app, caller.organization_id)) == 2
    # Enabled again: deliveries resume with a fresh count.
    enabled = await client.patch(url, json={"status": "enabled"}, headers=caller.headers)
    assert enabled.json()["status"] == "enabled" and enabled.json()["disabled_reason"] is None
    reset(receiver)
    await turn(client, caller, "Four")
    rows = await deliveries(app, caller.organization_id)
    assert (await attempt(app, rows[-1])).status == "delivered"
    assert len(received(receiver)) == 1


async def test_redirects_are_not_followed(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI, receiver: str, hook: str, by_hand: None
) -> None:
    await register(client, caller, f"{receiver}/redirect")
    await turn(client, caller, "Hello")
    [row] = await deliveries(app, caller.organization_id)
    outcome = await attempt(app, row)
    assert outcome.status == "pending"
    assert outcome.attempt is not None and outcome.attempt["status_code"] == 307
    assert "Redirects are not followed" in outcome.attempt["error"]
    assert received(receiver) == []


async def test_addresses_are_checked_again_at_delivery_time(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI, receiver: str, hook: str, by_hand: None
) -> None:
    """Registered while private targets were allowed; then the operator forbids them: nothing is sent."""
    await register(client, caller, hook.replace("127.0.0.1", "localhost"))
    await turn(client, caller, "Hello")
    app.state.settings.webhook_allow_private_urls = False
    [row] = await deliveries(app, caller.organization_id)
    outcome = await attempt(app, row)
    assert outcome.status == "pending"
    assert outcome.attempt is not None and outcome.attempt["status_code"] is None
    assert "loopback" in outcome.attempt["error"]
    assert received(receiver) == []


async def test_a_name_resolving_to_a_forbidden_address_anywhere_is_refused(settings: Settings) -> None:
    """DNS rebinding: every address a name resolves to is checked, and the connection goes to a checked one."""
    settings.webhook_allow_private_urls = False

    async def rebinding(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.0.0.7"]

    async with httpx.AsyncClient() as http:
        sent = await webhook_delivery.send(http, settings, "https://hooks.example.com/x", {}, "{}", rebinding)
    assert sent.status_code is None and sent.error is not None and "10.0.0.7" in sent.error


async def test_rotation_old_secret_fails_new_passes(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI, receiver: str, hook: str, by_hand: None
) -> None:
    created = await register(client, caller, hook)
    url = f"/v1/webhooks/{created['id']}"
    rotated = (await client.post(f"{url}/rotate_secret", headers=caller.headers)).json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
    assert "secret" not in (await client.get(url, headers=caller.headers)).json()
    await turn(client, caller, "Hello")
    [row] = await deliveries(app, caller.organization_id)
    assert (await attempt(app, row)).status == "delivered"
    [got] = received(receiver)
    SDK.webhooks.unwrap(got["body"], got["headers"], secret=rotated["secret"])
    with pytest.raises(InvalidWebhookSignatureError):
        SDK.webhooks.unwrap(got["body"], got["headers"], secret=created["secret"])

    # Keeping the old one for 24 hours: both verify meanwhile.
    kept = (
        await client.post(
            f"{url}/rotate_secret", json={"keep_old_secret_active_for_24_hours": True}, headers=caller.headers
        )
    ).json()
    await turn(client, caller, "Again")
    row = (await deliveries(app, caller.organization_id))[-1]
    assert (await attempt(app, row)).status == "delivered"
    got = received(receiver)[-1]
    assert len(got["headers"]["webhook-signature"].split(" ")) == 2
    SDK.webhooks.unwrap(got["body"], got["headers"], secret=kept["secret"])
    SDK.webhooks.unwrap(got["body"], got["headers"], secret=rotated["secret"])


# ---- the OpenAI SDK's own webhook endpoint API -------------------------------------------------------------------


async def test_the_openai_sdk_manages_endpoints(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI, receiver: str, hook: str
) -> None:
    sdk, _ = sdk_client(app, caller.api_key)
    created = await sdk.webhooks.create(event_types=["response.completed"], name="orders", url=hook)
    assert created.signing_secret.startswith("whsec_") and created.name == "orders"
    assert created.signing_secret_hint == f"whsec_…{created.signing_secret[-4:]}"
    fetched = await sdk.webhooks.retrieve(created.id)
    assert (fetched.url, fetched.event_types, fetched.created_at) == (hook, ["response.completed"], created.created_at)
    assert [e.id async for e in sdk.webhooks.list(limit=1)] == [created.id]
    updated = await sdk.webhooks.update(created.id, name="renamed", event_types=["response.failed"])
    assert (updated.name, updated.event_types) == ("renamed", ["response.failed"])
    # The Freddy view of the same row.
    freddy = (await client.get(f"/v1/webhooks/{created.id}", headers=caller.headers)).json()
    assert (freddy["description"], freddy["events"]) == ("renamed", ["response.failed"])

    result = await sdk.webhooks.test(created.id, event_type="response.completed")
    assert (result.status_code, result.success, result.webhook_endpoint_id) == (200, True, created.id)
    [got] = received(receiver)
    sample = SDK.webhooks.unwrap(got["body"], got["headers"], secret=created.signing_secret)
    assert isinstance(sample, ResponseCompletedWebhookEvent)
    assert await deliveries(app, caller.organization_id) == []  # a test is not a delivery

    rotated = await sdk.webhooks.rotate_secret(created.id)
    assert rotated.signing_secret != created.signing_secret
    assert (await sdk.webhooks.event_types.list()).data == [
        "response.completed",
        "response.failed",
        "response.cancelled",
        "response.incomplete",
    ]
    with pytest.raises(BadRequestError) as refusal:
        await sdk.webhooks.create(event_types=["batch.completed"], name="batches", url=hook)
    assert refusal.value.code == "invalid_event_type" and refusal.value.param == "event_types"
    with pytest.raises(BadRequestError) as refusal:
        await sdk.webhooks.create(event_types=["response.completed"], name="x", url="http://169.254.169.254/")
    assert refusal.value.code == "webhook_url_not_allowed"
    deleted = await sdk.webhooks.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(NotFoundError):
        await sdk.webhooks.retrieve(created.id)


async def test_a_test_to_an_unreachable_endpoint_is_a_502(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI
) -> None:
    sdk, _ = sdk_client(app, caller.api_key)
    created = await sdk.webhooks.create(
        event_types=["response.completed"], name="closed", url=f"http://127.0.0.1:{free_port()}/hook"
    )
    answer = await client.post(
        f"/v1/webhook_endpoints/{created.id}/test", json={"event_type": "response.completed"}, headers=caller.headers
    )
    refused(answer, 502, "webhook_endpoint_unreachable")


# ---- the job queue runs them ---------------------------------------------------------------------------------------


async def test_the_queue_delivers_each_event(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI, receiver: str, hook: str
) -> None:
    created = await register(client, caller, hook)
    ok = (await turn(client, caller, "Hello")).json()

    async def arrived() -> bool:
        return len(received(receiver)) == 1

    await until(arrived, "the delivery arrived")
    [got] = received(receiver)
    event = SDK.webhooks.unwrap(got["body"], got["headers"], secret=created["secret"])
    assert isinstance(event, ResponseCompletedWebhookEvent) and event.data.id == ok["id"]

    async def recorded() -> bool:
        return [row.status for row in await deliveries(app, caller.organization_id)] == ["delivered"]

    await until(recorded, "the delivery was recorded")
    [job] = await delivery_jobs(app)
    await until(lambda: _job_done(app, job.id), "its job is done")
    metrics = (await client.get("/metrics")).text
    assert 'threadline_webhook_attempts_total{outcome="delivered"} 1.0' in metrics


async def _job_done(app: FastAPI, job_id: str) -> bool:
    return [j.status for j in await delivery_jobs(app) if j.id == job_id] == ["done"]


async def test_the_queue_retries_after_500s_when_the_schedule_says(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI, receiver: str, hook: str
) -> None:
    created = await register(client, caller, hook)
    script(receiver, 500, 500)
    await turn(client, caller, "Hello")

    async def attempts(n: int) -> bool:
        rows = await deliveries(app, caller.organization_id)
        return len(rows) == 1 and rows[0].attempt_count == n and len(await delivery_jobs(app)) == n + (n < 3)

    waits = []
    for n in (1, 2):
        await until(lambda n=n: attempts(n), f"attempt {n} was recorded")  # type: ignore[misc]
        [row] = await deliveries(app, caller.organization_id)
        retry = (await delivery_jobs(app))[-1]
        # The next attempt is its own job, due when the delivery's schedule says, not before.
        assert retry.status == "queued" and retry.run_after == row.next_attempt_at
        assert row.next_attempt_at is not None and row.attempts[-1]["status_code"] == 500
        waits.append(row.next_attempt_at - row.updated_at)
        assert len(received(receiver)) == n
        await due_now(app)
    assert timedelta(seconds=5) <= waits[0] <= timedelta(seconds=5.5)
    assert timedelta(seconds=15) <= waits[1] <= timedelta(seconds=16.5)
    await until(lambda: attempts(3), "attempt 3 was recorded")
    [row] = await deliveries(app, caller.organization_id)
    assert (row.status, row.next_attempt_at) == ("delivered", None)
    bodies = [got["body"] for got in received(receiver)]
    assert len(bodies) == 3 and len(set(bodies)) == 1
    SDK.webhooks.unwrap(bodies[-1], received(receiver)[-1]["headers"], secret=created["secret"])


async def test_the_sweeper_purges_finished_deliveries_after_their_retention(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI, hook: str, by_hand: None
) -> None:
    created = await register(client, caller, hook)
    for text in ("old delivered", "old failed", "recent", "old pending"):
        await turn(client, caller, text)
    old, failed, recent, pending = await deliveries(app, caller.organization_id)
    month_ago = utcnow() - timedelta(days=31)
    async with app.state.sessionmaker() as session:
        for row, status, at in ((old, "delivered", month_ago), (failed, "failed", month_ago),
                                (recent, "delivered", utcnow()), (pending, "pending", month_ago)):  # fmt: skip
            await session.execute(
                sa.update(WebhookDelivery)
                .where(WebhookDelivery.organization_id == row.organization_id, WebhookDelivery.id == row.id)
                .values(status=status, updated_at=at)
            )
        await session.commit()
    dry = await retention.sweep(app.state.sessionmaker, app.state.settings, dry_run=True)
    assert dry.counts["webhook_deliveries"] == 2
    report = await retention.sweep(app.state.sessionmaker, app.state.settings)
    assert report.counts["webhook_deliveries"] == 2
    left = (await client.get(f"/v1/webhooks/{created['id']}/deliveries", headers=caller.headers)).json()["data"]
    assert sorted(entry["id"] for entry in left) == sorted([recent.id, pending.id])


async def _in_progress(app: FastAPI, caller: Caller, client: httpx.AsyncClient, lease_expired: bool) -> str:
    """A response still in progress on a thread whose lease it holds (expired: its server died)."""
    thread = (await client.post("/v1/threads", json={}, headers=caller.headers)).json()["id"]
    response_id = new_id("resp")
    now = utcnow()
    async with app.state.sessionmaker() as session:
        session.add(
            Response(
                organization_id=caller.organization_id,
                id=response_id,
                thread_id=thread,
                model="fake-model",
                status="in_progress",
                request={},
                context={},
                created_at=now,
            )
        )
        await session.execute(
            sa.update(Thread)
            .where(Thread.organization_id == caller.organization_id, Thread.id == thread)
            .values(
                status="streaming",
                lease_owner=response_id,
                lease_expires_at=now + (timedelta(minutes=-1) if lease_expired else timedelta(minutes=1)),
            )
        )
        await session.commit()
    return response_id


async def test_a_turn_a_dead_server_left_is_announced_once_as_failed(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI, hook: str, by_hand: None
) -> None:
    await register(client, caller, hook)
    response_id = await _in_progress(app, caller, client, lease_expired=True)
    assert await recovery.settle_expired(app.state.sessionmaker) == 1
    assert await recovery.settle_expired(app.state.sessionmaker) == 0
    fetched = await client.get(f"/v1/model/response/{response_id}", headers=caller.headers)
    assert fetched.json()["status"] == "failed"
    [row] = await deliveries(app, caller.organization_id)
    event = ResponseFailedWebhookEvent.model_validate_json(row.body)
    assert (event.type, event.data.id) == ("response.failed", response_id)


async def test_a_cancelled_response_is_announced_once(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI, hook: str, by_hand: None
) -> None:
    await register(client, caller, hook, events=["response.cancelled"])
    response_id = await _in_progress(app, caller, client, lease_expired=False)
    async with app.state.sessionmaker() as session:
        assert await ResponseRepository(session).cancel_if_in_progress(caller.organization_id, response_id, utcnow())
        written = await webhooks.response_settled(session, caller.organization_id, response_id)
        again = await webhooks.response_settled(session, caller.organization_id, response_id)
        await session.commit()
    assert len(written) == 1 and again == []  # settling twice writes nothing new
    [row] = await deliveries(app, caller.organization_id)
    event = ResponseCancelledWebhookEvent.model_validate_json(row.body)
    assert (event.type, event.data.id) == ("response.cancelled", response_id)


async def test_a_cancelled_background_response_is_announced_once(
    client: httpx.AsyncClient, caller: Caller, app: FastAPI, fake: FakeProvider, hook: str
) -> None:
    await register(client, caller, hook, events=["response.cancelled", "response.completed", "response.failed"])
    fake.script(Script(fail="hang"))
    sdk, _ = sdk_client(app, caller.api_key)
    created = await sdk.responses.create(model="fake-model", input="take your time", background=True)
    await fake.started.wait()
    assert (await sdk.responses.cancel(created.id)).status == "cancelled"
    assert (await sdk.responses.cancel(created.id)).status == "cancelled"  # idempotent: no second event
    rows = await deliveries(app, caller.organization_id)
    assert [(row.event_type, ResponseCancelledWebhookEvent.model_validate_json(row.body).data.id) for row in rows] == [
        ("response.cancelled", created.id)
    ]
