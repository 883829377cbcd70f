"""Metrics, readiness, request ids and traces, on the real app and both databases (issue 12, parts 1–4).

Real turns go through a FakeProvider; /metrics is scraped over ASGI and parsed with prometheus_client's own parser,
so a metric that stops moving, or a label that changes, fails here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from tests.conftest import Caller, _empty_all_tables, make_caller, registry_with, started_app
from tests.helpers import refused
from tests.responses_helpers import turn
from tests.servers import upstream_server
from threadline import observability
from threadline.config import ProviderConfig, Settings
from threadline.domain.clock import utcnow
from threadline.observability import logs
from threadline.observability.logs import JsonFormatter, RequestContext, bind_request, unbind_request
from threadline.observability.tracing import tracer_provider_from_env
from threadline.providers.fake import FakeProvider, Script
from threadline.services import retention
from threadline.storage.repositories.threads import ThreadRepository

pytestmark = pytest.mark.fake_model()


async def scrape(client: httpx.AsyncClient, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape, keyed by (sample name, sorted labels)."""
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_turns_move_the_turn_token_latency_and_http_metrics(
    client: httpx.AsyncClient, caller: Caller, fake: FakeProvider
) -> None:
    fake.script(Script(reply="one two three"), Script(reply="four five"), Script(fail="before"))
    assert (await turn(client, caller, "hello there")).status_code == 200
    streamed = await turn(client, caller, "again", stream=True)
    assert streamed.status_code == 200 and "response.completed" in streamed.text
    assert (await turn(client, caller, "this one fails")).status_code == 502
    assert (await client.get("/v1/threads/nope/nothing/here", headers=caller.headers)).status_code == 404

    samples = await scrape(client)
    turns = "threadline_turns_total"
    assert value(samples, turns, surface="freddy", model="fake-model", outcome="completed") == 2
    assert value(samples, turns, surface="freddy", model="fake-model", outcome="upstream_error") == 1
    assert value(samples, "threadline_turn_duration_seconds_count", surface="freddy", model="fake-model",
                 outcome="completed") == 2  # fmt: skip
    assert value(samples, "threadline_turn_time_to_first_token_seconds_count", surface="freddy",
                 model="fake-model") == 2  # fmt: skip
    # The fake counts words: 3 + 2 answer tokens; the context sent is larger than the inputs alone.
    assert value(samples, "threadline_model_tokens_total", model="fake-model", direction="output") == 5
    assert value(samples, "threadline_model_tokens_total", model="fake-model", direction="input") >= 3
    http = "threadline_http_requests_total"
    assert value(samples, http, method="POST", route="/v1/model/response", status="200") == 2
    assert value(samples, http, method="POST", route="/v1/model/response", status="502") == 1
    assert value(samples, http, method="GET", route="unmatched", status="404") == 1
    assert value(samples, "threadline_http_request_duration_seconds_count", method="POST",
                 route="/v1/model/response", status="200") == 2  # fmt: skip
    # Nothing is streaming or checked out between requests.
    assert value(samples, "threadline_streams_in_flight") == 0
    assert value(samples, "threadline_db_pool_connections_in_use") == 0
    # No label carries an id (threads, responses, keys): only templates and fixed sets.
    assert not any("thread_" in v or "resp_" in v or "tl_" in v for _, labels in samples for _, v in labels)


async def test_busy_waits_and_refusals_are_counted(
    settings: Settings, app: FastAPI, client: httpx.AsyncClient, caller: Caller
) -> None:
    await client.post("/v1/threads", json={"id": "t_busy"}, headers=caller.headers)
    # Another holder (a turn of another process) keeps the thread busy until this test frees it.
    async with app.state.sessionmaker() as session:
        expires = utcnow() + timedelta(minutes=5)
        assert await ThreadRepository(session).acquire_free_lease(caller.organization_id, "t_busy", "other", expires)
        await session.commit()
    waiting = asyncio.create_task(turn(client, caller, "after you", thread="t_busy"))
    deadline = asyncio.get_running_loop().time() + 20
    while value(await scrape(client), "threadline_thread_busy_waiting") != 1:
        assert asyncio.get_running_loop().time() < deadline, "the turn never started waiting"
        await asyncio.sleep(0.05)
    async with app.state.sessionmaker() as session:
        await ThreadRepository(session).release_lease(caller.organization_id, "t_busy", "other")
        await session.commit()
    assert (await waiting).status_code == 200

    impatient = settings.model_copy(update={"thread_busy_timeout_seconds": 0})
    async for other in started_app(impatient, registry_with(FakeProvider())):
        other_client = httpx.AsyncClient(transport=httpx.ASGITransport(app=other), base_url="http://t")
        async with app.state.sessionmaker() as session:
            expires = utcnow() + timedelta(minutes=5)
            await ThreadRepository(session).acquire_free_lease(caller.organization_id, "t_busy", "other", expires)
            await session.commit()
        async with other_client:
            refusal = await turn(other_client, caller, "me too", thread="t_busy")
            assert refusal.status_code == 409
            other_samples = await scrape(other_client)
        assert value(other_samples, "threadline_thread_busy_refusals_total", surface="freddy") == 1

    samples = await scrape(client)
    assert value(samples, "threadline_thread_busy_waits_total", surface="freddy") == 1
    assert value(samples, "threadline_thread_busy_wait_seconds_count", surface="freddy") == 1
    assert value(samples, "threadline_thread_busy_waiting") == 0


