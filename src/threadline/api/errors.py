"""The one error → HTTP map. Every error leaves as {"error": {"message", "type", "param", "code"}}.

Errors the app raises on purpose (`ThreadlineError`, request validation, Starlette's 404/405) are answered by
exception handlers. Anything else that escapes a route is answered with `unexpected_response` by the request
layer (api/middleware.py), around FastAPI's handlers: a database that is away is a 503 `database_unavailable`, any
other failure a 500 `internal_error`, both with `x-should-retry: true`. It answers there rather than in a handler
for `Exception`, because Starlette re-raises after such a handler and the server then closes the keep-alive
connection, failing the client's next request.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from threadline import errors
from threadline.api.schemas.common import NESTING_MESSAGE, NESTING_TOO_DEEP
from threadline.storage.engine import is_unavailable

logger = logging.getLogger("threadline.api")

# Most specific first: the first class in an error's MRO found here decides the status.
_STATUS: dict[type[errors.ThreadlineError], tuple[int, str]] = {
    errors.InvalidRequest: (400, "invalid_request_error"),
    errors.AuthenticationFailed: (401, "authentication_error"),
    errors.PermissionDenied: (403, "permission_error"),
    errors.NotFound: (404, "not_found_error"),
    errors.Conflict: (409, "conflict_error"),
    errors.PayloadTooLarge: (413, "invalid_request_error"),
    errors.RateLimited: (429, "rate_limit_error"),
    errors.DatabaseUnavailable: (503, "api_error"),
    errors.ServiceUnavailable: (503, "api_error"),
    errors.UpstreamTimeout: (504, "api_error"),
    errors.UpstreamError: (502, "api_error"),
}

# pydantic error types → stable codes. Anything else is an invalid value.
_PYDANTIC_CODES = {
    "missing": "missing_required_parameter",
    "extra_forbidden": "unknown_parameter",
    "json_invalid": "invalid_json",
    "json_type": "invalid_json",
    "model_attributes_type": "invalid_type",
    "model_type": "invalid_type",
    "dict_type": "invalid_type",
    "list_type": "invalid_type",
    "string_type": "invalid_type",
    "int_type": "invalid_type",
    "int_parsing": "invalid_type",
    "float_type": "invalid_type",
    "float_parsing": "invalid_type",
    "bool_type": "invalid_type",
    "bool_parsing": "invalid_type",
    "string_too_long": "string_too_long",
    "too_long": "too_many_items",
    NESTING_TOO_DEEP: NESTING_TOO_DEEP,
}


def status_of(error: errors.ThreadlineError) -> tuple[int, str]:
    for cls in type(error).__mro__:
        found = _STATUS.get(cls)
        if found is not None:
            return found
    return 500, "api_error"


def error_body(message: str, type_: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(error: errors.ThreadlineError) -> JSONResponse:
    status, type_ = status_of(error)
    # The openai SDK retries 409/429/5xx unless told otherwise (its `x-should-retry` header): say when it cannot help.
    headers = {"x-should-retry": "true" if error.retryable else "false"}
    if isinstance(error, errors.RateLimited):
        # Whole seconds for HTTP (RFC 9110), milliseconds for the openai SDK, which prefers them when present.
        headers["retry-after"] = str(max(1, math.ceil(error.retry_after_seconds)))
        headers["retry-after-ms"] = str(max(1, math.ceil(error.retry_after_seconds * 1000)))
    return JSONResponse(error_body(error.message, type_, error.code, error.param), status, headers=headers)


def _param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(validation_error_body(exc.errors()), 400, headers={"x-should-retry": "false"})


def validation_error_body(errors: Sequence[Any]) -> dict[str, Any]:
    """The envelope of a malformed payload (400): its first error, with a stable code naming the parameter."""
    first = errors[0] if errors else {"type": "invalid", "loc": (), "msg": "Invalid request."}
    kind = str(first.get("type", "invalid"))
    code = _PYDANTIC_CODES.get(kind, "invalid_value")
    param = _param(tuple(first.get("loc", ())))
    if code == "invalid_json":
        message = "The request body is not valid JSON."
        param = None
    elif code == "missing_required_parameter":
        message = f"Missing required parameter '{param}'."
    elif code == "unknown_parameter":
        message = f"Unknown parameter '{param}'."
    else:
        message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}." if param else str(first.get("msg"))
    return error_body(message, "invalid_request_error", code, param)


def allowed_methods(request: Request) -> list[str]:
    """Every method the request's path takes (RFC 9110 §15.5.6: a 405 lists them in `Allow`).

    Starlette's own 405 names only the methods of the first route whose path matched, but one path is often
    served by several routes (GET, POST, PATCH and DELETE of /v1/threads/{id}, each its own route, and the
    Assistants-v2 routes matched by header): the union of every route matching the path is the truth.
    """
    methods: set[str] = set()
    # The flat list `api/openapi.py` keeps: depending on the FastAPI version, `app.router.routes` holds one entry
    # per included router instead of its routes.
    for route in getattr(request.app.state, "api_routes", request.app.router.routes):
        route_methods = getattr(route, "methods", None)
        if route_methods and route.matches(request.scope)[0] is not Match.NONE:
            methods.update(route_methods)
    return sorted(methods)


def install(app: FastAPI) -> None:
    async def on_threadline_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, errors.ThreadlineError)
        return error_response(exc)

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _validation_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI could not parse the body: JSON nested past the parser's recursion limit, or not UTF-8.
            too_deep = isinstance(exc.__cause__, RecursionError)
            code, message = (
                (NESTING_TOO_DEEP, f"{NESTING_MESSAGE}.")
                if too_deep
                else ("invalid_json", "The request body is not valid JSON.")
            )
            return JSONResponse(
                error_body(message, "invalid_request_error", code), 400, headers={"x-should-retry": "false"}
            )
        code = {404: "route_not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = "No such route." if exc.status_code == 404 else str(exc.detail)
        headers = {"x-should-retry": "false"}
        if exc.status_code == 405:
            allowed = allowed_methods(request)
            headers["Allow"] = ", ".join(allowed)
            message = f"Method {request.method} is not allowed on this path; it takes {', '.join(allowed)}."
        return JSONResponse(error_body(message, type_, code), exc.status_code, headers=headers)

    app.add_exception_handler(errors.ThreadlineError, on_threadline_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)


def unexpected_response(exc: Exception) -> JSONResponse:
    """The answer to an exception no handler took: 503 when the database is away, else 500; both retryable."""
    if is_unavailable(exc):
        logger.warning("database unavailable: %s: %s", type(exc).__name__, exc)
        return error_response(errors.DatabaseUnavailable())
    logger.exception("unhandled error", exc_info=exc)
    return JSONResponse(
        error_body("Internal server error.", "api_error", "internal_error"), 500, headers={"x-should-retry": "true"}
    )
