"""Webhook endpoints and their delivery log: snake_case, ISO-8601 timestamps like the other Freddy objects."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from threadline.api.schemas.common import Metadata, RequestModel, ResponseModel, iso
from threadline.api.schemas.freddy import ListEnvelope
from threadline.domain import webhooks as rules
from threadline.domain.webhooks import EventType
from threadline.storage.repositories.pagination import Page
from threadline.storage.tables import WebhookDelivery, WebhookEndpoint

_URL = (
    "An http(s) URL on a public address: loopback, private, link-local and multicast addresses are refused (private "
    "ones are allowed when the server sets THREADLINE_WEBHOOK_ALLOW_PRIVATE_URLS=true), and so is the server itself."
)
_EVENTS = "The event types delivered to it."


class WebhookCreate(RequestModel):
    url: str = Field(max_length=rules.URL_MAX_CHARS, description=_URL)
    events: list[EventType] = Field(min_length=1, max_length=len(rules.EVENT_TYPES), description=_EVENTS)
    description: str | None = Field(default=None, max_length=512)
    metadata: Metadata | None = None
    organization_id: str | None = Field(default=None, max_length=64)


class WebhookUpdate(RequestModel):
    url: str | None = Field(default=None, max_length=rules.URL_MAX_CHARS, description=_URL)
    events: list[EventType] | None = Field(
        default=None, min_length=1, max_length=len(rules.EVENT_TYPES), description=_EVENTS
    )
    description: str | None = Field(default=None, max_length=512)
    metadata: Metadata | None = None
    status: Literal["enabled", "disabled"] | None = Field(
        default=None, description="`enabled` resumes an endpoint that was disabled (by hand or after failing)."
    )
    organization_id: str | None = Field(default=None, max_length=64)


class WebhookRotate(RequestModel):
    keep_old_secret_active_for_24_hours: bool = Field(
        default=False, description="The old secret signs alongside the new one for 24 hours (OpenAI's option)."
    )
    organization_id: str | None = Field(default=None, max_length=64)


class WebhookRead(ResponseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    organization_id: str
    url: str
    events: list[str]
    description: str | None
    metadata: dict[str, Any]
    status: Literal["enabled", "disabled"]
    disabled_reason: str | None = Field(description="Why it is disabled: by request, or after failing deliveries.")
    disabled_at: str | None
    secret_hint: str
    created_at: str
    updated_at: str

    @classmethod
    def fields_of(cls, endpoint: WebhookEndpoint) -> dict[str, Any]:
        return {
            "id": endpoint.id,
            "organization_id": endpoint.organization_id,
            "url": endpoint.url,
            "events": list(endpoint.event_types),
            "description": endpoint.description,
            "metadata": endpoint.metadata_,
            "status": endpoint.status,
            "disabled_reason": endpoint.disabled_reason,
            "disabled_at": iso(endpoint.disabled_at),
            "secret_hint": rules.secret_hint(endpoint.secret),
            "created_at": iso(endpoint.created_at) or "",
            "updated_at": iso(endpoint.updated_at) or "",
        }

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> WebhookRead:
        return cls(**cls.fields_of(endpoint))


class WebhookWithSecretRead(WebhookRead):
    """Only the answers to create and rotate carry the secret: it is never shown again."""

    secret: str = Field(description="The `whsec_…` signing secret. Shown only now: keep it.")

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> WebhookWithSecretRead:
        return cls(**cls.fields_of(endpoint), secret=endpoint.secret)


class WebhookList(ListEnvelope):
    data: list[WebhookRead]

    @classmethod
    def of(cls, page: Page[WebhookEndpoint], limit: int) -> WebhookList:
        return cls.of_data([WebhookRead.of(e) for e in page.items], page, limit, total=page.total)


class DeliveryAttemptRead(ResponseModel):
    attempt: int
    at: str
    duration_ms: int
    status_code: int | None = Field(description="The endpoint's HTTP status; null when none came back.")
    error: str | None
    response_excerpt: str | None = Field(description="The start of the endpoint's answer (at most 500 characters).")


class WebhookDeliveryRead(ResponseModel):
    id: str = Field(description="The `webhook-id` header of every attempt: the same on each retry.")
    object: Literal["webhook_delivery"] = "webhook_delivery"
    webhook_id: str
    event_id: str
    event_type: str
    event: dict[str, Any] = Field(description="The delivered body.")
    status: Literal["pending", "delivered", "failed"]
    attempt_count: int
    next_attempt_at: str | None
    last_status_code: int | None
    last_error: str | None
    attempts: list[DeliveryAttemptRead]
    created_at: str
    updated_at: str
    delivered_at: str | None

    @classmethod
    def of(cls, delivery: WebhookDelivery) -> WebhookDeliveryRead:
        return cls(
            id=delivery.id,
            webhook_id=delivery.endpoint_id,
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            event=json.loads(delivery.body),
            status=delivery.status,
            attempt_count=delivery.attempt_count,
            next_attempt_at=iso(delivery.next_attempt_at),
            last_status_code=delivery.last_status_code,
            last_error=delivery.last_error,
            attempts=[DeliveryAttemptRead(**attempt) for attempt in delivery.attempts],
            created_at=iso(delivery.created_at) or "",
            updated_at=iso(delivery.updated_at) or "",
            delivered_at=iso(delivery.delivered_at),
        )


class WebhookDeliveryList(ListEnvelope):
    data: list[WebhookDeliveryRead]

    @classmethod
    def of(cls, page: Page[WebhookDelivery], limit: int) -> WebhookDeliveryList:
        return cls.of_data([WebhookDeliveryRead.of(d) for d in page.items], page, limit, total=page.total)
