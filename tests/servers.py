"""Server processes the tests start (`threadline serve`, the upstream model server of tests/upstream.py): one way
to pick a port, wait until the process answers, and always stop it."""

from __future__ import annotations

import itertools
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_SRC = REPO_ROOT / "src"
UPSTREAM_SCRIPT = Path(__file__).with_name("upstream.py")

# Ports the tests' servers listen on, below Linux's ephemeral range (32768 and up), so no outgoing connection can
# take one between the check and the child's bind; each xdist worker draws from a slice of its own, so two workers
# never hand out the same port (docs/testing.md).
_PORTS = range(20000, 32768)


def _worker_ports() -> Iterator[int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    size = len(_PORTS) // max(workers, 1)
    first = _PORTS.start + int(worker.removeprefix("gw") or 0) % max(workers, 1) * size
    start = random.randrange(size)  # two sessions at once (two checkouts) seldom meet
    return (first + (start + i) % size for i in itertools.count())


_ports = _worker_ports()


def free_port() -> int:
    """A port of this worker's slice that nothing listens on now."""
    for port in itertools.islice(_ports, len(_PORTS)):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port left in this worker's slice")


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


def until(check: Callable[[], bool], what: str, within: float = 60.0) -> None:
    """Wait until `check()` holds, for what other processes bring about; fails the test after `within` seconds (a
    bound, not a timing assertion)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what} ({within:g} s)")
        time.sleep(0.05)


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


def create_key(env: dict[str, str], cwd: Path | None = None) -> str:
    """An API key for acme's ada, made by `threadline keys create` (its last line of output) in `env`."""
    made = subprocess.run(
        [sys.executable, "-m", "threadline", "keys", "create", "--org", "acme", "--email", "ada@acme.test"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return made.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class Upstream:
    """A running tests/upstream.py process."""

    url: str  # http://127.0.0.1:PORT; a provider's base_url is `base_url`

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def release(self) -> None:
        """`POST /release`: one more word (`gate="each"`), or the rest of every waiting answer (`gate="rest"`)."""
        response = httpx.post(f"{self.url}/release", timeout=10)
        assert response.status_code == 200, response.text

    def requests(self) -> list[dict[str, Any]]:
        """Every request body received so far (`record=True`)."""
        received: list[dict[str, Any]] = httpx.get(f"{self.url}/requests", timeout=10).json()
        return received


def upstream_command(
    port: int,
    *,
    reply: str | None = None,
    words: int | None = None,
    pace: float = 0.0,
    gate: Literal["each", "rest"] | None = None,
    record: bool = False,
) -> list[str]:
    """The command line of tests/upstream.py (its docstring says what each option does)."""
    command = [sys.executable, str(UPSTREAM_SCRIPT), "--port", str(port)]
    if reply is not None:
        command += ["--reply", reply]
    if words is not None:
        command += ["--words", str(words)]
    if pace:
        command += ["--pace", str(pace)]
    if gate is not None:
        command += ["--gate", gate]
    if record:
        command.append("--record")
    return command


@contextmanager
def upstream_server(
    log: Path,
    *,
    reply: str | None = None,
    words: int | None = None,
    pace: float = 0.0,
    gate: Literal["each", "rest"] | None = None,
    record: bool = False,
) -> Iterator[Upstream]:
    """tests/upstream.py on a free port, answering; stopped afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = upstream_command(port, reply=reply, words=words, pace=pace, gate=gate, record=record)
    with running(command, ready_url=f"{url}/v1/models", log=log, env=dict(os.environ)):
        yield Upstream(url)


@contextmanager
def fuzz_server(database_url: str, *, log: Path, **settings: str) -> Iterator[str]:
    """tests/fuzz_server.py (the real app, a FakeProvider its model) on `database_url` and a free port, with these
    extra `THREADLINE_*` variables; yields its base URL once /healthz answers."""
    env = threadline_env(database_url)
    env.update(PYTHONPATH=f"{REPO_SRC}{os.pathsep}{REPO_ROOT}", **settings)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "tests.fuzz_server", str(port)]
    with running(command, ready_url=f"{base_url}/healthz", log=log, env=env, cwd=REPO_ROOT):
        yield base_url


@contextmanager
def webhook_receiver(log: Path) -> Iterator[str]:
    """tests/webhook_receiver.py on a free port; yields its base URL (the endpoint is `/hook`)."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, str(REPO_ROOT / "tests" / "webhook_receiver.py"), "--port", str(port)]
    with running(command, ready_url=f"{base_url}/healthz", log=log, env=dict(os.environ)):
        yield base_url