async def test_retention_purges_are_counted_by_category(
    settings: Settings, app: FastAPI, client: httpx.AsyncClient, caller: Caller
) -> None:
    for name in ("t_old1", "t_old2"):
        await client.post("/v1/threads", json={"id": name}, headers=caller.headers)
        assert (await client.delete(f"/v1/threads/{name}", headers=caller.headers)).status_code == 200
    token = observability.bind(app.state.observer)  # as the sweeper task inside the app is bound
    try:
        later = utcnow() + timedelta(days=settings.deleted_thread_grace_days + 1)
        report = await retention.sweep(app.state.sessionmaker, settings, now=later)
    finally:
        observability.unbind(token)
    assert report.counts["deleted_threads"] == 2
    samples = await scrape(client)
    assert value(samples, "threadline_retention_purged_total", category="deleted_threads") == 2


async def test_metrics_need_the_token_when_one_is_set(settings: Settings, caller: Caller) -> None:
    guarded = settings.model_copy(update={"metrics_token": SecretStr("scrape-me")})
    async for application in started_app(guarded, registry_with(FakeProvider())):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t") as c:
            assert (await c.get("/metrics")).status_code == 401
            wrong = await c.get("/metrics", headers={"Authorization": "Bearer nope"})
            refused(wrong, 401, "invalid_credentials")
            assert "threadline_http_requests_total" in (await scrape(c, Authorization="Bearer scrape-me")).__repr__()


async def test_request_ids_are_taken_or_generated_and_echoed(client: httpx.AsyncClient, caller: Caller) -> None:
    given = await client.get("/v1/threads", headers={**caller.headers, "X-Request-Id": "lb-1234.abc"})
    assert given.headers["x-request-id"] == "lb-1234.abc"
    made = await client.get("/v1/threads", headers=caller.headers)
    assert made.headers["x-request-id"].startswith("req_")
    # Not an id a log line could be forged with: replaced.
    odd = await client.get("/v1/threads", headers={**caller.headers, "X-Request-Id": "a b\x7f" * 3})
    assert odd.headers["x-request-id"].startswith("req_")


async def test_health_and_readiness(client: httpx.AsyncClient, app: FastAPI) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and ready.json()["revision"] == ready.json()["head"]
    app.state.observer.lifecycle.draining = True
    try:
        draining = await client.get("/readyz")
        assert draining.status_code == 503 and draining.json() == {"status": "draining"}
    finally:
        app.state.observer.lifecycle.draining = False


async def test_draining_refuses_new_turns_with_503(app: FastAPI, client: httpx.AsyncClient, caller: Caller) -> None:
    app.state.observer.lifecycle.draining = True
    try:
        refusal = await turn(client, caller, "too late")
    finally:
        app.state.observer.lifecycle.draining = False
    refused(refusal, 503, "server_shutting_down")
    assert refusal.headers["x-should-retry"] == "true"


async def test_readiness_fails_until_migrations_reach_head(empty_database_url: str) -> None:
    settings = Settings(database_url=empty_database_url, local_model_enabled=False, retention_enabled=False)
    from threadline.api.app import create_app

    application = create_app(settings, models=registry_with(FakeProvider()))
    transport = httpx.ASGITransport(app=application)
    async with (
        application.router.lifespan_context(application),
        httpx.AsyncClient(transport=transport, base_url="http://t") as c,
    ):
        response = await c.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "migrations_pending" and response.json()["revision"] is None


def _background(span: ReadableSpan) -> bool:
    """A span of work outside any request: the job runner's SQL, in a trace that holds nothing else."""
    return span.parent is None and span.name.split()[0] in {"BEGIN", "SELECT", "UPDATE", "COMMIT", "ROLLBACK"}


def _tree(spans: tuple[ReadableSpan, ...]) -> dict[str, list[str]]:
    """Span name → the names of its children."""
    by_id = {span.context.span_id: span for span in spans}
    children: dict[str, list[str]] = {span.name: [] for span in spans}
    for span in spans:
        if span.parent is not None and span.parent.span_id in by_id:
            children[by_id[span.parent.span_id].name].append(span.name)
    return children


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with upstream_server(tmp_path_factory.mktemp("upstream") / "upstream.log", words=3, pace=0.01) as server:
        yield server.base_url


