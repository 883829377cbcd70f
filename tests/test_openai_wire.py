"""The synchronous `OpenAI` client against a real `threadline serve` process over TCP, on SQLite and PostgreSQL.

The in-process tests cover every call; this one checks what only a real socket shows: the SDK's own headers
(lower-case `openai-beta` in 3.x), its retry policy on the wire, and a server started the way users start it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx2
import openai
import pytest
from openai import OpenAI

from tests.conftest import Caller
from tests.servers import threadline_env, threadline_serve

# Starts threadline serve: `make test` runs it, `make check` does not (docs/testing.md).
pytestmark = pytest.mark.slow


@pytest.fixture
def server(database_url: str, caller: Caller, tmp_path: Path) -> Iterator[str]:
    """`threadline serve` on a free port, over the database the `caller` key lives in."""
    with threadline_serve(threadline_env(database_url), log=tmp_path / "server.log") as base_url:
        yield f"{base_url}/v1"


@pytest.mark.filterwarnings("ignore:The Assistants API is deprecated in favor of the Responses API:DeprecationWarning")
def test_sync_sdk_over_tcp(server: str, caller: Caller) -> None:
    sent: list[httpx2.Request] = []
    http_client = httpx2.Client(event_hooks={"request": [sent.append]})
    with OpenAI(
        base_url=server, api_key=caller.api_key, http_client=http_client, _strict_response_validation=True
    ) as oa:
        thread = oa.beta.threads.create(messages=[{"role": "user", "content": "over the wire"}])
        assert sent[-1].headers["openai-beta"] == "assistants=v2"
        message = oa.beta.threads.messages.create(thread.id, role="assistant", content="received")
        listed = oa.beta.threads.messages.list(thread.id, order="asc")
        assert [m.id for m in listed.data][-1] == message.id
        assert [m.content[0].text.value for m in listed.data if m.content[0].type == "text"] == [
            "over the wire",
            "received",
        ]

        conversation = oa.conversations.create(items=[{"role": "user", "content": "hello"}], metadata={"k": "v"})
        assert "openai-beta" not in sent[-1].headers
        items = oa.conversations.items.list(conversation.id)
        assert [(i.type, i.id) for i in items.data] == [("message", items.last_id)]

        with pytest.raises(openai.NotFoundError):
            oa.conversations.retrieve("conv_missing")

        oa.conversations.delete(conversation.id)
        locked = httpx.patch(
            f"{server}/threads/{thread.id}", json={"state": "locked"}, headers=caller.headers, timeout=10
        )
        assert locked.status_code == 200
        sent.clear()
        # The SDK retries 409s unless told not to: a locked thread says x-should-retry: false, so one request.
        with pytest.raises(openai.ConflictError):
            oa.beta.threads.messages.create(thread.id, role="user", content="locked out")
        assert len(sent) == 1
        # 404 and 400 are never retried either.
        with pytest.raises(openai.NotFoundError):
            oa.conversations.items.create(conversation.id, items=[{"role": "user", "content": "gone"}])
        with pytest.raises(openai.BadRequestError):
            oa.conversations.create(items=[{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}])
        assert len(sent) == 3
