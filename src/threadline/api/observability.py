"""The HTTP side of observability: what the request layer (api/middleware.py) notes of each request, `/metrics`,
`/readyz`, and the wiring of metrics and traces into the app (called from api/app.py)."""

from __future__ import annotations

import hmac
import logging
import re
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import HTTPConnection
from starlette.types import Message, Scope, Send

from threadline import observability
from threadline.api.asgi import header
from threadline.api.errors import error_body
from threadline.config import Settings
from threadline.ids import new_id
from threadline.observability import Observer
from threadline.observability.logs import RequestContext, bind_request, current_request, unbind_request
from threadline.observability.metrics import CONTENT_TYPE
from threadline.services import health

access_logger = logging.getLogger("threadline.access")

_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
UNMATCHED = "unmatched"

# Route template prefix → the API surface a turn came through (the `surface` label).
_SURFACES = (
    ("/v1/model/response", "freddy"),
    ("/v1/responses", "openai_responses"),
    ("/v1/threads/runs", "assistants"),
    ("/v1/threads/{thread_id}/runs", "assistants"),
    ("/v1/threads/{thread_id}/generateName", "naming"),
)


def surface_of(route: str | None) -> str:
    for prefix, surface in _SURFACES:
        if route is not None and route.startswith(prefix):
            return surface
    return "other"


def note_organization(organization_id: str | None) -> None:
    """Name the request's organization in its log lines (the auth dependencies call this)."""
    request = current_request()
    if request is not None and organization_id is not None:
        request.organization_id = organization_id


async def record_route(request: HTTPConnection) -> None:
    """An app-wide dependency: the matched route's template (`/v1/threads/{thread_id}`) labels the request (an
    HTTP request or a WebSocket's handshake)."""
    context = current_request()
    route = request.scope.get("route")
    if context is not None and route is not None:
        context.route = getattr(route, "path", None)


class Observation:
    """One HTTP request as observability sees it (api/middleware.py drives it): its request id, log context and
    observer, bound from the start; the answer's status, noted as it leaves; then the HTTP metrics and the access
    log line. Draining's cancel scope is the middleware's (`observer.lifecycle.track()`)."""

    def __init__(self, scope: Scope, observer: Observer) -> None:
        self.started_at = time.perf_counter()
        offered = header(scope, b"x-request-id")
        self.request_id = offered if offered is not None and _REQUEST_ID.match(offered) else new_id("req")
        self.method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        # Probes and scrapes: never held up by (or holding up) draining, logged at debug level only.
        self.probe = scope["path"] in _PROBES
        self.metrics = observer.metrics
        self.status = 500
        self.started = self.finished = self.stream = False
        self.context = RequestContext(request_id=self.request_id, method=self.method)
        self._request_token = bind_request(self.context)
        self._observer_token = observability.bind(observer)

    def starting(self, message: Message) -> Message:
        """The response's start: noted, and given the request id unless it has its own (a replayed response)."""
        self.status = message["status"]
        self.started = True
        headers = list(message.get("headers", []))
        if not any(k.lower() == b"x-request-id" for k, _ in headers):
            headers.append((b"x-request-id", self.request_id.encode()))
            message = {**message, "headers": headers}
        if _is_stream(headers) and self.metrics is not None:
            self.stream = True
            self.metrics.streams_in_flight.inc()
        return message

    async def interrupted(self, send: Send) -> None:
        """A request stopped by draining: answer 503 if nothing was sent yet, else end the body cleanly."""
        try:
            if not self.started:
                body = error_body(
                    "The server is shutting down; retry the request.", "api_error", "server_shutting_down"
                )
                response = JSONResponse(body, 503, headers={"x-should-retry": "true", "retry-after": "1"})
                await send({"type": "http.response.start", "status": 503, "headers": response.raw_headers})
                await send({"type": "http.response.body", "body": response.body})
            elif not self.finished:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client is gone already
            pass

    def close(self, scope: Scope) -> None:
        """The request is over: the metrics, the access log line, and the bindings undone."""
        metrics = self.metrics
        if self.stream and metrics is not None:
            metrics.streams_in_flight.dec()
        context = self.context
        route = context.route or _route_of(scope) or UNMATCHED
        context.route = route
        elapsed = time.perf_counter() - self.started_at
        status = str(self.status)
        if metrics is not None:
            metrics.http_requests.labels(self.method, route, status).inc()
            metrics.http_duration.labels(self.method, route, status).observe(elapsed)
        # The peer as uvicorn resolved it: behind a trusted proxy, the address the proxy forwarded.
        client = (scope.get("client") or ("-",))[0]
        access_logger.log(
            logging.DEBUG if self.probe else logging.INFO,
            "%s %s %s %.1fms client=%s",
            self.method,
            route,
            status,
            elapsed * 1000,
            client,
            extra={
                "method": self.method,
                "status": self.status,
                "duration_ms": round(elapsed * 1000, 3),
                "client": client,
            },
        )
        observability.unbind(self._observer_token)
        unbind_request(self._request_token)


def _is_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers)


def _route_of(scope: Scope) -> str | None:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


# `/healthz` (the process is alive), `/readyz` and `/metrics`: module-level like every router, so their routes are
# built once per process (api/app.py `_routes`); each reads its app's state.
router = APIRouter(include_in_schema=False)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    observer: Observer = request.app.state.observer
    if observer.draining:
        return JSONResponse({"status": "draining"}, 503)
    report = await health.readiness(request.app.state.engine, request.app.state.schema_head)
    return JSONResponse(report.as_dict(), 200 if report.ready else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    if settings.metrics_token is not None:
        token = settings.metrics_token.get_secret_value()
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            body = error_body(
                "Scraping /metrics needs the metrics token.", "authentication_error", "invalid_credentials"
            )
            return JSONResponse(body, 401, headers={"www-authenticate": "Bearer"})
    observer: Observer = request.app.state.observer
    assert observer.metrics is not None
    return Response(observer.metrics.exposition(), media_type=CONTENT_TYPE)
