"""OpenAI's webhook endpoint shapes (`openai.types.webhooks`: WebhookEndpoint, WebhookEndpointWithSecret…), for
`client.webhooks.create/list/retrieve/update/delete/rotate_secret/test`. The same rows as /v1/webhooks: OpenAI's
`name` is the endpoint's description; `status` and `disabled_reason` come along (the SDK keeps extra fields)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from threadline.api.schemas.common import ResponseModel
from threadline.api.schemas.openai import OpenAIList, OpenAIRequest, unix
from threadline.domain import webhooks as rules
from threadline.storage.repositories.pagination import Page
from threadline.storage.tables import WebhookEndpoint

_EVENT_TYPES = f"Threadline sends {', '.join(rules.EVENT_TYPES)}; any other type is refused (400)."


class WebhookEndpointCreate(OpenAIRequest):
    event_types: list[str] = Field(min_length=1, max_length=32, description=_EVENT_TYPES)
    name: str = Field(min_length=1, max_length=256)
    url: str = Field(max_length=rules.URL_MAX_CHARS)


class WebhookEndpointUpdate(OpenAIRequest):
    event_types: list[str] | None = Field(default=None, min_length=1, max_length=32, description=_EVENT_TYPES)
    name: str | None = Field(default=None, min_length=1, max_length=256)
    url: str | None = Field(default=None, max_length=rules.URL_MAX_CHARS)


class WebhookEndpointRotate(OpenAIRequest):
    keep_old_secret_active_for_24_hours: bool = False


class WebhookEndpointTest(OpenAIRequest):
    event_type: str = Field(max_length=64, description=_EVENT_TYPES)


class WebhookEndpointRead(ResponseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    created_at: int
    updated_at: int
    event_types: list[str]
    name: str
    url: str
    signing_secret_hint: str
    status: Literal["enabled", "disabled"]
    disabled_reason: str | None

    @classmethod
    def fields_of(cls, endpoint: WebhookEndpoint) -> dict[str, Any]:
        return {
            "id": endpoint.id,
            "created_at": unix(endpoint.created_at),
            "updated_at": unix(endpoint.updated_at),
            "event_types": list(endpoint.event_types),
            "name": endpoint.description or "",
            "url": endpoint.url,
            "signing_secret_hint": rules.secret_hint(endpoint.secret),
            "status": endpoint.status,
            "disabled_reason": endpoint.disabled_reason,
        }

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> WebhookEndpointRead:
        return cls.model_validate(cls.fields_of(endpoint))


class WebhookEndpointWithSecretRead(WebhookEndpointRead):
    signing_secret: str

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> WebhookEndpointWithSecretRead:
        return cls.model_validate({**cls.fields_of(endpoint), "signing_secret": endpoint.secret})


class WebhookEndpointList(OpenAIList):
    data: list[WebhookEndpointRead]

    @classmethod
    def of(cls, page: Page[WebhookEndpoint]) -> WebhookEndpointList:
        return cls.of_data([WebhookEndpointRead.of(e) for e in page.items], page.has_more)


class WebhookEndpointDeleted(ResponseModel):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool = True


class WebhookEndpointTestResult(ResponseModel):
    object: Literal["webhook_endpoint.test"] = "webhook_endpoint.test"
    event_type: str
    webhook_endpoint_id: str
    status_code: int
    success: Literal[True] = True


class WebhookEventTypeList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[str] = Field(default_factory=lambda: list(rules.EVENT_TYPES))
