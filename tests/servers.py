"""Server processes the tests start (`threadline serve`, an upstream model server): one way to pick a port, wait
until the process answers, and always stop it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

REPO_SRC = Path(__file__).resolve().parents[1] / "src"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def threadline_env(database_url: str) -> dict[str, str]:
    """A child's environment: this checkout's code, the given database, no embedded model, no sweeper, and none of
    the parent's own THREADLINE_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")}
    env.update(
        PYTHONPATH=str(REPO_SRC),
        THREADLINE_DATABASE_URL=database_url,
        THREADLINE_LOCAL_MODEL_ENABLED="false",
        THREADLINE_RETENTION_ENABLED="false",
    )
    return env


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


@contextmanager
def running(
    command: list[str],
    *,
    ready_url: str,
    log: Path,
    env: dict[str, str],
    cwd: Path | None = None,
    within: float = 60,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `command` (output to `log`), wait until `ready_url` answers 200 (fails the test if the process exits
    or does not answer `within` seconds), and terminate it (killed after 15 s) whatever happens."""
    name = " ".join(command[1:4])
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        deadline = time.monotonic() + within
        while True:
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode}:\n{_tail(log)}")
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{name} did not answer {ready_url} within {within:g} s:\n{_tail(log)}")
            time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve_command(port: int) -> list[str]:
    """`threadline serve` on 127.0.0.1:`port` (its readiness URL: `http://127.0.0.1:{port}/healthz`)."""
    return [sys.executable, "-m", "threadline", "serve", "--host", "127.0.0.1", "--port", str(port)]


@contextmanager
def threadline_serve(
    env: dict[str, str], *, log: Path, cwd: Path | None = None, port: int | None = None
) -> Iterator[str]:
    """`threadline serve` on 127.0.0.1 (a free port unless given); yields its base URL once /healthz answers."""
    port = port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    with running(serve_command(port), ready_url=f"{base_url}/healthz", log=log, env=env, cwd=cwd):
        yield base_url
