"""Identity and access: organizations, users, API keys, user tokens, and who a request is.

Secrets (API keys, user tokens) are shown once and stored as SHA-256 digests: they are long random strings,
so a fast hash is safe and keeps every request's lookup cheap. Passwords use argon2.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.ext.asyncio import AsyncSession

from threadline.config import Settings
from threadline.domain.clock import utcnow
from threadline.domain.limits import Limits
from threadline.errors import (
    AuthenticationFailed,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ValidationFailed,
)
from threadline.ids import new_id
from threadline.storage.repositories.identity import IdentityRepository
from threadline.storage.tables import ApiKey, Membership, Organization, User, UserToken

AuthMethod = Literal["api_key", "user_token"]
API_KEY_PREFIX = "tl_"
USER_TOKEN_PREFIX = "tlu_"
# last_used_at is advisory: refreshing it at most once a minute keeps reads from turning into writes.
_TOUCH_INTERVAL = timedelta(seconds=60)
_hasher = PasswordHasher()


@dataclass(frozen=True)
class Principal:
    """Who is calling, and through which credential."""

    user_id: str
    email: str
    organization_ids: tuple[str, ...]
    auth_method: AuthMethod
    credential_id: str
    # The limits each organization's owner set, in `organization_ids` order (services/rate_limits.py).
    organization_limits: tuple[Limits, ...] = ()

    def organization(self, requested: str | None) -> str:
        """The organization a request acts in (docs/surfaces.md, `organization_id`)."""
        if requested is not None:
            if requested not in self.organization_ids:
                raise PermissionDenied(
                    f"This credential cannot act in organization '{requested}'.",
                    code="organization_forbidden",
                    param="organization_id",
                )
            return requested
        if len(self.organization_ids) == 1:
            return self.organization_ids[0]
        if not self.organization_ids:
            raise PermissionDenied("This user belongs to no organization.", code="no_organization")
        raise InvalidRequest(
            "This user belongs to several organizations: pass organization_id.",
            code="organization_required",
            param="organization_id",
        )

    def require_user_token(self, what: str) -> None:
        if self.auth_method != "user_token":
            raise PermissionDenied(
                f"Changing {what} needs a user token (Authorization: Bearer <token from POST /v1/auth/token>), "
                "not an API key.",
                code="user_token_required",
                param=what,
            )


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    if "@" not in email or len(email) > 320 or email.startswith("@") or email.endswith("@"):
        raise ValidationFailed(f"'{email}' is not an email address.", code="invalid_email", param="email")
    return email


async def ensure_member(session: AsyncSession, org: str, email: str) -> tuple[Organization, User]:
    """Get or create the organization (by id or name) and the user, and make the user a member."""
    repo = IdentityRepository(session)
    now = utcnow()
    org_name = org.strip()
    if not org_name or len(org_name) > 200:
        raise ValidationFailed("Organization name must be 1 to 200 characters.", param="org")
    organization = await repo.organization(org_name) or await repo.organization_by_name(org_name)
    created = organization is None
    if organization is None:
        organization = Organization(id=new_id("org"), name=org_name, created_at=now)
        await repo.add(organization)
    email = normalize_email(email)
    user = await repo.user_by_email(email)
    if user is None:
        user = User(id=new_id("usr"), email=email, created_at=now)
        await repo.add(user)
    if await repo.membership(organization.id, user.id) is None:
        # Whoever creates an organization owns it (may set its limits); everyone added later is a member.
        role = "owner" if created else "member"
        await repo.add(Membership(organization_id=organization.id, user_id=user.id, role=role, created_at=now))
    return organization, user


async def find_organization(session: AsyncSession, org: str) -> Organization:
    """An existing organization, by id or name (the CLI's `--org`)."""
    repo = IdentityRepository(session)
    organization = await repo.organization(org.strip()) or await repo.organization_by_name(org.strip())
    if organization is None:
        raise NotFound(f"No organization '{org}'.", code="organization_not_found", param="org")
    return organization


async def create_api_key(session: AsyncSession, org: str, email: str, name: str | None = None) -> tuple[ApiKey, str]:
    """Create an API key for (org, user), creating either if missing. Returns the row and the secret."""
    organization, user = await ensure_member(session, org, email)
    secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        organization_id=organization.id,
        id=new_id("key"),
        user_id=user.id,
        name=name,
        key_hash=_digest(secret),
        display_prefix=secret[:10],
        created_at=utcnow(),
    )
    await IdentityRepository(session).add(key)
    return key, secret


