"""Threads as data: the export format's lines, and a ChatGPT conversation read as a thread (docs/export-format.md).

Pure: JSON values in, checked dataclasses out (or a `LineError` naming what is wrong). Item types are the server's
own (`ITEM_TYPES`): the `type` and its `payload` are carried as they are, so a new item type needs no change here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from threadline.domain import threads as rules
from threadline.domain.messages import ITEM_TYPES, check_pairing, validate_content
from threadline.errors import ThreadlineError

FORMAT = "threadline.export"
VERSION = 1
ITEM_ROLES = ("system", "user", "assistant", "tool")
MAX_ID_CHARS = 255


class LineError(Exception):
    """One line (or ChatGPT conversation) that cannot be imported: `code` says why, stable for clients."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ImportedEdit:
    previous_content: str
    previous_metadata: dict[str, Any]
    edited_by: str | None
    edited_at: datetime


@dataclass
class ImportedItem:
    type: str
    role: str
    content: str
    created_at: datetime | None
    id: str | None = None
    source_id: str | None = None
    seq: int | None = None
    call_id: str | None = None
    payload: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    assistant_id: str | None = None
    edited_at: datetime | None = None
    edits: list[ImportedEdit] = field(default_factory=list)

    # What `check_pairing` reads.
    @property
    def name(self) -> str | None:
        return None


@dataclass
class ImportedThread:
    """A thread to import: `source_id` finds it again on a re-import."""

    source_id: str
    title: str | None = None
    id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    assistant_id: str | None = None
    workflow_id: str | None = None
    space_ids: list[Any] = field(default_factory=list)
    visible_in_ui: bool = True
    state: str = "open"
    is_pinned: bool = False
    pinned_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_message_at: datetime | None = None
    deleted_at: datetime | None = None
    last_model_used: str | None = None
    items: list[ImportedItem] = field(default_factory=list)
    # What the source held that Threadline does not import (reported, never dropped silently).
    warnings: list[str] = field(default_factory=list)
    # Where the thread starts in the file: its header's line, or its index in a ChatGPT export.
    position: int = 0


# --- Exporting -------------------------------------------------------------------------------------------------


def iso(value: datetime | None) -> str | None:
    """Timestamps to the microsecond, in UTC, so a round trip keeps them exactly."""
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- Importing the export format -------------------------------------------------------------------------------


def parse_header(line: Mapping[str, Any]) -> ImportedThread:
    """A `{"object": "thread", …}` line."""
    if line.get("format") != FORMAT or line.get("version") != VERSION:
        raise LineError(
            "unsupported_export_version",
            f'A thread header must say "format": "{FORMAT}", "version": {VERSION} (this server reads version '
            f"{VERSION}); got {line.get('format')!r} version {line.get('version')!r}.",
        )
    thread_id = _text(line, "id", MAX_ID_CHARS, required=True)
    organization = _text(line, "organization_id", MAX_ID_CHARS) or ""
    source_id = _text(line, "source_id", MAX_ID_CHARS) or f"threadline:{organization}/{thread_id}"
    state = _text(line, "state", 16) or "open"
    if state not in ("open", "locked", "archived"):
        raise LineError("invalid_value", f"'state' is {state!r}: use open, locked or archived.")
    thread = ImportedThread(
        source_id=source_id,
        id=thread_id,
        title=_checked(lambda: rules.validate_title(_text(line, "title", rules.TITLE_MAX_CHARS))),
        metadata=_metadata(line.get("metadata")),
        assistant_id=_text(line, "assistant_id", 128),
        workflow_id=_text(line, "workflow_id", 128),
        space_ids=_list(line.get("space_ids"), "space_ids"),
        visible_in_ui=_bool(line, "visible_in_ui", True),
        state=state,
        is_pinned=_bool(line, "is_pinned", False),
        pinned_at=_time(line, "pinned_at"),
        created_at=_time(line, "created_at"),
        updated_at=_time(line, "updated_at"),
        last_message_at=_time(line, "last_message_at"),
        deleted_at=_time(line, "deleted_at"),
        last_model_used=_text(line, "last_model_used", 200),
    )
    return thread


