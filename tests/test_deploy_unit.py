"""deploy/threadline.service passes `systemd-analyze verify` (where systemd is installed), with its ExecStart
pointed at this checkout's `threadline` script, and names commands the CLI has."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import REPO_SRC

UNIT = Path(__file__).resolve().parents[1] / "deploy" / "threadline.service"
INSTALLED = "/opt/threadline/bin/threadline"


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    script = Path(sys.executable).parent / "threadline"
    if not script.exists():
        pytest.skip(f"no threadline script next to {sys.executable}")
    text = UNIT.read_text()
    assert text.count(INSTALLED) == 1
    unit = tmp_path / "threadline.service"
    unit.write_text(text.replace(INSTALLED, str(script)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "" and result.stdout.strip() == ""


@pytest.mark.slow  # runs the CLI as a subprocess (docs/testing.md)
def test_the_units_command_line_is_one_the_cli_accepts() -> None:
    exec_start = next(line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart="))
    args = exec_start.removeprefix(f"ExecStart={INSTALLED} ").split()
    assert args[0] == "serve"
    env = {**os.environ, "PYTHONPATH": str(REPO_SRC)}
    command = [sys.executable, "-m", "threadline", "serve", "--help"]
    help_text = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    for option in (a for a in args if a.startswith("--")):
        assert option in help_text
