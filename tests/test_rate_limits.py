"""Rate limits per credential: requests per minute and concurrent turns, shared through the database by every
app on it (two app instances stand for two processes), with OpenAI's headers so the `openai` SDK backs off.

The clock the limiter reads is pinned (`clock` fixture) so a window's edges are reached without waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

import httpx
import httpx2
import openai
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from openai import AsyncOpenAI

from tests.conftest import Caller, make_caller, registry_with, started_app
from tests.helpers import refused
from tests.openai_sdk import BASE_URL
from tests.responses_helpers import turn
from threadline.config import Settings
from threadline.domain.messages import ChatMessage
from threadline.providers.base import GenerationParams, StreamEvent
from threadline.providers.fake import FakeProvider
from threadline.services import auth, rate_limits
from threadline.storage.tables import Lease, RateLimitCounter

# 10 s into a minute: 50 s until the window resets.
WINDOW_START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    pinned = Clock(WINDOW_START + timedelta(seconds=10))
    monkeypatch.setattr(rate_limits, "utcnow", pinned)
    return pinned


class GatedProvider(FakeProvider):
    """A fake model whose every answer waits for `gate`: a turn stays in flight until the test lets it finish."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def stream(
        self, model: str, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[StreamEvent]:
        self.started.set()
        await self.gate.wait()
        async for event in super().stream(model, messages, params):
            yield event


async def two_apps(settings: Settings, fake: FakeProvider) -> AsyncIterator[tuple[FastAPI, FastAPI]]:
    """Two app instances on one database: what two `threadline serve` processes share is only the database."""
    async for first in started_app(settings, registry_with(fake)):
        async for second in started_app(settings, registry_with(fake)):
            yield first, second


