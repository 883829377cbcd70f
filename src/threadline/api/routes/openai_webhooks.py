"""OpenAI's webhook endpoint API (`client.webhooks.*` of the official SDK): the same endpoints as /v1/webhooks,
in OpenAI's shapes and paths (docs/webhooks.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from threadline.api.deps import OrganizationDep, SessionDep, SessionmakerDep, SettingsDep, WebhookHttpDep
from threadline.api.idempotency import Idempotent
from threadline.api.schemas.common import ID_PATTERN
from threadline.api.schemas.openai import OpenAIPageQueryDep
from threadline.api.schemas.openai_webhooks import (
    WebhookEndpointCreate,
    WebhookEndpointDeleted,
    WebhookEndpointList,
    WebhookEndpointRead,
    WebhookEndpointRotate,
    WebhookEndpointTest,
    WebhookEndpointTestResult,
    WebhookEndpointUpdate,
    WebhookEndpointWithSecretRead,
    WebhookEventTypeList,
)
from threadline.api.statuses import ENDPOINT_CALL
from threadline.services import webhooks

router = APIRouter(tags=["webhooks (OpenAI)"])

EndpointIdPath = Annotated[str, Path(max_length=64, pattern=ID_PATTERN)]
_RENAMED = {"event_types": "events", "name": "description", "url": "url"}


@router.post("/v1/webhook_endpoints", response_model=WebhookEndpointWithSecretRead, dependencies=[Idempotent])
async def create_webhook_endpoint(
    body: WebhookEndpointCreate, session: SessionDep, settings: SettingsDep, organization_id: OrganizationDep
) -> WebhookEndpointWithSecretRead:
    endpoint = await webhooks.create_endpoint(
        session,
        settings,
        organization_id,
        url=body.url,
        event_types=body.event_types,
        description=body.name,
        events_param="event_types",
    )
    return WebhookEndpointWithSecretRead.of(endpoint)


@router.get("/v1/webhook_endpoints", response_model=WebhookEndpointList)
async def list_webhook_endpoints(
    session: SessionDep, organization_id: OrganizationDep, page: OpenAIPageQueryDep
) -> WebhookEndpointList:
    return WebhookEndpointList.of(await webhooks.list_endpoints(session, organization_id, page))


@router.get("/v1/webhook_endpoints/{webhook_endpoint_id}", response_model=WebhookEndpointRead)
async def get_webhook_endpoint(
    webhook_endpoint_id: EndpointIdPath, session: SessionDep, organization_id: OrganizationDep
) -> WebhookEndpointRead:
    return WebhookEndpointRead.of(await webhooks.get_endpoint(session, organization_id, webhook_endpoint_id))


@router.post("/v1/webhook_endpoints/{webhook_endpoint_id}", response_model=WebhookEndpointRead)
async def update_webhook_endpoint(
    webhook_endpoint_id: EndpointIdPath,
    body: WebhookEndpointUpdate,
    session: SessionDep,
    settings: SettingsDep,
    organization_id: OrganizationDep,
) -> WebhookEndpointRead:
    changes = {_RENAMED[name]: value for name, value in body.model_dump(exclude_unset=True).items()}
    endpoint = await webhooks.update_endpoint(
        session, settings, organization_id, webhook_endpoint_id, changes, events_param="event_types"
    )
    return WebhookEndpointRead.of(endpoint)


@router.delete("/v1/webhook_endpoints/{webhook_endpoint_id}", response_model=WebhookEndpointDeleted)
async def delete_webhook_endpoint(
    webhook_endpoint_id: EndpointIdPath, session: SessionDep, organization_id: OrganizationDep
) -> WebhookEndpointDeleted:
    endpoint = await webhooks.delete_endpoint(session, organization_id, webhook_endpoint_id)
    return WebhookEndpointDeleted(id=endpoint.id)


@router.post("/v1/webhook_endpoints/{webhook_endpoint_id}/rotate_secret", response_model=WebhookEndpointWithSecretRead)
async def rotate_webhook_endpoint_secret(
    webhook_endpoint_id: EndpointIdPath,
    session: SessionDep,
    organization_id: OrganizationDep,
    body: WebhookEndpointRotate | None = None,
) -> WebhookEndpointWithSecretRead:
    keep = body.keep_old_secret_active_for_24_hours if body is not None else False
    endpoint = await webhooks.rotate_secret(session, organization_id, webhook_endpoint_id, keep_previous=keep)
    return WebhookEndpointWithSecretRead.of(endpoint)


@router.post(
    "/v1/webhook_endpoints/{webhook_endpoint_id}/test",
    response_model=WebhookEndpointTestResult,
    responses=ENDPOINT_CALL,
)
async def test_webhook_endpoint(
    webhook_endpoint_id: EndpointIdPath,
    body: WebhookEndpointTest,
    maker: SessionmakerDep,
    settings: SettingsDep,
    http: WebhookHttpDep,
    organization_id: OrganizationDep,
) -> WebhookEndpointTestResult:
    """Send a sample event now and answer with the status the endpoint returned (nothing is recorded)."""
    status = await webhooks.test_endpoint(maker, settings, http, organization_id, webhook_endpoint_id, body.event_type)
    return WebhookEndpointTestResult(
        event_type=body.event_type, webhook_endpoint_id=webhook_endpoint_id, status_code=status
    )


@router.get("/v1/webhook_event_types", response_model=WebhookEventTypeList)
async def list_webhook_event_types(organization_id: OrganizationDep) -> WebhookEventTypeList:
    """The event types this server sends."""
    return WebhookEventTypeList()
