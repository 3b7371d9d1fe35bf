"""Tracing: a trace started by an HTTP earn goes through the use case and the append, is exported
by OTLP, and continues in a NATS subscriber (a durable JetStream consumer) that reads the event's
`traceparent`, whether the caller sent a traceparent or the service started the trace; with tracing
off (the default) a caller's own traceparent passes through to its events."""

from __future__ import annotations

import contextlib
import secrets
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import nats
import nats.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from service.app import create_app
from service.bus import cloudevents
from service.config import Settings
from tests.api.conftest import Api, Pos, serving, settings_for
from tests.waiting import until


@dataclass(frozen=True)
class ExportedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    attributes: dict[str, Any]


class Collector:
    """An OTLP/HTTP trace receiver on loopback: keeps every span posted to /v1/traces."""

    def __init__(self) -> None:
        self.spans: list[ExportedSpan] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        collector.spans += [
                            ExportedSpan(
                                s.trace_id.hex(),
                                s.span_id.hex(),
                                s.parent_span_id.hex(),
                                s.name,
                                {a.key: a.value for a in s.attributes},
                            )
                            for s in scope_spans.spans
                        ]
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def named(self, name: str) -> ExportedSpan:
        [found] = [s for s in self.spans if s.name == name]
        return found


@pytest.fixture
def collector() -> Iterator[Collector]:
    running = Collector()
    yield running
    running.close()


def caller_traceparent() -> tuple[str, str, str]:
    """A caller's trace: (traceparent header, trace id, its span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


async def earn(api: Api, key: str, member_id: str, headers: dict[str, str]) -> Any:
    response = await api.client.post(
        f"/v1/members/{member_id}/earn",
        json={"order_ref": uuid.uuid4().hex, "amount": "12.00", "currency": "CNY"},
        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": uuid.uuid4().hex, **headers},
    )
    assert response.status_code == 201, response.text
    return response.json()


async def published(settings: Settings, nats_url: str, member_id: str) -> cloudevents.CloudEvent[Any]:
    """What a subscriber reads: the member's last points_earned CloudEvent on the stream."""
    subject = cloudevents.nats_subject("points_earned", uuid.UUID(member_id), settings.subject_prefix)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()

        async def last() -> Any:
            try:
                return await js.get_last_msg(settings.stream_name, subject)
            except NotFoundError:
                return None

        message = await until(last, what="the event on the stream")
    finally:
        await nc.close()
    return cloudevents.decode(message.data)


class Subscriber:
    """A service downstream, as docs/guides/subscribe.md shows one: a durable pull consumer on
    the stream, filtered to `points_earned`, whose handler continues the trace of the event it
    reads (its own tracer, exporting to memory)."""

    def __init__(self, subscription: Any) -> None:
        self.subscription = subscription
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = provider.get_tracer("subscriber")

    async def handle_one(self) -> tuple[Any, cloudevents.CloudEvent[Any], ReadableSpan]:
        """Fetch the next message, handle it in a consumer span continuing its `traceparent`,
        acknowledge it: (the message, its CloudEvent, the handler's finished span)."""

        async def fetched() -> list[Any] | None:
            try:
                return list(await self.subscription.fetch(1, timeout=1))
            except nats.errors.TimeoutError:  # nothing yet: fetch says so by raising
                return None

        [message] = await until(fetched, what="a points_earned message for the subscriber")
        event = cloudevents.decode(message.data)
        carrier = {"traceparent": event.traceparent} if event.traceparent else {}
        parent = TraceContextTextMapPropagator().extract(carrier)
        with self.tracer.start_as_current_span(
            f"process {event.type}", context=parent, kind=trace.SpanKind.CONSUMER
        ):
            await message.ack()
        [handled] = self.exporter.get_finished_spans()
        return message, event, handled


