"""The web UI's serving: the page and its assets, their content types and security headers, and its absence
when `web_ui_enabled` is off. (The UI's behaviour in a real browser is in test_web_ui_browser.py.)

These routes never touch the database, so one SQLite-configured app without its lifespan is enough.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import refused
from threadline.api.app import create_app
from threadline.config import Settings
from threadline.web.routes import STATIC_DIR

JS = "text/javascript; charset=utf-8"


def _client(tmp_path: Path, **overrides: object) -> httpx.AsyncClient:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'ui.db'}",
        local_model_enabled=False,
        retention_enabled=False,
        **overrides,  # type: ignore[arg-type]
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings)), base_url="http://ui.test")


@pytest.fixture
async def ui(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(tmp_path) as client:
        yield client


def _assert_strict_csp(response: httpx.Response) -> None:
    policy = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    for name in ("script-src", "style-src", "connect-src"):
        assert directives[name] == "'self'", (name, policy)
    # Images only may come from a thread's own image parts: data: and https: URLs (docs/items.md).
    assert directives["img-src"] == "'self' data: https:"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in policy and "http:" not in policy and "*" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_root_serves_the_page_with_a_strict_csp(ui: httpx.AsyncClient) -> None:
    response = await ui.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    _assert_strict_csp(response)
    assert '<script type="module" src="/static/app.js"></script>' in response.text
    assert "<title>Threadline</title>" in response.text


async def test_every_referenced_asset_is_served_with_its_type(ui: httpx.AsyncClient) -> None:
    """Everything the page links, and every module the scripts import, answers 200 with the right type."""
    html = (await ui.get("/")).text
    wanted = {path: None for path in re.findall(r'(?:src|href)="(/static/[^"]+)"', html)}
    expected_types = {".js": JS, ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
    seen: set[str] = set()
    while wanted:
        path = next(iter(wanted))
        del wanted[path]
        seen.add(path)
        response = await ui.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == expected_types[Path(path).suffix], path
        _assert_strict_csp(response)
        if path.endswith(".js"):
            for module in re.findall(r'from "\./([\w-]+\.js)"', response.text):
                if f"/static/{module}" not in seen:
                    wanted[f"/static/{module}"] = None
    assert {"/static/app.js", "/static/api.js", "/static/style.css", "/static/favicon.svg"} <= seen
    # Every module on disk is reachable from the page: nothing shipped is dead, nothing reachable is missing.
    assert {f"/static/{p.name}" for p in STATIC_DIR.glob("*.js")} <= seen


async def test_unknown_or_traversing_paths_are_404_envelopes(ui: httpx.AsyncClient) -> None:
    for path in ("/static/nope.js", "/static/..%2Froutes.py", "/static/__init__.py", "/static/"):
        response = await ui.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "route_not_found", path


async def test_ui_redirects_to_root_and_api_routes_still_win(ui: httpx.AsyncClient) -> None:
    response = await ui.get("/ui")
    assert response.status_code == 308
    assert response.headers["location"] == "/"
    # The page is served at "/" only: other paths stay the API's (JSON 404s, the OpenAPI document).
    response = await ui.get("/v1/nope")
    refused(response, 404, "route_not_found")
    assert (await ui.get("/openapi.json")).json()["info"]["title"] == "Threadline"


async def test_ui_is_absent_when_disabled(tmp_path: Path) -> None:
    async with _client(tmp_path, web_ui_enabled=False) as client:
        for path in ("/", "/ui", "/static/app.js", "/static/style.css"):
            response = await client.get(path)
            assert response.status_code == 404, path
            assert "content-security-policy" not in response.headers
        assert (await client.get("/healthz")).json() == {"status": "ok"}


def test_static_files_never_inject_markup_or_inline_code() -> None:
    """The rules that make the strict CSP hold: no inline script/style/handlers, API text never as HTML."""
    html = (STATIC_DIR / "index.html").read_text()
    assert not re.search(r"\son[a-z]+\s*=", html), "inline event handler"
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script"
    assert "<style" not in html and " style=" not in html, "inline style"
    for path in STATIC_DIR.glob("*.js"):
        source = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in source, f"{path.name} uses {sink}"
        assert "http://" not in source and "https://" not in source, f"{path.name} names an external URL"
