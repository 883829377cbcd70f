"""Property-based fuzzing of every route of the app's own OpenAPI document, plus the hidden Assistants-v2
routes (the same paths with `OpenAI-Beta: assistants=v2`).

Hypothesis builds requests (path ids, query strings, `Idempotency-Key` headers, JSON bodies with hostile values:
NUL bytes, lone surrogates, NaN, huge numbers, deep nesting, wrong types, unknown fields, camelCase and snake_case
names) and asserts the two promises of the API: no 5xx, and every error is the envelope with a non-empty `code`.
Model routes answer through a FakeProvider, so turns run whole (and quickly) instead of stopping at "no model".
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Caller
from tests.helpers import login_headers
from tests.responses_helpers import running_app
from threadline.api.routes import openai_threads
from threadline.api.routes.openai_threads import AssistantsRoute
from threadline.config import Settings
from threadline.providers.fake import FakeProvider

ASSISTANTS_V2 = {"OpenAI-Beta": "assistants=v2"}
_PARAM = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    query: tuple[str, ...]
    body_fields: tuple[tuple[str, Any], ...] | None  # (name, schema) of each body field; None: no body
    headers: tuple[tuple[str, str], ...] = ()  # e.g. OpenAI-Beta for the Assistants-v2 routes
    idempotent: bool = False  # takes an Idempotency-Key header


def _inline(spec: dict[str, Any], schema: Any, depth: int = 0) -> Any:
    """The schema with every `$ref` replaced by its definition (bounded: schemas may be recursive)."""
    if isinstance(schema, list):
        return [_inline(spec, item, depth) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        if depth > 6:
            return {}
        return _inline(spec, spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]], depth + 1)
    return {key: _inline(spec, value, depth) for key, value in schema.items()}


def _properties(spec: dict[str, Any], schema: dict[str, Any]) -> list[tuple[str, Any]]:
    schema = _inline(spec, schema)
    for variant in schema.get("anyOf", []):
        if variant.get("properties"):
            return _properties(spec, variant)
    return list(schema.get("properties", {}).items())


def _operations_of(spec: dict[str, Any], headers: tuple[tuple[str, str], ...] = ()) -> list[Operation]:
    found = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            parameters = op.get("parameters", [])
            query = tuple(p["name"] for p in parameters if p["in"] == "query")
            idempotent = any(p["in"] == "header" and p["name"] == "Idempotency-Key" for p in parameters)
            body = op.get("requestBody")
            fields = None
            if body is not None:
                fields = tuple(_properties(spec, body["content"]["application/json"]["schema"]))
            found.append(Operation(method.upper(), path, query, fields, headers, idempotent))
    return found


def hidden_spec() -> dict[str, Any]:
    """The OpenAPI document of the routes kept out of the public one (one operation per path and method there):
    the Assistants-v2 dialect of /v1/threads (the app serves them from this router)."""
    routes = []
    for route in openai_threads.router.routes:
        assert isinstance(route, AssistantsRoute)
        shown = copy.copy(route)
        shown.include_in_schema = True
        routes.append(shown)
    return get_openapi(title="hidden", version="0", routes=routes)


def operations(app: FastAPI) -> list[Operation]:
    """Every operation of the OpenAPI document, and the hidden Assistants-v2 ones with their header (built once
    per app: rebuilding the documents for every example would cost more than the requests)."""
    if not hasattr(app.state, "fuzz_operations"):
        app.state.fuzz_operations = _operations_of(app.openapi()) + _operations_of(
            hidden_spec(), tuple(ASSISTANTS_V2.items())
        )
    found: list[Operation] = app.state.fuzz_operations
    return found


def _quote(value: str) -> str:
    """Percent-encode every byte, lone surrogates included (as the invalid UTF-8 a raw client could send)."""
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


# Strings a database or driver may refuse (NUL, lone surrogates, control characters), sizes at and past the
# limits, and ordinary text.
hostile_text = st.one_of(
    st.sampled_from(["\x00", "a\x00b", "\ud800", "x\udfffy", "\x1b[0m\x7f"]),
    st.text(max_size=40),
    st.text(alphabet=st.characters(categories=["Cc", "Cs"]), min_size=1, max_size=4),
    st.sampled_from(["", " ", "x" * 200, "x" * 201, "thread_" + "a" * 200, "../x", "%00", "💥" * 10]),
    st.sampled_from(["open", "locked", "archived", "user", "assistant", "system", "ok_id"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    hostile_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(hostile_text, inner, max_size=20)),
    max_leaves=40,
)


def typed_values(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that mostly have the field's type (so they reach the service and the database), with hostile
    contents, and sometimes anything at all."""
    variants = [v for v in schema.get("anyOf", []) if v.get("type") != "null"] or [schema]
    strategies: list[st.SearchStrategy[Any]] = []
    for variant in variants:
        kind = variant.get("type")
        if "enum" in variant or "const" in variant:
            strategies.append(st.sampled_from(variant.get("enum") or [variant.get("const")]))
        if kind == "string":
            strategies.append(hostile_text)
        elif kind == "boolean":
            strategies.append(st.booleans())
        elif kind == "integer":
            strategies.append(st.integers(min_value=-(2**70), max_value=2**70))
        elif kind == "object" and variant.get("properties"):
            # A nested model (e.g. an input message): well-formed keys, so its values reach the service.
            optional = {name: typed_values(sub) for name, sub in variant["properties"].items()}
            strategies.append(st.fixed_dictionaries({}, optional=optional))
        elif kind == "object":
            strategies.append(st.dictionaries(hostile_text, json_values, max_size=18))
        elif kind == "array":
            strategies.append(st.lists(typed_values(variant.get("items", {})), max_size=5))
    typed = st.one_of(*strategies) if strategies else json_values
    return st.one_of(typed, typed, typed, typed, typed, typed, st.none(), json_values)


