"""Sending one webhook delivery: one attempt, recorded, and what comes next (docs/webhooks.md).

`attempt_delivery` is the whole of it, in three steps like a model turn (no transaction is held across the
network): read the delivery and its endpoint; resolve the host, check every address it resolves to (DNS may have
changed since the endpoint was registered) and POST the signed body to a checked address — never to a name that
could resolve anew — without following redirects, under a timeout, reading at most a bounded part of the answer;
then record the attempt and decide: delivered, retried at a later time (exponential backoff within the retry
window), or given up. An endpoint failing every attempt for long enough is disabled, saying why.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline import __version__, observability, tls
from threadline.config import Settings
from threadline.domain import webhooks as rules
from threadline.domain.clock import utcnow
from threadline.errors import ValidationFailed
from threadline.services import jobs
from threadline.storage.repositories.webhooks import WebhookRepository
from threadline.storage.tables import WebhookDelivery

logger = logging.getLogger("threadline.webhooks")

USER_AGENT = f"Threadline/{__version__} (webhooks)"
# What the delivery log keeps of an answer's body, and of an error.
_EXCERPT_CHARS = 500

# Each attempt at a delivery is a job of the app's queue (services/jobs.py), queued with the event (the first) or
# with the previous attempt's record (the next, due when the schedule says). A process that dies mid-attempt
# leaves its job to be taken over: the attempt is made again (deliveries are at least once).
JOB_KIND = "webhook.deliver"

Resolver = Callable[[str, int], Awaitable[list[str]]]
Clock = Callable[[], datetime]


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (an address resolves to itself). No answer: an empty list."""
    literal = rules.literal_address(host)
    if literal is not None:
        return [str(literal)]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return list(dict.fromkeys(str(ipaddress.ip_address(info[4][0])) for info in infos))


_own: dict[str, frozenset[str]] = {}


async def own_addresses(settings: Settings) -> frozenset[str]:
    """The addresses this server is reached at: its host name's and the one it is bound to (looked up once)."""
    key = f"{socket.gethostname()}|{settings.host}"
    if key not in _own:
        found = set()
        for name in (socket.gethostname(), settings.host):
            with_port = await resolve(name, settings.port)
            found.update(with_port)
        _own[key] = frozenset(found)
    return _own[key]


async def checked_addresses(settings: Settings, target: rules.Target, resolver: Resolver = resolve) -> list[str]:
    """The addresses a delivery to `target` may connect to, or 400 (`webhook_url_not_allowed`,
    `webhook_url_unresolvable`): every address the host resolves to must be allowed."""
    addresses = await resolver(target.host, target.port)
    rules.check_addresses(
        target,
        addresses,
        allow_private=settings.webhook_allow_private_urls,
        own_addresses=await own_addresses(settings),
        own_port=settings.port,
    )
    return addresses


def new_client() -> httpx.AsyncClient:
    """The client deliveries go through: no redirects followed, no proxy or other setting from the environment (a
    proxy would connect to the name, not to the checked address). Timeouts are per attempt (`attempt_delivery`)."""
    return httpx.AsyncClient(
        verify=tls.client_context(trust_env=False),
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
    )


@dataclass(frozen=True)
class Sent:
    """What one attempt found out."""

    status_code: int | None
    error: str | None
    excerpt: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


async def _post(
    http: httpx.AsyncClient, settings: Settings, target: rules.Target, address: str, headers: dict[str, str], body: str
) -> Sent:
    request_headers = {
        **headers,
        "host": target.host_header,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }
    # TLS: the certificate is checked against the URL's host name, sent as the server name, while the connection
    # goes to the checked address.
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    timeout = settings.webhook_timeout_seconds
    request = http.build_request(
        "POST",
        target.url_for(address),
        content=body.encode(),
        headers=request_headers,
        extensions=extensions,
        timeout=httpx.Timeout(timeout),
    )
    limit = settings.webhook_max_response_bytes
    async with asyncio.timeout(timeout):
        response = await http.send(request, stream=True)
        try:
            received = bytearray()
            async for chunk in response.aiter_raw():
                received += chunk
                if len(received) >= limit:
                    break  # the rest is never read: a receiver cannot make a delivery read without end
        finally:
            await response.aclose()
    excerpt = bytes(received[:limit]).decode("utf-8", errors="replace")[:_EXCERPT_CHARS] or None
    if 300 <= response.status_code < 400:
        location = response.headers.get("location", "")
        return Sent(response.status_code, f"Redirects are not followed (to {location[:200]!r}).", excerpt)
    if response.is_success:
        return Sent(response.status_code, None, excerpt)
    return Sent(response.status_code, f"The endpoint answered {response.status_code}.", excerpt)


