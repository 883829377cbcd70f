"""The application factory: everything is built from the Settings passed in, nothing at import time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from threadline import __version__
from threadline.api import errors, idempotency, openapi
from threadline.api.middleware import BodyLimitMiddleware, QueryCaseMiddleware
from threadline.api.routes import (
    assistants,
    auth,
    conversations,
    messages,
    openai_responses,
    openai_runs,
    openai_threads,
    responses,
    search,
    threads,
)
from threadline.api.routes import models as models_routes
from threadline.config import Settings
from threadline.providers.registry import ModelRegistry
from threadline.services import naming, retention
from threadline.services.background import Background
from threadline.storage.engine import create_engine, create_sessionmaker
from threadline.web import ui_router


def create_app(settings: Settings | None = None, *, models: ModelRegistry | None = None) -> FastAPI:
    """Build the app. `models` replaces the registry built from settings (tests pass fakes)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.database_url)
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine)
        # The one HTTP client for every upstream model call; per-provider timeouts override these defaults.
        http_client = httpx.AsyncClient(
            timeout=httpx.Timeout(120.0, connect=10.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )
        try:
            # In a thread: building the embedded provider reads the GGUF's vocabulary.
            registry = (
                models
                if models is not None
                else await asyncio.to_thread(ModelRegistry.from_settings, settings, http_client)
            )
        except BaseException:
            await http_client.aclose()
            await engine.dispose()
            raise
        app.state.models = registry
        # Work that outlives its request (auto-naming), cancelled at shutdown before the engine goes away.
        background = Background()
        app.state.background = background
        app.state.turn_observer = (
            naming.AutoNamer(app.state.sessionmaker, settings, registry, background)
            if settings.auto_name_threads
            else None
        )
        # The retention sweeper: every process runs one; the "retention" lease lets one sweep at a time.
        sweeper = (
            asyncio.create_task(retention.run_periodically(app.state.sessionmaker, settings), name="retention")
            if settings.retention_enabled
            else None
        )
        try:
            yield
        finally:
            await background.aclose()
            if sweeper is not None:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
            await registry.aclose()
            await http_client.aclose()
            await engine.dispose()

    app = FastAPI(
        title="Threadline",
        version=__version__,
        description="Persistent LLM conversation threads: the Freddy Threads API and OpenAI wire compatibility. "
        "The Assistants v2 dialect of /v1/threads… (the same paths, with `OpenAI-Beta: assistants=v2`) has its own "
        f"document: {openapi.ASSISTANTS_V2_URL}.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)
    idempotency.install(app)  # innermost middleware: sees normalized query strings, bodies within the limit
    app.add_middleware(QueryCaseMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # openai_threads first: its routes match only `OpenAI-Beta: assistants=v2` requests, which would otherwise
    # reach the Freddy routes of the same paths (DESIGN.md §4 "one path, two shapes").
    # `search` before `threads`: /v1/threads/search must not be read as a thread id.
    # openai_runs before openai_threads: POST /v1/threads/runs (create and run) is no thread called "runs".
    routers = (
        auth,
        openai_runs,
        openai_threads,
        search,
        threads,
        messages,
        conversations,
        assistants,
        responses,
        openai_responses,
        models_routes,
    )
    for module in routers:
        app.include_router(module.router)
    if settings.web_ui_enabled:
        app.include_router(ui_router())
    openapi.install(app, [module.router for module in routers])
    return app
