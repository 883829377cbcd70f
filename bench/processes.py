"""Child processes for the benchmarks: this checkout's `threadline` on a free port, waited for, always stopped.

(The tests have their own helper in tests/servers.py; benchmarks run as plain scripts and do not import tests.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(src: Path = REPO / "src", **settings: str) -> dict[str, str]:
    """This checkout's code (or the tree `src`), the sweeper off, none of the parent's own THREADLINE_ settings,
    then `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")}
    env.update(PYTHONPATH=str(src), THREADLINE_RETENTION_ENABLED="false", **settings)
    return env


def threadline(*args: str) -> list[str]:
    return [sys.executable, "-m", "threadline", *args]


def create_key(env: dict[str, str], cwd: str | Path | None = None) -> str:
    """An API key made by the CLI (its last line of output)."""
    made = subprocess.run(
        threadline("keys", "create", "--org", "bench", "--email", "bench@bench.test"),
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip().splitlines()[-1]


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    """Until `url` answers 200; stops (and exits) if the process dies or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop([proc])
    raise SystemExit(f"{what} did not come up at {url} within {timeout:.0f} s")


def serve(
    env: dict[str, str],
    cwd: str | Path | None = None,
    timeout: float = 60,
    workers: int = 1,
    under: Sequence[str] = (),
) -> tuple[subprocess.Popen[bytes], str]:
    """`threadline serve` on a free port, answering; returns the process and its base URL. `under`: a command
    that runs it (`valgrind --tool=callgrind …`)."""
    port = free_port()
    proc = subprocess.Popen(
        [*under, *threadline("serve", "--port", str(port), *(["--workers", str(workers)] if workers > 1 else []))],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/healthz", proc, "threadline serve", timeout)
    return proc, base


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (a `serve --workers N` parent and its workers)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        pending += [int(child) for child in children]
    return total / 1024


def stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
