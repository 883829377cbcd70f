"""The OpenAPI documents: every operation declares each status it can answer, every error with the one envelope.

What an operation can answer follows first from its shape, read off the route here so that no route can forget it:

    any parameter or body           400  a rule broken (`code` says which)
    a request body                  413  over the size limit (api/middleware.py)
    authenticated                   401, 429  no or bad credential / over the credential's rate limit
    acts in an organization         400, 403  `organization_id` required / not the caller's
    a path parameter                404  the resource in the path is missing, or another organization's
    takes an Idempotency-Key        409  the key came with another request, or its first request still runs
    uses the database               503  the database is away (retryable)

and then from its meaning, which the route states with one of the kinds below (`responses=CONFLICT`…): the
lifecycle conflicts of a thread, the references a body makes, the failures of a model call. All of it mirrors
the error tree of `threadline/errors.py` through the one map of `api/errors.py`.

FastAPI also declares a 422 for every operation with inputs; Threadline never sends one (a malformed request is a
400 with the envelope, `api/errors.py`), so `_without_422` removes it from the generated document rather than
letting a schema-driven client or fuzzer expect a status that cannot happen. (Declaring a `default` or `4XX`
response would hide FastAPI's 422 as well, but it would also declare every status, which says nothing.)

The Assistants v2 dialect of /v1/threads… (`AssistantsRoute`: same paths and methods, chosen by the
`OpenAI-Beta: assistants=v2` header) cannot share a document with the Freddy operations of the same paths, so it
has its own, served at ASSISTANTS_V2_URL, where each operation requires that header.
"""

from __future__ import annotations

import copy
import typing
from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel

from threadline.api.deps import get_principal, get_session, get_sessionmaker
from threadline.api.idempotency import idempotency_key_header
from threadline.api.routes.openai_threads import AssistantsRoute
from threadline.api.schemas.common import ErrorRead
from threadline.api.statuses import errors

ASSISTANTS_V2_URL = "/openapi/assistants-v2.json"


def _dependants(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _dependants(sub)


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _models(arg)


def shape_statuses(route: APIRoute) -> list[int]:
    """The error statuses an operation can answer because of its shape alone."""
    dependants = list(_dependants(route.dependant))
    calls = {dependant.call for dependant in dependants}
    path = [p for d in dependants for p in d.path_params]
    query = [p for d in dependants for p in d.query_params]
    params = [*path, *query, *(p for d in dependants for p in (*d.header_params, *d.cookie_params))]
    body = [p for d in dependants for p in d.body_params]
    bodies = [model for field in body for model in _models(field.field_info.annotation)]
    acts_in_organization = any(p.name == "organization_id" for p in (*query, *path)) or any(
        "organization_id" in model.model_fields for model in bodies
    )
    statuses = set()
    if params or body or acts_in_organization:
        statuses.add(400)
    if body:
        statuses.add(413)
    if get_principal in calls:
        statuses.update((401, 429))
    if acts_in_organization:
        statuses.add(403)
    if path:
        statuses.add(404)
    if idempotency_key_header in calls:
        statuses.add(409)
    if calls & {get_session, get_sessionmaker}:
        statuses.add(503)
    return sorted(statuses)


def _error_schemas() -> dict[str, Any]:
    schema = ErrorRead.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
    definitions: dict[str, Any] = schema.pop("$defs", {})
    return {**definitions, ErrorRead.__name__: schema}


def _declare_errors(document: dict[str, Any], routes: Sequence[APIRoute]) -> dict[str, Any]:
    """Add the statuses each operation's shape implies, and the envelope to every error status declared.

    Done on the generated document rather than through `route.responses`: FastAPI reads those when a route is
    built or included (its response fields), so a late change to them is not reliably seen.
    """
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in _error_schemas().items():
        schemas.setdefault(name, schema)
    envelope = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ErrorRead.__name__}"}}}
    for route in routes:
        for method in route.methods or ():
            operation = document["paths"].get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            for status, response in errors(*shape_statuses(route)).items():
                responses.setdefault(str(status), {"description": response["description"]})
            for status, response in responses.items():
                if status[0] in "45":
                    response["content"] = copy.deepcopy(envelope)
    return document


def _without_422(document: dict[str, Any]) -> dict[str, Any]:
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return document


def _with_security(document: dict[str, Any], routes: Sequence[APIRoute]) -> dict[str, Any]:
    """Declare the two ways to send a credential, on the operations that need one."""
    components = document.setdefault("components", {})
    components["securitySchemes"] = {
        "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        "Bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key, or a user token from POST /v1/auth/token.",
        },
    }
    for route in routes:
        if 401 not in shape_statuses(route):
            continue
        for method in route.methods or ():
            operation = document["paths"].get(route.path_format, {}).get(method.lower())
            if operation is not None:
                operation["security"] = [{"ApiKey": []}, {"Bearer": []}]
    return document


def _assistants_v2(document: dict[str, Any]) -> dict[str, Any]:
    header = {
        "name": "OpenAI-Beta",
        "in": "header",
        "required": True,
        "description": "Selects the Assistants v2 dialect of these paths (without it, the Freddy operations answer).",
        "schema": {"type": "string", "enum": ["assistants=v2"]},
    }
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            operation.setdefault("parameters", []).insert(0, dict(header))
    return document


def install(app: FastAPI, routers: Sequence[APIRouter]) -> None:
    """Serve the two documents, every operation with its statuses (call once every router is included).

    `routers` are the routers the app includes: their routes are the ones documented, walked here rather than
    `app.routes` (which FastAPI versions shape differently: flat, or one entry per included router).
    """
    routes = [route for router in routers for route in router.routes if isinstance(route, APIRoute)]
    app.state.api_routes = routes  # also what a 405's `Allow` is computed from (api/errors.py)
    public = [route for route in routes if route.include_in_schema]
    # Copies: the originals stay out of the main document (one operation per path and method there).
    assistants = [copy.copy(route) for route in routes if isinstance(route, AssistantsRoute)]
    for route in assistants:
        route.include_in_schema = True
    documents: dict[str, dict[str, Any]] = {}

    def build(title: str, description: str, shown: Sequence[APIRoute]) -> dict[str, Any]:
        document = get_openapi(title=title, version=app.version, description=description, routes=shown)
        return _with_security(_declare_errors(_without_422(document), shown), shown)

    def main_document() -> dict[str, Any]:
        if "main" not in documents:
            documents["main"] = build(app.title, app.description or "", public)
        return documents["main"]

    def assistants_document() -> dict[str, Any]:
        if "assistants" not in documents:
            description = (
                "The OpenAI Assistants v2 dialect of /v1/threads…: the same paths as the Freddy Threads API of "
                "/openapi.json, answered in OpenAI's shapes when the request carries `OpenAI-Beta: assistants=v2`."
            )
            documents["assistants"] = _assistants_v2(build(f"{app.title} — Assistants v2", description, assistants))
        return documents["assistants"]

    app.openapi = main_document  # type: ignore[method-assign]

    @app.get(ASSISTANTS_V2_URL, include_in_schema=False)
    async def assistants_v2_openapi() -> dict[str, Any]:
        return assistants_document()

    app.state.openapi_documents = {app.openapi_url: main_document, ASSISTANTS_V2_URL: assistants_document}
