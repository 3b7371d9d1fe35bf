"""What `loyalty bench` reports of the followers: how far behind the commits they run.

The follower process's `/metrics` (or the service's own, with LOYALTY_FOLLOWERS=inline) is
scraped when the measured window opens and when it closes; quantiles come from the difference
of the two histograms, interpolated within a bucket as Prometheus' `histogram_quantile` does.
"""

from __future__ import annotations

import math
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# histogram family -> what the report calls it
HISTOGRAMS = {
    "loyalty_relay_commit_to_ack_seconds": "commit -> JetStream ack",
    "loyalty_projection_commit_to_applied_seconds": "commit -> projection applied",
}

Buckets = dict[float, float]  # upper bound -> cumulative count


def scrape(url: str, timeout: float = 5.0) -> dict[tuple[str, str], Buckets]:
    """The HISTOGRAMS' buckets at `url`, by (family, label values)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (a URL we were given)
        text = response.read().decode()
    found: dict[tuple[str, str], Buckets] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        if family.name not in HISTOGRAMS:
            continue
        for sample in family.samples:
            if not sample.name.endswith("_bucket"):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "le")
            found[(family.name, labels)][float(sample.labels["le"])] = sample.value
    return dict(found)


def quantile(before: Buckets, after: Buckets, q: float) -> float:
    """The q-quantile (0..1) of what was observed between two scrapes of one histogram."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound is all we know
            width = cumulative - below
            return lower + (bound - lower) * ((rank - below) / width if width else 1.0)
        lower, below = bound, cumulative
    return lower


@dataclass
class FollowerDelays:
    """Scrapes `url` when the measured window opens and when it closes (a WindowWatch probe)."""

    url: str
    before: dict[tuple[str, str], Buckets] = field(default_factory=dict)
    after: dict[tuple[str, str], Buckets] = field(default_factory=dict)
    error: str | None = None

    def opened(self) -> None:
        self.before = scrape(self.url)

    def closed(self, seconds: float) -> None:
        self.after = scrape(self.url)

    def report(self) -> dict[str, Any]:
        if self.error or not self.after:
            return {"url": self.url, "error": self.error or "not scraped"}
        rows = []
        for (name, labels), after in sorted(self.after.items()):
            before = self.before.get((name, labels), {})
            observed = max(after.values(), default=0.0) - max(before.values(), default=0.0)
            rows.append(
                {
                    "what": HISTOGRAMS[name] + (f" ({labels.split('=', 1)[1]})" if labels else ""),
                    "metric": name,
                    "labels": labels,
                    "count": int(observed),
                    "p50_ms": _ms(quantile(before, after, 0.50)),
                    "p99_ms": _ms(quantile(before, after, 0.99)),
                }
            )
        return {"url": self.url, "histograms": rows}


def _ms(seconds: float) -> float | None:
    return None if math.isnan(seconds) else round(seconds * 1000, 1)


def render(report: dict[str, Any]) -> list[str]:
    """Lines for the text report."""
    if "error" in report:
        return [f"followers ({report['url']}): not measured: {report['error']}"]
    lines = [f"followers ({report['url']}), during the measured window:"]
    for row in report["histograms"]:
        p50 = "-" if row["p50_ms"] is None else f"{row['p50_ms']:.1f}"
        p99 = "-" if row["p99_ms"] is None else f"{row['p99_ms']:.1f}"
        lines.append(f"  {row['what']:<44} {row['count']:>8} events   p50 {p50:>7} ms   p99 {p99:>7} ms")
    return lines