async def send(
    http: httpx.AsyncClient,
    settings: Settings,
    url: str,
    headers: dict[str, str],
    body: str,
    resolver: Resolver = resolve,
) -> Sent:
    """One POST of a signed body to `url`: its host resolved and every address checked now, then the checked
    addresses tried in turn until one connects. Never raises."""
    try:
        target = rules.parse_url(url)
        addresses = await checked_addresses(settings, target, resolver)
    except ValidationFailed as exc:
        return Sent(None, exc.message[:_EXCERPT_CHARS])
    error = "No address could be reached."
    for address in addresses:
        try:
            return await _post(http, settings, target, address, headers, body)
        except httpx.ConnectError as exc:
            error = f"Could not connect to {address}: {exc or type(exc).__name__}."
        except (TimeoutError, httpx.TimeoutException):
            return Sent(None, f"No answer within {settings.webhook_timeout_seconds:g} seconds.")
        except httpx.HTTPError as exc:
            return Sent(None, f"{type(exc).__name__}: {exc}"[:_EXCERPT_CHARS])
    return Sent(None, error[:_EXCERPT_CHARS])


@dataclass(frozen=True)
class Outcome:
    """Where a delivery stands after an attempt: `delivered`, `pending` (retry at `next_attempt_at`), `failed`
    (given up: retry window over, endpoint disabled), or `gone` (no such pending delivery: deleted, or already
    closed by another worker)."""

    status: str
    next_attempt_at: datetime | None = None
    attempt: dict[str, Any] | None = None


async def attempt_delivery(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    http: httpx.AsyncClient,
    organization_id: str,
    delivery_id: str,
    *,
    clock: Clock = utcnow,
    resolver: Resolver = resolve,
) -> Outcome:
    """Make one attempt at a pending delivery and record it (see the module docstring)."""
    async with maker() as session:
        repo = WebhookRepository(session)
        delivery = await repo.get_delivery(organization_id, delivery_id)
        endpoint = await repo.get(organization_id, delivery.endpoint_id) if delivery is not None else None
        await session.commit()
    if delivery is None or endpoint is None or delivery.status != rules.PENDING:
        return Outcome("gone")
    now = clock()
    if endpoint.status != rules.ENABLED:
        async with maker() as session:
            await WebhookRepository(session).abandon_pending(
                organization_id, endpoint.id, "The endpoint was disabled before this delivery succeeded.", now
            )
            await session.commit()
        return Outcome(rules.FAILED)
    secrets_ = [endpoint.secret]
    if endpoint.previous_secret and endpoint.previous_secret_expires_at and endpoint.previous_secret_expires_at > now:
        secrets_.append(endpoint.previous_secret)
    headers = rules.signature_headers(delivery.id, now, delivery.body, secrets_)
    started = time.monotonic()
    sent = await send(http, settings, endpoint.url, headers, delivery.body, resolver)
    attempt = {
        "attempt": delivery.attempt_count + 1,
        "at": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "duration_ms": round((time.monotonic() - started) * 1000),
        "status_code": sent.status_code,
        "error": sent.error,
        "response_excerpt": sent.excerpt,
    }
    return await _record(maker, settings, delivery, sent, attempt, clock())


