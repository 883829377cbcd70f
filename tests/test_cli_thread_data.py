"""`threadline export` / `threadline import` through real subprocesses, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli import _run
from tests.test_thread_data import chatgpt_export

# Starts the CLI as subprocesses: `make test` runs it, `make check` does not (docs/testing.md).
pytestmark = pytest.mark.slow


def test_import_then_export_then_import_elsewhere(empty_database_url: str, tmp_path: Path) -> None:
    conversations = tmp_path / "conversations.json"
    conversations.write_text(json.dumps(chatgpt_export()))
    first = _run(empty_database_url, tmp_path, "import", str(conversations), "--org", "acme", "--email", "a@acme.test")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().splitlines()[-1] == "created 2, skipped 0, failed 0"
    assert "image_asset_pointer" in first.stderr  # what was not imported is said
    again = _run(empty_database_url, tmp_path, "import", str(conversations), "--org", "acme", "--email", "a@acme.test")
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-1] == "created 0, skipped 2, failed 0"

    exported = tmp_path / "acme.jsonl"
    out = _run(empty_database_url, tmp_path, "export", "--org", "acme", "--output", str(exported))
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [line["object"] for line in lines].count("thread") == 2
    assert [line["content"] for line in lines if line["object"] == "thread.item"][:2] == [
        "Answer in French.",
        "Plan a day in Paris",
    ]
    to_stdout = _run(empty_database_url, tmp_path, "export", "--org", "acme")
    assert to_stdout.returncode == 0 and to_stdout.stdout.splitlines() == exported.read_text().splitlines()

    moved = _run(empty_database_url, tmp_path, "import", str(exported), "--org", "globex", "--email", "h@globex.test")
    assert moved.returncode == 0 and moved.stdout.strip().splitlines()[-1] == "created 2, skipped 0, failed 0"
    forced = _run(empty_database_url, tmp_path, "import", str(exported), "--format", "threadline", "--org", "globex")
    assert forced.stdout.strip().splitlines()[-1] == "created 0, skipped 2, failed 0"


def test_exit_codes(empty_database_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"object": "thread.item", "role": "user", "content": "x"}\n')
    failed = _run(empty_database_url, tmp_path, "import", str(bad), "--org", "acme")
    assert failed.returncode == 1 and "line 1" in failed.stderr
    unknown = _run(empty_database_url, tmp_path, "import", str(bad), "--format", "word")
    assert unknown.returncode == 1 and "unsupported_import_format" in unknown.stderr
    missing = _run(empty_database_url, tmp_path, "export", "--org", "nobody")
    assert missing.returncode == 3 and "organization_not_found" in missing.stderr
    no_thread = _run(empty_database_url, tmp_path, "export", "--org", "acme", "--thread", "nope")
    assert no_thread.returncode == 3 and "thread_not_found" in no_thread.stderr
    assert _run(empty_database_url, tmp_path, "import", str(tmp_path / "absent.json")).returncode == 2
