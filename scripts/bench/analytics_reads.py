"""Latency of the analytics reads on a database with its read models built (issue 13's aim).

    PYTHONPATH=TREE .venv/bin/python scripts/bench/analytics_reads.py DATABASE_URL [--calls 200]

Times the read functions the analytics endpoints call, on one connection, after a warm-up:
segments, a page of a segment's members, journeys, liability, and the channel figures over one
day, 30 days, 365 days (each ending on the last day recorded), 30 days across a month's end and
the open range. Each read is called `--calls` times, or as many as fit in `--budget` seconds
(at least 5). Prints p50, p99 (nearest rank) and max in ms. A database kept by
`python -m devtools.bench.rebuild --events 1000000 --members 100000 --keep` is what the figures
in docs/benchmarks.md were read on; `TREE` picks the code (main's or a branch's).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from projections.channels import channel_figures
from projections.liability import liability_totals
from projections.segments import journeys, segment_counts, segment_members


async def _time(call: Callable[[], Awaitable[Any]], calls: int, budget: float) -> list[float]:
    await call()  # warm-up: plans, caches
    taken: list[float] = []
    started = time.perf_counter()
    while len(taken) < calls and (len(taken) < 5 or time.perf_counter() - started < budget):
        t = time.perf_counter()
        await call()
        taken.append((time.perf_counter() - t) * 1000)
    return taken


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("database_url")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per read at most (>= 5 calls)")
    args = parser.parse_args()
    conn = await asyncpg.connect(args.database_url)
    try:
        last: date = await conn.fetchval("SELECT max(day) FROM channel_totals")
        month_end = last.replace(day=1) - timedelta(days=1)
        reads: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("segments", lambda: segment_counts(conn)),
            ("segment members (active, 100)", lambda: segment_members(conn, "active", after=None, limit=100)),
            ("journeys", lambda: journeys(conn)),
            ("liability", lambda: liability_totals(conn, datetime.now(UTC))),
            ("channels, 1 day", lambda: channel_figures(conn, last, last)),
            ("channels, 30 days", lambda: channel_figures(conn, last - timedelta(days=29), last)),
            (
                "channels, 30 days across a month's end",
                lambda: channel_figures(conn, month_end - timedelta(days=14), month_end + timedelta(days=15)),
            ),
            ("channels, 365 days", lambda: channel_figures(conn, last - timedelta(days=364), last)),
            ("channels, open range", lambda: channel_figures(conn, None, None)),
        ]
        events = await conn.fetchval("SELECT max(position) FROM events")
        print(f"{events:,} events; last day {last}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
        print(f"{'read':42} {'calls':>5} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
        for name, call in reads:
            taken = await _time(call, args.calls, args.budget)
            print(
                f"{name:42} {len(taken):5d} {statistics.median(taken):9.1f}"
                f" {_p(taken, 0.99):9.1f} {max(taken):9.1f}"
            )
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
