"""Behind a proxy: Debian's nginx running deploy/nginx-threadline.conf (ports substituted) in front of
`threadline serve --workers 2` on PostgreSQL, every piece a real process.

A streamed turn must come through token by token: the upstream sends each token only when the test releases it,
and the test releases the next only once the previous one reached it through nginx. Anything buffering on the way
would hold the token back and the read would never end (a 30 s read timeout turns that into a failure). Forwarded
headers count only from trusted proxies: the client address in Threadline's access log line tells.

Without nginx a local run skips and says why; in CI (CI=true) `make test` installs it first (scripts/ensure-nginx)
and a missing nginx fails instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import needs, new_postgres_database
from tests.servers import create_key, free_port, running, threadline_env, upstream_server
from tests.upstream import pieces

pytestmark = pytest.mark.slow

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ANSWER = "One token at a time."
TOKENS = pieces(ANSWER)
# The client's own address, distinct from nginx's (127.0.0.1): Linux routes all of 127.0.0.0/8 to loopback.
CLIENT_ADDRESS = "127.0.0.2"


def _nginx() -> str:
    needs("nginx")
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found:
        return found
    reason = "nginx is absent (install Debian's `nginx`, or run scripts/ensure-nginx)"
    if os.environ.get("CI"):
        pytest.fail(f"the proxy test must run in CI: {reason}")
    pytest.skip(f"proxy test skipped: {reason}")


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[str]:
    """A database of its own: `threadline serve` writes to it from other processes, outside any test's cleanup."""
    with new_postgres_database("threadline_nginx") as url:
        yield url


def site_config(threadline_port: int, nginx_port: int) -> str:
    """deploy/nginx-threadline.conf with the test's ports: each substitution must find its line."""
    site = (DEPLOY / "nginx-threadline.conf").read_text()
    substitutions = {
        "server 127.0.0.1:8000;": f"server 127.0.0.1:{threadline_port};",
        "listen 80;": f"listen 127.0.0.1:{nginx_port};",
        "listen [::]:80;": "",
    }
    for old, new in substitutions.items():
        assert site.count(old) == 1, f"deploy/nginx-threadline.conf no longer has exactly one {old!r}"
        site = site.replace(old, new)
    return site


def nginx_config(tmp: Path, site: Path) -> str:
    """A minimal main configuration around the site: everything nginx writes stays in `tmp`."""
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # Run as root (as in a container), nginx's workers would switch to `nobody`, who cannot write in `tmp`.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}pid {tmp / "nginx.pid"};
error_log {tmp / "error.log"} info;
events {{ worker_connections 64; }}
http {{
    access_log {tmp / "access.log"};
{temp_paths}
    include {site};
}}
"""


class Stack:
    def __init__(self, nginx_url: str, threadline_url: str, upstream_url: str, api_key: str, serve_log: Path):
        self.nginx_url = nginx_url
        self.threadline_url = threadline_url
        self.upstream_url = upstream_url
        self.api_key = api_key
        self.serve_log = serve_log

    def client_seen_as(self, probe: str) -> str:
        """The client address Threadline's access log line gave the request whose X-Request-Id is `probe`. The
        line is written once the response has gone out, so it may trail the client's read: wait for it (bounded)."""
        deadline = time.monotonic() + 30
        while not (lines := [ln for ln in self.serve_log.read_text().splitlines() if f"[request_id={probe}]" in ln]):
            assert time.monotonic() < deadline, self.serve_log.read_text()[-2000:]
            time.sleep(0.05)
        assert len(lines) == 1, lines
        # `… INFO threadline.access: GET /v1/models 401 1.2ms client=127.0.0.2 [request_id=probe-direct]`
        return lines[0].split(" client=", 1)[1].split()[0]


