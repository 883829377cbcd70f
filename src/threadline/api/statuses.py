"""The statuses an operation declares in OpenAPI, each error with the one envelope (`api/openapi.py` adds the
ones that follow from a route's shape; a route adds, with the kinds here, the ones that follow from its meaning)."""

from __future__ import annotations

from typing import Any

from threadline.api.schemas.common import ErrorRead

_DESCRIPTIONS = {
    400: "Invalid request: a parameter or the body breaks a rule; `code` names the rule and `param` the field.",
    401: "No credential, or one that is invalid, expired or revoked (`missing_credentials`, `invalid_credentials`).",
    403: "Authenticated, but not allowed: another organization's `organization_id`, or an API key where a user "
    "token is needed (`organization_forbidden`, `user_token_required`).",
    404: "Something the request names does not exist, or belongs to another organization.",
    409: "The request conflicts with the current state: the thread's lifecycle (locked, archived, full), a turn "
    "already running on it (`thread_busy`, retryable), an existing id, or an Idempotency-Key reused with another "
    "request (`idempotency_key_reused`) or still in flight (`idempotency_key_in_progress`, retryable).",
    413: "The request body is larger than the server's limit (`payload_too_large`).",
    429: "Over the credential's rate limit (`rate_limited`, retryable): requests per minute or model turns at once; "
    "`Retry-After` says when to retry.",
    502: "The model provider failed or sent something unusable (`upstream_error`, retryable), or the webhook "
    "endpoint under test could not be reached (`webhook_endpoint_unreachable`).",
    503: "The database is unavailable right now (`database_unavailable`), or this process is shutting down and "
    "starts no new turns (`server_shutting_down`); both retryable.",
    504: "The model provider did not answer in time (`upstream_timeout`, retryable).",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these statuses, each with the error envelope."""
    return {status: {"model": ErrorRead, "description": _DESCRIPTIONS[status]} for status in statuses}


# The kinds of meaning a route adds to what its shape implies (api/openapi.py lists those).
CONFLICT = errors(409)  # the thread's lifecycle, an existing id, a thread full of messages
REFERENCES = errors(404)  # the body names another resource (an assistant, a model, a thread, a response)
USER_TOKEN_ONLY = errors(403)  # refuses API keys
MODEL_CALL = errors(404, 409, 502, 504)  # a turn: the model or thread named, busy or locked, the upstream failing
ENDPOINT_CALL = errors(502)  # a webhook endpoint called while the request waits


def streamed(events: list[str]) -> dict[int | str, dict[str, Any]]:
    """The 200 of a route that answers with server-sent events when the body asks for `"stream": true`.

    Before OpenAPI 3.2's `itemSchema`, the `schema` of `text/event-stream` describes one event: its name (one of
    `events`) and its `data`, a JSON object as text (`done` alone sends `[DONE]`).
    """
    event = {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": events},
            "data": {"type": "string", "contentMediaType": "application/json"},
        },
    }
    return {
        200: {
            "description": 'The result as JSON; with `"stream": true`, server-sent events instead: '
            + ", ".join(f"`{name}`" for name in events)
            + ".",
            "content": {"text/event-stream": {"schema": event}},
        }
    }
