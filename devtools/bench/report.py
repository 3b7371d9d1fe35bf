"""The figures of a run: throughput, latency percentiles by kind, errors; as JSON or a table."""

from __future__ import annotations

import math
from array import array
from typing import Any

from devtools.bench.driver import Result
from devtools.bench.workload import KINDS


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 < q <= 100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(values: Any) -> dict[str, float | int]:
    s = sorted(values)
    if not s:
        return {"count": 0}
    return {
        "count": len(s),
        "mean": round(sum(s) / len(s), 3),
        "p50": round(percentile(s, 50), 3),
        "p95": round(percentile(s, 95), 3),
        "p99": round(percentile(s, 99), 3),
        "max": round(s[-1], 3),
    }


def summarise(config: dict[str, Any], result: Result) -> dict[str, Any]:
    """The run's figures. `throughput` is answers (requests) per second; `commands_per_second`
    the commands committed per second: a 2xx answer of a one-command kind, each earn a batch
    committed."""
    # The mix's kinds, then any sent only instead of one of them (a hold for a capture).
    sent = [k for k in result.latencies if result.latencies[k] or result.ok[k] or result.rejected[k]]
    kinds = list(config["mix"]) + [k for k in sent if k not in config["mix"]]
    window = result.window
    all_lat: list[float] = []
    per_kind = {}
    committed_total = 0
    for k in kinds:
        values = result.latencies.get(k, array("d"))
        all_lat.extend(values)
        committed = result.committed[k] if KINDS[k].several else result.ok[k]
        committed_total += committed
        row: dict[str, Any] = {
            "ok": result.ok[k],
            "rejected": result.rejected[k],
            "errors": sum(n for key, n in result.errors.items() if key.split(" ", 1)[0] == k),
            "throughput": _rate(result.ok[k] + result.rejected[k], window),
            "latency_ms": latency_summary(values),
        }
        if KINDS[k].several:
            row["commands_committed"] = committed
            row["commands_per_second"] = _rate(committed, window)
        if KINDS[k].instead is not None:
            row["sent_instead"] = {"kind": KINDS[k].instead, "requests": result.substituted[k]}
        per_kind[k] = row
    completed = sum(result.ok.values()) + sum(result.rejected.values())
    errors = sum(result.errors.values())
    return {
        "config": config,
        "commands": completed,
        "ok": sum(result.ok.values()),
        "rejected": sum(result.rejected.values()),
        "errors": errors,
        "errors_by_status": dict(sorted(result.errors.items())),
        "duration_s": window,
        "throughput": _rate(completed, window),
        "commands_committed": committed_total,
        "commands_per_second": _rate(committed_total, window),
        "latency_ms": latency_summary(all_lat),
        "kinds": per_kind,
        "generator_cpu_s": round(result.cpu_seconds, 2),
        "generator_cpu_cores": round(result.cpu_seconds / window, 2) if window else 0.0,
    }


def _rate(n: int, window: float) -> float:
    return round(n / window, 1) if window else 0.0


def render_text(s: dict[str, Any]) -> str:
    c = s["config"]
    mix = ", ".join(f"{k}={w}" for k, w in c["mix"].items())
    lines = [
        f"loyalty bench {c['url']}",
        f"started: {c['started_at']}   host: {c['host']}   python: {c['python']}",
        f"mix: {mix}",
        f"members: {c['members']} (set up in {c['setup_s']:.1f} s)   seed: {c['seed']}",
        f"concurrency: {c['concurrency']} connections in {c['processes']} process(es)",
        f"duration: {c['duration']:g} s measured, after {c['warmup']:g} s of warm-up",
        f"requests: {s['commands']} (ok {s['ok']}, expected refusals {s['rejected']})"
        f"   errors: {s['errors']}",
        f"throughput: {s['throughput']:.1f} requests/s"
        f"   committed: {s['commands_per_second']:.1f} commands/s ({s['commands_committed']})",
        f"generator CPU: {s['generator_cpu_cores']:.2f} cores ({s['generator_cpu_s']:.1f} s in the window)",
        "",
        f"{'latency (ms)':<14}{'count':>9}{'req/s':>10}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}"
        f"{'refused':>9}{'errors':>8}",
    ]

    def row(name: str, lat: dict[str, Any], rate: float, refused: int, errors: int) -> str:
        if not lat.get("count"):
            return f"{name:<14}{0:>9}{rate:>10.1f}{'-':>9}{'-':>9}{'-':>9}{'-':>9}{refused:>9}{errors:>8}"
        return (
            f"{name:<14}{lat['count']:>9}{rate:>10.1f}{lat['p50']:>9.2f}{lat['p95']:>9.2f}"
            f"{lat['p99']:>9.2f}{lat['max']:>9.2f}{refused:>9}{errors:>8}"
        )

    lines.append(row("all", s["latency_ms"], s["throughput"], s["rejected"], s["errors"]))
    for k, v in s["kinds"].items():
        lines.append(row(k, v["latency_ms"], v["throughput"], v["rejected"], v["errors"]))
    lines.append("")
    for k, v in s["kinds"].items():
        if "commands_committed" in v:
            batch = f" of {c['batch_size']} earns" if k == "batch" and "batch_size" in c else ""
            lines.append(
                f"{k}: {v['commands_committed']} commands committed, {v['commands_per_second']:.1f}/s"
                f" ({v['ok']} requests{batch})"
            )
        if v.get("sent_instead", {}).get("requests"):
            instead = v["sent_instead"]
            lines.append(
                f"{k}: nothing of its own to act on {instead['requests']} times: sent a {instead['kind']}"
                f" instead (counted as {instead['kind']})"
            )
    if s["errors_by_status"]:
        lines.append("errors: " + ", ".join(f"{k}: {n}" for k, n in s["errors_by_status"].items()))
    else:
        lines.append("errors: none")
    return "\n".join(lines)
