"""SIGTERM on a real `threadline serve` process with a turn streaming from a real (paced) upstream, on SQLite and
PostgreSQL: readiness goes 503 and new turns are refused while it drains; a stream shorter than the grace finishes;
one longer than the grace is settled as failed with its thread released. The JSON log of the same process is
checked line by line: request id, organization, route, status and duration on the request's line, and no message
text or key anywhere."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.helpers import refused
from tests.servers import create_key, free_port, running, threadline_env, upstream_server
from threadline.storage.engine import create_engine
from threadline.storage.tables import Response, Thread

# Starts threadline serve and a real upstream: `make test` runs it, `make check` does not (docs/testing.md).
pytestmark = pytest.mark.slow

SECRET_TEXT = "the-secret-ingredient-is-cardamom"


class StreamReader(threading.Thread):
    """Streams one turn in the background; `first_delta` is set when the first text arrives."""

    def __init__(self, base_url: str, key: str, thread_id: str) -> None:
        super().__init__(daemon=True)
        self.base_url, self.key, self.thread_id = base_url, key, thread_id
        self.first_delta = threading.Event()
        self.events: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        body = {
            "thread": self.thread_id,
            "stream": True,
            "inputs": [{"role": "user", "texts": [{"text": SECRET_TEXT}]}],
        }
        headers = {"X-API-Key": self.key, "X-Request-Id": f"req-{self.thread_id}"}
        try:
            with httpx.stream(
                "POST", f"{self.base_url}/v1/model/response", json=body, headers=headers, timeout=60
            ) as r:
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        self.events.append(line.removeprefix("event: "))
                        if self.events[-1] == "response.output_text.delta":
                            self.first_delta.set()
        except httpx.HTTPError as exc:  # a stream cut by the shutdown may end abruptly
            self.error = exc
        finally:
            self.first_delta.set()


@contextmanager
def served(env: dict[str, str], log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "threadline", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with running(command, ready_url=f"{base_url}/readyz", log=log, env=env) as process:
        yield base_url, process


def _until(condition: Any, what: str, within: float = 30) -> Any:
    """Wait for a condition the process under test reaches by itself (not a timing assertion)."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {within:g} s")
        time.sleep(0.05)


def _env(database_url: str, upstream: str, grace: float) -> dict[str, str]:
    env = threadline_env(database_url)
    providers = [{"name": "paced", "type": "openai", "base_url": upstream, "models": ["paced"]}]
    env.update(
        THREADLINE_PROVIDERS=json.dumps(providers),
        THREADLINE_DEFAULT_MODEL="paced",
        THREADLINE_SHUTDOWN_GRACE_SECONDS=str(grace),
        THREADLINE_LOG_FORMAT="json",
    )
    return env


def _readyz_status(base_url: str) -> int | None:
    try:
        return httpx.get(f"{base_url}/readyz", timeout=5).status_code
    except httpx.HTTPError:
        return None


def test_sigterm_lets_a_stream_within_the_grace_finish(empty_database_url: str, tmp_path: Path) -> None:
    with upstream_server(tmp_path / "upstream.log", words=50, pace=0.1) as upstream:
        env = _env(empty_database_url, upstream.base_url, grace=60)
        key = create_key(env, tmp_path)
        log = tmp_path / "server.log"
        with served(env, log) as (base_url, process):
            reader = StreamReader(base_url, key, "t_finishes")
            reader.start()
            assert reader.first_delta.wait(30) and reader.error is None, reader.error
            metrics = httpx.get(f"{base_url}/metrics", timeout=5).text
            assert "threadline_streams_in_flight 1.0" in metrics

            process.send_signal(signal.SIGTERM)
            _until(lambda: _readyz_status(base_url) == 503, "readiness going 503")
            refusal = httpx.post(
                f"{base_url}/v1/model/response",
                json={"inputs": [{"role": "user", "texts": [{"text": "one more"}]}]},
                headers={"X-API-Key": key},
                timeout=10,
            )
            refused(refusal, 503, "server_shutting_down")
            reader.join(60)
            assert reader.events[-1] == "response.completed", reader.events[-3:]
            assert process.wait(60) is not None

    thread, response = _stored(empty_database_url, "t_finishes")
    assert thread.status == "inactive" and thread.lease_owner is None and thread.message_count == 2
    assert response.status == "completed"

    lines = [line for line in log.read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    turn_line = next(e for e in entries if e.get("request_id") == "req-t_finishes" and "status" in e)
    assert turn_line["route"] == "/v1/model/response" and turn_line["status"] == 200
    assert turn_line["organization_id"].startswith("org_") and turn_line["duration_ms"] > 0
    assert turn_line["method"] == "POST"
    text = log.read_text()
    assert SECRET_TEXT not in text and key not in text and key[:12] not in text


def test_sigterm_past_the_grace_settles_the_turn_failed(empty_database_url: str, tmp_path: Path) -> None:
    with upstream_server(tmp_path / "upstream.log", words=200, pace=0.1) as upstream:
        env = _env(empty_database_url, upstream.base_url, grace=0.5)
        key = create_key(env, tmp_path)
        with served(env, tmp_path / "server.log") as (base_url, process):
            reader = StreamReader(base_url, key, "t_cut")
            reader.start()
            answers: list[httpx.Response] = []
            waiting = threading.Thread(target=lambda: answers.append(_plain_turn(base_url, key, "t_cut_plain")))
            waiting.start()
            assert reader.first_delta.wait(30) and reader.error is None, reader.error
            _until(lambda: _thread_status(base_url, key, "t_cut_plain") == "streaming", "the plain turn starting")
            process.send_signal(signal.SIGTERM)
            reader.join(60)
            waiting.join(60)
            assert not reader.is_alive() and not waiting.is_alive()
            assert "response.completed" not in reader.events
            assert answers[0].status_code == 503, answers[0].text
            assert answers[0].json()["error"]["code"] == "server_shutting_down"
            assert process.wait(60) is not None

    for thread_id in ("t_cut", "t_cut_plain"):
        thread, response = _stored(empty_database_url, thread_id)
        assert thread.status == "inactive" and thread.lease_owner is None and thread.message_count == 0
        assert response.status == "failed" and response.error is not None
        assert response.error["code"] == "turn_interrupted"


def _plain_turn(base_url: str, key: str, thread_id: str) -> httpx.Response:
    body = {"thread": thread_id, "inputs": [{"role": "user", "texts": [{"text": "no stream"}]}]}
    return httpx.post(f"{base_url}/v1/model/response", json=body, headers={"X-API-Key": key}, timeout=60)


def _thread_status(base_url: str, key: str, thread_id: str) -> str | None:
    found = httpx.get(f"{base_url}/v1/threads/{thread_id}", headers={"X-API-Key": key}, timeout=10)
    return str(found.json()["status"]) if found.status_code == 200 else None


def _stored(database_url: str, thread_id: str) -> tuple[Thread, Response]:
    async def read() -> tuple[Thread, Response]:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as conn:
                thread = (await conn.execute(sa.select(Thread).where(Thread.id == thread_id))).one()
                response = (await conn.execute(sa.select(Response).where(Response.thread_id == thread_id))).one()
        finally:
            await engine.dispose()
        return thread, response  # type: ignore[return-value]

    return asyncio.run(read())
