"""OpenTelemetry: exports nowhere unless OTEL_EXPORTER_OTLP_ENDPOINT is set.

The W3C trace context travels in Celery message headers (celery instrumentation) and in the
outbox rows, so one trace runs from the HTTP request through the queue to SQL.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from celery_stack_core.config import Settings

_configured = False


def tracing_enabled(settings: Settings) -> bool:
    return bool(settings.observability.otlp_endpoint)


def setup_tracing(service: str, settings: Settings) -> bool:
    """Install the tracer provider and library instrumentation once per process."""
    global _configured
    if _configured or not tracing_enabled(settings):
        return _configured
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    endpoint = settings.observability.otlp_endpoint.rstrip("/") + "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    instrument_libraries()
    _configured = True
    return True


def _instrumentors() -> list[tuple[Any, dict[str, Any]]]:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    return [
        (CeleryInstrumentor(), {}),
        (RedisInstrumentor(), {}),
        (SQLAlchemyInstrumentor(), {"enable_commenter": False}),
    ]


def instrument_libraries() -> None:
    """What carries one trace from a request through the queue to SQL: Celery (the context in
    message headers, a span per task), Redis and SQLAlchemy spans. tests/e2e/test_traces.py
    runs this same function under an in-memory exporter."""
    for instrumentor, options in _instrumentors():
        instrumentor.instrument(**options)


def uninstrument_libraries() -> None:
    for instrumentor, _ in _instrumentors():
        instrumentor.uninstrument()


def flush_tracing() -> None:
    """Export what is batched. Called on shutdown: uvicorn re-raises SIGTERM after its graceful
    shutdown, which ends the process before atexit handlers run."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush(timeout_millis=5000)


def tracing_active() -> bool:
    """An SDK tracer provider is installed (tracing configured, or a test's in-memory one)."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def current_traceparent() -> str | None:
    """The W3C traceparent of the recording span in this context, else None."""
    span = trace.get_current_span()
    if not span.is_recording():
        return None
    return inject_context().get("traceparent")


def links_from(traceparents: list[str]) -> list[trace.Link]:
    """Span links to the given W3C traceparents (unparsable ones are left out)."""
    out = []
    for tp in traceparents:
        ctx = trace.get_current_span(extract_context({"traceparent": tp})).get_span_context()
        if ctx.is_valid:
            out.append(trace.Link(ctx))
    return out


def inject_context() -> dict[str, str]:
    """The current trace context as W3C headers, to store with a message (outbox rows)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract_context(carrier: dict[str, str] | None) -> Context:
    return propagate.extract(carrier or {})
