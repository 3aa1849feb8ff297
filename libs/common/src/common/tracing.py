"""Optional OpenTelemetry tracing, and the W3C `traceparent` a job carries.

Off unless an OTLP endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, and `OTEL_SDK_DISABLED` not true). Off
costs nothing: no OpenTelemetry module is imported. On, `configure_tracing`
installs a TracerProvider batching spans to the OTLP/HTTP exporter (configured
by the standard `OTEL_*` variables) and instruments Redis; the services add
FastAPI (`instrument_app`), SQLAlchemy (`instrument_engine`) and, in the
worker, Celery (`instrument_celery_worker`). `sending` wraps a job's message in
a producer span whose traceparent rides the message headers, so the worker's
span is its child: one trace from the HTTP request to the job's finish, even
when the relay sends the message long after the request ended.

Call `configure_tracing` after the fork (a gunicorn worker's lifespan, Celery's
`worker_process_init`): the batch processor's export thread does not survive
one. `shutdown_tracing` flushes what is left.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# Not traced: probes and scrapes would drown the traces people look for.
EXCLUDED_URLS = "/health/live,/health/ready,/metrics"
# W3C Trace Context, version 00: trace id and parent id in lower-case hex, not all zeros.
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")

# The provider of this process, by pid: a forked child must build its own.
_providers: dict[int, Any] = {}


def is_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces: an OTLP endpoint set and the SDK not disabled."""
    environ = os.environ if environ is None else environ
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def is_active() -> bool:
    """Whether `configure_tracing` turned tracing on in this process."""
    return os.getpid() in _providers


def configure_tracing(service_name: str) -> bool:
    """Start exporting this process's spans if `is_enabled()`; True when on. Idempotent."""
    if is_active():
        return True
    if not is_enabled():
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    RedisInstrumentor().instrument(tracer_provider=provider)
    _providers[os.getpid()] = provider
    return True


def shutdown_tracing() -> None:
    """Export the spans still buffered and stop; a no-op when tracing is off."""
    provider = _providers.pop(os.getpid(), None)
    if provider is not None:
        provider.shutdown()


def instrument_celery_worker() -> None:
    """Trace the tasks this (pool) process runs, as children of their message's traceparent.

    Only where tasks run: the instrumentation's publish span is never ended
    for a task sent by name from a process that does not define it (the API),
    so senders use `sending` instead.
    """
    if not is_active():
        return
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=_providers[os.getpid()])


def instrument_app(app: Any) -> None:
    """Trace a FastAPI app's requests when tracing is enabled (call it before the fork too).

    Its spans go to the global provider, which `configure_tracing` sets in
    each worker process after the fork.
    """
    if not is_enabled():
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # No span per ASGI send/receive: a WebSocket would get one per frame.
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls=EXCLUDED_URLS, exclude_spans=["receive", "send"]
    )


def instrument_engine(engine: Any) -> None:
    """Trace a SQLAlchemy (sync) Engine's statements; pass an AsyncEngine's `sync_engine`.

    The instrumentor is a per-process singleton: the first engine of a process
    is traced, later ones (only tests build several) are not.
    """
    if not is_active():
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    instrumentor = SQLAlchemyInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        # The instrumentation lists SQLAlchemy < 2.1; the engine events it uses are
        # unchanged in 2.1 (tests/system/jobs/test_tracing.py sees the spans).
        instrumentor.instrument(
            engine=engine, tracer_provider=_providers[os.getpid()], skip_dep_check=True
        )


def valid_traceparent(value: str | None) -> str | None:
    """`value` if it is a well-formed W3C version-00 traceparent, else None."""
    if value and len(value) == 55 and _TRACEPARENT.fullmatch(value):
        return value
    return None


def current_traceparent(incoming: str | None = None) -> str | None:
    """The traceparent to hand on: the current span's when tracing, else a valid `incoming`."""
    if is_active():
        from opentelemetry import trace

        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            flags = int(context.trace_flags)
            return f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"
    return valid_traceparent(incoming)


@contextlib.contextmanager
def sending(task_name: str, task_id: str, traceparent: str | None) -> Iterator[str | None]:
    """Around a task's send: yields the traceparent its message should carry.

    Tracing off: `traceparent` itself (if valid). On: a producer span's, the
    span a child of the current one or, when there is none (the relay, long
    after the request), of `traceparent`, so the job stays in the request's trace.
    """
    if not is_active():
        yield valid_traceparent(traceparent)
        return
    from opentelemetry import trace
    from opentelemetry.propagate import extract

    parent = None
    if not trace.get_current_span().get_span_context().is_valid and valid_traceparent(traceparent):
        parent = extract({"traceparent": traceparent})
    tracer = trace.get_tracer(__name__)
    with tracer.start_as_current_span(
        f"send {task_name}",
        context=parent,
        kind=trace.SpanKind.PRODUCER,
        attributes={"messaging.system": "celery", "messaging.message.id": task_id},
    ):
        yield current_traceparent()