@pytest.fixture(scope="module")
def nginx_stack(postgres_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    nginx = _nginx()
    tmp = tmp_path_factory.mktemp("nginx")
    threadline_port, nginx_port = free_port(), free_port()
    with upstream_server(tmp / "upstream.log", reply=ANSWER, gate="each") as upstream:
        env = threadline_env(postgres_database)
        env.update(
            THREADLINE_PROVIDERS=json.dumps([{"name": "gated", "base_url": upstream.base_url, "models": ["gated"]}]),
            THREADLINE_DEFAULT_MODEL="gated",
            THREADLINE_FORWARDED_ALLOW_IPS="127.0.0.1",
        )
        api_key = create_key(env)
        serve = [sys.executable, "-m", "threadline", "serve", "--host", "127.0.0.1", "--port", str(threadline_port)]
        serve_log = tmp / "serve.log"
        threadline_url = f"http://127.0.0.1:{threadline_port}"
        site = tmp / "site.conf"
        site.write_text(site_config(threadline_port, nginx_port))
        conf = tmp / "nginx.conf"
        conf.write_text(nginx_config(tmp, site))
        nginx_command = [nginx, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf), "-g", "daemon off;"]
        nginx_url = f"http://127.0.0.1:{nginx_port}"
        with (
            running([*serve, "--workers", "2"], ready_url=f"{threadline_url}/healthz", log=serve_log, env=env),
            running(nginx_command, ready_url=f"{nginx_url}/healthz", log=tmp / "nginx.log", env=env),
        ):
            yield Stack(nginx_url, threadline_url, upstream.url, api_key, serve_log)


async def test_a_streamed_turn_comes_through_nginx_token_by_token(nginx_stack: Stack) -> None:
    timeout = httpx.Timeout(30.0, connect=5.0)
    body = {"thread": "proxied", "stream": True, "inputs": [{"role": "user", "texts": [{"text": "Go"}]}]}
    async with (
        httpx.AsyncClient(
            base_url=nginx_stack.nginx_url, headers={"X-API-Key": nginx_stack.api_key}, timeout=timeout
        ) as client,
        httpx.AsyncClient(timeout=timeout) as upstream,
        client.stream("POST", "/v1/model/response", json=body) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = aiter(_events(response))
        assert (await anext(events))[0] == "response.created"
        for token in TOKENS:
            # Only now may the upstream send this token; the next waits until this one has arrived here.
            assert (await upstream.post(f"{nginx_stack.upstream_url}/release")).status_code == 200
            name, data = await anext(events)
            assert (name, data["delta"]) == ("response.output_text.delta", token)
        name, data = await anext(events)
        assert name == "response.completed"
        assert data["response"]["output_text"] == ANSWER

        saved = await client.get("/v1/threads/proxied/messages", params={"order": "asc"})
        assert [m["content"] for m in saved.json()["data"]] == ["Go", ANSWER]


async def _events(response: httpx.Response):  # type: ignore[no-untyped-def]
    name = None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield name, json.loads(line.removeprefix("data: "))


def _get_from_client_address(url: str, headers: dict[str, str]) -> int:
    transport = httpx.HTTPTransport(local_address=CLIENT_ADDRESS)
    with httpx.Client(transport=transport, timeout=30) as client:
        return client.get(url, headers=headers).status_code


def _probe(name: str, forwarded_for: str) -> dict[str, str]:
    """Headers that mark the request in the access log. Health probes are logged at debug level only, so the
    probes ask for /v1/models (a 401 without a key, logged like any request)."""
    return {"X-Request-Id": f"probe-{name}", "X-Forwarded-For": forwarded_for}


async def test_forwarded_headers_count_only_from_trusted_proxies(nginx_stack: Stack) -> None:
    spoofed = "203.0.113.7"
    # Through nginx: it replaces what the client claimed with the client's real address, which Threadline believes
    # because nginx (127.0.0.1) is a trusted proxy.
    await asyncio.to_thread(
        _get_from_client_address, f"{nginx_stack.nginx_url}/v1/models", _probe("via-nginx", spoofed)
    )
    assert nginx_stack.client_seen_as("probe-via-nginx") == CLIENT_ADDRESS
    # Straight to Threadline from an address that is no trusted proxy: the header is ignored.
    await asyncio.to_thread(
        _get_from_client_address, f"{nginx_stack.threadline_url}/v1/models", _probe("direct", spoofed)
    )
    assert nginx_stack.client_seen_as("probe-direct") == CLIENT_ADDRESS
    # From a trusted proxy's address, the same header is believed.
    async with httpx.AsyncClient(timeout=30) as client:
        await client.get(f"{nginx_stack.threadline_url}/v1/models", headers=_probe("trusted", "198.51.100.5"))
    assert nginx_stack.client_seen_as("probe-trusted") == "198.51.100.5"
