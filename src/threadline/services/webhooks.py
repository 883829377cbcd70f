"""Webhook endpoints and the events of an organization's responses (docs/webhooks.md).

An organization registers endpoints (a URL, the event types it wants, a generated signing secret shown once).
When a response reaches its final status, `response_settled` writes one delivery per subscribed endpoint in the
very transaction that settles it — an outbox: a crash either keeps both or neither, so no event is lost or
invented — and `services/webhook_delivery.py` sends them, retrying with backoff.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline.config import Settings
from threadline.domain import threads as thread_rules
from threadline.domain import webhooks as rules
from threadline.domain.clock import utcnow
from threadline.errors import Conflict, NotFound, UpstreamError, ValidationFailed
from threadline.ids import new_id, sibling_id
from threadline.services import webhook_delivery
from threadline.storage.repositories.pagination import Page, PageRequest
from threadline.storage.repositories.webhooks import WebhookRepository
from threadline.storage.tables import Response, WebhookDelivery, WebhookEndpoint

# How long a rotated-out secret still signs when the rotation asks to keep it (OpenAI's 24 hours).
PREVIOUS_SECRET_GRACE = timedelta(hours=24)


def _not_found(endpoint_id: str) -> NotFound:
    return NotFound(
        f"No webhook endpoint found with id '{endpoint_id}'.", code="webhook_endpoint_not_found", param="webhook_id"
    )


def _event_types(values: Sequence[str], param: str) -> list[str]:
    if not values:
        raise ValidationFailed("Name at least one event type.", code="invalid_event_type", param=param)
    unknown = [value for value in values if value not in rules.EVENT_TYPES]
    if unknown:
        raise ValidationFailed(
            f"Unknown event type '{unknown[0]}'; Threadline sends {', '.join(rules.EVENT_TYPES)}.",
            code="invalid_event_type",
            param=param,
        )
    return list(dict.fromkeys(values))  # once each, in the order given


async def check_url(settings: Settings, url: str) -> str:
    """400 unless deliveries may go to `url` now (its host resolved, every address checked)."""
    target = rules.parse_url(url)
    await webhook_delivery.checked_addresses(settings, target)
    return url


async def get_endpoint(
    session: AsyncSession, organization_id: str, endpoint_id: str, *, for_update: bool = False
) -> WebhookEndpoint:
    """Another organization's endpoint is as missing as one that never existed."""
    endpoint = await WebhookRepository(session).get(organization_id, endpoint_id, for_update=for_update)
    if endpoint is None:
        raise _not_found(endpoint_id)
    return endpoint


async def create_endpoint(
    session: AsyncSession,
    settings: Settings,
    organization_id: str,
    *,
    url: str,
    event_types: Sequence[str],
    description: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    events_param: str = "events",
) -> WebhookEndpoint:
    """A new, enabled endpoint with a new signing secret (the caller shows it this once). `events_param` names
    the field of the event types in errors (`event_types` on the OpenAI surface)."""
    events = _event_types(event_types, events_param)
    values = dict(metadata or {})
    thread_rules.validate_metadata(values)
    repo = WebhookRepository(session)
    if await repo.count(organization_id) >= rules.MAX_ENDPOINTS_PER_ORGANIZATION:
        raise Conflict(
            f"An organization has at most {rules.MAX_ENDPOINTS_PER_ORGANIZATION} webhook endpoints; delete one first.",
            code="webhook_endpoints_limit",
        )
    await check_url(settings, url)
    now = utcnow()
    return await repo.add(
        WebhookEndpoint(
            organization_id=organization_id,
            id=new_id("whep"),
            url=url,
            event_types=events,
            description=description,
            metadata_=values,
            secret=rules.new_secret(),
            status=rules.ENABLED,
            consecutive_failures=0,
            created_at=now,
            updated_at=now,
        )
    )


async def list_endpoints(session: AsyncSession, organization_id: str, page: PageRequest) -> Page[WebhookEndpoint]:
    return await WebhookRepository(session).list_page(organization_id, page)


async def update_endpoint(
    session: AsyncSession,
    settings: Settings,
    organization_id: str,
    endpoint_id: str,
    changes: Mapping[str, Any],
    *,
    events_param: str = "events",
) -> WebhookEndpoint:
    """Set the fields given. `status: "enabled"` re-enables a disabled endpoint (its failure count starts over;
    deliveries closed while it was disabled stay closed); `"disabled"` stops deliveries by hand."""
    for field in ("url", "events"):
        if field in changes and changes[field] is None:
            param = events_param if field == "events" else field
            raise ValidationFailed(f"'{param}' cannot be null.", code="invalid_value", param=param)
    endpoint = await get_endpoint(session, organization_id, endpoint_id, for_update=True)
    now = utcnow()
    if "url" in changes:
        endpoint.url = await check_url(settings, changes["url"])
    if "events" in changes:
        endpoint.event_types = _event_types(changes["events"], events_param)
    if "description" in changes:
        endpoint.description = changes["description"]
    if "metadata" in changes:
        values = dict(changes["metadata"] or {})
        thread_rules.validate_metadata(values)
        endpoint.metadata_ = values
    status = changes.get("status")
    if status == rules.ENABLED and endpoint.status != rules.ENABLED:
        endpoint.status = rules.ENABLED
        endpoint.disabled_reason = None
        endpoint.disabled_at = None
        endpoint.consecutive_failures = 0
        endpoint.failing_since = None
    elif status == rules.DISABLED and endpoint.status != rules.DISABLED:
        endpoint.status = rules.DISABLED
        endpoint.disabled_reason = "Disabled by request."
        endpoint.disabled_at = now
        await WebhookRepository(session).abandon_pending(
            organization_id, endpoint_id, "The endpoint was disabled before this delivery succeeded.", now
        )
    endpoint.updated_at = now
    await session.flush()
    return endpoint


