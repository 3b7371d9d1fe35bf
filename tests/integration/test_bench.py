"""`loyalty bench` drives a real `loyalty serve` and reports the followers' delays beside it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

from projections.registry import PROJECTIONS
from tests.service_process import ADMIN_KEY, Service


async def _bench(service: Service, *args: str) -> dict[str, Any]:
    """One short `loyalty bench --json` run against `service`; its report."""
    command = [
        sys.executable, "-m", "service.cli", "bench",
        "--url", service.url, "--followers-url", service.follower_url, "--admin-key", ADMIN_KEY,
        "--warmup", "0.5", "--seed", "7", "--json", *args,
    ]  # fmt: skip
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=120)
    assert done.stdout, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    # The bench exits 1 when a request failed: say which (the report is long).
    assert done.returncode == 0, report.get("errors_by_status", done.stderr)
    return report


async def test_bench_reports_throughput_latency_and_the_followers_delays(service: Service) -> None:
    service.start()
    await service.ready()
    report = await _bench(service, "--mix", "earn=80,redeem=20", "-c", "4", "-T", "2", "--members", "20")

    assert report["errors"] == 0
    assert report["commands"] > 0
    assert report["throughput"] > 0
    assert set(report["kinds"]) == {"earn", "redeem"}
    assert report["kinds"]["earn"]["ok"] > 0
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] <= report["latency_ms"]["max"]
    delays = {(row["metric"], row["labels"]): row for row in report["followers"]["histograms"]}
    assert set(delays) == {
        ("loyalty_relay_commit_to_ack_seconds", ""),
        *(("loyalty_projection_commit_to_applied_seconds", f"projection={name}") for name in PROJECTIONS),
    }
    for row in delays.values():
        assert row["count"] > 0, row
        assert 0 < row["p50_ms"] <= row["p99_ms"], row
    assert service.terminate() == 0


async def test_bench_holds_captures_refunds_and_batches(service: Service) -> None:
    service.start()
    await service.ready()

    mix = await _bench(
        service, "--mix", "earn=4,redeem=1,hold=1,capture=1,refund=1", "-c", "4", "-T", "2", "--members", "20"
    )

    assert mix["errors"] == 0, mix["errors_by_status"]
    assert set(mix["kinds"]) == {"earn", "redeem", "hold", "capture", "refund"}
    for name, kind in mix["kinds"].items():
        assert kind["ok"] + kind["rejected"] > 0, (name, kind)
    # Each worker captures and refunds what it placed and earned itself: these succeed.
    for name in ("earn", "hold", "capture", "refund"):
        assert mix["kinds"][name]["ok"] > 0, (name, mix["kinds"][name])
    assert set(mix["kinds"]["capture"]["sent_instead"]) == {"kind", "requests"}
    assert mix["commands_committed"] == sum(kind["ok"] for kind in mix["kinds"].values())

    batch = await _bench(
        service, "--mix", "batch=1", "--batch-size", "20", "-c", "2", "-T", "2", "--members", "20"
    )

    assert batch["errors"] == 0, batch["errors_by_status"]
    assert set(batch["kinds"]) == {"batch"}
    row = batch["kinds"]["batch"]
    assert row["ok"] > 0
    assert row["commands_committed"] == 20 * row["ok"] == batch["commands_committed"]
    assert batch["commands_per_second"] == row["commands_per_second"] > batch["throughput"] > 0
    assert service.terminate() == 0
