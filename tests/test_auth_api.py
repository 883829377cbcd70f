"""Identity and access: API keys, user tokens, /v1/me, organization scoping."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from tests.conftest import Caller, make_caller
from tests.helpers import PASSWORD, login_headers, refused
from threadline.domain.clock import utcnow
from threadline.errors import ValidationFailed
from threadline.services import auth
from threadline.storage.engine import create_sessionmaker
from threadline.storage.tables import ApiKey, Membership, User, UserToken


async def test_api_keys_are_hashed_touched_and_revocable(
    client: httpx.AsyncClient, app: FastAPI, caller: Caller
) -> None:
    async with create_sessionmaker(app.state.engine)() as session:
        row = (await session.execute(sa.select(ApiKey))).scalar_one()
    assert caller.api_key not in (row.key_hash, row.display_prefix) and len(row.key_hash) == 64
    assert row.last_used_at is None

    me = await client.get("/v1/me", headers={"Authorization": f"Bearer {caller.api_key}"})
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["auth_method"] == "api_key" and body["credential_id"] == row.id
    assert body["user"] == {"id": caller.user_id, "object": "user", "email": caller.email}
    assert [o["id"] for o in body["organizations"]] == [caller.organization_id]
    assert body["organizations"][0]["id"].startswith("org_") and body["organizations"][0]["name"] == "acme"

    keys = (await client.get("/v1/api-keys", headers=caller.headers)).json()["data"]
    assert len(keys) == 1 and keys[0]["last_used_at"] is not None and keys[0]["key"] is None

    revoked = await client.delete(f"/v1/api-keys/{row.id}", headers=caller.headers)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    after = await client.get("/v1/me", headers=caller.headers)
    refused(after, 401, "invalid_credentials")


async def test_login_token_lifecycle(client: httpx.AsyncClient, app: FastAPI, caller: Caller) -> None:
    wrong = await client.post("/v1/auth/token", json={"email": caller.email, "password": "not it at all"})
    refused(wrong, 401, "invalid_login")
    nobody = await client.post("/v1/auth/token", json={"email": "nobody@acme.test", "password": PASSWORD})
    refused(nobody, 401, "invalid_login")

    headers = await login_headers(client, app, caller)
    async with create_sessionmaker(app.state.engine)() as session:
        user = (await session.execute(sa.select(User).where(User.id == caller.user_id))).scalar_one()
        token = (await session.execute(sa.select(UserToken))).scalar_one()
    assert user.password_hash is not None and user.password_hash.startswith("$argon2")
    assert headers["Authorization"].split()[1] not in token.token_hash

    issued = await client.post("/v1/auth/token", json={"Email": caller.email.upper(), "password": PASSWORD})
    assert issued.status_code == 400  # unknown field "Email": camelCase of "email" is "email"
    issued = await client.post("/v1/auth/token", json={"email": caller.email.upper(), "password": PASSWORD})
    body = issued.json()
    assert (
        body["token_type"] == "bearer" and body["access_token"].startswith("tlu_") and body["expires_at"].endswith("Z")
    )

    me = (await client.get("/v1/me", headers=headers)).json()
    assert me["auth_method"] == "user_token" and me["user"]["id"] == caller.user_id

    # Expired tokens stop working.
    async with create_sessionmaker(app.state.engine)() as session:
        await session.execute(
            sa.update(UserToken).where(UserToken.id == token.id).values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()
    expired = await client.get("/v1/me", headers=headers)
    assert expired.status_code == 401

    # Logout revokes the token it came with.
    fresh = {"Authorization": f"Bearer {body['access_token']}"}
    assert (await client.post("/v1/auth/logout", headers=fresh)).status_code == 204
    assert (await client.get("/v1/me", headers=fresh)).status_code == 401
    # API keys cannot log out (nor create keys).
    assert (await client.post("/v1/auth/logout", headers=caller.headers)).status_code == 403


async def test_user_token_spanning_organizations(client: httpx.AsyncClient, app: FastAPI, caller: Caller) -> None:
    second = await make_caller(app, org="initech", email=caller.email)
    headers = await login_headers(client, app, caller)
    me = (await client.get("/v1/me", headers=headers)).json()
    assert {o["id"] for o in me["organizations"]} == {caller.organization_id, second.organization_id}

    ambiguous = await client.get("/v1/threads", headers=headers)
    refused(ambiguous, 400, "organization_required")
    created = await client.post("/v1/threads", json={"organizationId": second.organization_id}, headers=headers)
    assert created.json()["organization_id"] == second.organization_id
    listed = await client.get("/v1/threads", params={"organizationId": second.organization_id}, headers=headers)
    assert [t["id"] for t in listed.json()["data"]] == [created.json()["id"]]
    # The first organization's key does not see the second organization's thread.
    assert (await client.get(f"/v1/threads/{created.json()['id']}", headers=caller.headers)).status_code == 404

    key = await client.post(
        "/v1/api-keys", json={"name": "ci", "organizationId": second.organization_id}, headers=headers
    )
    assert key.status_code == 200 and key.json()["key"].startswith("tl_")
    me_key = (await client.get("/v1/me", headers={"X-API-Key": key.json()["key"]})).json()
    assert [o["id"] for o in me_key["organizations"]] == [second.organization_id]
    assert (await client.post("/v1/api-keys", json={}, headers=caller.headers)).status_code == 403


async def test_password_rules(app: FastAPI, caller: Caller) -> None:
    async with create_sessionmaker(app.state.engine)() as session:
        with pytest.raises(ValidationFailed) as raised:
            await auth.set_password(session, caller.organization_id, caller.email, "short")
    assert raised.value.code == "invalid_password"


async def test_an_api_key_stops_working_when_its_user_leaves_the_organization(
    client: httpx.AsyncClient, app: FastAPI, caller: Caller, other_caller: Caller
) -> None:
    assert (await client.get("/v1/me", headers=caller.headers)).status_code == 200
    async with create_sessionmaker(app.state.engine)() as session:
        await session.execute(
            sa.delete(Membership).where(
                Membership.organization_id == caller.organization_id, Membership.user_id == caller.user_id
            )
        )
        await session.commit()
    refusal = await client.get("/v1/me", headers=caller.headers)
    refused(refusal, 401, "invalid_credentials")
    # Only that key: another organization's key (another user) still works.
    assert (await client.get("/v1/me", headers=other_caller.headers)).status_code == 200
