"""The README's first command, end to end: `threadline serve` on its defaults answers with the embedded model.

Nothing else runs: no upstream, no configuration file, only a temporary SQLite database
(THREADLINE_DATABASE_URL) and a free port. The key comes from the CLI; every call is real HTTP over loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import free_port

pytestmark = pytest.mark.slow

REPO_SRC = Path(__file__).resolve().parents[1] / "src"
MODEL = "smollm2-135m-instruct"
# Short answers keep the test quick on a shared CPU; the embedded model still has to produce them.
MAX_OUTPUT = 24


@dataclass(frozen=True)
class Served:
    base_url: str
    api_key: str
    workdir: Path

    def client(self) -> httpx.Client:
        # The first turn loads the weights: allow for a slow, shared machine.
        return httpx.Client(base_url=self.base_url, headers={"X-API-Key": self.api_key}, timeout=180)


def _threadline_command() -> list[str]:
    """`make run` runs the venv's `threadline` script; the same script sits next to this interpreter."""
    script = shutil.which("threadline", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "threadline"]


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with tempfile.TemporaryDirectory(prefix="threadline-e2e-") as tmp:
        workdir = Path(tmp)
        # Default settings: only the database moves to the temporary directory (cwd has no threadline.toml).
        env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")}
        env.update(PYTHONPATH=str(REPO_SRC), THREADLINE_DATABASE_URL=f"sqlite+aiosqlite:///{workdir / 'e2e.db'}")
        keys = subprocess.run(
            [*_threadline_command(), "keys", "create", "--org", "acme", "--email", "ada@acme.test"],
            env=env,
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        api_key = keys.stdout.strip().splitlines()[-1]
        port = free_port()
        log_path = workdir / "serve.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [*_threadline_command(), "serve", "--port", str(port)],
                env=env,
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                base_url = f"http://127.0.0.1:{port}"
                deadline = time.monotonic() + 90
                while True:
                    if process.poll() is not None:
                        pytest.fail(f"threadline serve exited: {log_path.read_text()}")
                    try:
                        if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        pytest.fail(f"threadline serve did not start: {log_path.read_text()}")
                    time.sleep(0.2)
                yield Served(base_url, api_key, workdir)
            finally:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _turn(text: str, **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"role": "user", "texts": [{"text": text}]}], "maxOutputTokens": MAX_OUTPUT, **extra}


def _sse_events(lines: Iterator[str]) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    name: str | None = None
    data: list[str] = []
    for line in lines:
        if line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").strip())
        elif line == "" and name is not None:
            events.append((name, json.loads("\n".join(data))))
            name, data = None, []
    return events


def test_defaults_serve_the_embedded_model_and_the_web_ui(served: Served) -> None:
    with served.client() as api:
        models = api.get("/v1/models").json()
        assert [m["id"] for m in models["data"]] == [MODEL]
        assert models["data"][0]["default"] is True
        ui = api.get("/")
        assert ui.status_code == 200 and "text/html" in ui.headers["content-type"]


def test_turns_on_one_thread_then_a_streamed_turn(served: Served) -> None:
    with served.client() as api:
        # 1. A non-streaming turn creates the thread and saves both sides.
        first = api.post("/v1/model/response", json=_turn("Name one primary color."))
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["status"] == "completed"
        assert body["thread_id"]
        answer = body["output"][0]
        assert answer["role"] == "assistant" and answer["texts"][0]["text"].strip()
        usage = body["usage"]
        assert usage["input_tokens"] > 0 and 0 < usage["output_tokens"] <= MAX_OUTPUT
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
        assert body["context"]["messages_included"] == 0  # a new thread has no history yet
        thread_id = body["thread_id"]
        messages = api.get(f"/v1/threads/{thread_id}/messages", params={"order": "asc"}).json()["data"]
        assert [(m["role"], m["content"]) for m in messages] == [
            ("user", "Name one primary color."),
            ("assistant", answer["texts"][0]["text"]),
        ]
        assert api.get(f"/v1/threads/{thread_id}").json()["message_count"] == 2

        # 2. The second turn's model call carries the first turn: both of its messages are in the context.
        second = api.post("/v1/model/response", json=_turn("And another one?", thread=thread_id))
        assert second.status_code == 200, second.text
        context = second.json()["context"]
        assert context["messages_included"] == 2 and context["messages_omitted"] == 0
        assert context["seq_ranges"] == [[1, 2]]
        assert second.json()["usage"]["input_tokens"] > usage["input_tokens"]
        assert api.get(f"/v1/threads/{thread_id}").json()["message_count"] == 4

        # 3. A streamed turn: created, deltas, completed, in that order; then the thread is free again.
        with api.stream("POST", "/v1/model/response", json=_turn("Thanks!", thread=thread_id, stream=True)) as sse:
            assert sse.status_code == 200
            assert sse.headers["content-type"].startswith("text/event-stream")
            events = _sse_events(sse.iter_lines())
        names = [name for name, _ in events]
        assert names[0] == "response.created" and names[-1] == "response.completed", names
        deltas = [data["delta"] for name, data in events if name == "response.output_text.delta"]
        assert deltas and names[1:-1] == ["response.output_text.delta"] * len(deltas)
        assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
        assert events[0][1]["response"]["status"] == "in_progress"
        completed = events[-1][1]["response"]
        assert completed["status"] == "completed"
        assert completed["output"][0]["texts"][0]["text"] == "".join(deltas)
        assert completed["context"]["messages_included"] == 4
        thread = api.get(f"/v1/threads/{thread_id}").json()
        assert thread["status"] == "inactive" and thread["message_count"] == 6
        newest = api.get(f"/v1/threads/{thread_id}/messages", params={"limit": 1}).json()["data"][0]
        assert newest["role"] == "assistant" and newest["content"] == "".join(deltas)
        # The stored response reads back as the stream ended it.
        again = api.get(f"/v1/model/response/{completed['id']}").json()
        assert again["status"] == "completed" and again["output"] == completed["output"]