async def revoke_api_key(session: AsyncSession, organization_id: str, key_id: str) -> ApiKey:
    key = await IdentityRepository(session).api_key(organization_id, key_id)
    if key is None:
        raise NotFound(f"No API key found with id '{key_id}'.", code="api_key_not_found", param="key_id")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        await session.flush()
    return key


async def list_api_keys(session: AsyncSession, organization_id: str) -> list[ApiKey]:
    return await IdentityRepository(session).api_keys_of(organization_id)


async def set_password(session: AsyncSession, org: str, email: str, password: str) -> User:
    if len(password) < 8 or len(password) > 1024:
        raise ValidationFailed("Password must be 8 to 1024 characters.", code="invalid_password", param="password")
    _, user = await ensure_member(session, org, email)
    user.password_hash = await asyncio.to_thread(_hasher.hash, password)
    await session.flush()
    return user


async def login(session: AsyncSession, settings: Settings, email: str, password: str) -> tuple[UserToken, str]:
    """Exchange email + password for a bearer token."""
    repo = IdentityRepository(session)
    user = await repo.user_by_email(email.strip().lower())
    stored = user.password_hash if user is not None else None
    try:
        # Verify even for unknown users (against a throwaway hash) so timing does not reveal who exists.
        await asyncio.to_thread(_hasher.verify, stored or _dummy_hash(), password)
        ok = stored is not None
    except (VerificationError, InvalidHashError):
        ok = False
    if not ok or user is None:
        raise AuthenticationFailed("Wrong email or password.", code="invalid_login")
    secret = USER_TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    token = UserToken(
        id=new_id("tok"),
        user_id=user.id,
        token_hash=_digest(secret),
        created_at=now,
        expires_at=now + timedelta(seconds=settings.user_token_ttl_seconds),
    )
    await repo.add(token)
    return token, secret


async def revoke_user_token(session: AsyncSession, token_id: str) -> None:
    token = await IdentityRepository(session).user_token(token_id)
    if token is not None and token.revoked_at is None:
        token.revoked_at = utcnow()
        await session.flush()


async def authenticate(session: AsyncSession, credential: str | None) -> Principal:
    """Resolve an API key or user token to a Principal; 401 for anything else.

    `session` is the caller's fresh one, for authentication alone (and the request counter): its statements
    commit one by one, every request pays for no transaction around them."""
    if not credential:
        raise AuthenticationFailed(
            "Missing credentials: send 'X-API-Key: <key>' or 'Authorization: Bearer <key or token>'.",
            code="missing_credentials",
        )
    repo = IdentityRepository(session)
    await repo.statement_by_statement()
    digest = _digest(credential)
    now = utcnow()
    if credential.startswith(USER_TOKEN_PREFIX):
        token = await repo.user_token_by_hash(digest)
        if token is None or token.revoked_at is not None or token.expires_at <= now:
            raise AuthenticationFailed("The user token is invalid, expired or revoked.")
        user = await repo.user(token.user_id)
        if user is None:
            raise AuthenticationFailed("The user token is invalid, expired or revoked.")
        orgs = await repo.organizations_of(user.id)
        return Principal(
            user.id, user.email, tuple(o.id for o in orgs), "user_token", token.id, tuple(_limits(o) for o in orgs)
        )
    grant = await repo.api_key_grant(digest)  # None also when the user left the key's organization
    if grant is None or grant.revoked_at is not None:
        raise AuthenticationFailed("The API key is invalid or revoked.")
    if grant.last_used_at is None or now - grant.last_used_at > _TOUCH_INTERVAL:
        await repo.touch_api_key(grant.organization_id, grant.key_id, now)
    limits = Limits(grant.requests_per_minute, grant.concurrent_turns)
    return Principal(grant.user_id, grant.email, (grant.organization_id,), "api_key", grant.key_id, (limits,))


def _limits(organization: Organization) -> Limits:
    return Limits(organization.rate_limit_requests_per_minute, organization.rate_limit_concurrent_turns)


async def describe(session: AsyncSession, principal: Principal) -> tuple[User, list[Organization]]:
    """The caller's user row and organizations (for GET /v1/me)."""
    repo = IdentityRepository(session)
    user = await repo.user(principal.user_id)
    if user is None:
        raise AuthenticationFailed("The credential's user no longer exists.")
    orgs = [o for o in await repo.organizations_of(user.id) if o.id in principal.organization_ids]
    return user, orgs


@functools.cache
def _dummy_hash() -> str:
    return _hasher.hash("threadline-dummy-password")