async def test_a_turn_is_traced_request_steps_sql_and_upstream(settings: Settings, upstream: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    configured = Settings(
        database_url=settings.database_url,
        local_model_enabled=False,
        retention_enabled=False,
        providers=[ProviderConfig(name="paced", type="openai", base_url=upstream, models=["paced"])],
        default_model="paced",
    )
    from threadline.api.app import create_app

    application = create_app(configured, tracer_provider=provider)
    async with application.router.lifespan_context(application):
        member = await make_caller(application)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t") as c:
            exporter.clear()
            response = await turn(c, member, "trace me")
            assert response.status_code == 200, response.text
    await _empty_all_tables(settings.database_url)
    finished = exporter.get_finished_spans()
    roots = [s for s in finished if s.parent is None and not _background(s)]
    assert [r.name for r in roots] == ["POST /v1/model/response"]
    request_span = roots[0]
    # The job runner's claims (a job kind is registered: webhook deliveries) are traces of their own.
    spans = tuple(s for s in finished if not _background(s))
    assert all(s.context.trace_id == request_span.context.trace_id for s in spans)
    tree = _tree(spans)
    steps = [n for n in tree["POST /v1/model/response"] if n.startswith("turn.")]
    assert steps == ["turn.lease", "turn.context", "turn.model_call", "turn.save"]
    assert tree["turn.model_call"] == ["POST"]  # the upstream call, by the httpx instrumentation
    assert any(child.split()[0] in {"SELECT", "UPDATE", "INSERT"} for child in tree["turn.lease"])
    assert any(child.split()[0] in {"INSERT", "UPDATE"} for child in tree["turn.save"])
    upstream = next(s for s in spans if s.name == "POST")
    assert str((upstream.attributes or {}).get("url.full", (upstream.attributes or {}).get("http.url"))).endswith(
        "/chat/completions"
    )


async def test_a_global_tracer_provider_adds_no_spans(
    monkeypatch: pytest.MonkeyPatch, caller: Caller, client: httpx.AsyncClient
) -> None:
    """Something else in the process (`opentelemetry-instrument`, a library) set a global provider: with Threadline's
    tracing off, a request still makes no span (FastAPI's own telemetry is off too)."""
    from opentelemetry import trace

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    assert (await client.post("/v1/threads", json={"title": "untraced"}, headers=caller.headers)).status_code == 200
    assert (await client.post("/v1/threads", content=b"{", headers=caller.headers)).status_code == 400
    assert exporter.get_finished_spans() == ()


def test_log_lines_mask_secrets_and_name_the_request() -> None:
    record = logging.LogRecord("threadline.x", logging.ERROR, __file__, 1, "login with %s", ("x",), None)
    record.msg = (
        "key tl_AbCdEfGhIjKlMnOpQrStUv token tlu_ZyXwVuTsRqPoNm header Bearer abc.def.ghi-jkl "
        "url postgresql+asyncpg://app:hunter2secret@db/threadline password=hunter2secret %s"
    )
    try:
        raise RuntimeError("failed for sk-proj-0123456789abcdef")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    token = bind_request(RequestContext(request_id="req_1", method="GET", route="/v1/threads", organization_id="org_1"))
    try:
        line = JsonFormatter().format(record)
    finally:
        unbind_request(token)
    entry = json.loads(line)
    assert entry["request_id"] == "req_1" and entry["organization_id"] == "org_1" and entry["route"] == "/v1/threads"
    assert entry["level"] == "error" and "RuntimeError" in entry["exception"]
    for secret in ("AbCdEfGhIjKlMnOpQrStUv", "ZyXwVuTsRqPoNm", "abc.def.ghi-jkl", "hunter2secret", "0123456789abcdef"):
        assert secret not in line


@pytest.mark.parametrize(
    "line",
    [
        "POST /v1/model/response 200 4.2ms client=127.0.0.1 [request_id=req_1]",
        "Authorization: BEARER abcdefghijk Token = xyz https://u:p@h/ tl_abcdefghij TL_abcdefghij sk-abcdefghij",
        "PassWord=hunter2 basic abcdefghijkl apikey:'x' SECRET=\"y\"",
        # Not ASCII: re's case-insensitive matching folds these letters (dotless i, long s, Kelvin sign) to ASCII.
        "apı_key=zzz paſſword=zzz \u212aey toKen=é bearer é_abcdefghij",
    ],
)
def test_redaction_skips_only_patterns_that_cannot_match(line: str) -> None:
    expected = line
    for pattern, replacement, _words in logs._SECRETS:
        expected = pattern.sub(replacement, expected)
    assert logs.redact(line) == expected


def test_traces_are_off_unless_the_otel_variables_ask() -> None:
    assert tracer_provider_from_env({}) is None
    assert tracer_provider_from_env({"OTEL_SERVICE_NAME": "x"}) is None
    assert tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "none"}) is None
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert tracer_provider_from_env({**endpoint, "OTEL_SDK_DISABLED": "true"}) is None
    provider = tracer_provider_from_env({**endpoint, "OTEL_SERVICE_NAME": "threadline-eu"})
    assert provider is not None
    try:
        assert provider.resource.attributes["service.name"] == "threadline-eu"
    finally:
        provider.shutdown()
    console = tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "console"})
    assert console is not None
    console.shutdown()
    with pytest.raises(ValueError, match="unknown exporter 'jaeger'"):
        tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "jaeger"})
