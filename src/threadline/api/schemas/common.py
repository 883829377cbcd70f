"""Base classes for wire schemas: requests accept snake_case and camelCase; responses are snake_case."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

# NUL, lone surrogates and NaN/Infinity get through JSON parsing but no database stores them (PostgreSQL
# text/JSONB refuse NUL and NaN; neither driver encodes a lone surrogate): refused at the edge, they are a 400
# instead of a database error.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _check_storable(value: Any) -> None:
    if isinstance(value, str):
        if _UNSTORABLE.search(value):
            raise ValueError("text must not contain NUL characters or unpaired surrogates")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite (no NaN or Infinity)")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_storable(key)
            _check_storable(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_storable(item)


class RequestModel(BaseModel):
    """A request body: unknown fields are an error (a typo should not be silently ignored)."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        _check_storable(value)
        return value


class ResponseModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorDetailRead(ResponseModel):
    message: str
    type: str
    param: str | None
    code: str = Field(description="Stable and machine-readable: branch on this, not on the message.")


class ErrorRead(ResponseModel):
    """The one error envelope of every 4xx and 5xx, on the Freddy and the OpenAI surfaces alike (api/errors.py)."""

    error: ErrorDetailRead


# Every list's page size and order (Freddy and OpenAI lists alike): 1 to 100 items, default 20, newest first.
LimitQuery = Annotated[int, Query(ge=1, le=100)]
OrderQuery = Literal["asc", "desc"]


def iso(value: datetime | None) -> str | None:
    """Freddy-native timestamps: ISO-8601 UTC with a Z (DESIGN.md §4)."""
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Identified(Protocol):
    @property
    def id(self) -> str: ...


def end_ids(data: Sequence[Identified]) -> tuple[str | None, str | None]:
    """A list envelope's `first_id` and `last_id`: the page's ends, None when the page is empty."""
    return (data[0].id, data[-1].id) if data else (None, None)
