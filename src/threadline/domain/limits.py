"""Rate limits as data: what applies to a credential, and the fixed one-minute window requests are counted in."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

WINDOW_SECONDS = 60


@dataclass(frozen=True)
class Limits:
    """Requests per minute and concurrent turns; None means no limit."""

    requests_per_minute: int | None = None
    concurrent_turns: int | None = None


def _tightest(values: Iterable[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def effective_limits(server: Limits, organizations: Iterable[Limits]) -> Limits:
    """The limits a credential runs under: the server's, tightened by each organization it acts in.

    An organization's owner sets limits for its own credentials (one key must not starve the rest of the
    organization); the server's limits stay the ceiling, so an owner can tighten them but never lift them. A user
    token spanning several organizations runs under the tightest of them.
    """
    orgs = list(organizations)
    return Limits(
        requests_per_minute=_tightest([server.requests_per_minute, *(o.requests_per_minute for o in orgs)]),
        concurrent_turns=_tightest([server.concurrent_turns, *(o.concurrent_turns for o in orgs)]),
    )


def window_of(now: datetime) -> int:
    """The fixed window `now` falls in: minutes since the epoch."""
    return math.floor(now.timestamp() / WINDOW_SECONDS)


def seconds_until_reset(now: datetime) -> float:
    """How long until the window `now` falls in ends (a new window starts with a fresh count)."""
    return (window_of(now) + 1) * WINDOW_SECONDS - now.timestamp()


def openai_duration(seconds: float) -> str:
    """A duration as OpenAI writes `x-ratelimit-reset-*`: `20ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{round(rest):d}s"
