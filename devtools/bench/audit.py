"""Speed of the audit trail on a generated log: verify, export, and the appender's hashing.

    python -m devtools.bench.audit [--events 200000] [--members 10000] [--database-url URL] [--repeat 3]

The log is generated as for the rebuild bench (devtools/bench/rebuild.py: members enrolling,
then purchases and redemptions, through the real appender). Then, each `--repeat` times:

- verify: `ChainVerifier` from position 0 over the whole log (what `loyalty audit verify` and
  `GET /v1/audit/verify` run), in events/s;
- export: the log as JSON Lines written to a file (what `loyalty audit export` runs), events/s;
- hashing: the appender's own step (`_Plan._hashes`: content, stream hash, global hash) over
  the stored rows in batches of 500, in µs an event: what the hash chains add to each append.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg

from devtools.bench.rebuild import _database, _generate, _server
from service.store.appender import _Plan
from service.store.audit import ChainVerifier, audit_lines
from service.store.keys import Keyring

_ROW = (
    "SELECT position, event_id, stream_id, stream_version, event_type, topic, data, channel, api_key_id,"
    " correlation_id, causation_id, occurred_at, recorded_at FROM events ORDER BY position"
)


def _rates(what: str, events: int, seconds: float, cpu: float, extra: str = "") -> float:
    print(
        f"{what}: {events} events{extra} in {seconds:.2f} s = {events / seconds:,.0f}/s"
        f" (this process's CPU {cpu:.2f} s: {events / cpu:,.0f} events/CPU-s)"
    )
    return events / seconds


async def _verify(url: str) -> float:
    conn = await asyncpg.connect(url)
    try:
        started, cpu = time.perf_counter(), time.process_time()
        result = await ChainVerifier().run(conn)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await conn.close()
    assert result.ok, result.broken
    return _rates("verify", result.events_checked, seconds, cpu)


async def _export(url: str) -> float:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "export.jsonl"
            started, cpu = time.perf_counter(), time.process_time()
            lines = 0
            with path.open("wb") as out:
                async for chunk in audit_lines(pool, after=0):
                    out.write(chunk)
                    lines += chunk.count(b"\n")
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            size = path.stat().st_size
    finally:
        await pool.close()
    return _rates("export", lines, seconds, cpu, f" ({size / 1e6:.0f} MB)")


async def _hashing(url: str) -> float:
    conn = await asyncpg.connect(url)
    try:
        rows = [tuple(r)[:12] for r in await conn.fetch(_ROW)]
        now = (await conn.fetchrow("SELECT now() AS now"))["now"]
    finally:
        await conn.close()
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(rows), 500):
        plan = _Plan()
        plan.now = now
        plan._hashes(rows[start : start + 500])
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    per_event = cpu / len(rows) * 1e6
    print(
        f"appender hashing: {len(rows)} events in {seconds:.2f} s,"
        f" CPU {per_event:.2f} µs an event (wall {seconds / len(rows) * 1e6:.2f})"
    )
    return per_event


async def _bench(server_url: str, args: argparse.Namespace) -> None:
    async with _database(server_url, keep=False) as url:
        await _generate(url, Keyring(secrets.token_bytes(32)), args)
        verify, export, hashing = [], [], []
        for _ in range(args.repeat):
            verify.append(await _verify(url))
            export.append(await _export(url))
            hashing.append(await _hashing(url))
        print(
            f"medians of {args.repeat}: verify {statistics.median(verify):,.0f} events/s,"
            f" export {statistics.median(export):,.0f} events/s,"
            f" appender hashing {statistics.median(hashing):.2f} µs of CPU an event"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a PostgreSQL server to use (a database is created on it)")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with _server(args.database_url) as server_url:
        asyncio.run(_bench(server_url, args))


if __name__ == "__main__":
    main()
