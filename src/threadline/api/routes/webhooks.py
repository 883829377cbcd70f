"""Webhook endpoints of an organization and their delivery log (docs/webhooks.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from threadline.api.deps import OrganizationDep, PrincipalDep, SessionDep, SettingsDep
from threadline.api.idempotency import Idempotent
from threadline.api.schemas.common import ID_PATTERN, LimitQuery, OrderQuery
from threadline.api.schemas.freddy import Deleted, PageQueryDep
from threadline.api.schemas.webhooks import (
    WebhookCreate,
    WebhookDeliveryList,
    WebhookDeliveryRead,
    WebhookList,
    WebhookRead,
    WebhookRotate,
    WebhookUpdate,
    WebhookWithSecretRead,
)
from threadline.services import webhooks
from threadline.storage.repositories.pagination import PageRequest

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

WebhookIdPath = Annotated[str, Path(max_length=64, pattern=ID_PATTERN)]
DeliveryIdPath = Annotated[str, Path(max_length=64, pattern=ID_PATTERN)]


@router.post("", response_model=WebhookWithSecretRead, dependencies=[Idempotent])
async def create_webhook(
    body: WebhookCreate, session: SessionDep, principal: PrincipalDep, settings: SettingsDep
) -> WebhookWithSecretRead:
    """Register an endpoint. The answer carries its signing secret, shown this once."""
    endpoint = await webhooks.create_endpoint(
        session,
        settings,
        principal.organization(body.organization_id),
        url=body.url,
        event_types=body.events,
        description=body.description,
        metadata=body.metadata,
    )
    return WebhookWithSecretRead.of(endpoint)


@router.get("", response_model=WebhookList)
async def list_webhooks(session: SessionDep, organization_id: OrganizationDep, page: PageQueryDep) -> WebhookList:
    return WebhookList.of(await webhooks.list_endpoints(session, organization_id, page), page.limit)


@router.get("/{webhook_id}", response_model=WebhookRead)
async def get_webhook(webhook_id: WebhookIdPath, session: SessionDep, organization_id: OrganizationDep) -> WebhookRead:
    return WebhookRead.of(await webhooks.get_endpoint(session, organization_id, webhook_id))


@router.post("/{webhook_id}", response_model=WebhookRead)
@router.patch("/{webhook_id}", response_model=WebhookRead)
async def update_webhook(
    webhook_id: WebhookIdPath, body: WebhookUpdate, session: SessionDep, principal: PrincipalDep, settings: SettingsDep
) -> WebhookRead:
    changes = body.model_dump(exclude_unset=True, exclude={"organization_id"})
    endpoint = await webhooks.update_endpoint(
        session, settings, principal.organization(body.organization_id), webhook_id, changes
    )
    return WebhookRead.of(endpoint)


@router.delete("/{webhook_id}", response_model=Deleted)
async def delete_webhook(webhook_id: WebhookIdPath, session: SessionDep, organization_id: OrganizationDep) -> Deleted:
    endpoint = await webhooks.delete_endpoint(session, organization_id, webhook_id)
    return Deleted(id=endpoint.id, object="webhook_endpoint.deleted")


@router.post("/{webhook_id}/rotate_secret", response_model=WebhookWithSecretRead)
async def rotate_webhook_secret(
    webhook_id: WebhookIdPath, session: SessionDep, principal: PrincipalDep, body: WebhookRotate | None = None
) -> WebhookWithSecretRead:
    """A new signing secret, shown this once; the old one stops signing (or, if asked, in 24 hours)."""
    body = body or WebhookRotate()
    endpoint = await webhooks.rotate_secret(
        session,
        principal.organization(body.organization_id),
        webhook_id,
        keep_previous=body.keep_old_secret_active_for_24_hours,
    )
    return WebhookWithSecretRead.of(endpoint)


@router.get("/{webhook_id}/deliveries", response_model=WebhookDeliveryList)
async def list_webhook_deliveries(
    webhook_id: WebhookIdPath,
    session: SessionDep,
    organization_id: OrganizationDep,
    limit: LimitQuery = 20,
    order: OrderQuery = "desc",
    after: Annotated[str | None, Query(max_length=64, pattern=ID_PATTERN)] = None,
    before: Annotated[str | None, Query(max_length=64, pattern=ID_PATTERN)] = None,
    status: Literal["pending", "delivered", "failed"] | None = None,
    include_total: bool = False,
) -> WebhookDeliveryList:
    """The delivery log, newest first: each event sent to the endpoint with its attempts."""
    page = PageRequest(limit=limit, order=order, after=after, before=before, include_total=include_total)
    found = await webhooks.list_deliveries(session, organization_id, webhook_id, page, status)
    return WebhookDeliveryList.of(found, limit)


@router.get("/{webhook_id}/deliveries/{delivery_id}", response_model=WebhookDeliveryRead)
async def get_webhook_delivery(
    webhook_id: WebhookIdPath, delivery_id: DeliveryIdPath, session: SessionDep, organization_id: OrganizationDep
) -> WebhookDeliveryRead:
    return WebhookDeliveryRead.of(await webhooks.get_delivery(session, organization_id, webhook_id, delivery_id))
