"""Small ASGI helpers shared by the request layer (api/middleware.py), idempotency and the dependencies."""

from __future__ import annotations

from starlette.types import Message, Receive, Scope

from threadline.services.rate_limits import RequestQuota

_QUOTA_KEY = "threadline.request_quota"


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a header (`name` in lowercase, as servers hand header names over)."""
    for key, value in scope.get("headers", ()):
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None


def replaying(body: bytes, receive: Receive) -> Receive:
    """Hand an already-read body to the app, then pass through (disconnect detection for streams)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def quota_holder(scope: Scope) -> list[RequestQuota]:
    """Where the request's rate-limit standing will be (api/middleware.py reads it when the response starts). It
    travels in the scope: the layers below copy the scope, but shallowly, so the route's dependency fills this
    same list."""
    holder: list[RequestQuota] = []
    scope[_QUOTA_KEY] = holder
    return holder


def record_request_quota(scope: Scope, quota: RequestQuota) -> None:
    """Hand the credential's standing to the request layer (called where the request is counted)."""
    holder: list[RequestQuota] | None = scope.get(_QUOTA_KEY)
    if holder is not None:
        holder.append(quota)
