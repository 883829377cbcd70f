"""Reading an import body as it arrives: JSON Lines line by line, ChatGPT's array one conversation at a time.

Each reader yields the body's threads (parsed and checked by `domain/thread_data.py`) or the `Failure` of a thread
or line that cannot be imported, in file order; nothing here touches the database.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import ijson  # type: ignore[import-untyped]

from threadline.domain.thread_data import (
    ImportedThread,
    LineError,
    chatgpt_thread,
    check_items,
    parse_header,
    parse_item,
)
from threadline.errors import PayloadTooLarge

# One line of the export format, at most (an item's text is at most 1,000,000 characters).
MAX_LINE_BYTES = 8 * 1024 * 1024


@dataclass
class Failure:
    """A thread (or a line outside any thread) that cannot be imported."""

    position: int
    code: str
    message: str
    source_id: str | None = None


class LimitedBody:
    """The body as a file ijson can read, counting bytes against the import limit."""

    def __init__(self, chunks: AsyncIterator[bytes], max_bytes: int) -> None:
        self.chunks = chunks
        self.max_bytes = max_bytes
        self.received = 0
        self.buffer = b""

    async def next_chunk(self) -> bytes:
        async for chunk in self.chunks:
            self.received += len(chunk)
            if self.received > self.max_bytes:
                raise PayloadTooLarge(f"The import body is larger than {self.max_bytes} bytes.")
            if chunk:
                return chunk
        return b""

    async def read(self, size: int = -1) -> bytes:
        if not self.buffer:
            self.buffer = await self.next_chunk()
        if size < 0 or size >= len(self.buffer):
            out, self.buffer = self.buffer, b""
        else:
            out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out


async def _lines(body: LimitedBody) -> AsyncIterator[tuple[int, bytes]]:
    """(line number, line) of a JSON Lines body; blank lines are skipped."""
    pending = b""
    number = 0
    while chunk := await body.read():
        pending += chunk
        *complete, pending = pending.split(b"\n")
        if len(pending) > MAX_LINE_BYTES:
            raise PayloadTooLarge(f"Line {number + len(complete) + 1} is longer than {MAX_LINE_BYTES} bytes.")
        for line in complete:
            number += 1
            if line.strip():
                yield number, line
    if pending.strip():
        yield number + 1, pending


async def threadline_threads(body: LimitedBody, max_items: int) -> AsyncIterator[ImportedThread | Failure]:
    """The threads of an export-format body: each header line starts a thread, its item lines follow."""
    current: ImportedThread | None = None
    broken: Failure | None = None

    def finished() -> ImportedThread | Failure | None:
        if broken is not None:
            return broken
        if current is None:
            return None
        try:
            check_items(current.items)
        except LineError as exc:
            return Failure(current.position, exc.code, exc.message, current.source_id)
        return current

    async for number, raw in _lines(body):
        try:
            line = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            line = None
            error: LineError | None = LineError("invalid_json", f"Not a JSON object: {exc}.")
        else:
            error = None if isinstance(line, dict) else LineError("invalid_json", "Each line must be a JSON object.")
        kind = line.get("object") if isinstance(line, dict) else None
        if error is None and kind == "thread":
            done = finished()
            if done is not None:
                yield done
            current, broken = None, None
            try:
                current = parse_header(line)
                current.position = number
            except LineError as exc:
                broken = Failure(number, exc.code, exc.message, _source_of(line))
            continue
        if error is None and kind != "thread.item":
            error = LineError("invalid_value", f"'object' is {kind!r}: each line is a 'thread' or a 'thread.item'.")
        if broken is not None:
            continue  # the thread already failed; its other lines change nothing
        if current is None:
            yield Failure(number, error.code if error else "item_without_thread", _no_header(error))
            continue
        try:
            if error is not None:
                raise error
            current.items.append(parse_item(line))
            if len(current.items) > max_items:
                raise LineError("thread_full", f"The thread has more than {max_items} items, the limit per thread.")
        except LineError as exc:
            broken = Failure(number, exc.code, f"Line {number}: {exc.message}", current.source_id)
            current = None
    done = finished()
    if done is not None:
        yield done


def _no_header(error: LineError | None) -> str:
    return error.message if error else "An item line before any thread header."


def _source_of(line: Any) -> str | None:
    if isinstance(line, dict):
        value = line.get("source_id") or line.get("id")
        return value if isinstance(value, str) else None
    return None


async def chatgpt_threads(body: LimitedBody) -> AsyncIterator[ImportedThread | Failure]:
    """The conversations of a `conversations.json` body, parsed one at a time from the array as it arrives."""
    index = 0
    try:
        async for conversation in ijson.items(body, "item", use_float=True):
            index += 1
            try:
                thread = chatgpt_thread(conversation)
            except LineError as exc:
                yield Failure(index, exc.code, exc.message, _chatgpt_source(conversation))
                continue
            thread.position = index
            yield thread
    except ijson.JSONError as exc:
        yield Failure(index + 1, "invalid_json", f"The file stops being JSON after conversation {index}: {exc}.")


def _chatgpt_source(conversation: Any) -> str | None:
    if isinstance(conversation, dict) and isinstance(conversation.get("id"), str):
        return f"chatgpt:{conversation['id']}"
    return None