def parse_item(line: Mapping[str, Any]) -> ImportedItem:
    """A `{"object": "thread.item", …}` line."""
    item_type = _text(line, "type", 32) or "message"
    if item_type not in ITEM_TYPES:
        raise LineError(
            "unsupported_item_type",
            f"Item type {item_type!r} is not one this server stores ({', '.join(ITEM_TYPES)}).",
        )
    role = _text(line, "role", 16, required=True)
    if role not in ITEM_ROLES:
        raise LineError("invalid_role", f"'role' is {role!r}: use one of {', '.join(ITEM_ROLES)}.")
    call_id = _text(line, "call_id", 128)
    if item_type != "message" and call_id is None:
        raise LineError("invalid_value", f"A {item_type} item needs its 'call_id'.")
    content = line.get("content")
    if not isinstance(content, str):
        raise LineError("invalid_value", "'content' must be a string.")
    payload = line.get("payload")
    if payload is not None and not isinstance(payload, dict):
        raise LineError("invalid_value", "'payload' must be an object or null.")
    seq = line.get("seq")
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool) or seq < 1):
        raise LineError("invalid_value", "'seq' must be a positive integer.")
    edits = line.get("edits") or []
    if not isinstance(edits, list):
        raise LineError("invalid_value", "'edits' must be a list.")
    return ImportedItem(
        type=item_type,
        role=role,
        content=_checked(lambda: validate_content(content)),
        created_at=_time(line, "created_at"),
        id=_text(line, "id", 64),
        source_id=_text(line, "source_id", MAX_ID_CHARS),
        seq=seq,
        call_id=call_id,
        payload=payload,
        metadata=_metadata(line.get("metadata")),
        model=_text(line, "model", 200),
        assistant_id=_text(line, "assistant_id", 128),
        edited_at=_time(line, "edited_at"),
        edits=[_edit(e) for e in edits],
    )


def check_items(items: Sequence[ImportedItem]) -> None:
    """A thread's items as a whole: seqs (when given) rise, ids are unique, calls pair with their outputs."""
    last = 0
    ids: set[str] = set()
    for item in items:
        if item.seq is not None:
            if item.seq <= last:
                raise LineError("invalid_value", f"Item seqs must rise: {item.seq} follows {last}.")
            last = item.seq
        if item.id is not None:
            if item.id in ids:
                raise LineError("invalid_value", f"Item id {item.id!r} appears twice in the thread.")
            ids.add(item.id)
    _checked(lambda: check_pairing((), items, param="items", all_answered=False))  # type: ignore[arg-type]


def _edit(value: Any) -> ImportedEdit:
    if not isinstance(value, dict) or not isinstance(value.get("previous_content"), str):
        raise LineError("invalid_value", "Each edit needs 'previous_content' (a string) and 'edited_at'.")
    edited_at = _time(value, "edited_at")
    if edited_at is None:
        raise LineError("invalid_value", "Each edit needs 'edited_at'.")
    metadata = value.get("previous_metadata") or {}
    if not isinstance(metadata, dict):
        raise LineError("invalid_value", "'previous_metadata' must be an object.")
    return ImportedEdit(value["previous_content"], metadata, _text(value, "edited_by", 64), edited_at)


# --- Importing a ChatGPT export --------------------------------------------------------------------------------


def chatgpt_thread(conversation: Any) -> ImportedThread:
    """One conversation of ChatGPT's `conversations.json`: the branch that ends at `current_node` is the thread.

    `mapping` is a tree of nodes (`{id, parent, children, message}`); `message` is null for the root and for
    placeholder nodes. Walking from `current_node` up to the root gives what the user last saw; the other branches
    (regenerated answers, edited prompts) are not imported and are reported. Text parts become the item's text;
    other parts (images, files, browsing results) and non-text messages are reported, not imported.
    """
    if not isinstance(conversation, dict):
        raise LineError("invalid_conversation", "Each conversation must be a JSON object.")
    conversation_id = conversation.get("conversation_id") or conversation.get("id")
    if not isinstance(conversation_id, str) or not conversation_id or len(conversation_id) > 200:
        raise LineError("invalid_conversation", "A conversation needs its 'id' (or 'conversation_id'), a string.")
    mapping = conversation.get("mapping")
    if not isinstance(mapping, dict):
        raise LineError("invalid_conversation", f"Conversation {conversation_id}: 'mapping' must be an object.")
    path = _current_branch(conversation_id, mapping, conversation.get("current_node"))
    thread = ImportedThread(
        source_id=f"chatgpt:{conversation_id}",
        title=_checked(lambda: rules.validate_title(_chatgpt_title(conversation.get("title")))),
        created_at=_epoch(conversation.get("create_time")),
        updated_at=_epoch(conversation.get("update_time")),
    )
    skipped: dict[str, int] = {}
    previous_time = thread.created_at
    for node_id in path:
        message = mapping[node_id].get("message")
        if not isinstance(message, dict):
            continue  # the root, or a placeholder: nothing was said there
        created_at = _epoch(message.get("create_time")) or previous_time
        previous_time = created_at
        item = _chatgpt_item(node_id, message, created_at, skipped)
        if item is not None:
            thread.items.append(item)
    off_branch = sum(1 for node in mapping.values() if isinstance(node, dict) and node.get("message")) - sum(
        1 for node_id in path if isinstance(mapping[node_id].get("message"), dict)
    )
    if off_branch:
        skipped["messages on other branches (regenerated or edited turns)"] = off_branch
    thread.warnings = [f"{count} {what} not imported" for what, count in skipped.items()]
    if thread.items:
        thread.last_message_at = thread.items[-1].created_at
    return thread


