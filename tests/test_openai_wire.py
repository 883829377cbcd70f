"""The synchronous `OpenAI` client against a real `threadline serve` process over TCP, on SQLite and PostgreSQL.

The in-process tests cover every call; this one checks what only a real socket shows: the SDK's own headers
(lower-case `openai-beta` in 3.x), its retry policy on the wire, and a server started the way users start it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx2
import openai
import pytest
from openai import OpenAI

from tests.conftest import Caller

SRC = Path(__file__).resolve().parents[1] / "src"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def server(database_url: str, caller: Caller) -> Iterator[str]:
    """`threadline serve` on a free port, over the database the `caller` key lives in."""
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "THREADLINE_DATABASE_URL": database_url,
        "THREADLINE_LOCAL_MODEL_ENABLED": "false",
        "THREADLINE_RETENTION_ENABLED": "false",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "threadline", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                stderr = process.stderr.read().decode() if process.stderr else ""
                pytest.fail(f"threadline serve exited with {process.returncode}: {stderr[-2000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("threadline serve did not answer /healthz within 60 s")
            time.sleep(0.2)
        yield f"{base}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()


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
