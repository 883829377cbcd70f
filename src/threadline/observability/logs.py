"""Logs: the request each line belongs to, one JSON object per line when asked (`THREADLINE_LOG_FORMAT=json`),
and never a secret.

What a line may carry is fixed here: the request id, organization id, method, route template, status and duration
(set by the HTTP middleware and the auth dependency). Message content is never logged by Threadline's code; API
keys, user tokens, bearer credentials and URL passwords that reach a log line anyway (an exception's text, a
library's message) are masked by `redact` before the line is written.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]


@dataclass
class RequestContext:
    """One HTTP request, as its log lines name it. Mutable: the route and organization are learnt later."""

    request_id: str
    method: str
    route: str | None = None
    organization_id: str | None = None


_request: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("threadline_request", default=None)


def current_request() -> RequestContext | None:
    return _request.get()


def bind_request(context: RequestContext | None) -> contextvars.Token[RequestContext | None]:
    return _request.set(context)


def unbind_request(token: contextvars.Token[RequestContext | None]) -> None:
    _request.reset(token)


# Each pattern with the words one of which any text it matches holds (lower-cased).
_SECRETS = (
    # Threadline API keys and user tokens (services/auth.py prefixes), and OpenAI-style keys.
    (re.compile(r"\b(tl_|tlu_|sk-)[A-Za-z0-9_\-]{8,}"), r"\1[redacted]", ("tl_", "tlu_", "sk-")),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}"), r"\1 [redacted]", ("bearer", "basic")),
    # scheme://user:password@host
    (re.compile(r"(://[^/\s:@]+):[^@\s/]+@"), r"\1:[redacted]@", ("://",)),
    (
        re.compile(r"(?i)\b(password|passwd|api_key|apikey|token|secret)(\"?\s*[:=]\s*\"?)[^\s\",}&]+"),
        r"\1\2[redacted]",
        ("password", "passwd", "api_key", "apikey", "token", "secret"),
    ),
)


def redact(text: str) -> str:
    """`text` with every secret masked. Every line goes through here, and almost none holds a secret: an ASCII
    line (where re's case-insensitive matching is plain ASCII) skips each pattern whose words it lacks, a search
    several times cheaper than the pattern's."""
    lowered = text.lower() if text.isascii() else None
    for pattern, replacement, words in _SECRETS:
        if lowered is None or any(word in lowered for word in words):
            text = pattern.sub(replacement, text)
            lowered = text.lower() if lowered is not None else None
    return text


# Fields a record may carry through `extra=` that belong in the JSON object.
_EXTRA_FIELDS = ("status", "duration_ms", "method", "route", "client")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request's fields, the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        request = current_request()
        if request is not None:
            entry["request_id"] = request.request_id
            if request.organization_id is not None:
                entry["organization_id"] = request.organization_id
            if request.route is not None:
                entry["route"] = request.route
        for name in _EXTRA_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = redact("".join(traceback.format_exception(*record.exc_info)))
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The plain format, secrets masked, with the request id when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request = current_request()
        if request is not None:
            line = f"{line} [request_id={request.request_id}]"
        return redact(line)


def logging_config(log_format: LogFormat, level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` for `threadline serve` (uvicorn's loggers included): everything through one
    handler on stderr. Uvicorn's own access log is off; the HTTP middleware writes one line per request instead,
    naming the route template rather than the raw path."""
    formatter = (
        "threadline.observability.logs.JsonFormatter"
        if log_format == "json"
        else ("threadline.observability.logs.TextFormatter")
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"threadline": {"()": formatter}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "threadline", "stream": "ext://sys.stderr"}
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "threadline": {"handlers": ["stderr"], "level": level, "propagate": False},
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    }
