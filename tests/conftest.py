"""Test fixtures: every storage and API test runs on SQLite and on PostgreSQL, against the real ASGI app.

Each backend's database is created and migrated with Alembic once per session (once per xdist worker); tables
are emptied after each test. PostgreSQL comes from THREADLINE_TEST_POSTGRES_URL (default: the local server, trust
auth). Without a reachable PostgreSQL a local run skips those tests and says so; CI (CI=true) fails instead.

Tests are marked here by what they use (`postgres`, `browser`, `nginx`; `slow` by hand), which is how
`make check` leaves them out; docs/testing.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from openai import AsyncOpenAI

from tests.openai_sdk import sdk_client
from threadline.api.app import create_app
from threadline.config import Settings
from threadline.providers.fake import FakeProvider
from threadline.providers.registry import ModelRegistry
from threadline.services import auth
from threadline.storage.engine import create_sessionmaker, upgrade
from threadline.storage.tables import Base

# The tool-calling upstream process and the app wired to it (fixtures `tool_upstream_url`, `tool_app`).
pytest_plugins = ("tests.tool_helpers",)

POSTGRES_ADMIN_URL = os.environ.get("THREADLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

# What a test needs beyond this process and SQLite, told by the fixtures it uses (their whole closure).
NEEDS_BY_FIXTURE = {"postgresql_url": "postgres", "postgres_database": "postgres", "browser": "browser"}
NEEDS_BY_FIXTURE |= {"nginx_stack": "nginx"}


@pytest.hookimpl(hookwrapper=True)
def pytest_collection() -> Iterator[None]:
    """No garbage collection while the tests are collected (what collection builds lives on), then all of it out
    of the collector's sight (`gc.freeze`), so the collections during the tests do not walk it again and again."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.freeze()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with what it needs: `postgres` for the PostgreSQL run of a backend-parametrized test or a
    PostgreSQL fixture, `browser`, `nginx`. `make check` deselects them; `make test` runs everything."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        needs = {NEEDS_BY_FIXTURE[name] for name in getattr(item, "fixturenames", ()) if name in NEEDS_BY_FIXTURE}
        if callspec is not None and "postgresql" in callspec.params.values():
            needs.add("postgres")
        for marker in sorted(needs):
            item.add_marker(marker)


def needs(marker: str) -> None:
    """Called where a test reaches for what `marker` stands for. In `make check` (THREADLINE_TEST_QUICK=1) such
    a test should have been deselected: it fails, so a test the markers miss is found, never quietly run."""
    if os.environ.get("THREADLINE_TEST_QUICK"):
        pytest.fail(f"a quick run (make check) reached {marker!r}: mark the test (tests/conftest.py NEEDS_BY_FIXTURE)")


