"""The package as users get it: a wheel built from this checkout, installed into a fresh virtual environment from
the run lock (hashes checked) and nothing else, serves the web UI and answers a turn with the embedded model.

This catches what the editable install of the rest of the suite hides: package data left out of the wheel
(migrations, the web UI's files), and a dependency missing from `requirements/run.lock` or from pyproject.toml.
uv makes the fresh environment (its cache makes the second run fast); the installed set is the lock's exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.servers import free_port, running

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
WHEELHOUSE = Path(os.environ.get("WHEELHOUSE", Path.home() / ".cache" / "threadline" / "wheels"))
UV = Path(sys.executable).parent / "uv"


def _run(*command: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _llama_wheel() -> Path:
    wheels = sorted(WHEELHOUSE.glob("llama_cpp_python-*.whl"))
    if not wheels:
        pytest.fail(f"no llama-cpp-python wheel in {WHEELHOUSE} (make builds it with scripts/build-llama-wheel)")
    return wheels[-1]


def test_a_built_wheel_in_a_fresh_venv_serves_the_ui_and_answers_a_turn(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", dist, REPO)
    (wheel,) = dist.glob("threadline-*.whl")

    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    _run(UV, "venv", "--quiet", "--python", sys.executable, venv)
    install = [UV, "pip", "install", "--quiet", "--python", python, "--no-deps"]
    _run(*install, "--require-hashes", "-r", REPO / "requirements" / "run.lock")
    _run(*install, _llama_wheel(), wheel)
    _run(UV, "pip", "check", "--python", python)

    # Only the installed package: no PYTHONPATH into this checkout, a working directory outside it.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THREADLINE_", "PYTHON"))}
    env["THREADLINE_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'wheel.db'}"
    env["THREADLINE_RETENTION_ENABLED"] = "false"
    threadline = venv / "bin" / "threadline"
    located = _run(python, "-c", "import threadline; print(threadline.__file__)", cwd=tmp_path, env=env)
    assert located.strip().startswith(str(venv)), located
    keys = _run(threadline, "keys", "create", "--org", "acme", "--email", "ada@acme.test", cwd=tmp_path, env=env)
    key = keys.strip().splitlines()[-1]

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [str(threadline), "serve", "--host", "127.0.0.1", "--port", str(port)]
    serve = running(command, ready_url=f"{base}/healthz", log=tmp_path / "serve.log", env=env, cwd=tmp_path, within=180)
    with serve, httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=300) as client:
        page = client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"], page.text[:300]
        assert "<script" in page.text
        answer = client.post(
            "/v1/model/response",
            json={"inputs": [{"role": "user", "texts": [{"text": "Say hello."}]}], "max_output_tokens": 16},
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] in {"completed", "incomplete"}, body
        assert body["output_text"].strip(), body
        assert body["usage"]["output_tokens"] > 0, body
