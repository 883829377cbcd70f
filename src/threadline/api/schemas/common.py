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
from pydantic_core import PydanticCustomError

from threadline.domain import threads as thread_rules
from threadline.domain.messages import MAX_MESSAGE_CHARS
from threadline.ids import CLIENT_ID_PATTERN

# NUL, lone surrogates and NaN/Infinity get through JSON parsing but no database stores them (PostgreSQL
# text/JSONB refuse NUL and NaN; neither driver encodes a lone surrogate): refused at the edge, they are a 400
# instead of a database error. This is the one text rule of every request body, Freddy and OpenAI surfaces alike.
# (Query and path strings are percent-decoded as UTF-8, so they never hold a lone surrogate; the ones that reach
# a database are ids, held to ID_PATTERN, or free-text filters, held to freddy.TEXT_PATTERN: neither admits NUL.)
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

# How deeply JSON values (metadata, items, content parts) may nest. Real payloads nest a handful of levels;
# the bound keeps every later walk over the value (validation, hashing, serialization) far from Python's
# recursion limit.
MAX_JSON_DEPTH = 32
NESTING_TOO_DEEP = "nesting_too_deep"
NESTING_MESSAGE = f"JSON values must not nest more than {MAX_JSON_DEPTH} levels deep"


def _check_storable(value: Any) -> None:
    """Raise a validation error unless `value` holds only text and numbers a database stores, nested at most
    `MAX_JSON_DEPTH` deep. Iterative, so no depth a client sends can exhaust the stack."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                raise ValueError("text must not contain NUL characters or unpaired surrogates")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError("numbers must be finite (no NaN or Infinity)")
        elif isinstance(item, dict | list | tuple):
            # (Nested request models are not walked: they checked their own fields.)
            if depth >= MAX_JSON_DEPTH:
                raise PydanticCustomError(NESTING_TOO_DEEP, NESTING_MESSAGE)
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)


class StorableText(BaseModel):
    """The base of every request body (Freddy `RequestModel`, OpenAI `OpenAIRequest`): the one text rule above."""

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        _check_storable(value)
        return value


class RequestModel(StorableText):
    """A request body: unknown fields are an error (a typo should not be silently ignored)."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="forbid")


class ResponseModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# Integers a request may carry: each bound by the column that keeps it or by what OpenAI documents, whichever is
# smaller. The smallest integer column is PostgreSQL's INTEGER (32-bit; SQLite's is 64-bit), so no integer field
# goes past INT32_MAX, and token counts stop well below it.
INT32_MAX = 2**31 - 1
MAX_OUTPUT_TOKENS = 1_000_000
OutputTokens = Annotated[int, Field(ge=1, le=MAX_OUTPUT_TOKENS)]

# ---- limits the domain rules enforce, declared in the OpenAPI document ---------------------------------------
# The rules (domain/threads.py, domain/messages.py, ids.py) refuse with their own stable codes
# (`metadata_too_many_keys`, `title_too_long`, `invalid_thread_id`…); these annotations state the same limits,
# from the same constants, in the request schemas, so a client (or a fuzzer) reading /openapi.json knows every
# rule the server applies. They declare only: pydantic does not enforce them a second time.

# Ids in paths, query strings and bodies: the caller-chosen id alphabet (ids.py), the one id pattern.
ID_PATTERN = CLIENT_ID_PATTERN.pattern


def declared(**keywords: Any) -> Any:
    """JSON Schema keywords for a limit a domain rule enforces."""
    return Field(json_schema_extra=keywords)


_METADATA_LIMITS = {
    "maxProperties": thread_rules.METADATA_MAX_PAIRS,
    "propertyNames": {"minLength": 1, "maxLength": thread_rules.METADATA_MAX_KEY_CHARS},
    "description": (
        f"At most {thread_rules.METADATA_MAX_PAIRS} keys of 1 to {thread_rules.METADATA_MAX_KEY_CHARS} characters; "
        f"each value at most {thread_rules.METADATA_MAX_VALUE_CHARS} characters (a structured value: as JSON text); "
        f"at most {thread_rules.METADATA_MAX_BYTES} bytes in all, as JSON."
    ),
}
# Freddy metadata: structured values allowed (docs/freddy-spec.md). `maxLength` without a type binds only string values.
Metadata = Annotated[
    dict[str, Any],
    declared(**_METADATA_LIMITS, additionalProperties={"maxLength": thread_rules.METADATA_MAX_VALUE_CHARS}),
]
# OpenAI metadata: string values only.
StringMetadata = Annotated[
    dict[str, str],
    declared(
        **_METADATA_LIMITS,
        additionalProperties={"type": "string", "maxLength": thread_rules.METADATA_MAX_VALUE_CHARS},
    ),
]
Title = Annotated[str, declared(maxLength=thread_rules.TITLE_MAX_CHARS)]
MessageText = Annotated[str, declared(maxLength=MAX_MESSAGE_CHARS)]
# A thread id a request may choose (pydantic enforces the length; the pattern is `invalid_thread_id`'s).
ThreadIdText = Annotated[str, Field(max_length=128), declared(pattern=ID_PATTERN)]


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
    """Freddy-native timestamps: ISO-8601 UTC with a Z (docs/surfaces.md)."""
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Identified(Protocol):
    @property
    def id(self) -> str: ...


def end_ids(data: Sequence[Identified]) -> tuple[str | None, str | None]:
    """A list envelope's `first_id` and `last_id`: the page's ends, None when the page is empty."""
    return (data[0].id, data[-1].id) if data else (None, None)
