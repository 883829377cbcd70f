"""The application factory: everything is built from the Settings passed in, nothing at import time (the routes,
which depend on no setting, are built once per process: `_routes`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

import httpx
from fastapi import APIRouter, Depends, FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.routing import BaseRoute

from threadline import __version__, observability
from threadline.api import background_responses, errors, idempotency, openapi
from threadline.api import observability as api_observability
from threadline.api.middleware import RequestMiddleware
from threadline.api.routes import (
    assistants,
    auth,
    conversations,
    messages,
    openai_responses,
    openai_responses_ws,
    openai_runs,
    openai_threads,
    openai_webhooks,
    responses,
    search,
    thread_data,
    threads,
    webhooks,
)
from threadline.api.routes import compaction as compaction_routes
from threadline.api.routes import models as models_routes
from threadline.config import Settings
from threadline.observability import Lifecycle, Metrics, Observer
from threadline.observability.metrics import process_exited
from threadline.observability.tracing import tracer_provider_from_env
from threadline.providers.registry import ModelRegistry
from threadline.providers.transport import upstream_client
from threadline.services import compaction_jobs, jobs, recovery, retention, webhook_delivery
from threadline.services.background import Background
from threadline.services.response_streams import StreamHub
from threadline.storage.engine import create_engine, create_sessionmaker, head_revision, watch_pool
from threadline.turns import background as queued_turns
from threadline.turns.engine import TurnEngine
from threadline.turns.naming import AutoNamer
from threadline.web import ui_router

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider


def create_app(
    settings: Settings | None = None,
    *,
    models: ModelRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
    drain_on_sigterm: bool = False,
    tune_gc: bool = False,
) -> FastAPI:
    """Build the app. `models` replaces the registry built from settings (tests pass fakes); `tracer_provider`
    replaces the one the `OTEL_*` variables describe (tests export to memory). `drain_on_sigterm` (set by
    `threadline serve`): SIGTERM drains the process before the server stops (observability/lifecycle.py).
    `tune_gc` (set by the commands that own their process): the garbage collector is set for serving once the
    app has started (`_tune_gc`)."""
    settings = settings or Settings()
    # Metrics, traces and draining (api/observability.py): one observer per app, bound to each request.
    owns_tracer = tracer_provider is None
    tracer_provider = tracer_provider or tracer_provider_from_env(os.environ)
    lifecycle = Lifecycle()
    observer = Observer(
        metrics=Metrics(),
        tracer=tracer_provider.get_tracer("threadline") if tracer_provider is not None else None,
        lifecycle=lifecycle,
        surface_of=api_observability.surface_of,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.database_url)
        app.state.engine = engine
        app.state.schema_head = await asyncio.to_thread(head_revision)
        assert observer.metrics is not None
        watch_pool(engine, observer.metrics.db_pool_in_use.inc)
        observer_token = observability.bind(observer)  # the sweeper and other lifespan tasks report through it
        app.state.sessionmaker = create_sessionmaker(engine)
        # The one HTTP client for every upstream model call; per-provider timeouts override these defaults.
        http_client = upstream_client()
        # Webhook deliveries have their own client: no redirects, no proxy (services/webhook_delivery.py).
        app.state.webhook_http = webhook_delivery.new_client()
        if tracer_provider is not None:
            _instrument(engine, http_client, tracer_provider)
        try:
            # In a thread: building the embedded provider reads the GGUF's vocabulary.
            registry = (
                models
                if models is not None
                else await asyncio.to_thread(ModelRegistry.from_settings, settings, http_client)
            )
        except BaseException:
            await http_client.aclose()
            await app.state.webhook_http.aclose()
            await engine.dispose()
            raise
        app.state.models = registry
        # Work that outlives its request (auto-naming), cancelled at shutdown before the engine goes away.
        background = Background()
        app.state.background = background
        # The turn engine, built once: every surface asks it for turns (docs/ARCHITECTURE.md).
        turns = TurnEngine(app.state.sessionmaker, settings, registry)
        if settings.auto_name_threads:
            turns.observer = AutoNamer(turns, background)
        app.state.turns = turns
        maker = app.state.sessionmaker
        # The job queue (docs/jobs.md): every process runs one; the handlers of each job kind are registered here.
        runner = jobs.JobRunner(
            maker,
            engine,
            concurrency=settings.job_concurrency,
            lease_seconds=settings.job_lease_seconds,
            poll_seconds=settings.job_poll_seconds,
        )
        runner.register(compaction_jobs.KIND, compaction_jobs.handler(maker, settings, registry))
        app.state.jobs = runner
        runner.register(webhook_delivery.JOB_KIND, webhook_delivery.handler(maker, settings, app.state.webhook_http))
        # Live signals about responses (new stream events, cancels), and the job that runs background responses.
        hub = StreamHub(engine)
        app.state.streams = hub
        runner.register(queued_turns.JOB_KIND, background_responses.handler(turns, hub))
        tasks: list[asyncio.Task[None]] = []
        restore_sigterm = _drain_on_sigterm(lifecycle, settings) if drain_on_sigterm else None
        try:
            # Turns a stopped server left streaming (their leases expired): settled before the first request, then
            # by a periodic pass in every process (conditional UPDATEs: live leases, renewed elsewhere, stay).
            await recovery.settle_at_start(maker)
            tasks.append(asyncio.create_task(recovery.run_periodically(maker, settings), name="recovery"))
            # The retention sweeper: every process runs one; the "retention" lease lets one sweep at a time.
            if settings.retention_enabled:
                tasks.append(asyncio.create_task(retention.run_periodically(maker, settings), name="retention"))
            await hub.start()
            await runner.start()
            if tune_gc:
                _tune_gc()
            yield
        finally:
            if restore_sigterm is not None:
                restore_sigterm()
            await runner.stop()
            await hub.stop()
            await background.aclose()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await registry.aclose()
            await http_client.aclose()
            await app.state.webhook_http.aclose()
            await engine.dispose()
            if tracer_provider is not None:
                _uninstrument()
                if owns_tracer:
                    tracer_provider.shutdown()
            observability.unbind(observer_token)
            process_exited(os.getpid())

    app = FastAPI(
        routes=list(_routes(settings.web_ui_enabled)),
        title="Threadline",
        version=__version__,
        description="Persistent LLM conversation threads: the Freddy Threads API and OpenAI wire compatibility. "
        "The Assistants v2 dialect of /v1/threads… (the same paths, with `OpenAI-Beta: assistants=v2`) has its own "
        f"document: {openapi.ASSISTANTS_V2_URL}.",
        lifespan=lifespan,
        # Traces and metrics are Threadline's own (README, "Traces" and "Metrics"). FastAPI's built-in telemetry
        # would add spans, metrics and log records of its own as soon as anything in the process set a global
        # OpenTelemetry provider (`opentelemetry-instrument`, a library), tracing on or off.
        telemetry={
            "tracing": False,
            "metrics": False,
            "logs": False,
            "operation_spans": False,
            "auto_configure": False,
        },
    )
    app.state.settings = settings
    app.state.observer = observer
    app.router.dependencies.append(Depends(api_observability.record_route))  # for the routes added to the app
    errors.install(app)
    idempotency.install(app)
    # Our one pure-ASGI layer: observability, rate-limit headers, the last resort, the body limit, the query's
    # case and idempotency, in that order (api/middleware.py).
    app.add_middleware(
        RequestMiddleware,
        observer=observer,
        max_bytes=settings.max_body_bytes,
        streamed={thread_data.IMPORT_PATH: settings.max_import_bytes},
    )
    if tracer_provider is not None:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, tracer_provider=tracer_provider, excluded_urls="healthz,readyz,metrics")

    openapi.install(app, [module.router for module in ROUTERS])
    return app


# openai_threads first: its routes match only `OpenAI-Beta: assistants=v2` requests, which would otherwise reach
# the Freddy routes of the same paths (docs/surfaces.md, "one path, two shapes").
# `search` before `threads`: /v1/threads/search must not be read as a thread id.
# openai_runs before openai_threads: POST /v1/threads/runs (create and run) is no thread called "runs".
ROUTERS = (
    auth,
    # Before the routes of /v1/threads/{thread_id}: "export" and "import" are not thread ids.
    thread_data,
    compaction_routes,
    openai_runs,
    openai_threads,
    search,
    threads,
    messages,
    conversations,
    assistants,
    responses,
    openai_responses,
    openai_responses_ws,
    models_routes,
    webhooks,
    openai_webhooks,
)


@functools.cache
def _routes(web_ui: bool) -> tuple[BaseRoute, ...]:
    """Every app's routes, built once per process: FastAPI derives each route's handler, dependencies and fields
    for the router that includes it (a few tenths of a second per app), and no route depends on settings (each
    reads `request.app.state`). Shared by the apps, so `app.dependency_overrides` does not reach them (nothing
    uses it)."""
    # record_route labels every request with its route template (api/observability.py).
    router = APIRouter(dependencies=[Depends(api_observability.record_route)])
    router.include_router(api_observability.router)
    # Matched with the turn routes first (documented in the order above): a request is matched against every route
    # of the routers before its own, a few µs each, and no other router has a path under theirs.
    hot = (responses, openai_responses)
    for module in (*hot, *(module for module in ROUTERS if module not in hot)):
        router.include_router(module.router)
    if web_ui:
        router.include_router(ui_router())
    return tuple(router.routes)


def _instrument(engine: AsyncEngine, http_client: httpx.AsyncClient, tracer_provider: TracerProvider) -> None:
    """Spans for every SQL statement and every upstream call, through the official instrumentations."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    # skip_dep_check: the instrumentation declares SQLAlchemy < 2.1 but hooks only engine events, which 2.1 keeps
    # (tests/test_observability.py checks the SQL spans on the version installed).
    SQLAlchemyInstrumentor().instrument(engine=engine.sync_engine, tracer_provider=tracer_provider, skip_dep_check=True)
    HTTPXClientInstrumentor.instrument_client(http_client, tracer_provider=tracer_provider)