def http(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://threadline.test")


async def credential_id(client: httpx.AsyncClient, caller: Caller) -> str:
    me = await client.get("/v1/me", headers=caller.headers)
    assert me.status_code == 200, me.text
    value: str = me.json()["credential_id"]
    return value


async def test_no_limit_configured_means_no_counting_and_no_headers(app: FastAPI, caller: Caller) -> None:
    async with http(app) as client:
        for _ in range(5):
            response = await client.get("/v1/threads", headers=caller.headers)
            assert response.status_code == 200
            assert "x-ratelimit-limit-requests" not in response.headers
    async with app.state.sessionmaker() as session:
        assert (await session.execute(sa.select(sa.func.count()).select_from(RateLimitCounter))).scalar_one() == 0


async def test_requests_per_minute_are_shared_by_every_process_and_reset_with_the_window(
    settings: Settings, clock: Clock
) -> None:
    settings = settings.model_copy(update={"rate_limit_requests_per_minute": 3})
    async for first, second in two_apps(settings, FakeProvider()):
        caller = await make_caller(first)
        other = await make_caller(first, org="globex", email="hank@globex.test")
        async with http(first) as a, http(second) as b:
            seen = []
            for client in (a, b, a):
                response = await client.get("/v1/threads", headers=caller.headers)
                assert response.status_code == 200, response.text
                assert response.headers["x-ratelimit-limit-requests"] == "3"
                assert response.headers["x-ratelimit-reset-requests"] == "50s"
                seen.append(response.headers["x-ratelimit-remaining-requests"])
            assert seen == ["2", "1", "0"]  # one count across both apps

            refusal = await b.get("/v1/threads", headers=caller.headers)
            refused(refusal, 429, "rate_limited")
            assert refusal.json()["error"]["type"] == "rate_limit_error"
            assert refusal.headers["retry-after"] == "50"
            assert refusal.headers["retry-after-ms"] == "50000"
            assert refusal.headers["x-should-retry"] == "true"
            assert refusal.headers["x-ratelimit-remaining-requests"] == "0"
            # Another credential has its own count.
            assert (await a.get("/v1/threads", headers=other.headers)).status_code == 200

            clock.now = WINDOW_START + timedelta(seconds=60)  # the next window
            fresh = await b.get("/v1/threads", headers=caller.headers)
            assert fresh.status_code == 200
            assert fresh.headers["x-ratelimit-remaining-requests"] == "2"
            assert fresh.headers["x-ratelimit-reset-requests"] == "1m0s"


async def test_a_process_whose_clock_lags_counts_in_the_current_window(settings: Settings, clock: Clock) -> None:
    settings = settings.model_copy(update={"rate_limit_requests_per_minute": 2})
    async for app in started_app(settings):
        caller = await make_caller(app)
        async with http(app) as client:
            clock.now = WINDOW_START + timedelta(seconds=61)
            assert (await client.get("/v1/threads", headers=caller.headers)).status_code == 200
            clock.now = WINDOW_START + timedelta(seconds=59)  # behind the window another process opened
            lagging = await client.get("/v1/threads", headers=caller.headers)
            assert lagging.status_code == 200
            assert lagging.headers["x-ratelimit-remaining-requests"] == "0"  # counted, not reset
            assert (await client.get("/v1/threads", headers=caller.headers)).status_code == 429


async def test_concurrent_turns_are_limited_per_credential_across_processes(settings: Settings) -> None:
    settings = settings.model_copy(update={"rate_limit_concurrent_turns": 1})
    fake = GatedProvider()
    async for first, second in two_apps(settings, fake):
        caller = await make_caller(first)
        colleague = await make_caller(first, email="bob@acme.test")  # same organization, its own key
        async with http(first) as a, http(second) as b:
            running = asyncio.create_task(turn(a, caller, "first", thread="t1"))
            await fake.started.wait()

            refusal = await turn(b, caller, "second", thread="t2")
            refused(refusal, 429, "rate_limited")
            assert "1 turn at once" in refusal.json()["error"]["message"]
            assert refusal.headers["retry-after"] == "1"
            # Nothing of the refused turn was kept: no thread t2.
            assert (await b.get("/v1/threads/t2", headers=caller.headers)).status_code == 404

            fake.gate.set()
            assert (await turn(b, colleague, "hers", thread="t3")).status_code == 200
            assert (await running).status_code == 200
            # The slot came back with the finished turn.
            assert (await turn(b, caller, "second", thread="t2")).status_code == 200


async def test_a_crashed_process_does_not_keep_a_turn_slot_past_its_lease(settings: Settings) -> None:
    settings = settings.model_copy(update={"rate_limit_concurrent_turns": 1})
    async for app in started_app(settings, registry_with(FakeProvider())):
        caller = await make_caller(app)
        async with http(app) as client:
            slot = f"turns:{await credential_id(client, caller)}:0"
            now = datetime.now(UTC)
            async with app.state.sessionmaker() as session:
                # What a process that died mid-turn leaves behind: a slot it never gave back, still within its lease.
                session.add(Lease(name=slot, owner="turn_dead", expires_at=now + timedelta(seconds=30)))
                await session.commit()
            assert (await turn(client, caller, "hello", thread="t1")).status_code == 429
            async with app.state.sessionmaker() as session:
                await session.execute(sa.update(Lease).where(Lease.name == slot).values(expires_at=now))
                await session.commit()
            # The lease ran out: the slot is the credential's again.
            assert (await turn(client, caller, "hello", thread="t1")).status_code == 200
            async with app.state.sessionmaker() as session:
                left = (await session.execute(sa.select(Lease.name).where(Lease.name == slot))).all()
            assert left == []  # and the finished turn gave it back


async def test_a_refused_turn_gives_its_slot_back(settings: Settings) -> None:
    settings = settings.model_copy(update={"rate_limit_concurrent_turns": 1})
    async for app in started_app(settings, registry_with(FakeProvider())):
        caller = await make_caller(app)
        async with http(app) as client:
            await client.post("/v1/threads", json={"id": "t1"}, headers=caller.headers)
            locked = await client.post("/v1/threads/t1", json={"state": "locked"}, headers=caller.headers)
            assert locked.status_code == 200, locked.text
            assert (await turn(client, caller, "hello", thread="t1")).status_code == 409
            assert (await turn(client, caller, "hello", thread="t2")).status_code == 200


async def test_the_owner_tightens_limits_for_the_organization_but_cannot_lift_the_servers(settings: Settings) -> None:
    settings = settings.model_copy(update={"rate_limit_concurrent_turns": 5})
    async for app in started_app(settings):
        owner = await make_caller(app)  # created the organization
        member = await make_caller(app, email="bob@acme.test")
        outsider = await make_caller(app, org="globex", email="hank@globex.test")
        path = f"/v1/organizations/{owner.organization_id}/limits"
        async with http(app) as client:
            read = await client.get(path, headers=member.headers)
            assert read.status_code == 200, read.text
            assert read.json() == {
                "object": "organization.limits",
                "organization_id": owner.organization_id,
                "requests_per_minute": None,
                "concurrent_turns": None,
                "server": {"requests_per_minute": None, "concurrent_turns": 5},
                "effective": {"requests_per_minute": None, "concurrent_turns": 5},
            }
            denied = await client.put(path, json={"requests_per_minute": 1}, headers=member.headers)
            refused(denied, 403, "owner_required")
            foreign = await client.get(path, headers=outsider.headers)
            refused(foreign, 403, "organization_forbidden")
            bad = await client.put(path, json={"requests_per_minute": 0}, headers=owner.headers)
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "requests_per_minute"

            changed = await client.put(
                path, json={"requestsPerMinute": 2, "concurrentTurns": 50}, headers=owner.headers
            )
            assert changed.status_code == 200, changed.text
            assert changed.json()["effective"] == {"requests_per_minute": 2, "concurrent_turns": 5}

            # Every credential of the organization now counts against 2 a minute; another organization does not.
            for _ in range(2):
                assert (await client.get("/v1/threads", headers=member.headers)).status_code == 200
            limited = await client.get("/v1/threads", headers=member.headers)
            assert limited.status_code == 429
            assert limited.headers["x-ratelimit-limit-requests"] == "2"
            outside = await client.get("/v1/threads", headers=outsider.headers)
            assert outside.status_code == 200 and "x-ratelimit-limit-requests" not in outside.headers

            cleared = await client.put(path, json={}, headers=owner.headers)
            assert cleared.status_code == 200
            assert cleared.json()["requests_per_minute"] is None
            assert (await client.get("/v1/threads", headers=member.headers)).status_code == 200


async def test_a_user_token_runs_under_the_tightest_of_its_organizations(settings: Settings) -> None:
    async for app in started_app(settings):
        acme = await make_caller(app, email="ada@acme.test")
        globex = await make_caller(app, org="globex", email="ada@acme.test")  # the same user owns both
        async with app.state.sessionmaker() as session:
            await auth.set_password(session, "acme", "ada@acme.test", "correct horse battery")
            await session.commit()
        async with http(app) as client:
            token = (
                await client.post(
                    "/v1/auth/token", json={"email": "ada@acme.test", "password": "correct horse battery"}
                )
            ).json()["access_token"]
            bearer = {"Authorization": f"Bearer {token}"}
            for caller, limit in ((acme, 7), (globex, 4)):
                path = f"/v1/organizations/{caller.organization_id}/limits"
                put = await client.put(path, json={"requests_per_minute": limit}, headers=bearer)
                assert put.status_code == 200, put.text
            response = await client.get("/v1/me", headers=bearer)
            assert response.headers["x-ratelimit-limit-requests"] == "4"
            assert (await client.get("/v1/me", headers=acme.headers)).headers["x-ratelimit-limit-requests"] == "7"


class HookedTransport(httpx2.AsyncBaseTransport):
    """The app behind an ASGI transport; `on_response` sees every answer before the SDK does."""

    def __init__(self, app: FastAPI, on_response: Callable[[httpx2.Response], Awaitable[None]]) -> None:
        self.inner = httpx2.ASGITransport(app=app)
        self.on_response = on_response
        self.statuses: list[int] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self.inner.handle_async_request(request)
        self.statuses.append(response.status_code)
        await self.on_response(response)
        return response


def sdk(app: FastAPI, caller: Caller, transport: HookedTransport, retries: int) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url=BASE_URL,
        api_key=caller.api_key,
        max_retries=retries,
        http_client=httpx2.AsyncClient(transport=transport),
    )


