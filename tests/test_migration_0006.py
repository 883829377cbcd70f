"""Migration 0006 (typed items): existing rows become `message` items without loss, and it goes down and up again
on both backends."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa

from threadline.storage.engine import create_engine, downgrade, upgrade

NOW = "2026-01-01 00:00:00"


async def _execute(url: str, *statements: str) -> list[Any]:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            result: list[Any] = []
            for statement in statements:
                outcome = await conn.execute(sa.text(statement))
                result = list(outcome.all()) if outcome.returns_rows else []
            return result
    finally:
        await engine.dispose()


def test_existing_messages_become_message_items(empty_database_url: str) -> None:
    url = empty_database_url
    upgrade(url, "0005")
    asyncio.run(
        _execute(
            url,
            f"INSERT INTO organizations (id, name, created_at) VALUES ('org_1', 'acme', '{NOW}')",
            "INSERT INTO threads (organization_id, id, metadata, space_ids, visible_in_ui, kind, state, status, "
            "is_pinned, message_count, next_seq, created_at, updated_at, last_message_at) VALUES ('org_1', 't1', "
            f"'{{}}', '[]', true, 'thread', 'open', 'inactive', false, 2, 3, '{NOW}', '{NOW}', '{NOW}')",
            "INSERT INTO messages (organization_id, id, thread_id, seq, role, content, metadata, token_count, "
            f"created_at, edit_count) VALUES ('org_1', 'm1', 't1', 1, 'user', 'hello', '{{}}', 7, '{NOW}', 0), "
            f"('org_1', 'm2', 't1', 2, 'assistant', 'hi there', '{{}}', 8, '{NOW}', 0)",
        )
    )
    upgrade(url)
    rows = asyncio.run(
        _execute(url, "SELECT id, type, role, content, token_count, call_id, payload FROM messages ORDER BY seq")
    )
    assert [tuple(r) for r in rows] == [
        ("m1", "message", "user", "hello", 7, None, None),
        ("m2", "message", "assistant", "hi there", 8, None, None),
    ]
    # A function call written after the upgrade; going down keeps it as a row of its role, its text intact.
    asyncio.run(
        _execute(
            url,
            "INSERT INTO messages (organization_id, id, thread_id, seq, role, type, call_id, content, metadata, "
            f"created_at, edit_count) VALUES ('org_1', 'fc1', 't1', 3, 'assistant', 'function_call', 'call_1', "
            f"'{{\"city\": \"Oslo\"}}', '{{}}', '{NOW}', 0)",
        )
    )
    downgrade(url, "0005")
    rows = asyncio.run(_execute(url, "SELECT id, role, content FROM messages ORDER BY seq"))
    assert [tuple(r) for r in rows] == [
        ("m1", "user", "hello"),
        ("m2", "assistant", "hi there"),
        ("fc1", "assistant", '{"city": "Oslo"}'),
    ]
    upgrade(url)
    rows = asyncio.run(_execute(url, "SELECT id, type FROM messages ORDER BY seq"))
    assert [tuple(r) for r in rows] == [("m1", "message"), ("m2", "message"), ("fc1", "message")]
