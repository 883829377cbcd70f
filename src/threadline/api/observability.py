"""The HTTP side of observability: the request middleware, `/metrics`, `/readyz`, and the wiring of metrics and
traces into the app (called from api/app.py)."""

from __future__ import annotations

import hmac
import logging
import re
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from threadline import observability
from threadline.api.errors import error_body
from threadline.config import Settings
from threadline.ids import new_id
from threadline.observability import Observer
from threadline.observability.logs import RequestContext, bind_request, current_request, unbind_request
from threadline.observability.metrics import CONTENT_TYPE
from threadline.services import health

access_logger = logging.getLogger("threadline.access")

# Probes and scrapes: never held up by (or holding up) draining, logged at debug level only.
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


class ObservabilityMiddleware:
    """Outermost pure ASGI middleware (streams pass through untouched): request id, per-request context for logs
    and services, HTTP metrics, the access log line, and the cancel scope that draining uses."""

    def __init__(self, app: ASGIApp, observer: Observer) -> None:
        self.app = app
        self.observer = observer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        offered = _header(scope, b"x-request-id")
        request_id = offered if offered is not None and _REQUEST_ID.match(offered) else new_id("req")
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        context = RequestContext(request_id=request_id, method=method)
        request_token = bind_request(context)
        observer_token = observability.bind(self.observer)
        metrics = self.observer.metrics
        state: dict[str, Any] = {"status": 500, "started": False, "finished": False, "stream": False}

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):  # a replayed response keeps its own
                    headers.append((b"x-request-id", request_id.encode()))
                    message = {**message, "headers": headers}
                if _is_stream(headers) and metrics is not None:
                    state["stream"] = True
                    metrics.streams_in_flight.inc()
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["finished"] = True
            await send(message)

        try:
            if scope["path"] in _PROBES:
                await self.app(scope, receive, observed_send)
            else:
                with self.observer.lifecycle.track() as cancel_scope:
                    await self.app(scope, receive, observed_send)
                if cancel_scope.cancelled_caught:
                    await _interrupted(observed_send, state)
        finally:
            if state["stream"] and metrics is not None:
                metrics.streams_in_flight.dec()
            route = context.route or _route_of(scope) or UNMATCHED
            context.route = route
            elapsed = time.perf_counter() - started
            status = str(state["status"])
            if metrics is not None:
                metrics.http_requests.labels(method, route, status).inc()
                metrics.http_duration.labels(method, route, status).observe(elapsed)
            level = logging.DEBUG if scope["path"] in _PROBES else logging.INFO
            # The peer as uvicorn resolved it: behind a trusted proxy, the address the proxy forwarded.
            client = (scope.get("client") or ("-",))[0]
            access_logger.log(
                level,
                "%s %s %s %.1fms client=%s",
                method,
                route,
                status,
                elapsed * 1000,
                client,
                extra={
                    "method": method,
                    "status": state["status"],
                    "duration_ms": round(elapsed * 1000, 3),
                    "client": client,
                },
            )
            observability.unbind(observer_token)
            unbind_request(request_token)


async def _interrupted(send: Send, state: dict[str, Any]) -> None:
    """A request stopped by draining: answer 503 if nothing was sent yet, else end the body cleanly."""
    try:
        if not state["started"]:
            body = error_body("The server is shutting down; retry the request.", "api_error", "server_shutting_down")
            response = JSONResponse(body, 503, headers={"x-should-retry": "true", "retry-after": "1"})
            await send({"type": "http.response.start", "status": 503, "headers": response.raw_headers})
            await send({"type": "http.response.body", "body": response.body})
        elif not state["finished"]:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except OSError:  # the client is gone already
        pass


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None


def _is_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers)


def _route_of(scope: Scope) -> str | None:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


def install_routes(app: FastAPI, settings: Settings) -> None:
    """`/readyz` and `/metrics` (next to `/healthz`, which only says the process is alive)."""
    token = settings.metrics_token.get_secret_value() if settings.metrics_token is not None else None

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        observer: Observer = request.app.state.observer
        if observer.draining:
            return JSONResponse({"status": "draining"}, 503)
        report = await health.readiness(request.app.state.engine, request.app.state.schema_head)
        return JSONResponse(report.as_dict(), 200 if report.ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        if token is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                body = error_body(
                    "Scraping /metrics needs the metrics token.", "authentication_error", "invalid_credentials"
                )
                return JSONResponse(body, 401, headers={"www-authenticate": "Bearer"})
        observer: Observer = request.app.state.observer
        assert observer.metrics is not None
        return Response(observer.metrics.exposition(), media_type=CONTENT_TYPE)