async def nothing(_: httpx2.Response) -> None:
    return None


async def test_the_openai_sdk_backs_off_and_succeeds_in_the_next_window(settings: Settings, clock: Clock) -> None:
    settings = settings.model_copy(update={"rate_limit_requests_per_minute": 1})
    clock.now = WINDOW_START + timedelta(seconds=59.8)  # Retry-After: 0.2 s, which the SDK honours

    async def next_window_on_429(response: httpx2.Response) -> None:
        if response.status_code == 429:
            clock.now = WINDOW_START + timedelta(seconds=60)

    async for app in started_app(settings, registry_with(FakeProvider())):
        caller = await make_caller(app)
        transport = HookedTransport(app, next_window_on_429)
        async with sdk(app, caller, transport, retries=2) as client:
            await client.models.list()
            page = await client.models.list()  # refused once, retried after Retry-After, then answered
            assert [m.id for m in page.data] == ["fake-model"]
        assert transport.statuses == [200, 429, 200]


async def test_the_openai_sdk_raises_rate_limit_error_after_its_retries(settings: Settings, clock: Clock) -> None:
    settings = settings.model_copy(update={"rate_limit_requests_per_minute": 1})
    clock.now = WINDOW_START + timedelta(seconds=59.9)
    async for app in started_app(settings, registry_with(FakeProvider())):
        caller = await make_caller(app)
        transport = HookedTransport(app, nothing)
        async with sdk(app, caller, transport, retries=2) as client:
            await client.models.list()
            with pytest.raises(openai.RateLimitError) as raised:
                await client.models.list()
        assert raised.value.code == "rate_limited"
        assert transport.statuses == [200, 429, 429, 429]  # the first try and both retries


async def test_the_openai_sdk_waits_out_a_busy_turn_slot(settings: Settings) -> None:
    """Concurrent turns: the second turn is refused while the first runs, and the SDK's retry gets through once
    it finished (the hook lets the first finish when the refusal arrives, before the SDK retries)."""
    settings = settings.model_copy(update={"rate_limit_concurrent_turns": 1})
    fake = GatedProvider()
    async for app in started_app(settings, registry_with(fake)):
        caller = await make_caller(app)
        async with http(app) as plain:
            first = asyncio.create_task(turn(plain, caller, "first", thread="t1"))
            await fake.started.wait()

            async def finish_first_on_429(
                response: httpx2.Response, first: asyncio.Task[httpx.Response] = first
            ) -> None:
                if response.status_code == 429:
                    fake.gate.set()
                    assert (await first).status_code == 200

            transport = HookedTransport(app, finish_first_on_429)
            async with sdk(app, caller, transport, retries=1) as client:
                answer = await client.responses.create(model="fake-model", input="second")
            assert answer.output_text == "echo: second"
            assert transport.statuses == [429, 200]
