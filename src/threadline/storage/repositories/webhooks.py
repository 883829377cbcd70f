"""SQL for webhook endpoints and their deliveries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from threadline.storage.engine import dialect_insert
from threadline.storage.repositories.pagination import Page, PageRequest, check_cursors, fetch_page
from threadline.storage.tables import Response, WebhookDelivery, WebhookEndpoint


class WebhookRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # ---- endpoints -----------------------------------------------------------------------------------------------

    async def get(self, organization_id: str, endpoint_id: str, *, for_update: bool = False) -> WebhookEndpoint | None:
        query = sa.select(WebhookEndpoint).where(
            WebhookEndpoint.organization_id == organization_id, WebhookEndpoint.id == endpoint_id
        )
        if for_update:
            query = query.with_for_update()
        return (await self.session.execute(query)).scalar_one_or_none()

    async def add(self, endpoint: WebhookEndpoint) -> WebhookEndpoint:
        self.session.add(endpoint)
        await self.session.flush()
        return endpoint

    async def count(self, organization_id: str) -> int:
        query = sa.select(sa.func.count()).where(WebhookEndpoint.organization_id == organization_id)
        return int((await self.session.execute(query)).scalar_one())

    async def delete(self, endpoint: WebhookEndpoint) -> None:
        # Its deliveries go with it (ON DELETE CASCADE); a job still due for one finds nothing and stops.
        await self.session.delete(endpoint)
        await self.session.flush()

    async def list_page(self, organization_id: str, page: PageRequest) -> Page[WebhookEndpoint]:
        query = sa.select(WebhookEndpoint).where(WebhookEndpoint.organization_id == organization_id)
        cursors = {name: await self._endpoint_key(organization_id, getattr(page, name)) for name in ("after", "before")}
        check_cursors(page, cursors, "webhook endpoint")
        return await fetch_page(self.session, query, (WebhookEndpoint.created_at, WebhookEndpoint.id), page, cursors)

    async def _endpoint_key(self, organization_id: str, endpoint_id: str | None) -> tuple[Any, ...] | None:
        if endpoint_id is None:
            return None
        row = (
            await self.session.execute(
                sa.select(WebhookEndpoint.created_at, WebhookEndpoint.id).where(
                    WebhookEndpoint.organization_id == organization_id, WebhookEndpoint.id == endpoint_id
                )
            )
        ).first()
        return tuple(row) if row is not None else None

    async def enabled(self, organization_id: str) -> list[WebhookEndpoint]:
        """The organization's enabled endpoints (read in the transaction that settles a response: an organization
        has few endpoints, and most have none, which this answers from the primary key's prefix)."""
        query = sa.select(WebhookEndpoint).where(
            WebhookEndpoint.organization_id == organization_id, WebhookEndpoint.status == "enabled"
        )
        return list((await self.session.execute(query)).scalars())

    async def record_success(self, organization_id: str, endpoint_id: str) -> None:
        await self.session.execute(
            sa.update(WebhookEndpoint)
            .where(WebhookEndpoint.organization_id == organization_id, WebhookEndpoint.id == endpoint_id)
            .values(consecutive_failures=0, failing_since=None)
            .execution_options(synchronize_session=False)
        )

    async def record_failure(
        self, organization_id: str, endpoint_id: str, now: datetime
    ) -> tuple[int, datetime | None, str] | None:
        """Count one more failed attempt, in one UPDATE (deliveries to one endpoint may run at once); returns the
        endpoint's failures in a row, since when it has been failing and its status (None: it is gone)."""
        result = await self.session.execute(
            sa.update(WebhookEndpoint)
            .where(WebhookEndpoint.organization_id == organization_id, WebhookEndpoint.id == endpoint_id)
            .values(
                consecutive_failures=WebhookEndpoint.consecutive_failures + 1,
                failing_since=sa.func.coalesce(WebhookEndpoint.failing_since, now),
            )
            .returning(WebhookEndpoint.consecutive_failures, WebhookEndpoint.failing_since, WebhookEndpoint.status)
            .execution_options(synchronize_session=False)
        )
        row = result.first()
        return (int(row[0]), row[1], str(row[2])) if row is not None else None

    async def disable(self, organization_id: str, endpoint_id: str, reason: str, now: datetime) -> bool:
        """Disable an enabled endpoint; False if it was not (anymore) enabled."""
        result = await self.session.execute(
            sa.update(WebhookEndpoint)
            .where(
                WebhookEndpoint.organization_id == organization_id,
                WebhookEndpoint.id == endpoint_id,
                WebhookEndpoint.status == "enabled",
            )
            .values(status="disabled", disabled_reason=reason, disabled_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def settled_response(self, organization_id: str, response_id: str) -> Response | None:
        """The response as the caller's transaction just wrote it: read again even if the session holds it (the
        settling UPDATEs do not refresh objects already loaded)."""
        query = sa.select(Response).where(Response.organization_id == organization_id, Response.id == response_id)
        result = await self.session.execute(query, execution_options={"populate_existing": True})
        return result.scalar_one_or_none()

    # ---- deliveries ----------------------------------------------------------------------------------------------

    async def add_deliveries(self, rows: Sequence[dict[str, Any]]) -> list[str]:
        """Insert deliveries, skipping any whose (endpoint, event) already has one; returns the ids inserted."""
        inserted: list[str] = []
        for row in rows:
            statement = (
                dialect_insert(self.session, WebhookDelivery)
                .values(**row)
                .on_conflict_do_nothing(index_elements=["organization_id", "endpoint_id", "event_id"])
                .returning(WebhookDelivery.id)
            )
            found = (await self.session.execute(statement)).scalar_one_or_none()
            if found is not None:
                inserted.append(found)
        return inserted

    async def get_delivery(
        self, organization_id: str, delivery_id: str, endpoint_id: str | None = None
    ) -> WebhookDelivery | None:
        query = sa.select(WebhookDelivery).where(
            WebhookDelivery.organization_id == organization_id, WebhookDelivery.id == delivery_id
        )
        if endpoint_id is not None:
            query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
        return (await self.session.execute(query)).scalar_one_or_none()

    async def record_attempt(
        self, organization_id: str, delivery_id: str, attempts_before: int, values: dict[str, Any]
    ) -> bool:
        """Write an attempt's outcome, only if the delivery is still pending with `attempts_before` attempts (so
        an attempt is never recorded twice, nor over a delivery closed meanwhile); False if it was not."""
        result = await self.session.execute(
            sa.update(WebhookDelivery)
            .where(
                WebhookDelivery.organization_id == organization_id,
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == "pending",
                WebhookDelivery.attempt_count == attempts_before,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def list_deliveries(
        self, organization_id: str, endpoint_id: str, page: PageRequest, status: str | None = None
    ) -> Page[WebhookDelivery]:
        query = sa.select(WebhookDelivery).where(
            WebhookDelivery.organization_id == organization_id, WebhookDelivery.endpoint_id == endpoint_id
        )
        if status is not None:
            query = query.where(WebhookDelivery.status == status)
        cursors = {
            name: await self._delivery_key(organization_id, endpoint_id, getattr(page, name))
            for name in ("after", "before")
        }
        check_cursors(page, cursors, "delivery of this webhook endpoint")
        return await fetch_page(self.session, query, (WebhookDelivery.created_at, WebhookDelivery.id), page, cursors)

    async def _delivery_key(
        self, organization_id: str, endpoint_id: str, delivery_id: str | None
    ) -> tuple[Any, ...] | None:
        if delivery_id is None:
            return None
        row = (
            await self.session.execute(
                sa.select(WebhookDelivery.created_at, WebhookDelivery.id).where(
                    WebhookDelivery.organization_id == organization_id,
                    WebhookDelivery.endpoint_id == endpoint_id,
                    WebhookDelivery.id == delivery_id,
                )
            )
        ).first()
        return tuple(row) if row is not None else None

    async def count_finished_before(self, before: datetime) -> int:
        query = sa.select(sa.func.count()).select_from(WebhookDelivery).where(self._finished_before(before))
        return int((await self.session.execute(query)).scalar_one())

    async def purge_finished_before(self, before: datetime, limit: int) -> int:
        """Delete at most `limit` deliveries finished (delivered or given up) before `before` (the retention
        sweeper calls this in a loop, one transaction per batch)."""
        batch = (
            sa.select(WebhookDelivery.organization_id, WebhookDelivery.id)
            .where(self._finished_before(before))
            .limit(limit)
        )
        result = await self.session.execute(
            sa.delete(WebhookDelivery)
            .where(sa.tuple_(WebhookDelivery.organization_id, WebhookDelivery.id).in_(batch))
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    @staticmethod
    def _finished_before(before: datetime) -> sa.ColumnElement[bool]:
        return sa.and_(WebhookDelivery.status.in_(("delivered", "failed")), WebhookDelivery.updated_at < before)

    async def abandon_pending(self, organization_id: str, endpoint_id: str, error: str, now: datetime) -> None:
        """Close the endpoint's pending deliveries (it was disabled): they are not retried."""
        await self.session.execute(
            sa.update(WebhookDelivery)
            .where(
                WebhookDelivery.organization_id == organization_id,
                WebhookDelivery.endpoint_id == endpoint_id,
                WebhookDelivery.status == "pending",
            )
            .values(status="failed", next_attempt_at=None, last_error=error, updated_at=now)
            .execution_options(synchronize_session=False)
        )
