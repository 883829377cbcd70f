"""Prometheus metrics (the `prometheus-client` library): one `Metrics` per app, in a registry of its own.

Under `threadline serve --workers N` every worker writes its samples to files in `PROMETHEUS_MULTIPROC_DIR` (the
client library's multiprocess mode, set up by the CLI) and a scrape of any worker adds up all of them. Label values
come from fixed sets only (route templates, model names from the config, outcomes, categories): never an id.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# Seconds: HTTP requests are mostly milliseconds; turns and first tokens run from a fraction of a second to minutes.
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TURN_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600)
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def multiprocess_dir() -> str | None:
    """The directory of multiprocess mode, when the CLI set one up for several workers."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """Every metric Threadline exports. The README lists them with a sample query each."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "threadline_http_requests_total",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "threadline_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response body (a stream's whole length).",
            ["method", "route", "status"],
            buckets=_HTTP_BUCKETS,
            registry=r,
        )
        self.streams_in_flight = Gauge(
            "threadline_streams_in_flight",
            "Server-sent event streams being sent right now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.turns = Counter(
            "threadline_turns_total",
            "Model turns that ended, by surface (the API used), model and outcome (completed, or the error code).",
            ["surface", "model", "outcome"],
            registry=r,
        )
        self.turn_duration = Histogram(
            "threadline_turn_duration_seconds",
            "Time from the model call's start to the turn saved or failed.",
            ["surface", "model", "outcome"],
            buckets=_TURN_BUCKETS,
            registry=r,
        )
        self.turn_ttft = Histogram(
            "threadline_turn_time_to_first_token_seconds",
            "Time from the model call's start to its first text.",
            ["surface", "model"],
            buckets=_TURN_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "threadline_model_tokens_total",
            "Tokens of completed turns by model and direction (input: the context sent; output: the answer).",
            ["model", "direction"],
            registry=r,
        )
        self.busy_waits = Counter(
            "threadline_thread_busy_waits_total",
            "Turns that found their thread busy with another turn and waited for it.",
            ["surface"],
            registry=r,
        )
        self.busy_waiting = Gauge(
            "threadline_thread_busy_waiting",
            "Turns waiting right now for their thread, busy with another turn.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.busy_wait_seconds = Histogram(
            "threadline_thread_busy_wait_seconds",
            "How long turns that found their thread busy waited before taking it.",
            ["surface"],
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.busy_refusals = Counter(
            "threadline_thread_busy_refusals_total",
            "Turns refused (409 thread_busy) because their thread stayed busy past thread_busy_timeout_seconds.",
            ["surface"],
            registry=r,
        )
        self.db_pool_in_use = Gauge(
            "threadline_db_pool_connections_in_use",
            "Database connections checked out of the pool right now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.retention_purged = Counter(
            "threadline_retention_purged_total",
            "Rows purged for good by the retention sweeper, by category.",
            ["category"],
            registry=r,
        )
        self.webhook_attempts = Counter(
            "threadline_webhook_attempts_total",
            "Webhook delivery attempts, by outcome: delivered, retry (failed, another attempt queued), given_up.",
            ["outcome"],
            registry=r,
        )

    def exposition(self) -> bytes:
        """The text format for a scrape: this process's metrics, or every worker's in multiprocess mode."""
        if multiprocess_dir() is not None:
            combined = CollectorRegistry()
            multiprocess.MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
            return generate_latest(combined)
        return generate_latest(self.registry)


def process_exited(pid: int) -> None:
    """In multiprocess mode, drop a finished worker's live gauges (its counters stay summed in)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