def _current_branch(conversation_id: str, mapping: Mapping[str, Any], current: Any) -> list[str]:
    """Node ids from the root down to `current_node` (a cycle or a dangling parent is a broken file)."""
    if not isinstance(current, str) or not isinstance(mapping.get(current), dict):
        raise LineError(
            "invalid_conversation", f"Conversation {conversation_id}: 'current_node' names no node of 'mapping'."
        )
    path: list[str] = []
    seen: set[str] = set()
    node_id: Any = current
    while node_id is not None:
        node = mapping.get(node_id) if isinstance(node_id, str) else None
        if not isinstance(node, dict) or node_id in seen:
            raise LineError(
                "invalid_conversation", f"Conversation {conversation_id}: node {node_id!r} is missing or in a cycle."
            )
        seen.add(node_id)
        path.append(node_id)
        node_id = node.get("parent")
    path.reverse()
    return path


_TEXT_CONTENT = {"text", "multimodal_text"}


def _chatgpt_item(
    node_id: str, message: Mapping[str, Any], created_at: datetime | None, skipped: dict[str, int]
) -> ImportedItem | None:
    author = message.get("author")
    role = author.get("role") if isinstance(author, dict) else None
    content = message.get("content")
    content_type = content.get("content_type") if isinstance(content, dict) else None
    parts = content.get("parts") if isinstance(content, dict) else None
    texts: list[str] = []
    if content_type in _TEXT_CONTENT and isinstance(parts, list):
        for part in parts:
            if isinstance(part, str):
                texts.append(part)
            else:
                kind = part.get("content_type") if isinstance(part, dict) else None
                _count(skipped, f"{kind or 'non-text'} parts")
    text = "\n".join(t for t in texts if t)
    if role not in ("user", "assistant", "system"):
        if text or content_type not in _TEXT_CONTENT:
            _count(skipped, f"{role or 'unknown'} messages")
        return None
    if content_type not in _TEXT_CONTENT:
        _count(skipped, f"{content_type or 'unknown'} messages")
        return None
    if not text:
        return None  # an empty (often hidden) message: nothing to keep
    metadata = message.get("metadata")
    model = metadata.get("model_slug") if isinstance(metadata, dict) else None
    return ImportedItem(
        type="message",
        role=str(role),
        content=_checked(lambda: validate_content(text)),
        created_at=created_at,
        source_id=f"chatgpt:{node_id}"[:MAX_ID_CHARS],
        model=model if isinstance(model, str) and len(model) <= 200 else None,
    )


def _count(skipped: dict[str, int], what: str) -> None:
    skipped[what] = skipped.get(what, 0) + 1


def _chatgpt_title(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return value[: rules.TITLE_MAX_CHARS]


def _epoch(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (OverflowError, OSError, ValueError):
        return None


# --- Field checks ----------------------------------------------------------------------------------------------


def _checked(make: Any) -> Any:
    """The domain's own validation errors, as the line's error."""
    try:
        return make()
    except ThreadlineError as exc:
        raise LineError(exc.code, exc.message) from exc


def _text(line: Mapping[str, Any], key: str, max_chars: int, *, required: bool = False) -> str | None:
    value = line.get(key)
    if value is None:
        if required:
            raise LineError("invalid_value", f"'{key}' is required.")
        return None
    if not isinstance(value, str) or len(value) > max_chars or (required and not value):
        raise LineError("invalid_value", f"'{key}' must be a string of at most {max_chars} characters.")
    return value


def _bool(line: Mapping[str, Any], key: str, default: bool) -> bool:
    value = line.get(key, default)
    if not isinstance(value, bool):
        raise LineError("invalid_value", f"'{key}' must be true or false.")
    return value


def _list(value: Any, key: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and len(v) <= 128 for v in value):
        raise LineError("invalid_value", f"'{key}' must be a list of strings.")
    return list(value)


def _metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LineError("invalid_metadata", "'metadata' must be an object.")
    _checked(lambda: rules.validate_metadata(value))
    return dict(value)


def _time(line: Mapping[str, Any], key: str) -> datetime | None:
    value = line.get(key)
    if value is None:
        return None
    parsed = None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise LineError("invalid_timestamp", f"'{key}' must be an ISO-8601 time with its offset (e.g. ...Z).")
    return parsed.astimezone(UTC)
