"""Prometheus metrics: HTTP requests, appends, the followers of the log (relay, projections), the clock.

Request metrics are counted by the request middleware; the rest are read from the running
components at scrape time, so a scrape always reports current positions and lags.
"""

from __future__ import annotations

import bisect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class DelayHistogram:
    """Delays (seconds) counted in DELAY_BUCKETS, kept by a component and read at each scrape."""

    def __init__(self) -> None:
        self._counts = [0] * len(DELAY_BUCKETS)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.sum += seconds
        self.count += 1
        index = bisect.bisect_left(DELAY_BUCKETS, seconds)
        if index < len(self._counts):
            self._counts[index] += 1

    def cumulative(self) -> tuple[tuple[float, int], ...]:
        """(upper bound, observations at or below it), Prometheus' shape; `+Inf` is `count`."""
        out, total = [], 0
        for bound, n in zip(DELAY_BUCKETS, self._counts, strict=True):
            total += n
            out.append((bound, total))
        return tuple(out)


class Metrics:
    """One registry per app (tests build several apps in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._refreshers: list[Callable[[], Awaitable[None]]] = []
        self.requests = Counter(
            "loyalty_http_requests",
            "HTTP requests by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "loyalty_http_request_duration_seconds",
            "HTTP request duration by route template.",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def watch(self, read: Callable[[], Iterable[Metric]]) -> None:
        """Report what `read` yields at each scrape."""
        self.registry.register(_Reader(read))

    def watch_async(self, read: Callable[[], Awaitable[Iterable[Metric]]]) -> None:
        """Report what `read` returns at each scrape (awaited by `render`)."""
        latest: list[Metric] = []

        async def refresh() -> None:
            latest[:] = list(await read())

        self._refreshers.append(refresh)
        self.registry.register(_Reader(lambda: latest))

    async def render(self) -> bytes:
        for refresh in self._refreshers:
            await refresh()
        return generate_latest(self.registry)


class _Reader(Collector):
    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        return list(self._read())

    def describe(self) -> Iterable[Metric]:
        return []


def appender_metrics(appender: Any) -> Iterable[Metric]:
    batches = CounterMetricFamily("loyalty_append_batches", "Group-commit transactions committed.")
    batches.add_metric([], appender.batches)
    events = CounterMetricFamily("loyalty_appended_events", "Events appended by this instance.")
    events.add_metric([], appender.appended)
    queued = GaugeMetricFamily("loyalty_append_queue", "Append requests waiting for the writer.")
    queued.add_metric([], appender.queued)
    return [batches, events, queued]


def relay_metrics(relay: Any, prefix: str = "loyalty_relay") -> Iterable[Metric]:
    """A relay's state; `prefix` names its metrics (the segments relay's: loyalty_segments_relay)."""
    status = relay.status()
    gauges = {
        f"{prefix}_active": ("1 when this instance is the active relay.", int(status.active)),
        f"{prefix}_nats_connected": ("1 when connected to NATS.", int(status.nats_connected)),
        f"{prefix}_position": ("Last position published to JetStream.", status.published_position),
        f"{prefix}_head_position": ("Last position in the event log.", status.head_position),
        f"{prefix}_lag_events": ("Committed events not yet published.", status.lag_events),
        f"{prefix}_lag_seconds": ("Age of the oldest unpublished event.", status.lag_seconds),
    }
    for name, (doc, value) in gauges.items():
        gauge = GaugeMetricFamily(name, doc)
        gauge.add_metric([], value)
        yield gauge
    published = CounterMetricFamily(f"{prefix}_published", "Events published by this instance.")
    published.add_metric([], status.published)
    yield published
    latency = HistogramMetricFamily(
        f"{prefix}_commit_to_ack_seconds", "From an event's commit to its JetStream acknowledgement."
    )
    buckets = [(str(bound), count) for bound, count in status.ack_latency_buckets]
    latency.add_metric([], [*buckets, ("+Inf", status.ack_latency_count)], status.ack_latency_sum)
    yield latency


async def projection_metrics(runner: Any) -> Iterable[Metric]:
    statuses = await runner.status()
    delays = HistogramMetricFamily(
        "loyalty_projection_commit_to_applied_seconds",
        "From an event's commit to the commit of the projection batch that applied it (this instance).",
        labels=["projection"],
    )
    for name, histogram in runner.delays().items():
        buckets = [(str(bound), n) for bound, n in histogram.cumulative()]
        delays.add_metric([name], [*buckets, ("+Inf", histogram.count)], histogram.sum)
    families = {
        "position": GaugeMetricFamily(
            "loyalty_projection_position", "Last position applied.", labels=["projection"]
        ),
        "lag_events": GaugeMetricFamily(
            "loyalty_projection_lag_events", "Events not applied yet.", labels=["projection"]
        ),
        "lag_seconds": GaugeMetricFamily(
            "loyalty_projection_lag_seconds",
            "Age of the oldest event not applied yet.",
            labels=["projection"],
        ),
    }
    leading = GaugeMetricFamily(
        "loyalty_projection_leading", "1 when this instance applies the projection.", labels=["projection"]
    )
    for status in statuses:
        for field, family in families.items():
            family.add_metric([status.name], getattr(status, field))
        leading.add_metric([status.name], int(status.leading))
    return [*families.values(), leading, delays]


def clock_metrics(clock: Any) -> Iterable[Metric]:
    """The clock (service/clock.py): what time alone made due, settled by this instance."""
    status = clock.status()
    counters = {
        "loyalty_clock_settles": ("Settle commands the clock ran.", status.settles),
        "loyalty_clock_settled_members": (
            "Settles that recorded something (a member's lots, holds or tier changed).",
            status.members_settled,
        ),
        "loyalty_clock_events": ("Events the clock's settles recorded.", status.events),
        "loyalty_clock_failures": ("Settles that failed (each is retried).", status.failures),
    }
    for name, (doc, value) in counters.items():
        counter = CounterMetricFamily(name, doc)
        counter.add_metric([], value)
        yield counter
    gauges = {
        "loyalty_clock_active": ("1 when this instance's clock leads.", int(status.active)),
        "loyalty_clock_deferred_members": (
            "Members waiting on an instant only their aggregate knows (their last settle recorded nothing).",
            status.deferred,
        ),
    }
    for name, (doc, value) in gauges.items():
        gauge = GaugeMetricFamily(name, doc)
        gauge.add_metric([], value)
        yield gauge


def checkpoint_metrics(checkpointer: Any) -> Iterable[Metric]:
    """The audit checkpoints (service/checkpoints.py): signed here, and whether the log verifies."""
    counter = CounterMetricFamily("loyalty_audit_checkpoints", "Audit checkpoints this instance signed.")
    counter.add_metric([], checkpointer.taken)
    yield counter
    gauges = {
        "loyalty_audit_checkpoints_active": (
            "1 when this instance takes the checkpoints.",
            int(checkpointer.leading),
        ),
        "loyalty_audit_chain_broken": (
            "1 when the leader found a break in the log's hash chains (nothing is signed then; see its log).",
            int(checkpointer.broken is not None),
        ),
    }
    for name, (doc, value) in gauges.items():
        gauge = GaugeMetricFamily(name, doc)
        gauge.add_metric([], value)
        yield gauge
