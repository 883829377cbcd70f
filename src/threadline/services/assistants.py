"""Assistant use-cases: a reusable configuration (model, instructions, context mode, sampling) for threads.

The configuration is applied to the turns of every thread bound to the assistant (docs/freddy-spec.md); this
module only stores it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from threadline.domain import threads as rules
from threadline.domain.clock import utcnow
from threadline.errors import NotFound
from threadline.ids import new_id
from threadline.providers.registry import ModelRegistry
from threadline.services.auth import Principal
from threadline.storage.repositories.assistants import AssistantRepository
from threadline.storage.repositories.pagination import Page, PageRequest
from threadline.storage.tables import Assistant

# Fields a create or modify may set, with the column each one lands in.
FIELDS = {
    "name": "name",
    "description": "description",
    "model": "model",
    "instructions": "instructions",
    "thread_context_mode": "thread_context_mode",
    "temperature": "temperature",
    "max_output_tokens": "max_output_tokens",
    "metadata": "metadata_",
}


def _not_found(assistant_id: str) -> NotFound:
    return NotFound(f"No assistant found with id '{assistant_id}'.", code="assistant_not_found", param="assistant_id")


async def get_assistant(
    session: AsyncSession, organization_id: str, assistant_id: str, *, for_update: bool = False
) -> Assistant:
    """An assistant of another organization is as missing as one that never existed."""
    assistant = await AssistantRepository(session).get(organization_id, assistant_id, for_update=for_update)
    if assistant is None:
        raise _not_found(assistant_id)
    return assistant


def _apply(assistant: Assistant, values: Mapping[str, Any], models: ModelRegistry) -> None:
    rules.reject_unknown_fields(values, FIELDS)
    for field, value in values.items():
        if field == "metadata":
            value = dict(value or {})
            rules.validate_metadata(value)
        elif field == "model" and value is not None:
            # Checked now, not at the first turn of a bound thread: 404 `model_not_found` naming what is served.
            models.resolve(value)
        setattr(assistant, FIELDS[field], value)


async def create_assistant(
    session: AsyncSession,
    principal: Principal,
    organization_id: str,
    values: Mapping[str, Any],
    models: ModelRegistry,
) -> Assistant:
    now = utcnow()
    assistant = Assistant(
        organization_id=organization_id,
        id=new_id("asst"),
        user_id=principal.user_id,
        metadata_={},
        created_at=now,
        updated_at=now,
    )
    _apply(assistant, values, models)
    return await AssistantRepository(session).add(assistant)


async def list_assistants(session: AsyncSession, organization_id: str, page: PageRequest) -> Page[Assistant]:
    return await AssistantRepository(session).list_page(organization_id, page)


async def update_assistant(
    session: AsyncSession,
    organization_id: str,
    assistant_id: str,
    changes: Mapping[str, Any],
    models: ModelRegistry,
) -> Assistant:
    """Set the given fields (only those present; `null` clears a field, metadata becomes `{}`)."""
    assistant = await get_assistant(session, organization_id, assistant_id, for_update=True)
    _apply(assistant, changes, models)
    assistant.updated_at = utcnow()
    await session.flush()
    return assistant


async def delete_assistant(session: AsyncSession, organization_id: str, assistant_id: str) -> Assistant:
    """Soft delete: 404 from now on and no longer bindable; threads already bound keep the id."""
    assistant = await get_assistant(session, organization_id, assistant_id, for_update=True)
    now = utcnow()
    assistant.deleted_at = now
    assistant.updated_at = now
    await session.flush()
    return assistant
