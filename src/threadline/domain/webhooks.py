"""Webhook rules with no I/O: event types and payloads, secrets and signatures, the URL and address rules, the
retry schedule and when an endpoint is disabled (docs/webhooks.md).

Signatures follow Standard Webhooks (https://www.standardwebhooks.com), as OpenAI's do, so the official SDK's
`client.webhooks.unwrap(body, headers, secret=...)` verifies them.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import SplitResult, urlsplit

from standardwebhooks import Webhook

from threadline.domain import turns
from threadline.errors import ValidationFailed

# What a response's end is announced as (OpenAI's names). Threadline emits no others: see docs/webhooks.md for why
# there are no thread lifecycle events.
EVENT_TYPES = ("response.completed", "response.failed", "response.cancelled", "response.incomplete")
EventType = Literal["response.completed", "response.failed", "response.cancelled", "response.incomplete"]

SECRET_PREFIX = "whsec_"
URL_MAX_CHARS = 2048
MAX_ENDPOINTS_PER_ORGANIZATION = 100

# Endpoint statuses; a disabled endpoint gets no deliveries until an update enables it again.
ENABLED, DISABLED = "enabled", "disabled"
# Delivery statuses.
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def new_secret() -> str:
    """A signing secret as Standard Webhooks spells it: `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_hint(secret: str) -> str:
    """What may be shown of a secret after it was created: enough to tell two apart, never enough to sign."""
    return f"{SECRET_PREFIX}…{secret[-4:]}"


def response_event_type(status: str, finish_reason: str | None) -> EventType | None:
    """The event a response's final status is announced as; None while it is not final. A completed answer that
    stopped at its token limit (or a content filter) is `incomplete`, as the OpenAI Responses surface shows it."""
    if status == turns.COMPLETED:
        truncated = finish_reason in (turns.TRUNCATED_BY_LENGTH, turns.TRUNCATED_BY_FILTER)
        return "response.incomplete" if truncated else "response.completed"
    if status == turns.FAILED:
        return "response.failed"
    if status == turns.CANCELLED:
        return "response.cancelled"
    return None


def event_body(event_id: str, event_type: str, created_at: datetime, data: dict[str, Any]) -> str:
    """The delivered JSON, exactly OpenAI's event shape (`openai.types.webhooks.ResponseCompletedWebhookEvent`…).
    Serialized once and stored: every retry sends (and signs) the very same bytes."""
    event = {"id": event_id, "object": "event", "type": event_type, "created_at": int(created_at.timestamp())}
    return json.dumps({**event, "data": data}, separators=(",", ":"))


def signature_headers(delivery_id: str, sent_at: datetime, body: str, secrets_: Sequence[str]) -> dict[str, str]:
    """The three Standard Webhooks headers. One `v1,<signature>` per secret, space-separated: while a rotated
    secret is still honoured, receivers holding either one verify the delivery."""
    signatures = [Webhook(secret).sign(delivery_id, sent_at, body) for secret in secrets_]
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": " ".join(signatures),
    }


# ---- the retry schedule -----------------------------------------------------------------------------------------

FIRST_RETRY_SECONDS = 5.0
BACKOFF_FACTOR = 3.0
MAX_RETRY_SECONDS = 6 * 3600.0
# Up to this share is added at random to each wait, so the deliveries an outage failed do not all come back at once.
JITTER = 0.1


def retry_delay(attempts: int, jitter: float = 0.0) -> timedelta:
    """The wait after the `attempts`-th failed attempt: 5 s, 15 s, 45 s, 2¼ min, 6¾ min, 20 min, 1 h, 3 h, then
    every 6 h; `jitter` (0 to 1, drawn by the caller) adds up to JITTER of it."""
    base = min(FIRST_RETRY_SECONDS * BACKOFF_FACTOR ** (attempts - 1), MAX_RETRY_SECONDS)
    return timedelta(seconds=base * (1 + JITTER * jitter))


def next_attempt_at(
    event_at: datetime, now: datetime, attempts: int, retry_window: timedelta, jitter: float = 0.0
) -> datetime | None:
    """When to try again after `attempts` failed attempts, or None once the retry window since the event is over."""
    at = now + retry_delay(attempts, jitter)
    return at if at <= event_at + retry_window else None


@dataclass(frozen=True)
class DisablePolicy:
    after: timedelta
    failures: int

    def disables(self, failing_since: datetime | None, consecutive_failures: int, now: datetime) -> bool:
        """Whether an endpoint that has failed every attempt since `failing_since` is to be disabled now."""
        return failing_since is not None and consecutive_failures >= self.failures and now - failing_since >= self.after


# ---- where deliveries may go -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A webhook URL taken apart: what to resolve, where to connect, what to send as Host and TLS server name."""

    url: str
    scheme: Literal["http", "https"]
    host: str  # a name or an address, without brackets
    port: int
    target: str  # path and query, as sent in the request line

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    def url_for(self, address: str) -> str:
        """The URL with its host replaced by a checked address: the connection goes exactly there."""
        host = f"[{address}]" if ":" in address else address
        return f"{self.scheme}://{host}:{self.port}{self.target}"


def _invalid(message: str) -> ValidationFailed:
    return ValidationFailed(message, code="invalid_webhook_url", param="url")


def parse_url(url: str) -> Target:
    """A webhook URL, or 400 `invalid_webhook_url`: absolute http(s), a host, no credentials in it."""
    if len(url) > URL_MAX_CHARS:
        raise _invalid(f"The URL is longer than {URL_MAX_CHARS} characters.")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise _invalid("The URL must not contain whitespace or control characters.")
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _invalid(f"The URL is not valid: {exc}.") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise _invalid("Only http and https URLs can receive webhooks.")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise _invalid("The URL names no host.")
    if parts.username is not None or parts.password is not None:
        raise _invalid("The URL must not carry credentials (user:password@); authenticate with the signature.")
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    return Target(url, scheme, host, port or (443 if scheme == "https" else 80), target)  # type: ignore[arg-type]


def literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


_ALLOWED_IF_PRIVATE = ("a loopback address", "a private address")
# The networks that are private in the sense of "an organization's own": RFC 1918, carrier-grade NAT (RFC 6598) and
# IPv6 unique-local space. (Python's `is_private` also covers documentation and reserved ranges, which are nobody's.)
_PRIVATE = tuple(
    ipaddress.ip_network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


def refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_private: bool) -> str | None:
    """Why a delivery may not go to `address` (None: it may).

    Never: multicast, unspecified, link-local (cloud metadata services live there: 169.254.169.254) and other
    reserved space. Loopback and private space only when the operator allows private targets.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_loopback:
        return None if allow_private else "a loopback address"
    if any(address in network for network in _PRIVATE):
        return None if allow_private else "a private address"
    if not address.is_global:
        return "a reserved address"
    return None


def check_addresses(
    target: Target,
    addresses: Sequence[str],
    *,
    allow_private: bool,
    own_addresses: frozenset[str],
    own_port: int,
) -> None:
    """Raise 400 `webhook_url_not_allowed` unless every address the host resolves to may receive deliveries: one
    refused address refuses the URL (a name that also resolves elsewhere must not be a way around the rule).

    The server's own addresses are refused like private ones; with private targets allowed, the server's own
    port on them (and on loopback) still is, so a webhook can never call Threadline's API."""
    if not addresses:
        raise ValidationFailed(
            f"The host '{target.host}' does not resolve to any address.", code="webhook_url_unresolvable", param="url"
        )
    for text in addresses:
        address = ipaddress.ip_address(text)
        reason = refusal(address, allow_private=allow_private)
        hint = " (THREADLINE_WEBHOOK_ALLOW_PRIVATE_URLS allows it)" if reason in _ALLOWED_IF_PRIVATE else ""
        if reason is None and text in own_addresses and not allow_private:
            reason = "this server's own address"
        if reason is None and target.port == own_port and (text in own_addresses or address.is_loopback):
            reason = "this server itself"
        if reason is not None:
            raise ValidationFailed(
                f"Webhooks cannot be delivered to {target.host} ({text}): it is {reason}{hint}.",
                code="webhook_url_not_allowed",
                param="url",
            )