def _postgres_available() -> str | None:
    async def probe() -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _admin(statement: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def _asyncpg_url(admin_url: str, database: str) -> str:
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{database}"


def require_postgres() -> None:
    """Skip the test when PostgreSQL cannot be reached (fail in CI, where it must be)."""
    needs("postgres")
    problem = _postgres_available()
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is required in CI but unreachable at {POSTGRES_ADMIN_URL}: {problem}")
    pytest.skip(f"PostgreSQL unreachable at {POSTGRES_ADMIN_URL} ({problem}); skipping PostgreSQL runs")


@contextmanager
def new_postgres_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database of a name of its own (so xdist workers never share one), dropped after."""
    require_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield _asyncpg_url(POSTGRES_ADMIN_URL, name)
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session (for each xdist worker)."""
    with new_postgres_database("threadline_test") as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def sqlite_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This worker's directory for SQLite files: in memory (/dev/shm) where there is one, so no test waits on the
    disk for a commit; else the session's temporary directory."""
    if not os.path.isdir("/dev/shm"):
        yield tmp_path_factory.mktemp("db")
        return
    directory = Path(tempfile.mkdtemp(prefix="threadline-test-", dir="/dev/shm"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def sqlite_url(sqlite_dir: Path) -> str:
    path = sqlite_dir / "threadline.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, sqlite_dir: Path) -> Iterator[str]:
    """An empty, unmigrated database (a fresh file or a fresh PostgreSQL database), dropped afterwards."""
    if request.param == "sqlite":
        path = sqlite_dir / f"empty_{uuid.uuid4().hex[:12]}.db"
        yield f"sqlite+aiosqlite:///{path}"
        for leftover in sqlite_dir.glob(f"{path.name}*"):  # with its -wal and -shm files
            leftover.unlink()
        return
    with new_postgres_database("threadline_empty") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The database under test: each test using it runs once per backend."""
    return str(request.getfixturevalue(f"{request.param}_url"))


# Every table, the referencing ones first (the order their rows can go in).
_DELETES = [f'DELETE FROM "{table.name}"' for table in reversed(Base.metadata.sorted_tables)]


async def _empty_all_tables(url: str) -> None:
    """Delete every row, through the driver: no engine to build and dispose after each test."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        with contextlib.closing(sqlite3.connect(str(parsed.database))) as conn, conn:
            for statement in _DELETES:
                conn.execute(statement)
        return
    conn = await asyncpg.connect(parsed.set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await conn.execute(";".join(_DELETES))
    finally:
        await conn.close()


@pytest.fixture
def db(database_url: str) -> Iterator[str]:
    """The database under test, for tests whose other processes use it (there is no `app` to empty it): its
    tables are emptied afterwards."""
    yield database_url
    asyncio.run(_empty_all_tables(database_url))


@pytest.fixture
def settings(request: pytest.FixtureRequest, database_url: str) -> Settings:
    """Settings for a test app: the database under test, no embedded model (tests that need it ask), no sweeper.
    `@pytest.mark.app_settings(**fields)` on a module or a test sets other fields (the test's marker wins)."""
    fields: dict[str, Any] = {"database_url": database_url, "local_model_enabled": False, "retention_enabled": False}
    for marker in reversed(list(request.node.iter_markers("app_settings"))):  # the closest last
        fields |= marker.kwargs
    return Settings(**fields)


def registry_with(fake: FakeProvider) -> ModelRegistry:
    """A model registry whose only provider is `fake`."""
    registry = ModelRegistry()
    registry.register(fake)
    return registry


async def started_app(settings: Settings, models: ModelRegistry | None = None) -> AsyncIterator[FastAPI]:
    """The real app with its lifespan running (the `app` fixture, or any other configuration); afterwards every
    table is emptied."""
    application = create_app(settings, models=models)
    async with application.router.lifespan_context(application):
        yield application
    await _empty_all_tables(settings.database_url)


async def running_app(settings: Settings, fake: FakeProvider) -> AsyncIterator[FastAPI]:
    """`started_app` with `fake` as its only model."""
    async for application in started_app(settings, registry_with(fake)):
        yield application


@pytest.fixture
def fake(request: pytest.FixtureRequest) -> FakeProvider:
    """The scripted model of an app marked `@pytest.mark.fake_model(**options)` (on the module, or on a test to
    change them): `FakeProvider(**options)`."""
    marker = request.node.get_closest_marker("fake_model")
    return FakeProvider(**(marker.kwargs if marker else {}))


@pytest.fixture
async def app(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[FastAPI]:
    """The real app on `settings`: its models are the settings' own, or only `fake` under the `fake_model`
    marker."""
    uses_fake = request.node.get_closest_marker("fake_model") is not None
    models = registry_with(request.getfixturevalue("fake")) if uses_fake else None
    async for application in started_app(settings, models):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://threadline.test") as c:
        yield c


@dataclass(frozen=True)
class Caller:
    """An organization member with an API key (and the headers to use it)."""

    organization_id: str
    user_id: str
    api_key: str
    email: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}


async def make_caller(app: FastAPI, org: str = "acme", email: str = "ada@acme.test") -> Caller:
    async with create_sessionmaker(app.state.engine)() as session:
        key, secret = await auth.create_api_key(session, org, email, "test")
        await session.commit()
    return Caller(key.organization_id, key.user_id, secret, email)


@pytest.fixture
async def caller(app: FastAPI) -> Caller:
    return await make_caller(app)


@pytest.fixture
async def other_caller(app: FastAPI) -> Caller:
    """A member of a different organization."""
    return await make_caller(app, org="globex", email="hank@globex.test")


@pytest.fixture
async def oa(app: FastAPI, caller: Caller) -> AsyncIterator[AsyncOpenAI]:
    """The official `openai` SDK (strict: tests/openai_sdk.py) on the app, with the caller's key."""
    sdk, _ = sdk_client(app, caller.api_key)
    async with sdk:
        yield sdk
