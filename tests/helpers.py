"""Helpers shared by the API tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI

from tests.conftest import Caller
from threadline.services import auth
from threadline.storage.engine import create_engine, create_sessionmaker

T = TypeVar("T")

PASSWORD = "correct horse battery staple"


async def login_headers(client: httpx.AsyncClient, app: FastAPI, caller: Caller) -> dict[str, str]:
    """Give the caller's user a password, log in through the API, and return bearer-token headers."""
    async with create_sessionmaker(app.state.engine)() as session:
        await auth.set_password(session, caller.organization_id, caller.email, PASSWORD)
        await session.commit()
    response = await client.post("/v1/auth/token", json={"email": caller.email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def refused(response: httpx.Response, status: int, code: str, param: str | None = None) -> dict[str, Any]:
    """Assert the error envelope: this status, this stable `code`, a message, and `param` when given."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


def with_session(database_url: str, work: Callable[[Any], Awaitable[T]]) -> T:
    """From synchronous code (a test driving other processes): `work(session)` in its own short transaction,
    committed, on an engine of its own."""

    async def run() -> T:
        engine = create_engine(database_url)
        try:
            async with create_sessionmaker(engine)() as session:
                result = await work(session)
                await session.commit()
                return result
        finally:
            await engine.dispose()

    return asyncio.run(run())
