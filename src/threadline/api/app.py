"""The application factory: everything is built from the Settings passed in, nothing at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from threadline import __version__
from threadline.api import errors
from threadline.api.middleware import BodyLimitMiddleware, QueryCaseMiddleware
from threadline.api.routes import auth, messages, responses, threads
from threadline.config import Settings
from threadline.providers.registry import ModelRegistry
from threadline.storage.engine import create_engine, create_sessionmaker


def create_app(settings: Settings | None = None, *, models: ModelRegistry | None = None) -> FastAPI:
    """Build the app. `models` replaces the registry built from settings (tests pass fakes)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.database_url)
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine)
        registry = models if models is not None else ModelRegistry(settings.default_model)
        app.state.models = registry
        try:
            yield
        finally:
            await registry.aclose()
            await engine.dispose()

    app = FastAPI(
        title="Threadline",
        version=__version__,
        description="Persistent LLM conversation threads: the Freddy Threads API and OpenAI wire compatibility.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)
    app.add_middleware(QueryCaseMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    for module in (auth, threads, messages, responses):
        app.include_router(module.router)
    return app
