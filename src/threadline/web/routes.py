"""Serves the UI: `/` is the page, `/static/<file>` its assets, `/ui` redirects to `/`.

Only files that exist in `static/` when the router is built, with a suffix listed in `_CONTENT_TYPES`, are
served: the set is fixed, so no request path ever reaches the filesystem. Content types are explicit because
`mimetypes` depends on the host (`/etc/mime.types`), and JS modules load only with a JavaScript type.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse
from starlette.exceptions import HTTPException

STATIC_DIR = Path(__file__).parent / "static"

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}

# Self only: the page loads nothing from elsewhere, runs no inline script or style, and cannot be framed. The one
# exception is images: a thread's image parts are `data:` or `https:` URLs (docs/items.md), shown as thumbnails
# (`Referrer-Policy: no-referrer` keeps the page's address from the image's host).
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: https:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small files: always revalidate, so an upgrade never leaves a stale module next to a new one.
    "Cache-Control": "no-cache",
}


def _assets() -> dict[str, tuple[Path, str]]:
    found: dict[str, tuple[Path, str]] = {}
    for path in sorted(STATIC_DIR.iterdir()):
        content_type = _CONTENT_TYPES.get(path.suffix)
        if path.is_file() and content_type is not None:
            found[path.name] = (path, content_type)
    return found


def ui_router() -> APIRouter:
    """The UI's routes; `create_app` includes them when `Settings.web_ui_enabled`."""
    assets = _assets()
    router = APIRouter(include_in_schema=False)

    def serve(name: str) -> FileResponse:
        found = assets.get(name)
        if found is None:
            raise HTTPException(status_code=404)
        path, content_type = found
        return FileResponse(path, media_type=content_type, headers=SECURITY_HEADERS)

    @router.get("/")
    async def index() -> FileResponse:
        return serve("index.html")

    @router.get("/ui")
    async def ui() -> RedirectResponse:
        return RedirectResponse("/", status_code=308)

    @router.get("/static/{name}")
    async def static(name: str) -> FileResponse:
        return serve(name)

    @router.get("/favicon.ico")
    async def favicon() -> FileResponse:
        return serve("favicon.svg")

    return router
