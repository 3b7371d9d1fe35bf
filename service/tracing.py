"""Tracing: spans of HTTP request → use case → append, and the trace context each event carries.

Every event records the W3C `traceparent` of what caused it (a column of the log), and the relay
sends it as the CloudEvents distributed-tracing extension, so a subscriber continues the trace
(docs/guides/subscribe.md).

- Off (LOYALTY_OTLP_ENDPOINT unset, the default): no span is made. A request's own `traceparent`
  header, when it has a valid one, is passed through to its events unchanged: the caller's trace
  goes on in the subscribers. The cost is reading one header per request.
- On: an OpenTelemetry SDK tracer exports spans by OTLP/HTTP (batched, in the background) to
  LOYALTY_OTLP_ENDPOINT: a server span per request (continuing the caller's `traceparent`),
  a span per use case and one per append; the events carry the append span's context. The SDK's
  own OTEL_* variables (OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, OTEL_EXPORTER_OTLP_HEADERS, …)
  apply as usual.

One tracer per process (`start` / `stop` around the app's lifetime); nothing here touches the
OpenTelemetry global provider, so a library that sets one is not overridden.
"""

from __future__ import annotations

import contextlib
import re
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

SERVICE_NAME = "loyalty-ledger"
# W3C Trace Context, version 00: trace id and parent id not all zeros.
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")

# The request's own traceparent, passed through to its events while tracing is off.
incoming_traceparent: ContextVar[str | None] = ContextVar("incoming_traceparent", default=None)

_tracer: trace.Tracer | None = None
_provider: Any = None  # the SDK's TracerProvider while on (imported only then)


def start(endpoint: str | None) -> None:
    """Export spans to the OTLP/HTTP collector at `endpoint` (its base URL, or the full
    `/v1/traces` one); None leaves tracing off."""
    global _tracer, _provider
    if not endpoint:
        return
    # Imported only when on: the SDK and the exporter (protobuf) cost start-up time.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    url = endpoint.rstrip("/")
    if not url.endswith("/v1/traces"):
        url += "/v1/traces"
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    _provider = provider
    _tracer = provider.get_tracer("loyalty")


def stop() -> None:
    """Export what is left and turn tracing off."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    return _tracer is not None


def valid_traceparent(value: str | None) -> str | None:
    """`value` if it is a W3C traceparent of version 00, else None."""
    if value is not None and _TRACEPARENT.fullmatch(value):
        return value
    return None


class RequestSpan:
    """The server span of one HTTP request, current while the request runs."""

    def __init__(self, method: str, traceparent: str | None) -> None:
        assert _tracer is not None
        self.method = method
        parent = _extract(traceparent)
        self.span = _tracer.start_span(method, context=parent, kind=trace.SpanKind.SERVER)
        self.span.set_attribute("http.request.method", method)
        self._token = otel_context.attach(trace.set_span_in_context(self.span, parent))

    def end(self, route: str | None, status: int) -> None:
        """Name it by its route template (never the path: it may hold ids) and end it."""
        otel_context.detach(self._token)
        if route:
            self.span.update_name(f"{self.method} {route}")
            self.span.set_attribute("http.route", route)
        self.span.set_attribute("http.response.status_code", status)
        if status >= 500:
            self.span.set_status(trace.Status(trace.StatusCode.ERROR))
        self.span.end()


def request(method: str, traceparent_header: bytes | None) -> RequestSpan | None:
    """At the start of a request: its server span when tracing is on (None when off, after
    keeping a valid incoming traceparent for its events)."""
    traceparent = valid_traceparent(traceparent_header.decode("latin-1")) if traceparent_header else None
    if _tracer is None:
        incoming_traceparent.set(traceparent)
        return None
    return RequestSpan(method, traceparent)


_NO_SPAN = contextlib.nullcontext()


def span(name: str) -> contextlib.AbstractContextManager[Any]:
    """An internal span, child of the current one (a context manager); nothing when off."""
    if _tracer is None:
        return _NO_SPAN
    return _tracer.start_as_current_span(name)


def current_traceparent() -> str | None:
    """What an event appended now records: the current span's context (on), else the request's
    own traceparent (off), else None."""
    if _tracer is None:
        return incoming_traceparent.get()
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _extract(traceparent: str | None) -> otel_context.Context | None:
    if traceparent is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})
