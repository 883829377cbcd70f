"""`threadline chat [THREAD]` through a real subprocess and its stdin, against a real upstream process.

The upstream (tests/upstream.py, `gate="each"`) sends each token only when the test releases it, and the test
releases the next only once the previous one showed on the chat's stdout: the chat streams as the model generates,
or the test times out waiting.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import Upstream, threadline_env, upstream_server
from tests.upstream import pieces

# Starts the CLI and a real upstream process: `make test` runs it, `make check` does not (docs/testing.md).
pytestmark = pytest.mark.slow

ANSWER = "One token at a time."
TOKENS = pieces(ANSWER)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    log = tmp_path_factory.mktemp("gated") / "upstream.log"
    with upstream_server(log, reply=ANSWER, gate="each") as server:
        yield server


def chat_env(tmp_path: Path, upstream: Upstream) -> dict[str, str]:
    env = threadline_env(f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}")
    env["THREADLINE_PROVIDERS"] = json.dumps([{"name": "gated", "base_url": upstream.base_url, "models": ["gated"]}])
    return env


class Output:
    """Everything the chat writes to stdout, read as it comes (a reader thread), waited for with a bound."""

    def __init__(self, stream: object) -> None:
        self.seen = ""
        self._chunks: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: object) -> None:
        fd = stream.fileno()  # type: ignore[attr-defined]
        while chunk := os.read(fd, 4096):
            self._chunks.put(chunk.decode("utf-8", errors="replace"))

    def until(self, text: str, start: int = 0) -> str:
        """Read until `text` has been written after offset `start` (at most 60 s between two pieces of output: a
        chat that never writes it fails the test)."""
        while text not in self.seen[start:]:
            try:
                self.seen += self._chunks.get(timeout=60)
            except queue.Empty:
                pytest.fail(f"the chat never wrote {text!r}; it wrote:\n{self.seen}")
        return self.seen


def stream_answer(output: Output, upstream: Upstream) -> None:
    """Release the answer's tokens one by one, each only after the previous one showed."""
    start = len(output.seen)
    for index in range(len(TOKENS)):
        so_far = "assistant> " + "".join(TOKENS[: index + 1])
        assert so_far not in output.seen[start:]
        upstream.release()
        output.until(so_far, start)


def say(process: subprocess.Popen[str], line: str) -> None:
    assert process.stdin is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()


def converse(process: subprocess.Popen[str], upstream: Upstream) -> None:
    """Two turns and two context reports, then end of input."""
    assert process.stdin is not None and process.stdout is not None
    output = Output(process.stdout)
    output.until("you> ")
    assert "Thread support_1 (new thread) · model gated" in output.seen
    say(process, "Hello there")
    stream_answer(output, upstream)

    mark = len(output.seen)
    say(process, "/context")
    first_report = output.until("usage:", mark)[mark:]
    assert "context: recent mode, 0 history messages included, 0 omitted" in first_report

    say(process, "And then?")
    stream_answer(output, upstream)
    mark = len(output.seen)
    say(process, "/context")
    second_report = output.until("usage:", mark)[mark:]
    assert "context: recent mode, 2 history messages included, 0 omitted" in second_report
    assert "history seq: 1-2" in second_report
    process.stdin.close()
    assert process.wait(timeout=60) == 0, process.stderr.read() if process.stderr else ""


def test_chat_streams_each_token_and_shows_the_context_report(upstream: Upstream, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "threadline", "chat", "support_1", "--org", "acme", "--email", "ada@acme.test"]
    with subprocess.Popen(
        command,
        env=chat_env(tmp_path, upstream),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            converse(process, upstream)
        finally:
            if process.poll() is None:
                process.kill()

    # The thread kept both turns: a new chat on it says so, and ends at once on empty input.
    resumed = subprocess.run(
        [*command, "--show-context"],
        env=chat_env(tmp_path, upstream),
        input="",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "Thread support_1 (4 messages so far)" in resumed.stdout


def test_chat_reports_a_model_it_does_not_know(upstream: Upstream, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "threadline", "chat", "--model", "gpt-9"],
        env=chat_env(tmp_path, upstream),
        input="Hi\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "gpt-9" in result.stderr and "(model_not_found)" in result.stderr
