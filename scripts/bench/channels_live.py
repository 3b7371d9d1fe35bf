"""The channels projection's live statement, timed over a whole log (ADR 26's write cost).

    PYTHONPATH=TREE .venv/bin/python scripts/bench/channels_live.py DATABASE_URL [--batch 1000]

DATABASE_URL must be a copy (CREATE DATABASE ... TEMPLATE): its `channel_days`, `channel_totals`
and `channel_returns` are emptied, then the log is folded again from zero as the live runner
does (batches of `--batch` events, each in its own transaction), writing with the live statement
of the code on PYTHONPATH. Printed: the time spent in the projection's `write` (the statement:
the fold is the same for every version) per event, overall and for the second half of the log
(members with days behind them), and the time of the whole fold.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg

from projections.channels import ChannelsProjection
from service.store.log import LogReader


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("database_url")
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    conn = await asyncpg.connect(args.database_url)
    try:
        for table in ("channel_days", "channel_totals", "channel_returns"):
            if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
                await conn.execute(f"TRUNCATE {table}")
        head = await conn.fetchval("SELECT max(position) FROM events")
        projection = ChannelsProjection(None, reader=LogReader(None))
        position, writing, late, started = 0, 0.0, 0.0, time.perf_counter()
        while position < head:
            async with conn.transaction():
                reached, touched = await projection.fold.fold(conn, after=position, limit=args.batch)
                t = time.perf_counter()
                await projection.write(conn, touched, after=position)
                spent = time.perf_counter() - t
            writing += spent
            if position >= head // 2:
                late += spent
            position = reached
        total = time.perf_counter() - started
        print(
            f"{head:,} events in {total:.1f} s; write: {writing:.1f} s = {writing / head * 1e6:.0f} us/event,"
            f" second half {late / (head - head // 2) * 1e6:.0f} us/event"
        )
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
