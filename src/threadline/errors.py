"""The one error tree. Every error carries a stable `code`; only `api/errors.py` knows HTTP.

    ThreadlineError
    ├── InvalidRequest            bad input (400)
    │   ├── ValidationFailed      a field breaks a rule; names the `param`
    │   └── ContextLengthExceeded `full` mode over the window, or inputs alone too large
    ├── AuthenticationFailed      no or bad credential (401)
    ├── PermissionDenied          authenticated, but not allowed (403)
    ├── NotFound                  missing, or belongs to another organization (404)
    ├── Conflict                  the resource's state forbids it (409)
    ├── PayloadTooLarge           body over the limit (413)
    ├── RateLimited               (429)
    ├── ServiceUnavailable        this process is shutting down: another one can serve it (503)
    ├── DatabaseUnavailable       the database cannot be reached right now: down, restarting, connection lost (503)
    └── UpstreamError             the model provider failed (502)
        ├── UpstreamTimeout       the model provider did not answer in time (504)
        └── UpstreamRejected      the model provider refused the request (4xx upstream; retrying cannot help)

`retryable` tells clients (through `x-should-retry`) whether the same request can succeed later.
"""

from __future__ import annotations


class ThreadlineError(Exception):
    code: str = "error"
    retryable: bool = False

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param


class InvalidRequest(ThreadlineError):
    code = "invalid_request"


class ValidationFailed(InvalidRequest):
    code = "invalid_value"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class AuthenticationFailed(ThreadlineError):
    code = "invalid_credentials"


class PermissionDenied(ThreadlineError):
    code = "permission_denied"


class NotFound(ThreadlineError):
    code = "not_found"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message, code=code, param=param)


class ThreadNotFound(NotFound):
    code = "thread_not_found"

    def __init__(self, thread_id: str, *, param: str | None = None) -> None:
        super().__init__(f"No thread found with id '{thread_id}'.", param=param)


class MessageNotFound(NotFound):
    code = "message_not_found"

    def __init__(self, message_id: str) -> None:
        super().__init__(f"No message found with id '{message_id}'.", param="message_id")


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(ThreadlineError):
    code = "conflict"


class ThreadLocked(Conflict):
    code = "thread_locked"

    def __init__(self, thread_id: str) -> None:
        super().__init__(f"Thread '{thread_id}' is locked: it accepts no new messages. Set its state to 'open' first.")


class ThreadArchived(Conflict):
    code = "thread_archived"

    def __init__(self, thread_id: str) -> None:
        super().__init__(f"Thread '{thread_id}' is archived and read-only.")


class InvalidStateTransition(Conflict):
    code = "invalid_state_transition"


class ThreadFull(Conflict):
    code = "thread_full"


class ThreadBusy(Conflict):
    code = "thread_busy"
    retryable = True


class AlreadyExists(Conflict):
    code = "already_exists"


class ResponseNotQueued(Conflict):
    """A background response's turn was to start, but the response was cancelled meanwhile."""

    code = "response_not_queued"


class IdempotencyKeyReused(Conflict):
    """The same Idempotency-Key came with another request (body, path or method)."""

    code = "idempotency_key_reused"


class IdempotencyKeyInProgress(Conflict):
    """The first request with this Idempotency-Key is still running: retry later to get its result."""

    code = "idempotency_key_in_progress"
    retryable = True


class PayloadTooLarge(ThreadlineError):
    code = "payload_too_large"


class RateLimited(ThreadlineError):
    """Over a credential's requests per minute or concurrent turns; `retry_after_seconds` says when to retry."""

    code = "rate_limited"
    retryable = True

    def __init__(self, message: str, *, retry_after_seconds: float, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_seconds = retry_after_seconds


class DatabaseUnavailable(ThreadlineError):
    """The database is away (restarting, unreachable, the connection dropped): the same request can succeed
    once it is back, so clients are told to retry."""

    code = "database_unavailable"
    retryable = True

    def __init__(self) -> None:
        super().__init__("The database is unavailable right now; retry the request.")


class ServiceUnavailable(ThreadlineError):
    code = "server_shutting_down"
    retryable = True


class UpstreamError(ThreadlineError):
    code = "upstream_error"
    retryable = True


class UpstreamTimeout(UpstreamError):
    code = "upstream_timeout"


class UpstreamRejected(UpstreamError):
    code = "upstream_rejected"
    retryable = False