async def delete_endpoint(session: AsyncSession, organization_id: str, endpoint_id: str) -> WebhookEndpoint:
    """Deleted for good, with its delivery log; nothing more is sent to it."""
    endpoint = await get_endpoint(session, organization_id, endpoint_id, for_update=True)
    await WebhookRepository(session).delete(endpoint)
    return endpoint


async def rotate_secret(
    session: AsyncSession, organization_id: str, endpoint_id: str, *, keep_previous: bool = False
) -> WebhookEndpoint:
    """A new signing secret (the caller shows it this once). The old one stops signing at once, or with
    `keep_previous` signs alongside the new one for 24 hours, so receivers can switch without missing a delivery."""
    endpoint = await get_endpoint(session, organization_id, endpoint_id, for_update=True)
    now = utcnow()
    if keep_previous:
        endpoint.previous_secret = endpoint.secret
        endpoint.previous_secret_expires_at = now + PREVIOUS_SECRET_GRACE
    else:
        endpoint.previous_secret = None
        endpoint.previous_secret_expires_at = None
    endpoint.secret = rules.new_secret()
    endpoint.updated_at = now
    await session.flush()
    return endpoint


async def list_deliveries(
    session: AsyncSession, organization_id: str, endpoint_id: str, page: PageRequest, status: str | None = None
) -> Page[WebhookDelivery]:
    await get_endpoint(session, organization_id, endpoint_id)
    return await WebhookRepository(session).list_deliveries(organization_id, endpoint_id, page, status)


async def get_delivery(
    session: AsyncSession, organization_id: str, endpoint_id: str, delivery_id: str
) -> WebhookDelivery:
    await get_endpoint(session, organization_id, endpoint_id)
    found = await WebhookRepository(session).get_delivery(organization_id, delivery_id, endpoint_id)
    if found is None:
        raise NotFound(
            f"No delivery found with id '{delivery_id}'.", code="webhook_delivery_not_found", param="delivery_id"
        )
    return found


async def test_endpoint(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    http: httpx.AsyncClient,
    organization_id: str,
    endpoint_id: str,
    event_type: str,
) -> int:
    """Send a sample event (about no real response) to the endpoint now and return the status it answered. Not
    recorded, and not counted towards disabling; sent to a disabled endpoint too, to check it before enabling it."""
    [event_type] = _event_types([event_type], "event_type")
    async with maker() as session:
        endpoint = await get_endpoint(session, organization_id, endpoint_id)
        await session.commit()
    now = utcnow()
    body = rules.event_body(new_id("evt"), event_type, now, {"id": new_id("resp")})
    headers = rules.signature_headers(new_id("wh"), now, body, [endpoint.secret])
    sent = await webhook_delivery.send(http, settings, endpoint.url, headers, body)
    if sent.status_code is None:
        raise UpstreamError(sent.error or "The endpoint did not answer.", code="webhook_endpoint_unreachable")
    return sent.status_code


# ---- events ------------------------------------------------------------------------------------------------------


def _announced(response: Response) -> bool:
    """Responses of the Responses surfaces (Freddy and OpenAI) are announced; an Assistants run (its own
    lifecycle, which OpenAI announces by no webhook) and the internal turn that names a thread are not. (The keys
    are turns/record.py's: `run` for a run, `purpose` from the naming turn's `TurnRequest.record`.)"""
    return "run" not in response.request and response.request.get("purpose") is None


async def response_settled(session: AsyncSession, organization_id: str, response_id: str) -> list[str]:
    """Write the event of a response that just reached its final status, one delivery per endpoint that wants
    it and the job that sends it, in the caller's transaction (the one that settles the response). Returns the
    delivery ids written.

    Costs one indexed query when the organization has no webhook endpoint. The event id is derived from the
    response's, and (endpoint, event) is unique: settling twice, were it ever to happen, writes nothing new."""
    repo = WebhookRepository(session)
    endpoints = await repo.enabled(organization_id)
    if not endpoints:
        return []
    response = await repo.settled_response(organization_id, response_id)
    if response is None or not _announced(response):
        return []
    event_type = rules.response_event_type(response.status, response.context.get("finish_reason"))
    endpoints = [endpoint for endpoint in endpoints if event_type in endpoint.event_types]
    if event_type is None or not endpoints:
        return []
    now = utcnow()
    event_id = sibling_id("evt", response.id)
    body = rules.event_body(event_id, event_type, response.completed_at or now, {"id": response.id})
    rows = [
        {
            "organization_id": organization_id,
            "id": new_id("wh"),
            "endpoint_id": endpoint.id,
            "event_id": event_id,
            "event_type": event_type,
            "body": body,
            "status": rules.PENDING,
            "attempt_count": 0,
            "attempts": [],
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        }
        for endpoint in endpoints
    ]
    written = await repo.add_deliveries(rows)
    for delivery_id in written:
        await webhook_delivery.enqueue(session, organization_id, delivery_id)
    return written
