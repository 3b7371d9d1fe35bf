"""`loyalty bench` drives a real `loyalty serve` and reports the followers' delays beside it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from tests.service_process import ADMIN_KEY, Service


async def test_bench_reports_throughput_latency_and_the_followers_delays(service: Service) -> None:
    service.start()
    await service.ready()
    command = [
        sys.executable, "-m", "service.cli", "bench",
        "--url", service.url, "--followers-url", service.follower_url, "--admin-key", ADMIN_KEY,
        "--mix", "earn=80,redeem=20", "-c", "4", "-T", "2", "--warmup", "0.5", "--members", "20",
        "--seed", "7", "--json",
    ]  # fmt: skip
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["errors"] == 0
    assert report["commands"] > 0
    assert report["throughput"] > 0
    assert set(report["kinds"]) == {"earn", "redeem"}
    assert report["kinds"]["earn"]["ok"] > 0
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] <= report["latency_ms"]["max"]
    delays = {(row["metric"], row["labels"]): row for row in report["followers"]["histograms"]}
    assert set(delays) == {
        ("loyalty_relay_commit_to_ack_seconds", ""),
        ("loyalty_projection_commit_to_applied_seconds", "projection=balances"),
        ("loyalty_projection_commit_to_applied_seconds", "projection=members"),
    }
    for row in delays.values():
        assert row["count"] > 0, row
        assert 0 < row["p50_ms"] <= row["p99_ms"], row
    assert service.terminate() == 0
