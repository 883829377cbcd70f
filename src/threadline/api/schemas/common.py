"""Base classes for wire schemas: requests accept snake_case and camelCase; responses are snake_case."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class RequestModel(BaseModel):
    """A request body: unknown fields are an error (a typo should not be silently ignored)."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="forbid")


class ResponseModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def iso(value: datetime | None) -> str | None:
    """Freddy-native timestamps: ISO-8601 UTC with a Z (DESIGN.md §4)."""
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
