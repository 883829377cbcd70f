"""`threadline serve --workers 2`: Prometheus' multiprocess mode adds up every worker's samples, so any scrape
(whichever worker answers it) counts every request; the samples' directory is removed when the server stops."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import free_port, running, threadline_env

# Starts threadline serve --workers 2: `make test` runs it, `make check` does not (docs/testing.md).
pytestmark = pytest.mark.slow


def _unauthorized_count(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "threadline_http_requests_total" and sample.labels == {
                "method": "GET",
                "route": "/v1/threads",
                "status": "401",
            }:
                return sample.value
    return 0.0


def test_two_workers_share_one_set_of_metrics(empty_database_url: str, tmp_path: Path) -> None:
    env = threadline_env(empty_database_url)
    temp = tmp_path / "tmp"
    temp.mkdir()
    env["TMPDIR"] = str(temp)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "threadline", "serve", "--port", str(port), "--workers", "2"]
    with running(command, ready_url=f"{base_url}/readyz", log=tmp_path / "server.log", env=env):
        assert any(p.name.startswith("threadline-metrics-") for p in temp.iterdir())
        for _ in range(20):
            # A new connection each time: the kernel spreads them over both workers.
            assert httpx.get(f"{base_url}/v1/threads", timeout=10).status_code == 401
        scrapes = [_unauthorized_count(httpx.get(f"{base_url}/metrics", timeout=10).text) for _ in range(6)]
    assert scrapes == [20.0] * 6
    assert not any(p.name.startswith("threadline-metrics-") for p in temp.iterdir())
