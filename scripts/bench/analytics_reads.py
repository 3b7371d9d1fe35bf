"""Latency of the analytics reads on a database with its read models built (issue 13's aim).

    PYTHONPATH=TREE .venv/bin/python scripts/bench/analytics_reads.py DATABASE_URL [--calls 200]

Times the read functions the analytics endpoints call, on one connection, after a warm-up:
segments, a page of a segment's members, journeys, liability, and the channel figures over one
day, 30 days, 365 days (each ending on the day before the last one recorded), a year cut to
read the most cells (from the 2nd of a month to the day before a month's last), 30 days across
a month's end and the open range. Each read is called `--calls` times, or as many as fit in
`--budget` seconds (at least 5). Prints p50, p99 (nearest rank) and max in ms. With `--dump
FILE` it only writes the channel figures of 20 ranges, to compare two versions' answers. A database kept by
`python -m devtools.bench.rebuild --events 1000000 --members 100000 --keep` is what the figures
in docs/benchmarks.md were read on; `TREE` picks the code (main's or a branch's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
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


async def _dump(conn: asyncpg.Connection, last: date, path: Path) -> None:
    """The channel figures of 20 ranges (the same on any database with the same last day), to
    compare two versions' answers exactly."""
    rng = random.Random(7)  # noqa: S311 -- the same ranges every time, not a secret
    ranges: list[tuple[date | None, date | None]] = [
        (None, None),
        (last, last),
        (last - timedelta(days=29), last),
        (last - timedelta(days=364), last),
    ]
    for _ in range(16):
        first = last - timedelta(days=rng.randrange(420))
        ranges.append((first, first + timedelta(days=rng.randrange(200))))
    found = [
        {
            "from": str(first),
            "to": str(to),
            "channels": {
                f.channel: [f.active_members, f.purchases, str(f.revenue), f.redemptions]
                for f in await channel_figures(conn, first, to)
            },
        }
        for first, to in ranges
    ]
    await asyncio.to_thread(path.write_text, json.dumps(found, indent=1))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("database_url")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per read at most (>= 5 calls)")
    parser.add_argument(
        "--dump", type=Path, help="only write the channel figures of 20 ranges to this file (JSON)"
    )
    args = parser.parse_args()
    conn = await asyncpg.connect(args.database_url)
    try:
        # The last whole day: the last day recorded may hold only the log's last minutes.
        last: date = await conn.fetchval("SELECT max(day) FROM channel_totals") - timedelta(days=1)
        if args.dump is not None:
            await _dump(conn, last, args.dump)
            return
        month_end = last.replace(day=1) - timedelta(days=1)
        worst_last = month_end - timedelta(days=1)
        worst_first = (worst_last.replace(day=1) - timedelta(days=360)).replace(day=2)
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
            # The most cells a year can read: 30 head days and 30 tail days around 11 months.
            ("channels, a year cut worst", lambda: channel_figures(conn, worst_first, worst_last)),
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
