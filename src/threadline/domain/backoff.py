"""Exponential backoff with jitter, for anything retried later (jobs, webhook deliveries)."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_seconds(
    attempt: int,
    *,
    base: float = 1.0,
    cap: float = 300.0,
    jitter: float = 0.2,
    rand: Callable[[], float] = random.random,
) -> float:
    """The wait before retrying after failed attempt number `attempt` (1 for the first): `base · 2^(attempt-1)`,
    at most `cap`, less up to `jitter` of it at random, so retries of many jobs that failed together spread out."""
    delay: float = min(cap, base * 2.0 ** min(max(attempt - 1, 0), 60))
    return delay * (1 - jitter * rand())
