"""OpenTelemetry traces: off unless the standard `OTEL_*` variables ask for them.

On when `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`; `none` keeps them off) or an OTLP endpoint is
set (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; OTLP over HTTP/protobuf). The service
name, resource attributes, sampler and batch settings come from their standard variables too
(`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`); `OTEL_SDK_DISABLED=true`
wins over everything.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def tracer_provider_from_env(environ: Mapping[str, str]) -> TracerProvider | None:
    """The provider the environment asks for, or None (tracing off). Raises ValueError for an unknown exporter."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names:
        if not any(environ.get(name) for name in _ENDPOINTS):
            return None
        names = ["otlp"]
    names = [n for n in names if n != "none"]
    if not names:
        return None
    exporters = [_exporter(name) for name in names]
    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME") or "threadline"})
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _exporter(name: str) -> SpanExporter:
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if name == "console":
        return ConsoleSpanExporter()
    raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (use otlp, console or none)")