async def _record(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    delivery: WebhookDelivery,
    sent: Sent,
    attempt: dict[str, Any],
    now: datetime,
) -> Outcome:
    """Write the attempt down and decide what comes next, in one transaction (see `attempt_delivery`)."""
    organization_id, endpoint_id = delivery.organization_id, delivery.endpoint_id
    count = delivery.attempt_count + 1
    values: dict[str, Any] = {
        "attempt_count": count,
        "attempts": [*delivery.attempts, attempt],
        "last_status_code": sent.status_code,
        "last_error": sent.error[:_EXCERPT_CHARS] if sent.error else None,
        "updated_at": now,
    }
    async with maker() as session:
        repo = WebhookRepository(session)
        if sent.ok:
            values.update(status=rules.DELIVERED, delivered_at=now, next_attempt_at=None)
            outcome = Outcome(rules.DELIVERED, attempt=attempt)
        else:
            window = timedelta(hours=settings.webhook_retry_hours)
            retry_at = rules.next_attempt_at(delivery.created_at, now, count, window, random.random())
            if retry_at is None:
                values.update(status=rules.FAILED, next_attempt_at=None)
                outcome = Outcome(rules.FAILED, attempt=attempt)
            else:
                values.update(next_attempt_at=retry_at)
                outcome = Outcome(rules.PENDING, retry_at, attempt)
        if not await repo.record_attempt(organization_id, delivery.id, delivery.attempt_count, values):
            await session.rollback()
            return Outcome("gone", attempt=attempt)
        if outcome.status == rules.PENDING:
            await enqueue(session, organization_id, delivery.id, run_after=outcome.next_attempt_at)
        if sent.ok:
            await repo.record_success(organization_id, endpoint_id)
        else:
            outcome = await _count_failure(repo, settings, organization_id, endpoint_id, now, outcome, sent.error)
        await session.commit()
    observability.current().webhook_attempt(_METRIC_OUTCOMES[outcome.status])
    return outcome


_METRIC_OUTCOMES = {rules.DELIVERED: "delivered", rules.PENDING: "retry", rules.FAILED: "given_up"}


def handler(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    http: httpx.AsyncClient,
    *,
    clock: Clock = utcnow,
    resolver: Resolver = resolve,
) -> jobs.Handler:
    """The job handler of `JOB_KIND` (registered in the app's lifespan): one attempt at the job's delivery. The
    next attempt, if any, is another job, queued with the attempt's record."""

    async def deliver(job: jobs.QueuedJob) -> None:
        delivery_id = str(job.payload["delivery_id"])
        await attempt_delivery(maker, settings, http, job.organization_id, delivery_id, clock=clock, resolver=resolver)

    return deliver


async def enqueue(
    session: AsyncSession, organization_id: str, delivery_id: str, run_after: datetime | None = None
) -> None:
    """Queue an attempt at a delivery, in the caller's transaction (the one that wrote the delivery, or the
    previous attempt's record)."""
    payload = {"delivery_id": delivery_id}
    await jobs.enqueue(session, organization_id=organization_id, kind=JOB_KIND, payload=payload, run_after=run_after)


async def _count_failure(
    repo: WebhookRepository,
    settings: Settings,
    organization_id: str,
    endpoint_id: str,
    now: datetime,
    outcome: Outcome,
    error: str | None,
) -> Outcome:
    """One more failure of the endpoint; past the policy, it is disabled and its pending deliveries closed."""
    counted = await repo.record_failure(organization_id, endpoint_id, now)
    if counted is None:
        return outcome
    failures, since, status = counted
    policy = rules.DisablePolicy(
        timedelta(hours=settings.webhook_disable_after_hours), settings.webhook_disable_after_failures
    )
    if status != rules.ENABLED or not policy.disables(since, failures, now):
        return outcome
    assert since is not None
    reason = (
        f"Disabled after {failures} failed attempts in a row since {since.isoformat(timespec='seconds')}; the "
        f"last: {error} Update the endpoint with status 'enabled' to resume."
    )[:1000]
    if await repo.disable(organization_id, endpoint_id, reason, now):
        logger.warning("webhook endpoint %s of %s disabled: %s", endpoint_id, organization_id, reason)
        await repo.abandon_pending(organization_id, endpoint_id, "The endpoint was disabled.", now)
    return Outcome(rules.FAILED, attempt=outcome.attempt)
