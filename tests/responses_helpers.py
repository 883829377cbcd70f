"""Shared pieces of the model-response tests: turns, SSE parsing, direct DB access."""

from __future__ import annotations

import json
from typing import Any

import httpx
import sqlalchemy as sa
from fastapi import FastAPI

from tests.conftest import Caller
from threadline.domain.clock import utcnow
from threadline.storage.tables import Message, Thread


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "texts": [{"text": text}]}


async def turn(client: httpx.AsyncClient, caller: Caller, text: str, **fields: Any) -> httpx.Response:
    return await client.post("/v1/model/response", json={"inputs": [user(text)], **fields}, headers=caller.headers)


def sse_events(body: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


async def thread_messages(client: httpx.AsyncClient, caller: Caller, thread_id: str) -> list[dict[str, Any]]:
    response = await client.get(
        f"/v1/threads/{thread_id}/messages", params={"order": "asc", "limit": 100}, headers=caller.headers
    )
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def prefill(app: FastAPI, caller: Caller, thread_id: str, count: int, words: str = "") -> None:
    """A long thread written in bulk, with no token counts yet (as imported history would be); each message is
    `m<seq>`, then `words`."""
    now = utcnow()
    async with app.state.sessionmaker() as session:
        session.add_all(
            Message(
                organization_id=caller.organization_id,
                id=f"msg_fill_{thread_id}_{seq:05d}",
                thread_id=thread_id,
                seq=seq,
                role="user" if seq % 2 else "assistant",
                content=f"m{seq} {words}" if words else f"m{seq}",
                metadata_={},
                created_at=now,
                edit_count=0,
            )
            for seq in range(1, count + 1)
        )
        await session.execute(
            sa.update(Thread).where(Thread.id == thread_id).values(next_seq=count + 1, message_count=count)
        )
        await session.commit()
