"""The web UI: static HTML, CSS and JS modules served with a strict Content-Security-Policy.

The UI is a client of the public REST API like any other, so this package has no routes of its own beyond
serving files: no build step, nothing fetched from the internet.
"""

from threadline.web.routes import SECURITY_HEADERS, ui_router

__all__ = ["SECURITY_HEADERS", "ui_router"]
