"""Optional OpenTelemetry tracing: a span per Check / Process phase and per stage, continuing
the caller's W3C ``traceparent``, exported over OTLP/HTTP when ``tracing.otlp_endpoint`` is set.

Off by default and free when off: the request path only checks ``TRACER is None``. Needs the
``otel`` extra (``pip install 'authz[otel]'``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import Field

from authz.errors import ConfigError
from authz.schema import Model

TRACER: Any = None  # an opentelemetry Tracer once configured
_PROPAGATOR: Any = None


class TracingConfig(Model):
    otlp_endpoint: str = ""            # e.g. http://otel-collector:4318/v1/traces; empty = off
    service_name: str = "authz"
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)


def setup(cfg: TracingConfig, *, exporter: Any = None, instance: str = "") -> None:
    """Install the tracer (once per process). ``exporter`` replaces OTLP (tests)."""
    global TRACER, _PROPAGATOR
    if not cfg.otlp_endpoint and exporter is None:
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        raise ConfigError("tracing", [("tracing.otlp_endpoint", "set, but OpenTelemetry is not installed: "
                                       "pip install 'authz[otel]'")]) from None
    provider = TracerProvider(resource=Resource.create({"service.name": cfg.service_name,
                                                        "service.instance.id": instance}),
                              sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=cfg.otlp_endpoint, timeout=5)))
    TRACER = provider.get_tracer("authz")
    _PROPAGATOR = TraceContextTextMapPropagator()


def reset() -> None:
    global TRACER, _PROPAGATOR
    TRACER = _PROPAGATOR = None


@contextlib.contextmanager
def request_span(name: str, headers: Mapping[str, str], attributes: dict[str, Any]) -> Iterator[Any]:
    """A span continuing the request's ``traceparent`` (a no-op when tracing is off)."""
    if TRACER is None:
        yield None
        return
    parent = _PROPAGATOR.extract(carrier=dict(headers))
    with TRACER.start_as_current_span(name, context=parent, attributes=attributes) as span:
        yield span


@contextlib.contextmanager
def stage_span(stage: str, hook: str) -> Iterator[None]:
    if TRACER is None:
        yield
        return
    with TRACER.start_as_current_span(f"authz.stage.{stage}", attributes={"authz.hook": hook}):
        yield
