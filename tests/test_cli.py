"""The `threadline` command through real subprocesses, on SQLite and PostgreSQL: the contract other tooling uses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.servers import threadline_env, threadline_serve

# Starts threadline serve and the CLI: `make test` runs it, `make check` does not (docs/testing.md).
pytestmark = pytest.mark.slow


def _run(database_url: str, cwd: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "threadline", *args],
        env=threadline_env(database_url),
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_contract(empty_database_url: str, tmp_path: Path) -> None:
    created = _run(
        empty_database_url, tmp_path, "keys", "create", "--org", "acme", "--email", "ada@acme.test", "--name", "ci"
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("tl_") and len(key) > 30
    again = _run(empty_database_url, tmp_path, "keys", "create", "--org", "acme", "--email", "ada@acme.test")
    second_key = again.stdout.strip().splitlines()[-1]
    assert again.returncode == 0 and second_key != key

    user = _run(
        empty_database_url,
        tmp_path,
        "users",
        "create",
        "--org",
        "acme",
        "--email",
        "bob@acme.test",
        "--password-stdin",
        stdin="s3cret-password\n",
    )
    assert user.returncode == 0, user.stderr
    bad = _run(
        empty_database_url,
        tmp_path,
        "users",
        "create",
        "--org",
        "acme",
        "--email",
        "x@acme.test",
        "--password-stdin",
        stdin="short\n",
    )
    assert bad.returncode == 1 and "invalid_password" in bad.stderr
    bad_email = _run(empty_database_url, tmp_path, "keys", "create", "--org", "acme", "--email", "not-an-email")
    assert bad_email.returncode == 1 and "invalid_email" in bad_email.stderr

    env = threadline_env(empty_database_url)
    with (
        threadline_serve(env, log=tmp_path / "server.log", cwd=tmp_path) as base,
        httpx.Client(base_url=base, timeout=10) as http,
    ):
        me = http.get("/v1/me", headers={"X-API-Key": key}).json()
        assert me["auth_method"] == "api_key" and me["user"]["email"] == "ada@acme.test"
        assert me["organizations"][0]["name"] == "acme" and me["organizations"][0]["id"].startswith("org_")
        org_id = me["organizations"][0]["id"]
        thread = http.post(
            "/v1/threads", json={"title": "from the CLI key"}, headers={"Authorization": f"Bearer {key}"}
        )
        assert thread.status_code == 200 and thread.json()["organization_id"] == org_id

        token = http.post("/v1/auth/token", json={"email": "bob@acme.test", "password": "s3cret-password"}).json()
        assert token["token_type"] == "bearer" and token["expires_at"].endswith("Z")
        bearer = {"Authorization": f"Bearer {token['access_token']}"}
        me_token = http.get("/v1/me", headers=bearer).json()
        assert me_token["auth_method"] == "user_token" and [o["id"] for o in me_token["organizations"]] == [org_id]
        # Same organization: bob sees ada's thread.
        assert [t["id"] for t in http.get("/v1/threads", headers=bearer).json()["data"]] == [thread.json()["id"]]

        listed = _run(empty_database_url, tmp_path, "keys", "list", "--org", org_id)
        assert listed.returncode == 0 and len(listed.stdout.strip().splitlines()) == 2
        key_id = me["credential_id"]
        revoked = _run(empty_database_url, tmp_path, "keys", "revoke", key_id, "--org", org_id)
        assert revoked.returncode == 0, revoked.stderr
        assert http.get("/v1/me", headers={"X-API-Key": key}).status_code == 401
        assert http.get("/v1/me", headers={"X-API-Key": second_key}).status_code == 200

    missing = _run(empty_database_url, tmp_path, "keys", "revoke", "key_nope", "--org", org_id)
    assert missing.returncode == 3 and "api_key_not_found" in missing.stderr
