"""A tiny OpenAI-compatible upstream that streams its answer at a fixed pace: `python tests/paced_upstream.py PORT
TOKENS SECONDS_PER_TOKEN`. It answers `/v1/chat/completions` (stream or not) with TOKENS words, one chunk every
SECONDS_PER_TOKEN, and `/v1/models`. For tests whose point is a turn that is still running (shutdown, traces)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Handler(BaseHTTPRequestHandler):
    tokens = 10
    pace = 0.1
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps({"object": "list", "data": [{"id": "paced", "object": "model"}]}).encode()
        self._send(200, "application/json", body)

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        words = [f"word{i}" for i in range(self.tokens)]
        if not request.get("stream"):
            time.sleep(self.pace * self.tokens)
            answer = {
                "id": "cmpl-1",
                "object": "chat.completion",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": " ".join(words)}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 7, "completion_tokens": self.tokens, "total_tokens": 7 + self.tokens},
            }
            self._send(200, "application/json", json.dumps(answer).encode())
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        try:
            for index, word in enumerate(words):
                time.sleep(self.pace)
                self._event({"choices": [{"index": 0, "delta": {"content": (" " if index else "") + word}}]})
            self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            self._event({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": self.tokens}})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def _event(self, chunk: dict[str, object]) -> None:
        self.wfile.write(
            f"data: {json.dumps({'id': 'cmpl-1', 'object': 'chat.completion.chunk', **chunk})}\n\n".encode()
        )
        self.wfile.flush()

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    port, tokens, pace = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    Handler.tokens = tokens
    Handler.pace = pace
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


@contextlib.contextmanager
def paced_upstream(log: Path, tokens: int, pace: float) -> Iterator[str]:
    """This script in its own process on a free port; yields its base URL (…/v1) once it answers."""
    from tests.servers import free_port, running

    port = free_port()
    command = [sys.executable, str(Path(__file__).resolve()), str(port), str(tokens), str(pace)]
    base_url = f"http://127.0.0.1:{port}/v1"
    with running(command, ready_url=f"{base_url}/models", log=log, env=dict(os.environ)):
        yield base_url


if __name__ == "__main__":
    main()
