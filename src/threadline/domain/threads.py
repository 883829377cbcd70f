"""Pure rules about threads: the lifecycle, the streaming status and the limits (docs/freddy-spec.md)."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from typing import Any, Final, Literal

from threadline.errors import InvalidStateTransition, ThreadArchived, ThreadLocked, ValidationFailed

ThreadState = Literal["open", "locked", "archived"]
THREAD_STATES: tuple[ThreadState, ...] = ("open", "locked", "archived")

# The streaming status (docs/surfaces.md, `status` vs `state`): `streaming` while a turn holds the lease.
STREAMING: Final = "streaming"
INACTIVE: Final = "inactive"

METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY_CHARS = 64
METADATA_MAX_VALUE_CHARS = 512
METADATA_MAX_BYTES = 16 * 1024
TITLE_MAX_CHARS = 200

# open ⇄ locked; open/locked → archived (permanent).
_TRANSITIONS: dict[str, set[str]] = {
    "open": {"open", "locked", "archived"},
    "locked": {"locked", "open", "archived"},
    "archived": {"archived"},
}


def reject_unknown_fields(fields: Iterable[str], allowed: Collection[str]) -> None:
    """A create or modify naming a field it does not know: 400 `unknown_parameter`, the first one (sorted) named."""
    unknown = set(fields) - set(allowed)
    if unknown:
        name = sorted(unknown)[0]
        raise ValidationFailed(f"Unknown field '{name}'.", code="unknown_parameter", param=name)


def check_transition(thread_id: str, current: str, target: str) -> None:
    """Raise unless the lifecycle allows `current` → `target`."""
    if target not in _TRANSITIONS:
        raise ValidationFailed(
            f"Invalid state '{target}': use one of open, locked, archived.",
            code="invalid_state",
            param="state",
        )
    if target not in _TRANSITIONS[current]:
        raise InvalidStateTransition(
            f"Thread '{thread_id}' is {current}: it cannot become {target} (archiving is permanent).",
            param="state",
        )


def ensure_accepts_messages(thread_id: str, state: str) -> None:
    """Only open threads take new messages."""
    if state == "locked":
        raise ThreadLocked(thread_id)
    if state == "archived":
        raise ThreadArchived(thread_id)


def ensure_writable(thread_id: str, state: str) -> None:
    """Archived threads are read-only (delete stays allowed); locked ones still take metadata edits."""
    if state == "archived":
        raise ThreadArchived(thread_id)


def validate_metadata(metadata: dict[str, Any], param: str = "metadata") -> None:
    """≤16 pairs, keys ≤64 characters, values ≤512 characters, ≤16 KB in all (docs/freddy-spec.md)."""
    if len(metadata) > METADATA_MAX_PAIRS:
        raise ValidationFailed(
            f"Metadata has {len(metadata)} keys; the maximum is {METADATA_MAX_PAIRS}.",
            code="metadata_too_many_keys",
            param=param,
        )
    for key, value in metadata.items():
        if not key or len(key) > METADATA_MAX_KEY_CHARS:
            raise ValidationFailed(
                f"Metadata key '{key[:80]}' must be 1 to {METADATA_MAX_KEY_CHARS} characters long.",
                code="metadata_key_too_long",
                param=f"{param}.{key[:80]}",
            )
        # The Freddy specification allows structured values ({"tags": ["billing", "urgent"]}); the limit applies to the
        # value as written.
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if len(text) > METADATA_MAX_VALUE_CHARS:
            raise ValidationFailed(
                f"Metadata value for '{key}' has {len(text)} characters; the maximum is {METADATA_MAX_VALUE_CHARS}.",
                code="metadata_value_too_long",
                param=f"{param}.{key}",
            )
    size = len(json.dumps(metadata, ensure_ascii=False).encode())
    if size > METADATA_MAX_BYTES:
        raise ValidationFailed(
            f"Metadata is {size} bytes; the maximum is {METADATA_MAX_BYTES}.",
            code="metadata_too_large",
            param=param,
        )


def merge_metadata(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Merge `patch` into `current`; a `None` value removes its key."""
    merged = dict(current)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def validate_title(title: str | None, param: str = "title") -> str | None:
    if title is None:
        return None
    title = title.strip()
    if len(title) > TITLE_MAX_CHARS:
        raise ValidationFailed(
            f"Title has {len(title)} characters; the maximum is {TITLE_MAX_CHARS}.",
            code="title_too_long",
            param=param,
        )
    return title or None
