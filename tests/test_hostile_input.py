"""Client input that used to reach the database or the interpreter's limits and come back as a 500 (issue 14,
group 2): each is a 400 (or 404, 413) with the error envelope and a stable code now, on SQLite and PostgreSQL.
The failures that are not the client's — a database that is away, an internal error — are a retryable 503/500
that keeps the connection open."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import Caller, make_caller, started_app
from tests.helpers import refused
from tests.servers import threadline_env, threadline_serve
from threadline.api.app import create_app
from threadline.api.schemas.common import INT32_MAX, MAX_JSON_DEPTH, MAX_OUTPUT_TOKENS
from threadline.config import ProviderConfig, Settings
from threadline.services.idempotency import KEY_PATTERN

ASSISTANTS_V2 = {"OpenAI-Beta": "assistants=v2"}


async def post_json(client: httpx.AsyncClient, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    """POST `body` as JSON with \\u escapes (httpx's own encoder cannot write a lone surrogate)."""
    sent = {**headers, "Content-Type": "application/json"}
    return await client.post(path, content=json.dumps(body), headers=sent)


# ---- integers past their column -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [2**31, 2**63, MAX_OUTPUT_TOKENS + 1, 0, -1])
async def test_integers_past_the_column_are_a_400(client: httpx.AsyncClient, caller: Caller, value: int) -> None:
    response = await client.post("/v1/assistants", json={"max_output_tokens": value}, headers=caller.headers)
    refused(response, 400, "invalid_value", "max_output_tokens")
    for path, body in [
        ("/v1/responses", {"input": "x", "max_output_tokens": value}),
        ("/v1/model/response", {"inputs": [{"role": "user", "texts": [{"text": "x"}]}], "max_output_tokens": value}),
    ]:
        refused(await client.post(path, json=body, headers=caller.headers), 400, "invalid_value", "max_output_tokens")
    assert (await client.get("/v1/assistants", headers=caller.headers)).json()["data"] == []


async def test_the_largest_integer_a_field_allows_is_stored(client: httpx.AsyncClient, caller: Caller) -> None:
    response = await client.post(
        "/v1/assistants", json={"max_output_tokens": MAX_OUTPUT_TOKENS}, headers=caller.headers
    )
    assert response.status_code == 200, response.text
    fetched = await client.get(f"/v1/assistants/{response.json()['id']}", headers=caller.headers)
    assert fetched.json()["max_output_tokens"] == MAX_OUTPUT_TOKENS


# ---- nesting ------------------------------------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 950])
async def test_deep_nesting_is_a_400(client: httpx.AsyncClient, caller: Caller, depth: int) -> None:
    # 950 levels pass Python's JSON parser but used to exhaust the stack in the validation after it. The body is
    # written as text: json.dumps itself cannot encode such a value.
    deep = '{"k":' * depth + '"leaf"' + "}" * depth
    cases = [
        ("/v1/threads", '{"metadata": {"deep": DEEP}}', {}, "metadata"),
        ("/v1/responses", '{"input": [{"role": "user", "content": "x", "extra": DEEP}]}', {}, "input"),
        ("/v1/conversations", '{"items": [{"role": "user", "content": "x", "extra": DEEP}]}', {}, "items"),
        ("/v1/threads", '{"messages": [{"role": "user", "content": [DEEP]}]}', ASSISTANTS_V2, "messages.0.content"),
    ]
    for path, template, headers, param in cases:
        sent = {**caller.headers, **headers, "Content-Type": "application/json"}
        response = await client.post(path, content=template.replace("DEEP", deep), headers=sent)
        # Past the JSON parser's own limit the body cannot be read at all, so no field can be named.
        refused(response, 400, "nesting_too_deep", param if depth < 500 else None)
    assert (await client.get("/v1/threads", headers=caller.headers)).json()["data"] == []


async def test_nesting_within_the_bound_is_kept(client: httpx.AsyncClient, caller: Caller) -> None:
    # The value sits one level below `metadata`, so it may nest MAX_JSON_DEPTH - 1 levels itself.
    metadata = {"n": nested(MAX_JSON_DEPTH - 1)}
    response = await client.post("/v1/threads", json={"metadata": metadata}, headers=caller.headers)
    assert response.status_code == 200, response.text
    assert response.json()["metadata"] == metadata


# ---- one text rule on every surface -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["\ud800", "a\udfffb", "nul\x00byte"])
async def test_unstorable_text_is_a_400_on_every_surface(client: httpx.AsyncClient, caller: Caller, bad: str) -> None:
    cases: list[tuple[str, dict[str, Any], dict[str, str], str]] = [
        ("/v1/conversations", {"items": [{"role": "user", "content": bad}]}, {}, "items"),
        ("/v1/conversations", {"metadata": {"k": bad}}, {}, "metadata"),
        ("/v1/responses", {"input": bad}, {}, "input"),
        ("/v1/responses", {"input": [{"role": "user", "content": [{"type": "input_text", "text": bad}]}]}, {}, "input"),
        ("/v1/responses", {"input": "x", "instructions": bad}, {}, "instructions"),
        ("/v1/threads", {"messages": [{"role": "user", "content": bad}]}, ASSISTANTS_V2, "messages.0.content"),
        ("/v1/threads", {"metadata": {bad: "v"}}, ASSISTANTS_V2, "metadata"),
        ("/v1/threads", {"title": bad}, {}, "title"),  # the Freddy rule, for comparison
        ("/v1/threads", {"metadata": {"k": bad}}, {}, "metadata"),
    ]
    for path, body, headers, param in cases:
        response = await post_json(client, path, body, {**caller.headers, **headers})
        refused(response, 400, "invalid_value", param)
    thread = (await client.post("/v1/threads", json={}, headers={**caller.headers, **ASSISTANTS_V2})).json()
    add = await post_json(
        client,
        f"/v1/threads/{thread['id']}/messages",
        {"role": "user", "content": bad},
        {**caller.headers, **ASSISTANTS_V2},
    )
    refused(add, 400, "invalid_value", "content")
    conversation = (await client.post("/v1/conversations", json={}, headers=caller.headers)).json()
    items = await post_json(
        client,
        f"/v1/conversations/{conversation['id']}/items",
        {"items": [{"role": "user", "content": bad}]},
        caller.headers,
    )
    refused(items, 400, "invalid_value", "items")
    for thread_id in (thread["id"], conversation["id"]):
        listed = await client.get(f"/v1/threads/{thread_id}/messages", headers=caller.headers)
        assert listed.json()["data"] == []


# ---- ids in the paths of the Assistants v2 runs routes ------------------------------------------------------


@pytest.mark.parametrize("bad", ["%00", "a%0Ab", "%F0%9F%92%A5", "-leading-dash"])
async def test_run_route_ids_are_checked(client: httpx.AsyncClient, caller: Caller, bad: str) -> None:
    headers = {**caller.headers, **ASSISTANTS_V2}
    thread = (await client.post("/v1/threads", json={}, headers=headers)).json()["id"]
    run = "resp_missing"
    requests = [
        ("POST", f"/v1/threads/{bad}/runs", {"assistant_id": "asst_x"}, "thread_id"),
        ("GET", f"/v1/threads/{bad}/runs", None, "thread_id"),
        ("GET", f"/v1/threads/{bad}/runs/{run}", None, "thread_id"),
        ("GET", f"/v1/threads/{thread}/runs/{bad}", None, "run_id"),
        ("POST", f"/v1/threads/{thread}/runs/{bad}", {"metadata": {}}, "run_id"),
        ("POST", f"/v1/threads/{thread}/runs/{bad}/cancel", None, "run_id"),
        ("GET", f"/v1/threads/{thread}/runs/{bad}/steps", None, "run_id"),
        ("GET", f"/v1/threads/{thread}/runs/{run}/steps/{bad}", None, "step_id"),
    ]
    for method, path, body, param in requests:
        response = await client.request(method, path, json=body, headers=headers)
        refused(response, 400, "invalid_value", param)


# ---- a list or an object as `role` --------------------------------------------------------------------------


@pytest.mark.parametrize("role", [["user"], {"user": 1}, 1, None])
async def test_role_of_the_wrong_type_is_a_400(client: httpx.AsyncClient, caller: Caller, role: Any) -> None:
    item = {"role": role, "content": "x"}
    refused(
        await client.post("/v1/conversations", json={"items": [item]}, headers=caller.headers),
        400,
        "invalid_role",
        "items.0.role",
    )
    refused(
        await client.post("/v1/responses", json={"input": [item]}, headers=caller.headers),
        400,
        "invalid_role",
        "input.0.role",
    )


# ---- bodies over the limit, announced or not ----------------------------------------------------------------


async def _chunks(body: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_a_chunked_body_over_the_limit_is_a_413(
    client: httpx.AsyncClient, caller: Caller, settings: Settings
) -> None:
    body = json.dumps({"metadata": {"k": "v" * (2 * settings.max_body_bytes)}}).encode()
    headers = {**caller.headers, "Content-Type": "application/json"}
    response = await client.post("/v1/threads", content=_chunks(body), headers=headers)
    assert "content-length" not in response.request.headers  # it went chunked
    refused(response, 413, "payload_too_large")
    assert (await client.get("/v1/threads", headers=caller.headers)).json()["data"] == []
    # A chunked body within the limit is read whole and handled as usual.
    small = json.dumps({"title": "chunked", "metadata": {"k": "v"}}).encode()
    created = await client.post("/v1/threads", content=_chunks(small, size=7), headers=headers)
    assert created.status_code == 200, created.text
    assert created.json()["title"] == "chunked"


# ---- a path parameter that is no model name -----------------------------------------------------------------


@pytest.fixture
async def app_with_a_default_model(settings: Settings) -> AsyncIterator[FastAPI]:
    upstream = ProviderConfig(name="up", base_url="http://127.0.0.1:9/v1", models=["gpt-4.1"])
    async for app in started_app(settings.model_copy(update={"providers": [upstream], "default_model": "gpt-4.1"})):
        yield app


@pytest.mark.parametrize("name", ["%0a", "%0A", "", "%20", "no-such-model"])
async def test_a_path_that_names_no_model_is_a_404(app_with_a_default_model: FastAPI, name: str) -> None:
    # `/v1/models/%0a` used to read as the empty name, and that as the default model.
    caller = await make_caller(app_with_a_default_model)
    transport = httpx.ASGITransport(app=app_with_a_default_model)
    async with httpx.AsyncClient(transport=transport, base_url="http://threadline.test") as client:
        assert (await client.get("/v1/models/gpt-4.1", headers=caller.headers)).json()["id"] == "gpt-4.1"
        response = await client.get(f"/v1/models/{name}", headers=caller.headers)
        refused(response, 404, "model_not_found", "model")


# ---- the database away --------------------------------------------------------------------------------------


@pytest.fixture
def unreachable_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL that cannot be reached. PostgreSQL: a port bound (so nobody else takes it) but not
    listening, so every connect is refused. SQLite: a path that is a directory, so the file cannot be opened."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}"
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{sock.getsockname()[1]}/threadline"


@pytest.mark.parametrize("unreachable_database_url", ["sqlite", "postgresql"], indirect=True)
async def test_a_database_that_is_away_is_a_retryable_503(unreachable_database_url: str) -> None:
    settings = Settings(database_url=unreachable_database_url, local_model_enabled=False, retention_enabled=False)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://threadline.test") as client:
            for method, path in [("GET", "/v1/threads"), ("POST", "/v1/threads"), ("GET", "/v1/conversations/c1")]:
                response = await client.request(method, path, headers={"X-API-Key": "tl_whatever"})
                refused(response, 503, "database_unavailable")
                assert response.headers["x-should-retry"] == "true"
                assert response.json()["error"]["type"] == "api_error"
            assert (await client.get("/healthz")).status_code == 200


# ---- an internal error keeps the connection ------------------------------------------------------------------


def _rename_table(database_url: str, old: str, new: str) -> None:
    """Break the running server's schema from outside: a fault no request can cause, found on every request."""
    statement = f"ALTER TABLE {old} RENAME TO {new}"
    if database_url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(database_url.split(":///", 1)[1])) as conn:
            conn.execute(statement)
            conn.commit()
        return

    async def run() -> None:
        conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def _client_port(response: httpx.Response) -> int:
    """The local port of the connection that carried `response`: the same port means the same connection."""
    port: int = response.extensions["network_stream"].get_extra_info("client_addr")[1]
    return port


@pytest.mark.slow  # starts threadline serve (docs/testing.md)
def test_a_500_is_the_envelope_and_keeps_the_connection(empty_database_url: str, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with (
        threadline_serve(threadline_env(empty_database_url), log=log, cwd=tmp_path) as base,
        httpx.Client(base_url=base, timeout=10, limits=httpx.Limits(max_connections=1)) as http,
    ):
        first = http.get("/healthz")
        assert first.status_code == 200
        _rename_table(empty_database_url, "api_keys", "api_keys_gone")
        for _ in range(2):
            failed = http.get("/v1/threads", headers={"X-API-Key": "tl_anything"})
            refused(failed, 500, "internal_error")
            assert failed.json()["error"]["type"] == "api_error"
            assert failed.headers["x-should-retry"] == "true"
            assert failed.headers.get("connection", "").lower() != "close"
            after = http.get("/healthz")
            assert after.status_code == 200
            assert _client_port(failed) == _client_port(first) == _client_port(after)
    # The server logged the failure once per request, with its cause.
    text = log.read_text(errors="replace")
    assert text.count("unhandled error") == 2 and "api_keys" in text
    assert "Exception in ASGI application" not in text


# ---- the request schemas state the limits the server enforces (issue 14, group 3) ---------------------------


def _inline(spec: dict[str, Any], schema: Any) -> Any:
    if isinstance(schema, list):
        return [_inline(spec, item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return _inline(spec, spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]])
    return {key: _inline(spec, value) for key, value in schema.items()}


def _branches(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The non-null alternatives of a property (`X | None` is an anyOf)."""
    options = schema.get("anyOf", [schema])
    return [o for o in options if o.get("type") != "null"]


def _walk_integers(schema: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(schema, dict):
        if schema.get("type") == "integer":
            yield where, schema
        for key, value in schema.items():
            yield from _walk_integers(value, f"{where}.{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            yield from _walk_integers(value, f"{where}[{i}]")


async def test_request_schemas_declare_the_enforced_limits(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    bodies = {}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if content:
                bodies[f"{method.upper()} {path}"] = _inline(spec, content["schema"])
            for parameter in operation.get("parameters", []):
                schema = parameter["schema"]
                if parameter["in"] == "path" and parameter["name"] != "model":
                    (string,) = _branches(schema)
                    assert string.get("pattern") and string.get("maxLength"), (path, parameter)
                if parameter["name"] == "Idempotency-Key":
                    assert schema["pattern"] == KEY_PATTERN.pattern
    # Every integer a body may carry has a range no column overflows.
    for where, schema in _walk_integers(bodies, "body"):
        assert "minimum" in schema and 0 < schema["maximum"] <= INT32_MAX, where
    thread = bodies["POST /v1/threads"]
    (body,) = _branches(thread)
    (metadata,) = _branches(body["properties"]["metadata"])
    assert metadata["maxProperties"] == 16
    assert metadata["propertyNames"] == {"minLength": 1, "maxLength": 64}
    assert metadata["additionalProperties"] == {"maxLength": 512}
    (title,) = _branches(body["properties"]["title"])
    assert title["maxLength"] == 200
    (thread_id,) = _branches(body["properties"]["id"])
    assert thread_id["pattern"].startswith("^[A-Za-z0-9]") and thread_id["maxLength"] == 128
    responses = bodies["POST /v1/responses"]
    (openai_metadata,) = _branches(responses["properties"]["metadata"])
    assert openai_metadata["additionalProperties"] == {"type": "string", "maxLength": 512}
    assert openai_metadata["maxProperties"] == 16


async def test_values_at_every_declared_limit_are_accepted(client: httpx.AsyncClient, caller: Caller) -> None:
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    body = {"id": "A" + "z" * 127, "title": "t" * 200, "metadata": metadata}
    created = await client.post("/v1/threads", json=body, headers=caller.headers)
    assert created.status_code == 200, created.text
    assert created.json()["metadata"] == metadata and created.json()["title"] == "t" * 200
    conversation = await client.post("/v1/conversations", json={"metadata": metadata}, headers=caller.headers)
    assert conversation.status_code == 200, conversation.text


@pytest.mark.parametrize("thread_id", ["abc\n", "abc\n\n", "\nabc"])
async def test_a_thread_id_with_a_newline_is_refused(client: httpx.AsyncClient, caller: Caller, thread_id: str) -> None:
    # The id rule used `re.match` with `$`, which also matches before a trailing newline.
    response = await client.post("/v1/threads", json={"id": thread_id}, headers=caller.headers)
    refused(response, 400, "invalid_thread_id", "id")