def _uninstrument() -> None:
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    SQLAlchemyInstrumentor().uninstrument()


# Tracked objects allocated (net) before a young collection: above what one turn keeps alive while it runs (a
# handful per message of its prompt), so a turn's objects are freed by reference counting, not promoted by the
# collector into the old generation, whose collections walk the whole heap (docs/context.md, "Cost per message").
GC_YOUNG_THRESHOLD = 50_000


def _tune_gc() -> None:
    """What the start built lives as long as the process: out of the collector's sight (`gc.freeze`); and young
    collections far less often than Python's default (700), which ran ~9 times a turn with a 1,500-message
    prompt, promoting its objects, and cost ~4-7 ms a turn in old-generation collections."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _drain_on_sigterm(lifecycle: Lifecycle, settings: Settings) -> Callable[[], None]:
    """Take SIGTERM over from the server (uvicorn installed its handler before the lifespan started): drain first
    — readiness 503, no new turns, running ones get `shutdown_grace_seconds` — then hand the signal to the server,
    which stops. A second SIGTERM goes to the server at once. Returns the function that puts its handler back."""
    loop = asyncio.get_running_loop()
    server_handler = signal.getsignal(signal.SIGTERM)
    tasks: set[asyncio.Task[None]] = set()

    async def drain_then_stop() -> None:
        await lifecycle.drain(settings.shutdown_grace_seconds)
        _forward(server_handler, signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if lifecycle.draining:
            _forward(server_handler, signum, frame)
            return
        lifecycle.draining = True  # at once: a readiness probe in the next millisecond already sees it

        def start() -> None:
            task = loop.create_task(drain_then_stop(), name="drain")
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop.call_soon_threadsafe(start)

    signal.signal(signal.SIGTERM, on_sigterm)

    def restore() -> None:
        signal.signal(signal.SIGTERM, server_handler)

    return restore


def _forward(handler: Any, signum: int, frame: FrameType | None = None) -> None:
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)