@dataclass
class Target:
    caller: Caller
    token_headers: dict[str, str]
    known: dict[str, str]  # a real value for each path parameter, so requests reach past the lookups


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app with a FakeProvider as its only model: turns run whole, instantly."""
    async for application in running_app(settings, FakeProvider()):
        yield application


@pytest.fixture
async def target(client: httpx.AsyncClient, app: FastAPI, caller: Caller) -> Target:
    headers = caller.headers
    thread = (await client.post("/v1/threads", json={"id": "fuzz_thread"}, headers=headers)).json()
    message = (
        await client.post(f"/v1/threads/{thread['id']}/messages", json={"content": "hi"}, headers=headers)
    ).json()
    assistant = await client.post("/v1/assistants", json={"name": "fuzz", "model": "fake-model"}, headers=headers)
    turn = await client.post(
        "/v1/model/response",
        json={"thread": thread["id"], "inputs": [{"role": "user", "texts": [{"text": "hello"}]}]},
        headers=headers,
    )
    assert turn.status_code == 200, turn.text  # the fake model answers: model routes run whole
    keys = (await client.get("/v1/api-keys", headers=headers)).json()["data"]
    known = {
        "thread_id": thread["id"],
        "conversation_id": thread["id"],
        "message_id": message["id"],
        "item_id": message["id"],
        "assistant_id": assistant.json()["id"],
        "response_id": turn.json()["id"],
        "key_id": keys[0]["id"],
        "model": "fake-model",
        "organization_id": caller.organization_id,
    }
    return Target(caller, await login_headers(client, app, caller), known)


idempotency_keys = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12),
    st.sampled_from(["", " ", "k" * 255, "k" * 256, "a b", "\t", "key-1"]),
)


@st.composite
def requests(
    draw: st.DrawFn, ops: list[Operation], target: Target
) -> tuple[str, str, dict[str, Any], bytes | None, dict[str, str]]:
    op = draw(st.sampled_from(ops))
    known = target.known

    def path_value(match: re.Match[str]) -> str:
        value = draw(
            st.one_of(
                st.just(known[match.group(1)]), hostile_text.filter(lambda s: "/" not in s and s not in (".", ".."))
            )
        )
        return _quote(value) or "x"

    path = _PARAM.sub(path_value, op.path)
    query: dict[str, Any] = {}
    own_org = st.just(target.caller.organization_id)
    for name in op.query:
        if name == "organization_id":
            if draw(st.integers(0, 3)) == 0:
                query[name] = draw(st.one_of(own_org, hostile_text))
        elif draw(st.integers(0, 2)) == 0:
            key = draw(st.sampled_from([name, re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)]))
            query[key] = draw(
                st.one_of(
                    hostile_text,
                    st.integers(-5, 500).map(str),
                    st.sampled_from(["true", "false", "asc", "desc", known["thread_id"], known["message_id"]]),
                )
            )
    content: bytes | None = None
    if op.body_fields is not None:
        kind = draw(st.sampled_from(["one", "one", "one", "fields", "json", "raw"]))
        if kind in ("one", "fields"):
            # "one": a single field, so one hostile value is not hidden behind another field's type error.
            fields = [draw(st.sampled_from(op.body_fields))] if kind == "one" and op.body_fields else op.body_fields
            body: dict[str, Any] = {}
            for name, schema in fields:
                if kind == "one" or draw(st.booleans()):
                    # Another organization's id only ever gets a 403: mostly send the caller's own.
                    values = (
                        st.one_of(own_org, own_org, hostile_text) if name == "organizationId" else typed_values(schema)
                    )
                    body[draw(st.sampled_from([name, _snake(name)]))] = draw(values)
            if draw(st.integers(0, 9)) == 0:
                body["unknown_field"] = draw(json_values)
            content = json.dumps(body, ensure_ascii=True, allow_nan=True).encode()
        elif kind == "json":
            content = json.dumps(draw(json_values), ensure_ascii=True, allow_nan=True).encode()
        else:
            content = draw(st.binary(max_size=64))
    auth = draw(st.sampled_from(["key", "key", "key", "token", "token", "none", "garbage"]))
    if op.path == "/v1/auth/logout" and auth == "token":
        auth = "key"  # logging out would revoke the token every later example uses
    headers = {
        "key": target.caller.headers,
        "token": target.token_headers,
        "none": {},
        "garbage": {"Authorization": "Bearer tlu_garbage"},
    }[auth]
    headers = {**headers, **dict(op.headers), "Content-Type": "application/json"}
    if op.idempotent and draw(st.integers(0, 3)) == 0:
        headers["Idempotency-Key"] = draw(idempotency_keys)
    if query:
        path += "?" + "&".join(f"{_quote(k)}={_quote(str(v))}" for k, v in query.items())
    return op.method, path, query, content, headers


@pytest.fixture
def statuses() -> Iterator[set[int]]:
    """The statuses seen over all examples: the fuzzer must reach past validation, not only into 400s."""
    seen: set[int] = set()
    yield seen
    assert {200, 400, 404} <= seen, seen


@settings(
    max_examples=700,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(data=st.data())
async def test_no_request_produces_a_5xx(
    client: httpx.AsyncClient, app: FastAPI, target: Target, statuses: set[int], data: st.DataObject
) -> None:
    ops = operations(app)
    # Every router's routes are in: threads, messages, search, auth, assistants, responses, models,
    # conversations, and the hidden Assistants-v2 dialect.
    assert len(ops) >= 50, len(ops)
    method, path, query, content, headers = data.draw(requests(ops, target))
    response = await client.request(method, path, content=content, headers=headers)
    statuses.add(response.status_code)
    assert response.status_code < 500, (method, path, query, content, response.text)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, response.text
        assert isinstance(error["code"], str) and error["code"], response.text
        assert isinstance(error["message"], str) and error["message"], response.text


# Regressions the widened fuzzer found: ids that no row can have (a NUL byte, here) reached PostgreSQL, which
# refuses NUL in text, and came back as 500s. Each route now refuses them as a 400 before any query.
NUL_ID_REQUESTS = [
    ("GET", "/v1/threads/%00", ASSISTANTS_V2),
    ("DELETE", "/v1/threads/fuzz_thread/messages/%00", ASSISTANTS_V2),
    ("GET", "/v1/threads/fuzz_thread/messages?after=%00", ASSISTANTS_V2),
    ("GET", "/v1/conversations/%00", {}),
    ("GET", "/v1/conversations/fuzz_thread/items/%00", {}),
    ("GET", "/v1/conversations/fuzz_thread/items?after=%00", {}),
    ("DELETE", "/v1/assistants/%00", {}),
    ("GET", "/v1/assistants?after=%00", {}),
    ("GET", "/v1/model/response/%00", {}),
]


async def test_an_impossible_id_is_a_400_not_a_500(client: httpx.AsyncClient, target: Target) -> None:
    params = {"thread_id", "message_id", "conversation_id", "item_id", "assistant_id", "response_id", "after"}
    for method, path, extra in NUL_ID_REQUESTS:
        response = await client.request(method, path, headers={**target.caller.headers, **extra})
        assert response.status_code == 400, (method, path, response.text)
        error = response.json()["error"]
        assert error["code"] and error["param"] in params, (path, error)