@contextlib.asynccontextmanager
async def subscribed(settings: Settings, nats_url: str) -> AsyncIterator[Subscriber]:
    """A durable consumer of the service's stream on `<prefix>.points_earned.*`, made before
    anything is earned (the stream exists once the service has started)."""
    nc = await nats.connect(nats_url, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        durable = "tracing-" + uuid.uuid4().hex[:8]
        await js.add_consumer(
            settings.stream_name,
            ConsumerConfig(
                durable_name=durable,
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                filter_subject=f"{settings.subject_prefix}.points_earned.*",
            ),
        )
        subscription = await js.pull_subscribe_bind(durable=durable, stream=settings.stream_name)
        try:
            yield Subscriber(subscription)
        finally:
            await subscription.unsubscribe()  # before closing: drain() can hang after a timed-out fetch
    finally:
        await nc.close()


def chain_to_root(spans: list[ExportedSpan], span: ExportedSpan) -> list[str]:
    """The names from `span` up through its parents to a root (no parent) among `spans`."""
    by_id = {s.span_id: s for s in spans}
    names = [span.name]
    while span.parent_span_id:
        span = by_id[span.parent_span_id]
        names.append(span.name)
    return names


async def test_a_trace_started_by_an_http_earn_continues_in_a_nats_subscriber(
    database_url: str, nats_url: str, collector: Collector
) -> None:
    settings = replace(settings_for(database_url, nats_url), otlp_endpoint=collector.url)
    traceparent, trace_id, caller_span = caller_traceparent()
    app = create_app(settings, log_requests=False)
    async with serving(app) as client, subscribed(settings, nats_url) as subscriber:
        api = Api(client, app)
        key = await api.channel_key("app-1", ["read", "earn", "members"], kind="app")
        member_id = await api.enrol(key)
        await earn(api, key, member_id, {"traceparent": traceparent})
        # The subscriber receives the earn on its subject and continues the trace from it.
        message, event, consumed = await subscriber.handle_one()
    assert message.subject == cloudevents.nats_subject(
        "points_earned", uuid.UUID(member_id), settings.subject_prefix
    )
    assert event.type == "loyalty.points_earned.v1"
    # Stopped: the service exported what it had left.
    server = collector.named("POST /v1/members/{member_id}/earn")
    handler = next(s for s in collector.spans if s.parent_span_id == server.span_id)
    append = next(s for s in collector.spans if s.parent_span_id == handler.span_id and s.name == "append")
    assert (server.trace_id, server.parent_span_id) == (trace_id, caller_span)
    assert (handler.trace_id, handler.name) == (trace_id, "Earned")
    assert append.trace_id == trace_id
    assert event.traceparent == f"00-{trace_id}-{append.span_id}-01"
    assert consumed.kind == trace.SpanKind.CONSUMER
    assert consumed.context is not None
    assert consumed.parent is not None
    assert (f"{consumed.context.trace_id:032x}", f"{consumed.parent.span_id:016x}") == (
        trace_id,
        append.span_id,
    )
    # Names and attributes carry route templates, never a member's id.
    assert all(member_id not in f"{s.name}{s.attributes}" for s in collector.spans)
    assert server.attributes["http.response.status_code"].int_value == 201


async def test_an_earn_with_no_traceparent_starts_a_trace_that_the_subscriber_continues(
    database_url: str, nats_url: str, collector: Collector
) -> None:
    settings = replace(settings_for(database_url, nats_url), otlp_endpoint=collector.url)
    app = create_app(settings, log_requests=False)
    async with serving(app) as client, subscribed(settings, nats_url) as subscriber:
        api = Api(client, app)
        key = await api.channel_key("app-1", ["read", "earn", "members"], kind="app")
        member_id = await api.enrol(key)  # on the same connection as the earn, just before it
        await earn(api, key, member_id, {})
        _, event, consumed = await subscriber.handle_one()
    server = collector.named("POST /v1/members/{member_id}/earn")
    # The service started the trace: its HTTP span is the root, and the trace is the earn's own
    # (not the enrolment's, nor any other request's before it on the connection).
    assert server.parent_span_id == ""
    assert [s for s in collector.spans if s.trace_id == server.trace_id and not s.parent_span_id] == [server]
    assert collector.named("POST /v1/members").trace_id != server.trace_id
    # HTTP → handler → append, one trace.
    [append] = [s for s in collector.spans if s.trace_id == server.trace_id and s.name == "append"]
    assert chain_to_root(collector.spans, append) == ["append", "Earned", server.name]
    assert all(
        chain_to_root(collector.spans, s)[-1] == server.name
        for s in collector.spans
        if s.trace_id == server.trace_id
    )
    # The event carries that trace and the append span; the subscriber's span is its child.
    # (Flags: sampled, and the SDK may add W3C Trace Context level 2's "random trace id", 0x02,
    # to a trace it starts itself.)
    assert isinstance(event.traceparent, str)
    version, carried_trace, carried_span, flags = event.traceparent.split("-")
    assert (version, carried_trace, carried_span) == ("00", server.trace_id, append.span_id)
    assert int(flags, 16) & 0x01, "sampled"
    assert consumed.context is not None
    assert consumed.parent is not None
    assert (f"{consumed.context.trace_id:032x}", f"{consumed.parent.span_id:016x}") == (
        server.trace_id,
        append.span_id,
    )


async def test_with_tracing_off_a_callers_traceparent_passes_through_to_the_events(
    pos: Pos, nats_url: str
) -> None:
    api = pos.api
    settings: Settings = api.services.settings
    assert settings.otlp_endpoint is None
    traced, untraced, garbled = [await api.enrol(pos.key) for _ in range(3)]
    traceparent, _, _ = caller_traceparent()

    await earn(api, pos.key, traced, {"traceparent": traceparent})
    await earn(api, pos.key, untraced, {})
    await earn(api, pos.key, garbled, {"traceparent": "00-not-a-trace-01"})

    assert (await published(settings, nats_url, traced)).traceparent == traceparent
    assert not (await published(settings, nats_url, untraced)).traceparent
    assert not (await published(settings, nats_url, garbled)).traceparent
