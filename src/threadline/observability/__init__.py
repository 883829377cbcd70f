"""What an operator sees of a running process: metrics, traces, request-scoped logs, and whether it is draining.

The app builds one `Observer` (api/app.py) and binds it to every request and to its background work through a
context variable, so services report turns, busy waits and purges with `current()` without knowing Prometheus or
OpenTelemetry, and without a parameter threaded through every call. Nothing bound (a CLI command, a unit test):
`current()` is an observer that records nothing.

Sits at the bottom of the layers (like errors and config): it imports no other Threadline module.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
from typing import Any

from opentelemetry import trace

from threadline.observability.lifecycle import Lifecycle
from threadline.observability.logs import RequestContext, current_request
from threadline.observability.metrics import Metrics

__all__ = ["Lifecycle", "Metrics", "Observer", "RequestContext", "TurnRecorder", "bind", "current", "current_request"]

_NO_TRACER = trace.NoOpTracer()
# What `span` gives while tracing is off: reusable, and it makes nothing current.
_NO_SPAN: contextlib.nullcontext[trace.Span] = contextlib.nullcontext(trace.INVALID_SPAN)


class TurnRecorder:
    """One model turn's timings and outcome, from the model call to the saved (or failed) response."""

    def __init__(self, observer: Observer, model: str) -> None:
        self._observer = observer
        self._model = model
        self._surface = observer.surface()
        self._started = time.monotonic()
        self._first_token: float | None = None

    def first_token(self) -> None:
        if self._first_token is None:
            self._first_token = time.monotonic()
            metrics = self._observer.metrics
            if metrics is not None:
                metrics.turn_ttft.labels(self._surface, self._model).observe(self._first_token - self._started)

    def finished(self, outcome: str, input_tokens: int | None = None, output_tokens: int | None = None) -> None:
        metrics = self._observer.metrics
        if metrics is None:
            return
        metrics.turns.labels(self._surface, self._model, outcome).inc()
        metrics.turn_duration.labels(self._surface, self._model, outcome).observe(time.monotonic() - self._started)
        if input_tokens:
            metrics.tokens.labels(self._model, "input").inc(input_tokens)
        if output_tokens:
            metrics.tokens.labels(self._model, "output").inc(output_tokens)


class Observer:
    """The app's metrics, tracer and lifecycle, as services see them. Every method returns at once and never
    raises into the caller's work."""

    def __init__(
        self,
        metrics: Metrics | None = None,
        tracer: trace.Tracer | None = None,
        lifecycle: Lifecycle | None = None,
        surface_of: Callable[[str | None], str] | None = None,
    ) -> None:
        self.metrics = metrics
        self.tracer = tracer or _NO_TRACER
        self.lifecycle = lifecycle or Lifecycle()
        self._surface_of = surface_of

    @property
    def draining(self) -> bool:
        """The process was told to stop: it finishes what runs and starts no new turns."""
        return self.lifecycle.draining

    def surface(self) -> str:
        """Which API the current work came through (a fixed set, from the route template), "background" if none."""
        request = current_request()
        if request is None or self._surface_of is None:
            return "background"
        return self._surface_of(request.route)

    def span(self, name: str, **attributes: Any) -> contextlib.AbstractContextManager[trace.Span]:
        """A span around one step, a child of the current one (the request's), while tracing is on. Off, the no-op
        tracer's span would still be made current and the context put back, for no reader (~8 µs a step)."""
        if self.tracer is _NO_TRACER:
            return _NO_SPAN
        return self.tracer.start_as_current_span(name, attributes=attributes)

    def turn(self, model: str) -> TurnRecorder:
        return TurnRecorder(self, model)

    def busy_wait(self, seconds: float) -> None:
        """A turn found its thread busy and waited `seconds` before taking it."""
        if self.metrics is not None:
            self.metrics.busy_waits.labels(self.surface()).inc()
            self.metrics.busy_wait_seconds.labels(self.surface()).observe(seconds)

    @contextlib.contextmanager
    def busy_waiting(self) -> Iterator[None]:
        """While a turn waits for its busy thread."""
        gauge = self.metrics.busy_waiting if self.metrics is not None else None
        if gauge is not None:
            gauge.inc()
        try:
            yield
        finally:
            if gauge is not None:
                gauge.dec()

    def busy_refused(self) -> None:
        """A turn gave up waiting for its busy thread (409 thread_busy)."""
        if self.metrics is not None:
            self.metrics.busy_refusals.labels(self.surface()).inc()

    def retention_purged(self, category: str, rows: int) -> None:
        if self.metrics is not None and rows:
            self.metrics.retention_purged.labels(category).inc(rows)

    def webhook_attempt(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.webhook_attempts.labels(outcome).inc()


_NOTHING = Observer()
_current: contextvars.ContextVar[Observer] = contextvars.ContextVar("threadline_observer", default=_NOTHING)


def current() -> Observer:
    """The observer bound to the running request or task (one that records nothing if none is)."""
    return _current.get()


def bind(observer: Observer) -> contextvars.Token[Observer]:
    """Bind `observer` to the current context (and the tasks it starts); reset with `unbind(token)`."""
    return _current.set(observer)


def unbind(token: contextvars.Token[Observer]) -> None:
    _current.reset(token)
